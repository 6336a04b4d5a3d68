"""Training throughput per method: bare compute, the data path alone and the engine, measured in one run, with ratios.

For each method (baseline, IFD's joint phase, CCAFL's inter-camera stage), on the best device present (a GPU, else the CPU):
  bare      the method's own loss + backward + optimiser step on one batch already on the device, repeated (no data loading,
            no engine): what the model, loss and batch can do at most
  loader    the engine's training batches alone (`engine.train_batches`: the PIL path with its workers, or the decode cache)
  engine    fit() on synthetic data: loader + model + losses + logging; its last epoch's images/s from log.csv
and engine / bare (1.00 = the engine adds nothing to the model's own cost) and engine / serial bound, where the serial bound
1 / (1/bare + 1/loader) is loading and compute one after the other (what a single process without overlap can reach).

    python bench/train_bench.py                                  # CPU-sized settings: ResNet-18 / tiny CLIP, 128x64, batch 32
    python bench/train_bench.py --paper --amp bf16 --workers 8   # on a GPU: ResNet-50 / RN50 at the papers' sizes and batches
    python bench/train_bench.py --methods baseline --data-path cache
    python bench/train_bench.py --sweep                          # bare compute per precision x memory format, ratio to fp32 NCHW
"""
import argparse, csv, os, sys, tempfile, time
from pathlib import Path
import torch

SMALL = {"baseline": dict(backbone="resnet18"), "ifd": dict(backbone="resnet18", method_opts={"attn_epochs": 1}),
         "ccafl": dict(backbone="reid-tiny-rn", method_opts=dict(prompt_epochs=1, icdl_epochs=2, assoc_rate=1.0))}
PAPER = {"baseline": dict(backbone="resnet50", image_size=(256, 128), batch_size=64, num_instances=4),
         "ifd": dict(backbone="resnet50", image_size=(384, 192), batch_size=32, num_instances=8, method_opts={"attn_epochs": 1}),
         "ccafl": dict(backbone="RN50", image_size=(256, 128), batch_size=128, num_instances=8,
                       method_opts=dict(prompt_epochs=1, icdl_epochs=2, assoc_rate=1.0))}
DATASET = {"baseline": "synth-market", "ifd": "synth-prcc", "ccafl": "synth-market"}

def _sync(dev):
    if dev.type == "cuda": torch.cuda.synchronize()

def bare(method, model, batch, stage, cfg, dev, iters):
    "The method's loss + backward + step on one batch on the device, `iters` times after 2 warm-up steps."
    from reid_nb.engine import _autocast, _to, build_optimizer, resolve_amp, resolve_memory_format
    opt = build_optimizer(method.parameters(model, stage), cfg, cfg.lr)
    model.train()
    mf, amp = resolve_memory_format(cfg.memory_format, dev), resolve_amp(cfg.amp, dev)
    model, batch = model.to(memory_format=mf), _to(batch, dev, mf)
    if cfg.compile: model.compile()
    for i in range(iters + 2):
        if i == 2: _sync(dev); t = time.perf_counter()
        with _autocast(amp, dev): loss = method.loss(model, batch, stage, 0)["loss"]
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
    _sync(dev)
    return len(batch["img"]) * iters / (time.perf_counter() - t)

def enter_last_stage(method, model):
    "The method's last stage, entered as fit enters it: each earlier stage's per-epoch state first (e.g. CCAFL's prompts)."
    stages = method.stages()
    for st in stages[:-1]: method.on_epoch_start(model, st, 0)
    method.on_epoch_start(model, stages[-1], sum(st.epochs for st in stages[:-1]))
    return stages[-1]

def setup(cfg):
    "The engine's own set-up of `cfg` (`engine.prepare_run`: device, data, method, model, transforms, sampler, data path)."
    from reid_nb.engine import prepare_run
    return prepare_run(cfg.replace(compile=False))                    # `bare` compiles its own model when asked

