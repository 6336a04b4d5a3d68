"""Foundation guards: papermill parameters survive nbdev_clean, misspelt parameters fail, and the sync check catches drift."""
import configparser, json, shutil, subprocess
from pathlib import Path
import pytest
import reid_nb
from conftest import ROOT, BIN, run

FIXTURE = ROOT / "tests" / "fixtures" / "params_demo.ipynb"

def _tags(nb_path):
    nb = json.loads(Path(nb_path).read_text())
    return [c.get("metadata", {}).get("tags", []) for c in nb["cells"]]

def test_version_matches_settings():
    cfg = configparser.ConfigParser(); cfg.read(ROOT / "settings.ini")
    assert reid_nb.__version__ == cfg["DEFAULT"]["version"]

def test_lock_satisfies_the_declared_ranges():
    """settings.ini declares ranges; constraints.txt pins every requirement inside its range, torch at the release on disk here;
    make installs through the lock; the installed metadata has an SPDX license and no deprecated License classifier."""
    import importlib.metadata as md, shlex
    from packaging.requirements import Requirement
    cfg = configparser.ConfigParser(); cfg.read(ROOT / "settings.ini")
    pins = dict(line.split("==", 1) for line in (ROOT / "constraints.txt").read_text().splitlines() if "==" in line and not line.startswith("#"))
    pins = {k.lower().replace("_", "-"): v for k, v in pins.items()}
    reqs = [Requirement(r) for k in ("requirements", "dev_requirements", "export_requirements", "faiss_requirements")
            for r in shlex.split(cfg["DEFAULT"][k])]
    for r in reqs:
        name = r.name.lower().replace("_", "-")
        assert name in pins, f"{r.name} is not pinned in constraints.txt"
        assert r.specifier.contains(pins[name], prereleases=True), f"constraints.txt pins {name}=={pins[name]}, outside {r}"
    assert (pins["torch"], pins["torchvision"]) == ("2.14.1", "0.29.1")
    assert "-c constraints.txt" in (ROOT / "Makefile").read_text()
    meta = md.metadata("reid_nb")                 # License-Expression needs setuptools >= 77 at build time (pyproject asks for it)
    assert meta.get("License-Expression") in ("Apache-2.0", None) and not [c for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]
    assert "license_expression=lic" in (ROOT / "setup.py").read_text() and "setuptools>=77" in (ROOT / "pyproject.toml").read_text()

def test_nbdev_clean_keeps_parameters_tag(tmp_path):
    # with this project's settings.ini the tag survives ...
    nb = tmp_path / "p.ipynb"; shutil.copy(FIXTURE, nb)
    run([BIN / "nbdev_clean", "--fname", str(nb)])
    assert ["parameters"] in _tags(nb)
    # ... and without `allowed_cell_metadata_keys = tags` nbdev_clean strips it (what the setting guards against)
    proj = tmp_path / "proj"; (proj / "nbs").mkdir(parents=True)
    ini = (ROOT / "settings.ini").read_text().replace("allowed_cell_metadata_keys = tags", "allowed_cell_metadata_keys =")
    (proj / "settings.ini").write_text(ini)
    nb2 = proj / "nbs" / "p.ipynb"; shutil.copy(FIXTURE, nb2)
    run([BIN / "nbdev_clean", "--fname", str(nb2)], cwd=proj)
    assert ["parameters"] not in _tags(nb2)

def test_every_parameters_cell_is_guarded():
    "Each notebook with a `parameters` cell must turn what follows it into a Config (so typos fail)."
    for nb_path in [FIXTURE, *sorted((ROOT / "nbs").glob("*.ipynb"))]:
        cells = json.loads(nb_path.read_text())["cells"]
        idx = [i for i, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
        if not idx: continue
        assert len(idx) == 1, f"{nb_path.name}: more than one parameters cell"
        later = "".join("".join(c["source"]) for c in cells[idx[0] + 1:] if c["cell_type"] == "code")
        assert "new_names(globals(), _before)" in later, f"{nb_path.name}: parameters are not checked after the parameters cell"

def _papermill(tmp_path, *params):
    out = tmp_path / "out.ipynb"
    args = [BIN / "papermill", str(FIXTURE), str(out), "-k", "python3"]
    for k, v in params: args += ["-p", k, str(v)]
    return run(args, cwd=tmp_path, check=False), out

def test_papermill_parameter_reaches_notebook(tmp_path):
    p, out = _papermill(tmp_path, ("epochs", 3), ("dataset", "ltcc"))
    assert p.returncode == 0, p.stderr[-3000:]
    text = out.read_text()
    assert "RESULT dataset=ltcc epochs=3" in text

# a misspelt papermill parameter failing with "did you mean": test_engine.test_train_notebook_rejects_bad_parameters, on the
# train notebook itself (core.Config.from_params)

def test_sync_check_detects_drift(tmp_path):
    "The CI sync check judges export and clean, not commit state: a copy with an uncommitted in-sync edit passes, a hand-edited\n"
    "generated module fails (and no git repository is needed)."
    repo = tmp_path / "repo"  # a copy of the working tree (uncommitted edits included), not a git repository
    shutil.copytree(ROOT, repo, ignore=shutil.ignore_patterns(".venv", ".git", "runs", "data", "__pycache__", "*.egg-info", ".pytest_cache"))
    env = {"PATH": f"{BIN}:/usr/bin:/bin"}
    nb = repo / "nbs" / "06_losses.ipynb"                                     # an edit of prose: export and clean change nothing
    nb.write_text(nb.read_text().replace("as torchreid and BoT leave out", "as torchreid and BoT omit"))
    ok = run(["bash", ".ci/check_sync.sh"], cwd=repo, env=env, check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    core = repo / "reid_nb" / "core.py"
    core.write_text(core.read_text().replace("def seed_everything(", "def seed_everything_edited_by_hand("))
    bad = run(["bash", ".ci/check_sync.sh"], cwd=repo, env=env, check=False)
    assert bad.returncode != 0 and "disagree" in bad.stdout
