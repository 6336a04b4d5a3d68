import configparser, contextlib, importlib, io, os, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv's bin: nbdev_*, papermill
sys.path.insert(0, str(ROOT / "tools"))  # seed_study: the DDP setting (the method studies are files under studies/)

def run(cmd, cwd=ROOT, check=True, env=None, timeout=600):
    "Run a command, returning CompletedProcess; on unexpected failure show its output."
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd} exited {p.returncode}\nstdout:\n{p.stdout[-4000:]}\nstderr:\n{p.stderr[-4000:]}")
    return p

@pytest.fixture
def root(): return ROOT

def chance_map(data, protocol: str, draws: int = 300, seed: int = 0) -> tuple[float, float]:
    "(mean, std) of `protocol`'s mAP with random features: what an untrained ranking scores on this split."
    import numpy as np, torch
    from reid_nb.metrics import evaluate
    p = data.protocols[protocol]
    ids = [[np.array([getattr(s, k) for s in lst]) for k in ("pid", "camid", "clothes")] for lst in (p.query, p.gallery)]
    g = torch.Generator().manual_seed(seed)
    maps = [evaluate(torch.randn(len(p.query), 8, generator=g), torch.randn(len(p.gallery), 8, generator=g), ids[0][0], ids[1][0],
                     ids[0][1], ids[1][1], ids[0][2], ids[1][2], mode=p.mode).mAP for _ in range(draws)]
    return float(np.mean(maps)), float(np.std(maps))

def entry(prog: str):
    "The function console script `prog` runs (settings.ini's console_scripts)."
    c = configparser.ConfigParser(); c.read(ROOT / "settings.ini")
    mod, fn = dict(s.split("=") for s in c["DEFAULT"]["console_scripts"].split())[prog].split(":")
    return getattr(importlib.import_module(mod), fn)

def cli_here(prog, *args):
    "A console script in this process (~4 s of interpreter start saved): the entry function with argv, its SystemExit read as the interpreter would (a message: status 1)."
    err, code = io.StringIO(), 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try: entry(prog)([str(a) for a in args])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
            if isinstance(e.code, str): print(e.code, file=err)
    return subprocess.CompletedProcess([prog, *args], code, "", err.getvalue())
