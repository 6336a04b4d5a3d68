"""One command verifies a GPU: every GPU-only claim of reid_nb measured in one run, each figure beside its goal.

Writes <out>/report.json and <out>/report.md and exits 1 where a correctness check fails (speed goals are reported, not
enforced: a slow machine is a finding, a wrong result is a bug). Sections, in order (each timed; --budget-s stops the later
speed sections before the limit, never the correctness checks):

  env         GPU, driver, torch, CUDA, cuDNN, Python
  precision   per method, the first step's losses in bf16 (and fp16 on CUDA) against fp32; torch.compile on vs off
  determinism deterministic=True: two runs bit-identical; a run killed (SIGKILL) mid-epoch and resumed bit-identical to an
              uninterrupted one; the speed cost of deterministic mode
  speed       per method at its paper preset's sizes: bare compute (the method's loss + backward + step on a resident
              batch), fit's images/s on the PIL path (DataLoader workers), on the decode cache in host memory and resident in
              the GPU's (`cache_on_device`: no workers, augmented on the GPU); goal engine/bare >= 0.9
  eval        evaluate at MSMT17 scale (11,659 x 82,161, 2048-d) against the bare blocked matmul on the device, goal <= 1.5x;
              exact against a full-sort reference on a subset of queries
  cuda tests  `pytest -m cuda` (tests/test_cuda.py): what CUDA must keep true

    python bench/gpu_check.py                          # a CUDA GPU at the papers' sizes; about 8 minutes on an H100
    python bench/gpu_check.py --device cpu --quick     # the same checks at tiny sizes on the CPU (tests/test_gpu_check.py)
"""
import argparse, json, os, platform, signal, subprocess, sys, tempfile, time
from pathlib import Path
import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from reid_nb.engine import load_methods
METHODS = tuple(sorted(load_methods()))   # every registered method, a plugin's too (others than the papers' at their `smoke` setting)
DATASET = {"baseline": "synth-market", "ifd": "synth-prcc", "ccafl": "synth-market"}
CCAFL_SHORT = dict(prompt_epochs=1, icdl_epochs=1, assoc_rate=1.0, cluster_text_start=1, ical_start=1, ical_end=3)
# the papers' presets' sizes (baseline: the CLIP-ReID / torchreid supervised recipe, 256x128 batch 64)
PAPER = {"baseline": dict(backbone="resnet50", image_size=(256, 128), batch_size=64, num_instances=4),
         "ifd": dict(backbone="resnet50", image_size=(384, 192), batch_size=64, num_instances=8, method_opts={"attn_epochs": 1}),
         "ccafl": dict(backbone="RN50", image_size=(256, 128), batch_size=128, num_instances=8, method_opts=CCAFL_SHORT)}
QUICK = {"baseline": dict(backbone="resnet18", image_size=(64, 32), batch_size=16, num_instances=4),
         "ifd": dict(backbone="resnet18", image_size=(64, 32), batch_size=16, num_instances=4, method_opts={"attn_epochs": 1}),
         "ccafl": dict(backbone="reid-tiny-rn", image_size=(64, 32), batch_size=16, num_instances=4, method_opts=CCAFL_SHORT)}

class Report:
    "Rows of (section, check, value, goal, ok): ok True / False for a correctness check, None for a figure with a goal to read."
    def __init__(self): self.rows, self.t0 = [], time.perf_counter()
    def add(self, section, check, value, goal="", ok=None):
        ok = None if ok is None else bool(ok)
        self.rows.append(dict(section=section, check=check, value=value if isinstance(value, (int, float)) else str(value), goal=goal, ok=ok))
        flag = {True: "ok", False: "FAIL", None: ""}[ok]
        print(f"[{time.perf_counter() - self.t0:6.1f}s] {section:11s} {check}: {value} {('(goal ' + goal + ')') if goal else ''} {flag}", flush=True)
    def failed(self): return [r for r in self.rows if r["ok"] is False]
    def write(self, out: Path, meta: dict):
        out.mkdir(parents=True, exist_ok=True)
        (out / "report.json").write_text(json.dumps({**meta, "seconds": round(time.perf_counter() - self.t0, 1), "rows": self.rows}, indent=1))
        md = [f"# reid_nb GPU check — {meta['device_name']}", "", f"{meta['command']}; {time.perf_counter() - self.t0:.0f} s", "",
              "| section | check | value | goal | |", "|---|---|---|---|---|"]
        md += [f"| {r['section']} | {r['check']} | {r['value']} | {r['goal']} | {({True: 'ok', False: '**FAIL**', None: ''})[r['ok']]} |" for r in self.rows]
        (out / "report.md").write_text("\n".join(md) + "\n")

