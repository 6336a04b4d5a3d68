"""Training throughput: the engine against a bare torchvision forward+backward of the same backbone and batch.

Measured in one process, side by side (images/s):
  bare      forward + backward + Adam step of ReIDNet on a fixed random batch (no data loading, no engine)
  loader    the engine's DataLoader alone (JPEG decode + paired transforms + P x K sampler), no model
  engine    fit() on synth-prcc: loader + model + losses + logging, from its log.csv
The engine's overhead is judged against what loading and compute cost when done one after the other
(1 / (1/bare + 1/loader), num_workers=0) — the ratio engine / that bound should be close to 1.

    python bench/train_bench.py [--backbone resnet18] [--size 128 64] [--batch 32] [--iters 20] [--workers 0]
"""
import argparse, json, os, sys, tempfile, time
from pathlib import Path
import torch
import reid_nb.baseline  # noqa: F401
from reid_nb.backbones import ReIDNet
from reid_nb.data import ImageDataset, load_dataset
from reid_nb.engine import fit, make_config
from reid_nb.losses import label_smoothed_ce, triplet_loss
from reid_nb.samplers import RandomIdentitySampler
from reid_nb.transforms import TransformConfig, build_transforms

def bare(backbone, size, batch, iters, n_cls):
    model = ReIDNet(backbone, n_cls).train()
    opt = torch.optim.Adam(model.parameters(), 3.5e-4, weight_decay=5e-4)
    x, y = torch.randn(batch, 3, *size), torch.arange(batch) // 4
    for i in range(iters + 2):
        if i == 2: t = time.perf_counter()                  # two warm-up steps
        out = model(x)
        loss = label_smoothed_ce(out["logits"], y) + triplet_loss(out["feat"], y)
        opt.zero_grad(); loss.backward(); opt.step()
    return batch * iters / (time.perf_counter() - t)

def loader(data, size, batch, iters, workers):
    tf, _ = build_transforms(TransformConfig(size=tuple(size)))
    ds = ImageDataset(data.train, tf)
    s = RandomIdentitySampler([x.pid for x in data.train], batch, 4, seed=0)
    n, t = 0, time.perf_counter()
    while n < iters:
        s.set_epoch(n)
        for b in torch.utils.data.DataLoader(ds, batch_size=batch, sampler=s, drop_last=True, num_workers=workers):
            n += 1
            if n == iters: break
    return batch * iters / (time.perf_counter() - t)

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="resnet18"); ap.add_argument("--size", type=int, nargs=2, default=[128, 64])
    ap.add_argument("--batch", type=int, default=32); ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--workers", type=int, default=0)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        data = load_dataset("synth-prcc", Path(d) / "data")
        cfg = make_config("baseline", "synth-prcc", data_root=str(Path(d) / "data"), out_dir=str(Path(d) / "runs"), backbone=a.backbone,
                          image_size=tuple(a.size), batch_size=a.batch, epochs=2, max_iters=a.iters // 2, progress=False,
                          num_workers=a.workers, flip_test=False)
        r_bare = bare(a.backbone, a.size, a.batch, a.iters, data.num_train_pids)
        r_load = loader(data, a.size, a.batch, a.iters, a.workers)
        fit(cfg)
        import csv
        rows = list(csv.DictReader(open(Path(d) / "runs" / "demo" / "log.csv")))
        r_eng = float(rows[-1]["images_per_s"])                    # second epoch: past start-up
    serial = 1 / (1 / r_bare + 1 / r_load)
    print(f"\n{torch.get_num_threads()} threads, {a.backbone} {a.size[0]}x{a.size[1]}, batch {a.batch}, num_workers {a.workers}")
    print(f"  bare forward+backward+step  {r_bare:8.1f} img/s")
    print(f"  data loader alone           {r_load:8.1f} img/s   ({r_load / r_bare:.2f}x the model's consumption rate)")
    print(f"  engine (fit)                {r_eng:8.1f} img/s")
    print(f"  engine / bare               {r_eng / r_bare:8.2f}")
    print(f"  engine / serial bound       {r_eng / serial:8.2f}   (1.00 = no overhead beyond loading + compute)")

if __name__ == "__main__":
    main()
