"""Loader benchmark: the PIL path (ImageDataset + DataLoader) against the decode cache (reid_nb.datapath), same run.

Both produce identical batches (tests/test_datapath.py); this measures training images per second per CPU worker: the PIL
path in the main process (num_workers=0: one worker's work), and, for reference, with every core as a worker; the cached
path in the main process on the CPU (on a GPU machine, `--device cuda` augments on the GPU). The cache's one-time build
(decode + resize every image once) is reported separately. Repeats are interleaved; the ratio is the median.

    python bench/loader_bench.py                                   # synth-market, 128x64 JPEGs -> 256x128, batch 64
    python bench/loader_bench.py --dataset synth-prcc --size 384 192 --batch 32 --masks   # with parsing masks (IFD's input)
"""
import argparse, os, statistics, tempfile, time
from pathlib import Path
import torch

def rate(batches, n: int) -> float:
    it = iter(batches); next(it)                                    # warm-up batch (worker start-up, first allocation)
    t = time.perf_counter(); k = 0
    for b in it:
        k += len(b["img"])
        if k >= n: break
    return k / (time.perf_counter() - t)

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="synth-market"); ap.add_argument("--size", type=int, nargs=2, default=[256, 128])
    ap.add_argument("--batch", type=int, default=64); ap.add_argument("--images", type=int, default=1500, help="images timed per measurement")
    ap.add_argument("--repeats", type=int, default=3); ap.add_argument("--device", default="cpu"); ap.add_argument("--root", default=None)
    ap.add_argument("--masks", action="store_true", help="load the parsing masks too (IFD's input)")
    a = ap.parse_args()
    torch.set_num_threads(1)                                         # one worker's compute, as a DataLoader worker has
    from reid_nb.data import ImageDataset, load_dataset
    from reid_nb.datapath import CachedBatches, DecodedCache
    from reid_nb.samplers import RandomIdentitySampler
    from reid_nb.transforms import TransformConfig, build_transforms
    root = Path(a.root or tempfile.mkdtemp())
    opts = dict(n_train_ids=100, n_test_ids=4, images_per_cam=6) if a.dataset.startswith("synth") else {}
    data = load_dataset(a.dataset, root / "data", masks=a.masks, **opts)
    tf, _ = build_transforms(TransformConfig(size=tuple(a.size)))
    masks = data.train[0].mask is not None
    print(f"{a.dataset}: {len(data.train)} training images{' with masks' if masks else ''} -> {a.size[0]}x{a.size[1]}, batch {a.batch}, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}, device {a.device}")
    sampler = RandomIdentitySampler([s.pid for s in data.train], a.batch, 4, seed=0)
    ds = ImageDataset(data.train, tf)
    t = time.perf_counter(); cache = DecodedCache.build(data.train, tf); t_build = time.perf_counter() - t
    print(f"decode cache built in {t_build:.1f} s ({len(data.train) / t_build:.0f} images/s, one process; "
          f"{cache.images.numel() / 2**20:.0f} MiB{' + masks' if masks else ''})")
    def cpu_share(n):
        "The cached path's CPU work per batch when the augmentation runs on an accelerator: the sampler, the draws, the gather."
        it, k = iter(sampler), 0
        t = time.perf_counter()
        while k < n:
            keys = [next(it) for _ in range(a.batch)]
            [tf.draw(torch.Generator().manual_seed(int(q[1]))) for q in keys]
            cache.images.index_select(0, torch.tensor([int(q[0]) for q in keys]))
            if cache.masks is not None: cache.masks.index_select(0, torch.tensor([int(q[0]) for q in keys]))
            k += a.batch
        return k / (time.perf_counter() - t)
    pil, pil_all, fast, share = [], [], [], []
    for r in range(a.repeats):
        sampler.set_epoch(r)
        pil.append(rate(torch.utils.data.DataLoader(ds, batch_size=a.batch, sampler=sampler, drop_last=True), a.images))
        pil_all.append(rate(torch.utils.data.DataLoader(ds, batch_size=a.batch, sampler=sampler, drop_last=True,
                                                        num_workers=os.cpu_count(), persistent_workers=False), a.images))
        fast.append(rate(CachedBatches(cache, sampler, a.batch, tf, data.train, device=a.device), a.images))
        share.append(cpu_share(min(a.images, len(sampler) - a.batch)))
    med = statistics.median
    print(f"PIL path, 1 worker:           {med(pil):7.0f} images/s  (runs {', '.join(f'{x:.0f}' for x in pil)})")
    print(f"PIL path, {os.cpu_count()} workers:          {med(pil_all):7.0f} images/s")
    print(f"decode cache, 1 process:      {med(fast):7.0f} images/s  (runs {', '.join(f'{x:.0f}' for x in fast)})")
    print(f"ratio per worker (cache / PIL): {med([f / p for f, p in zip(fast, pil)]):.1f}x   (augmenting on {a.device})")
    print(f"decode cache, CPU share only: {med(share):7.0f} images/s  (sampler + draws + gather: a CPU's work when the batch is augmented "
          f"on an accelerator; {med([f / p for f, p in zip(share, pil)]):.0f}x the PIL worker)")

if __name__ == "__main__": main()