def cfg_for(method, a, root, **kw):
    from reid_nb.engine import make_config, smoke_config
    if method not in DATASET:             # a plugin's method: its own tiny setting, at the quick or paper-like size of the baseline
        size = dict((QUICK if a.quick else PAPER)["baseline"]); size.pop("backbone")
        base = dict(name=method, data_root=str(root / "data"), out_dir=str(root / "runs"), epochs=2, eval_every=0, progress=False,
                    overwrite=True, device=a.device, iters_per_epoch=a.iters,
                    dataset_opts=dict(n_train_ids=8 if a.quick else 32, n_test_ids=4, images_per_cam=4), **size)
        return smoke_config(method, **{**base, **kw})
    size = dict((QUICK if a.quick else PAPER)[method])
    opts = size.pop("method_opts", {})
    data = dict(n_train_ids=8 if a.quick else 32, n_test_ids=4, images_per_cam=4)
    if method == "ccafl": data.update(n_cams=3, cams_per_id=2)
    base = dict(name=method, data_root=str(root / "data"), out_dir=str(root / "runs"), epochs=2, eval_every=0, progress=False, overwrite=True,
                device=a.device, dataset_opts=data, method_opts=opts, iters_per_epoch=a.iters, **size)
    return make_config(method, DATASET[method], **{**base, **kw})

def env_section(rep, dev):
    rep.add("env", "torch", torch.__version__); rep.add("env", "python", platform.python_version())
    if dev.type == "cuda":
        rep.add("env", "GPU", torch.cuda.get_device_name(dev)); rep.add("env", "CUDA", torch.version.cuda)
        rep.add("env", "cuDNN", torch.backends.cudnn.version())
        try: drv = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.TimeoutExpired): drv = "?"
        rep.add("env", "driver", drv)
    else: rep.add("env", "CPU", platform.processor() or platform.machine()); rep.add("env", "threads", torch.get_num_threads())

def first_losses(cfg):
    "The losses of the first training step of `cfg` (a fresh model, seeded), as floats."
    from reid_nb.engine import prepare_run, train_batches, _to, _autocast, resolve_amp
    from train_bench import enter_last_stage
    run = prepare_run(cfg)
    stage = enter_last_stage(run.method, run.model)
    run.sampler.set_epoch(0)
    batch = _to(next(iter(train_batches(cfg, run.ds, run.sampler, run.device))), run.device, run.mem_format)
    run.model.train()
    if cfg.compile: run.model.compile()
    with _autocast(resolve_amp(cfg.amp, run.device), run.device):    # with gradients: CCAFL steps its ICAL classifier inside
        return {k: float(v.detach()) for k, v in run.method.loss(run.model, batch, stage, 0).items() if torch.is_tensor(v)}

def precision_section(rep, a, root, dev):
    amps = ["bf16"] + (["fp16"] if dev.type == "cuda" else [])
    for m in a.methods:
        base = first_losses(cfg_for(m, a, root, amp="off", seed=0, memory_format="contiguous"))
        for amp in amps:
            low = first_losses(cfg_for(m, a, root, amp=amp, seed=0, memory_format="contiguous"))
            rel = abs(low["loss"] - base["loss"]) / max(abs(base["loss"]), 1e-6)
            # bf16 keeps ~3 significant digits: on the CPU (2026-12-01) the three methods' first losses differed by 3e-4 - 1.2e-3
            rep.add("precision", f"{m}: first-step loss {amp} vs fp32", f"{low['loss']:.4f} vs {base['loss']:.4f} (rel {rel:.1e})",
                    "rel < 5e-2", rel < 5e-2)
    if a.quick and dev.type == "cpu" and not a.compile: return          # compiling needs minutes on a 2-core CPU
    m = "baseline"
    t = time.perf_counter(); off = first_losses(cfg_for(m, a, root, seed=0)); t_off = time.perf_counter() - t
    t = time.perf_counter(); on = first_losses(cfg_for(m, a, root, seed=0, compile=True)); t_on = time.perf_counter() - t
    rel = abs(on["loss"] - off["loss"]) / max(abs(off["loss"]), 1e-6)
    rep.add("precision", f"{m}: compile on vs off, first-step loss", f"{on['loss']:.5f} vs {off['loss']:.5f}", "rel < 1e-2", rel < 1e-2)
    rep.add("precision", f"{m}: compile's first step (set-up + compilation)", f"{t_on:.1f} s vs {t_off:.1f} s eager")

def weights(run_dir):
    return torch.load(Path(run_dir) / "model.pt", weights_only=True)

def same_weights(a, b): return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

