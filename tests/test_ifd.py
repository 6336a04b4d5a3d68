"""IFD end to end: on the synthetic clothes-changing data, full IFD beats its Table II baseline in the CC protocol with the same
seed, epochs and data; the ablation notebook runs every variant through papermill; missing masks are a clear error."""
import json, subprocess
from pathlib import Path
import pytest
from reid_nb.engine import fit, make_config
from reid_nb.data import load_dataset
from conftest import ROOT, BIN

IFD_DATA = dict(n_train_ids=20, n_test_ids=20, images_per_cam=4)

def test_ifd_beats_its_baseline_on_clothes_changing(tmp_path):
    res = {}
    for v in ("baseline", "ifd"):
        cfg = make_config("ifd", "synth-prcc", name=v, data_root=str(tmp_path / "data"), out_dir=str(tmp_path / "runs"), epochs=8,
                          image_size=(128, 64), batch_size=32, num_instances=8, dataset_opts=IFD_DATA, method_opts={"variant": v},
                          progress=False, eval_every=0)
        res[v] = fit(cfg)["protocols"]
    print({v: {p: (round(m["mAP"], 3), round(m["R1"], 3)) for p, m in r.items()} for v, r in res.items()})
    assert res["ifd"]["cc"]["mAP"] > res["baseline"]["cc"]["mAP"]
    assert res["ifd"]["cc"]["R1"] > res["baseline"]["cc"]["R1"]

def test_ifd_needs_masks(tmp_path):
    for split in ["train", "query", "gallery"]:
        for pid in ["1", "2"]:
            f = tmp_path / "folder" / split / pid / "a.jpg"; f.parent.mkdir(parents=True)
            from PIL import Image; Image.new("RGB", (32, 64)).save(f)
    with pytest.raises(FileNotFoundError, match="masks=True"):
        fit(make_config("ifd", "folder", data_root=str(tmp_path / "folder"), out_dir=str(tmp_path / "runs"), epochs=2))

def test_ablation_notebook(tmp_path):
    out = tmp_path / "abl.ipynb"
    tp = {"epochs": 2, "batch_size": 16, "num_instances": 4, "image_size": [64, 32], "eval_every": 0,
          "dataset_opts": {"n_train_ids": 4, "n_test_ids": 3, "images_per_cam": 2}}
    p = subprocess.run([str(BIN / "papermill"), str(ROOT / "nbs" / "ablation.ipynb"), str(out), "-k", "python3",
                        "-p", "data_root", str(tmp_path / "data"), "-p", "out_dir", str(tmp_path / "runs"),
                        "-y", json.dumps({"variants": ["baseline", "ifd"], "train_params": tp})], capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-4000:]
    summary = json.loads((tmp_path / "runs" / "ablation.json").read_text())
    assert set(summary["variants"]) == {"baseline", "ifd"}
    for v in ("baseline", "ifd"):
        m = json.loads((tmp_path / "runs" / f"ablation-{v}" / "metrics.json").read_text())
        assert m["method"] == "ifd" and "cc" in m["protocols"]
        assert json.loads((tmp_path / "runs" / f"ablation-{v}" / "config.json").read_text())["method_opts"]["variant"] == v
    bad = subprocess.run([str(BIN / "papermill"), str(ROOT / "nbs" / "ablation.ipynb"), str(tmp_path / "bad.ipynb"), "-k", "python3",
                          "-y", json.dumps({"variants": ["nope"]}), "-p", "out_dir", str(tmp_path / "runs2")], capture_output=True, text=True)
    assert bad.returncode != 0 and "unknown variant" in bad.stderr + (tmp_path / "bad.ipynb").read_text()
