"""The bad-input matrix (issue 24): each case runs the command a user would type and asserts the outcome — exit status 1, one
line naming the problem (no traceback), and every file a user had (the run folder, the feature files) unchanged in size and
modification time. The first case runs the installed console script in a process of its own; the others call the same
entry function in this process (the console script is that call; ~4 s of interpreter start each saved). The cases that must
succeed instead (a replaced image, another working folder) assert the right answer."""
import json, os, shutil, subprocess
from pathlib import Path
import numpy as np
import pytest
from reid_nb.engine import fit, make_config
from reid_nb.features import read_features
from conftest import ROOT, BIN, cli_here

TINY = dict(n_train_ids=4, n_test_ids=3, images_per_cam=2)

@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    "A user's machine: a trained run, its dataset, a gallery feature file."
    t = tmp_path_factory.mktemp("lab")
    fit(make_config("baseline", "synth-prcc", name="mine", data_root=str(t / "data"), out_dir=str(t / "runs"), epochs=1, batch_size=8,
                    num_instances=2, image_size=(64, 32), dataset_opts=TINY, eval_every=0, progress=False, device="cpu"))
    gallery = next((t / "data").glob("synth-prcc*")) / "prcc" / "rgb" / "test" / "A"
    assert cli_here("reid-embed", t / "runs" / "mine", gallery, "-o", t / "g.npz").returncode == 0
    return t

def cli(prog, *args, cwd=ROOT, check=False):
    p = subprocess.run([str(BIN / prog), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    if check: assert p.returncode == 0, p.stderr[-3000:]
    return p

def snapshot(*roots) -> dict:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for r in roots for p in ([r] if Path(r).is_file() else Path(r).rglob("*")) if p.is_file()}

def refused(p, match: str):
    "Exit 1 and a message from the command naming the problem (a layout error adds the expected layout below it), no traceback."
    err = p.stderr.strip()
    assert p.returncode == 1 and match in err and err.startswith("reid-") and "Traceback" not in err, (p.returncode, p.stderr[-2000:])

def _train(t, *sets): return ("reid-train", "--set", f"out_dir={t / 'runs'}", f"data_root={t / 'data'}", "device=cpu", "epochs=1",
                              "batch_size=8", "num_instances=2", "image_size=[64,32]", f"dataset_opts={json.dumps(TINY)}", "progress=false", *sets)

CASES = {   # name -> (command given the lab folder, what the one-line error says)
    "train over an existing run": (lambda t: _train(t, "name=mine", "image_size=[32,16]"), "already holds a run"),
    "resume with another config": (lambda t: _train(t, "name=mine", "resume=true", "lr=0.1"), "different config"),
    "missing data root": (lambda t: _train(t, "name=new", f"data_root={t / 'nowhere'}", "dataset=prcc", "dataset_opts={}"), "nowhere"),
    "an option the dataset lacks": (lambda t: _train(t, "name=new", "dataset=prcc"), "takes no option(s) ['n_train_ids'"),
    "unknown parameter": (lambda t: _train(t, "name=new", "epoch=2"), "did you mean 'epochs'"),
    "wrong type": (lambda t: _train(t, "name=new", "epochs=abc"), "TrainConfig.epochs"),
    "embed an empty folder": (lambda t: ("reid-embed", t / "runs" / "mine", t / "empty", "-o", t / "e.npz"), "holds no images"),
    "embed a corrupt image": (lambda t: ("reid-embed", t / "runs" / "mine", t / "corrupt", "-o", t / "g.npz"), "bad.jpg"),
    "search with k < 1": (lambda t: ("reid-search", t / "g.npz", t / "g.npz", "-k", "0"), "k must be at least 1"),
    "search a missing gallery": (lambda t: ("reid-search", t / "none.npz", t / "g.npz"), "none.npz"),
    "search features of another size": (lambda t: ("reid-search", t / "g.npz", t / "g16.npz"), "embedded by different models"),
    "evaluate features without identities": (lambda t: ("reid-eval", t / "g.npz", t / "anon.npz"), "needs every image's pid"),
    "load a folder that is not a run": (lambda t: ("reid-export", t / "data", "-o", t / "m.onnx"), "no model.pt"),
    "load a killed run (no model.pt yet)": (lambda t: ("reid-embed", t / "killed", t / "empty", "-o", t / "k.npz"), "last checkpoint"),
}

@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_refused_and_changes_nothing(lab, case):
    (lab / "empty").mkdir(exist_ok=True)
    if not (lab / "killed").exists():                                             # what a run killed before its end leaves
        shutil.copytree(lab / "runs" / "mine", lab / "killed"); (lab / "killed" / "model.pt").unlink()
    (lab / "corrupt").mkdir(exist_ok=True); (lab / "corrupt" / "bad.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    g = read_features(lab / "g.npz")
    if not (lab / "g16.npz").exists():                                            # the same file embedded by a 16-d model
        np.savez(lab / "g16.npz", **{**{k: g[k] for k in ("paths", "pid", "camid", "clothes")}, "features": g["features"][:, :16],
                                     "meta": np.array(json.dumps({**g["meta"], "fingerprint": "other"}))})
        np.savez(lab / "anon.npz", **{**{k: g[k] for k in ("paths", "camid", "clothes", "features")}, "pid": np.full(len(g["paths"]), -1),
                                      "meta": np.array(json.dumps(g["meta"]))})
    cmd, match = CASES[case]
    before = snapshot(lab / "runs", lab / "g.npz")
    refused((cli if case == next(iter(CASES)) else cli_here)(*cmd(lab)), match)
    assert snapshot(lab / "runs", lab / "g.npz") == before                         # nothing a user had was changed
    assert not (lab / "runs" / "new").exists()                                     # and nothing half-made was left

def test_replaced_image_and_other_folder_get_their_own_features(lab, tmp_path):
    "reid-embed again after an image was replaced by another person's: that row is recomputed; from another working folder the"
    "feature file still finds its run (absolute path), and a copy of the folder is embedded afresh."
    src = Path(read_features(lab / "g.npz")["abspaths"][0]).parent.parent        # test/A
    folder = tmp_path / "A"; shutil.copytree(src, folder)
    assert cli_here("reid-embed", lab / "runs" / "mine", folder, "-o", tmp_path / "f.npz").returncode == 0
    a = read_features(tmp_path / "f.npz")
    first, last = folder / a["paths"][0], folder / a["paths"][-1]
    shutil.copyfile(last, first); os.utime(first, ns=(first.stat().st_atime_ns, first.stat().st_mtime_ns + 10**9))
    assert cli_here("reid-embed", lab / "runs" / "mine", folder, "-o", tmp_path / "f.npz").returncode == 0
    b = read_features(tmp_path / "f.npz")
    assert np.allclose(b["features"][0], b["features"][-1], atol=1e-6) and not np.allclose(a["features"][0], b["features"][0], atol=1e-4)
    p = cli("reid-search", tmp_path / "f.npz", first, "-k", "1", "-o", tmp_path / "r.json", cwd=tmp_path)      # another folder (a process)
    assert p.returncode == 0, p.stderr
    assert Path(json.loads((tmp_path / "r.json").read_text())[0]["results"][0]["path"]).name in (first.name, last.name)
