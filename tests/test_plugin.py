"""Extending reid_nb from a package of one's own (issue 31): tests/plugin_example, installed by `make install` and known to
reid_nb only through its entry points, adds method 'center' (the baseline plus Wen et al.'s center loss, its centres on an
optimiser of their own) and dataset 'crops' (a flat folder of crops, with its file-name parser). Trained by `reid-train` in a
fresh process, killed and resumed to the same metrics, reloaded by `load_model`, compared with the baseline in a declared
study, and evaluated by `reid-embed` + `reid-eval` from its own file names; no file of reid_nb/ or nbs/ names it."""
import importlib.metadata, json, shutil

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import BIN, ROOT, run

from reid_nb import engine
from reid_nb.core import load_checkpoint
from reid_nb.data import load_dataset
from reid_nb.engine import fit, make_config

PKG = ROOT / "tests" / "plugin_example"
TRAIN = dict(epochs=3, batch_size=16, num_instances=4, image_size=[64, 32], eval_every=0, device="cpu", progress=False)

def _installed() -> bool:
    try: importlib.metadata.distribution("reid-center-example"); return True
    except importlib.metadata.PackageNotFoundError: return False

@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    "The example package installed (as `make install` does), and a folder of crops in its flat layout (from synthetic people)."
    if not _installed(): run([str(BIN / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e", str(PKG)])
    tmp = tmp_path_factory.mktemp("plugin")
    src = load_dataset("synth-market", tmp / "synth", n_train_ids=6, n_test_ids=4, n_cams=3, images_per_cam=3)
    for split, samples in (("train", src.train), ("query", src.query), ("gallery", src.gallery)):
        (tmp / "crops" / split).mkdir(parents=True)
        for k, s in enumerate(samples):
            pid = s.pid + 100 if split == "train" else s.pid          # train ids relabelled by the loader; test ids as named
            shutil.copy(s.path, tmp / "crops" / split / f"p{pid}_c{s.camid}_{k}.jpg")
    return tmp

def _cfg(tmp, name, **kw):
    return {**TRAIN, "method": "center", "dataset": "crops", "name": name, "data_root": str(tmp), "out_dir": str(tmp / "runs"), **kw}

def test_plugin_method_and_dataset_end_to_end(crops, monkeypatch):
    (crops / "straight.json").write_text(json.dumps(_cfg(crops, "straight")))
    run([str(BIN / "reid-train"), "--config", str(crops / "straight.json")])          # a fresh process: entry points only
    straight = json.loads((crops / "runs" / "straight" / "metrics.json").read_text())
    log = pd.read_csv(crops / "runs" / "straight" / "log.csv")
    assert (log.center > 0).all() and (log.id > 0).all()                             # the added term, logged by the engine

    end_epoch = engine.end_epoch                                                       # killed after epoch 1, resumed elsewhere
    def killed(r, lg, *a):
        end_epoch(r, lg, *a)
        if lg[-1]["epoch"] == 1: raise RuntimeError("killed (simulated)")
    monkeypatch.setattr(engine, "end_epoch", killed)
    cfg = make_config("center", "crops", **{k: v for k, v in _cfg(crops, "killed").items() if k not in ("method", "dataset")})
    with pytest.raises(RuntimeError, match="killed"): fit(cfg)
    ckpt = load_checkpoint(crops / "runs" / "killed" / "checkpoints" / "last.pt")
    assert ckpt["epoch"] == 1 and "centers" in ckpt["aux"]                             # the centres' optimiser state is saved
    (crops / "killed.json").write_text(json.dumps(_cfg(crops, "killed", resume=True)))
    run([str(BIN / "reid-train"), "--config", str(crops / "killed.json")])
    resumed = json.loads((crops / "runs" / "killed" / "metrics.json").read_text())
    assert abs(resumed["protocols"]["standard"]["mAP"] - straight["protocols"]["standard"]["mAP"]) < 1e-6

    model = torch.load(crops / "runs" / "straight" / "model.pt", weights_only=True)
    assert "center.centers" in (model.get("model", model))                             # the centres are part of the model...
    from reid_nb.inference import load_model
    emb = load_model(crops / "runs" / "straight", device="cpu")
    q = sorted((crops / "crops" / "query").glob("*.jpg"))
    assert emb(q).shape == (len(q), emb.dim)                                           # ... and reload for inference

    from reid_nb.features import embed_main
    from reid_nb.offline import eval_main
    for split in ("query", "gallery"):                                                 # the offline tools read its file names
        embed_main([str(crops / "runs" / "straight"), str(crops / "crops" / split), "-o", str(crops / f"{split}.npz"), "--device", "cpu"])
    eval_main([str(crops / "query.npz"), str(crops / "gallery.npz"), "-o", str(crops / "eval.json")])
    ev = json.loads((crops / "eval.json").read_text())
    assert abs(ev["mAP"] - straight["protocols"]["standard"]["mAP"]) < 1e-4, (ev["mAP"], straight["protocols"]["standard"]["mAP"])

def test_declared_study_compares_the_plugin_with_the_baseline(crops):
    f = crops / "study.yaml"
    f.write_text(f"""name: center-vs-baseline
method: baseline
dataset: crops
train: {json.dumps({**TRAIN, "epochs": 1})}
variants:
  baseline: {{method: baseline}}
  center: {{method: center}}
seeds: [0, 1, 2]
primary: standard.mAP
comparisons: [[center, baseline]]
""")
    from reid_nb.study import load_study, run_study
    threads = torch.get_num_threads()                                # run_study sets the study's thread count in its process
    try: run_study(load_study(f), crops / "studies", crops, runs_dir=crops / "study-runs")    # (reid-study: the same, tested elsewhere)
    finally: torch.set_num_threads(threads)                          # later tests compare in-process runs with subprocess ones
    rows = pd.read_csv(crops / "studies" / "center-vs-baseline" / "results.csv")
    methods = {r.variant: json.loads((crops / "study-runs" / r.run / "config.json").read_text())["method"] for r in rows.itertuples()}
    assert len(rows) == 6 and methods == {"baseline": "baseline", "center": "center"} and rows["standard.mAP"].notna().all()
    (crops / "bad.yaml").write_text(f.read_text().replace("center: {method: center}", "center: {method: centre}"))
    with pytest.raises(ValueError, match=r"bad.yaml: variant 'center' .*unknown method 'centre'; registered: .*'center'"): load_study(crops / "bad.yaml")