def determinism_section(rep, a, root, dev):
    from reid_nb.engine import fit
    from reid_nb.core import load_checkpoint
    for m in (a.methods if not a.quick else [m for m in a.methods if m in ("baseline", "ifd")]):
        cfg = cfg_for(m, a, root, deterministic=True, epochs=3, name=f"det-{m}")
        fit(cfg); w1 = weights(Path(cfg.out_dir) / cfg.name)
        fit(cfg.replace(name=f"det2-{m}")); w2 = weights(Path(cfg.out_dir) / f"det2-{m}")
        rep.add("determinism", f"{m}: two deterministic runs", "bit-identical" if same_weights(w1, w2) else "differ", "bit-identical", same_weights(w1, w2))
    # killed mid-epoch (after the first checkpoint, during the second epoch), resumed: the uninterrupted run's weights
    cfg = cfg_for("baseline", a, root, deterministic=True, epochs=3, name="killed", iters_per_epoch=max(a.iters, 8))
    path = root / "killed.json"; cfg.save(path)
    p = subprocess.Popen([sys.executable, "-m", "reid_nb.engine", "--config", str(path)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    ckpt = Path(cfg.out_dir) / "killed" / "checkpoints" / "last.pt"
    deadline = time.time() + 600
    while time.time() < deadline and p.poll() is None and not ckpt.is_file(): time.sleep(0.02)
    time.sleep(0.2)                                                    # into the next epoch
    p.send_signal(signal.SIGKILL); p.wait()
    killed = p.returncode == -signal.SIGKILL
    at = load_checkpoint(ckpt)["epoch"] if ckpt.is_file() else None
    fit(cfg.replace(resume=True)); fit(cfg.replace(name="straight"))
    ok = killed and at is not None and at < 3 and same_weights(weights(Path(cfg.out_dir) / "killed"), weights(Path(cfg.out_dir) / "straight"))
    rep.add("determinism", f"baseline: SIGKILL after epoch {at} of 3, resumed", "bit-identical to uninterrupted" if ok else
            ("the run ended before the kill" if not killed else "differs"), "bit-identical", ok)
    # the speed cost of deterministic mode: the engine's last-epoch images/s, off vs on
    r = {}
    for det in (False, True):
        c = cfg_for("baseline", a, root, deterministic=det, name=f"speed-det{int(det)}")
        fit(c); r[det] = last_rate(c)
    rep.add("determinism", "baseline: images/s deterministic / default", f"{r[True]:.0f} / {r[False]:.0f} = {r[True] / r[False]:.2f}")

def last_rate(cfg):
    import csv
    rows = list(csv.DictReader(open(Path(cfg.out_dir) / cfg.name / "log.csv")))
    return float(rows[-1]["images_per_s"])

def speed_section(rep, a, root, dev, deadline):
    from train_bench import bare, enter_last_stage, setup
    from reid_nb.engine import fit, train_batches, _to
    for m in a.methods:
        if time.perf_counter() > deadline: rep.add("speed", f"{m}: skipped", "the time budget ran out"); continue
        cfg = cfg_for(m, a, root, name=f"speed-{m}")
        run = setup(cfg)
        stage = enter_last_stage(run.method, run.model)
        batch = _to(next(iter(train_batches(cfg, run.ds, run.sampler, run.device))), run.device)
        r_bare = bare(run.method, run.model, batch, stage, cfg, run.device, a.iters)
        rates = {}
        for path in ("pil", "cache") + (("cache on GPU",) if dev.type == "cuda" else ()):
            c = cfg.replace(name=f"speed-{m}-{path.replace(' ', '-')}", data_path=path.split()[0], cache_on_device=path == "cache on GPU",
                            num_workers=a.workers if path == "pil" else 0)
            fit(c); rates[path] = last_rate(c)
        for path, r in rates.items():
            rep.add("speed", f"{m} ({stage.name}): fit {path} / bare", f"{r:.0f} / {r_bare:.0f} img/s = {r / r_bare:.2f}", ">= 0.9")

def eval_section(rep, a, dev):
    from eval_bench import make_features, SCALES
    from reid_nb.metrics import evaluate, pairwise_distance, _rows_per_block
    scale = "msmt"
    if a.quick: SCALES["quick"] = (300, 600, 4000, 6, 256); scale = "quick"
    from eval_bench import PROFILES
    PROFILES.setdefault("realistic", {})["quick"] = PROFILES["realistic"]["market"]
    qf, gf, qp, gp, qc, gc = make_features(scale)
    qf, gf = qf.to(dev), gf.to(dev)
    def sync():
        if dev.type == "cuda": torch.cuda.synchronize()
    step = _rows_per_block(len(gf), 4, 2**27)
    times = {}
    for rep_i in range(2):                                             # the faster of two, after a warm-up pass
        sync(); t = time.perf_counter()
        for s in range(0, len(qf), step): D = pairwise_distance(qf[s:s + step], gf); del D
        sync(); times["matmul"] = min(times.get("matmul", 1e9), time.perf_counter() - t)
        sync(); t = time.perf_counter(); m = evaluate(qf, gf, qp, gp, qc, gc); sync()
        times["evaluate"] = min(times.get("evaluate", 1e9), time.perf_counter() - t)
    rep.add("eval", f"evaluate / bare matmul at {len(qf)} x {len(gf)} x {qf.shape[1]}",
            f"{times['evaluate']:.2f} / {times['matmul']:.2f} s = {times['evaluate'] / times['matmul']:.2f}x", "<= 1.5x")
    # exactness: the first queries against a plain float64 full sort (torchreid's eval_market1501, written out)
    n = 200
    sub = evaluate(qf[:n], gf, qp[:n], gp, qc[:n], gc)
    D = (1 - qf[:n].double().cpu() @ gf.double().cpu().T).numpy()
    aps = []
    for i in range(n):
        keep = ~((gp.numpy() == qp[i].item()) & (gc.numpy() == qc[i].item()))
        order = np.argsort(D[i][keep], kind="stable"); match = (gp.numpy()[keep][order] == qp[i].item())
        if match.any(): hits = np.cumsum(match); aps.append(float((hits[match] / (np.flatnonzero(match) + 1)).mean()))
    ok = abs(sub.mAP - np.mean(aps)) < 1e-5
    rep.add("eval", f"mAP of {n} queries vs a float64 full-sort reference", f"{sub.mAP:.6f} vs {np.mean(aps):.6f}", "|diff| < 1e-5", ok)

def cuda_tests_section(rep, dev):
    p = subprocess.run([sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", str(ROOT / "tests" / "test_cuda.py")],
                       cwd=ROOT, capture_output=True, text=True, timeout=900)
    last = (p.stdout.strip().splitlines() or ["no output"])[-1]
    ok = p.returncode == 0 if dev.type == "cuda" else p.returncode in (0, 5) and "failed" not in last
    rep.add("cuda tests", "pytest -m cuda", last, "all pass on a GPU (skipped elsewhere)", ok)

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda"); ap.add_argument("--quick", action="store_true", help="tiny sizes (the CPU test)")
    ap.add_argument("--out", default="gpu-check"); ap.add_argument("--iters", type=int, default=None, help="steps per measured epoch")
    ap.add_argument("--workers", type=int, default=8, help="PIL path DataLoader workers"); ap.add_argument("--budget-s", type=float, default=420)
    ap.add_argument("--compile", action="store_true", help="with --quick on a CPU: the compile check too (minutes)")
    ap.add_argument("--sections", default="env,precision,determinism,speed,eval,cuda")
    ap.add_argument("--methods", default=",".join(METHODS), help="the methods of the per-method sections (default: every registered one)")
    a = ap.parse_args(argv)
    a.methods = a.methods.split(",")
    if unknown := [m for m in a.methods if m not in METHODS]: raise SystemExit(f"gpu_check: unknown method(s) {unknown}; registered: {list(METHODS)}")
    a.iters = a.iters or (3 if a.quick else 20)
    if a.quick: a.workers = 0
    dev = torch.device(a.device)
    if dev.type == "cuda" and not torch.cuda.is_available(): raise SystemExit("gpu_check: no CUDA device here; use --device cpu --quick")
    rep, t_end = Report(), time.perf_counter() + a.budget_s
    secs = a.sections.split(",")
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as d:
        root = Path(d)
        steps = {"env": lambda: env_section(rep, dev), "precision": lambda: precision_section(rep, a, root, dev),
                 "determinism": lambda: determinism_section(rep, a, root, dev), "speed": lambda: speed_section(rep, a, root, dev, t_end),
                 "eval": lambda: eval_section(rep, a, dev), "cuda": lambda: cuda_tests_section(rep, dev)}
        for sec in secs:
            try: steps[sec]()
            except Exception as e:                                      # a crash is a failed check; the other sections still run
                rep.add(sec, f"crashed: {type(e).__name__}", str(e)[:500], "", False)
        name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"
        rep.write(Path(a.out), {"device_name": name, "command": "python bench/gpu_check.py " + " ".join(argv if argv is not None else sys.argv[1:])})
    bad = rep.failed()
    print(f"\n{len(rep.rows)} rows, {len(bad)} failed; {Path(a.out) / 'report.md'}")
    if bad: sys.exit(1)

if __name__ == "__main__": main()