def measure(name, cfg, iters):
    from reid_nb.engine import fit, train_batches, _to
    run = setup(cfg)
    dev, method, model, sampler = run.device, run.method, run.model, run.sampler
    dl = train_batches(cfg, run.ds, sampler, dev, run.cache)
    n, t = 0, None
    for e in range(100):                                              # the loader alone, past its first batch
        sampler.set_epoch(e)
        for b in dl:
            b = _to(b, dev)
            if t is None: _sync(dev); t = time.perf_counter(); continue
            n += 1
            if n == iters: break
        if n == iters: break
    _sync(dev); r_load = cfg.batch_size * n / (time.perf_counter() - t)
    stage = enter_last_stage(method, model)                            # the stage of the engine's last epoch, which it reports
    batch = _to(next(iter(dl)), dev)
    r_bare = bare(method, model, batch, stage, cfg, dev, iters)           # (same stage, same loss terms as the engine's last epoch)
    fit(cfg)
    rows = list(csv.DictReader(open(Path(cfg.out_dir) / cfg.name / "log.csv")))
    r_eng = float(rows[-1]["images_per_s"])
    serial = 1 / (1 / r_bare + 1 / r_load)
    return dict(method=name, stage=stage.name, device=str(dev), bare=r_bare, loader=r_load, engine=r_eng, eng_bare=r_eng / r_bare,
                eng_serial=r_eng / serial)

def sweep(name, cfg, iters):
    "Bare compute of one method for each precision x memory format (a fresh model each), in one process: the defaults' evidence."
    from reid_nb.engine import train_batches, _to
    run = setup(cfg)
    dev, method = run.device, run.method
    batch = _to(next(iter(train_batches(cfg, run.ds, run.sampler, dev))), dev)
    amps = ["off", "bf16"] + (["fp16"] if dev.type == "cuda" else [])
    rates = {}
    for rep in range(2):                                                # interleaved repeats; the faster of two
        for amp in amps:
            for fmt in ("contiguous", "channels_last"):
                torch.manual_seed(0)
                model = method.build_model().to(dev)
                stage = enter_last_stage(method, model)
                r = bare(method, model, batch, stage, cfg.replace(amp=amp, memory_format=fmt), dev, iters)
                rates[amp, fmt] = max(r, rates.get((amp, fmt), 0))
    ref = rates["off", "contiguous"]
    print(f"\n{name} ({stage.name}) on {dev}, batch {cfg.batch_size}, {cfg.image_size[0]}x{cfg.image_size[1]}, {cfg.backbone}: images/s (ratio to fp32 contiguous)")
    for (amp, fmt), r in rates.items(): print(f"  {amp:>5} {fmt:<14}{r:9.1f}  {r / ref:5.2f}x")

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=["baseline", "ifd", "ccafl"]); ap.add_argument("--paper", action="store_true")
    ap.add_argument("--amp", default="auto", choices=["auto", "off", "bf16", "fp16"]); ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--memory-format", default="auto", choices=["auto", "channels_last", "contiguous"])
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (engine and bare alike)")
    ap.add_argument("--sweep", action="store_true", help="only bare compute, for every precision x memory format")
    ap.add_argument("--data-path", default="pil", choices=["pil", "cache"]); ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--device", default="auto")
    a = ap.parse_args()
    from reid_nb.engine import make_config
    out = []
    with tempfile.TemporaryDirectory() as d:
        for m in a.methods:
            kw = {**(PAPER if a.paper else SMALL)[m]}
            opts = kw.pop("method_opts", {})
            base = dict(image_size=(128, 64), batch_size=32, num_instances=4) if not a.paper else {}
            cfg = make_config(m, DATASET[m], name=m, data_root=str(Path(d) / "data"), out_dir=str(Path(d) / "runs"), epochs=3,
                              iters_per_epoch=a.iters, eval_every=0, progress=False, amp=a.amp, num_workers=a.workers, overwrite=True,
                              memory_format=a.memory_format, compile=a.compile,
                              data_path=a.data_path, device=a.device, method_opts=opts,
                              dataset_opts=dict(n_train_ids=32, n_test_ids=4, images_per_cam=4), **{**base, **kw})
            if a.sweep: sweep(m, cfg, a.iters); continue
            out.append(measure(m, cfg, a.iters))
    if a.sweep: return
    r0 = out[0]
    print(f"\n{r0['device']}, torch {torch.__version__}, {torch.get_num_threads()} threads, amp {a.amp}, memory format {a.memory_format}{', compiled' if a.compile else ''}, data path {a.data_path}, "
          f"num_workers {a.workers}, {'paper' if a.paper else 'CPU-sized'} settings; images/s")
    print(f"{'method (stage)':<20}{'bare':>9}{'loader':>9}{'engine':>9}{'engine/bare':>13}{'engine/serial':>15}")
    for r in out:
        print(f"{r['method'] + ' (' + r['stage'] + ')':<20}{r['bare']:>9.1f}{r['loader']:>9.1f}{r['engine']:>9.1f}{r['eng_bare']:>13.2f}{r['eng_serial']:>15.2f}")

if __name__ == "__main__": main()
