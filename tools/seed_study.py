"""DDP against one process over seeds, end to end (2 gloo ranks with sync_bn): the figures of tests/test_engine.py's DDP bounds.

    python tools/seed_study.py ddp --seeds 0-5 --out ddp.json

The method studies are declared files under studies/ (reid_nb.study, `reid-study studies/<name>.yaml`): ifd-budget,
ccafl-budget, ifd-table2, ccafl-ablation, ifd-phase, ccafl-smoothing. This script keeps the one study that needs torchrun.
"""
import argparse, json, os, subprocess, sys, tempfile
from pathlib import Path

def _seeds(s: str) -> list[int]:
    if "-" in s: a, b = s.split("-"); return list(range(int(a), int(b) + 1))
    return [int(x) for x in s.split(",")]

DDP_DATA = dict(n_train_ids=12, n_test_ids=8, images_per_cam=4)

def ddp(seed, root):
    from reid_nb.engine import fit, make_config
    from reid_nb.data import load_dataset
    load_dataset("synth-prcc", root / "data", **DDP_DATA)
    cfg = make_config("baseline", "synth-prcc", name=f"ddp-{seed}", data_root=str(root / "data"), out_dir=str(root / "runs"), epochs=5,
                      batch_size=32, num_instances=4, image_size=(64, 32), dataset_opts=DDP_DATA, progress=False, eval_every=0,
                      sync_bn=True, device="cpu", seed=seed)
    cfg.save(root / f"ddp-{seed}.json")
    torchrun = Path(sys.executable).parent / "torchrun"
    p = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "reid_nb.engine", "--config", str(root / f"ddp-{seed}.json")],
                       capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if p.returncode: raise RuntimeError(p.stderr[-3000:])
    d = json.loads((root / "runs" / f"ddp-{seed}" / "metrics.json").read_text())["protocols"]
    s = fit(cfg.replace(name=f"single-{seed}"))["protocols"]
    return {"ddp": {k: d[k]["mAP"] for k in ("sc", "cc")}, "single": {k: s[k]["mAP"] for k in ("sc", "cc")}}

def summary(res: dict) -> dict:
    import numpy as np
    variants = list(next(iter(res.values())))
    keys = [k for k, v in next(iter(res.values()))[variants[0]].items() if isinstance(v, float)]
    out = {v: {k: (float(np.mean([r[v][k] for r in res.values()])), float(np.std([r[v][k] for r in res.values()], ddof=1)) if len(res) > 1 else 0.0)
               for k in keys} for v in variants}
    base = variants[0]
    for v in variants[1:]:
        for k in keys: out[v][f"{k}_wins_over_{base}"] = sum(r[v][k] > r[base][k] for r in res.values())
    return out

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("study", choices=["ddp"])
    ap.add_argument("--seeds", default="0-4")
    ap.add_argument("--out", default=None, help="JSON of every run and the summary")
    ap.add_argument("--root", default=None, help="folder for data and runs (default: a temporary one)")
    ap.add_argument("--src", default=None, help="measure the reid_nb of another checkout (its folder)")
    a = ap.parse_args()
    if a.src:                                           # drop an editable install's finder, put the other checkout first
        sys.meta_path = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
        sys.path.insert(0, str(Path(a.src).resolve()))
        os.environ["PYTHONPATH"] = str(Path(a.src).resolve()) + os.pathsep + os.environ.get("PYTHONPATH", "")
    import reid_nb
    print("reid_nb from", Path(reid_nb.__file__).parent, flush=True)
    root = Path(a.root or tempfile.mkdtemp(prefix=f"seed_study_{a.study}_"))
    fn, res = {"ddp": ddp}[a.study], {}
    for s in _seeds(a.seeds):
        res[s] = fn(s, root)
        print(s, json.dumps(res[s]), flush=True)
        if a.out: Path(a.out).write_text(json.dumps({"runs": res}, indent=1))
    summ = summary(res)
    print(json.dumps(summ, indent=1))
    if a.out: Path(a.out).write_text(json.dumps({"runs": res, "summary": summ}, indent=1))

if __name__ == "__main__": main()
