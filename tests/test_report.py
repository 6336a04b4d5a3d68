"""The report notebook regenerates the tables from run folders ("no run" where nothing was measured) and draws the plots."""
import json, subprocess
from pathlib import Path
from reid_nb.engine import fit, make_config
from conftest import ROOT, BIN

def test_report_notebook(tmp_path):
    common = dict(data_root=str(tmp_path / "data"), out_dir=str(tmp_path / "runs"), epochs=2, batch_size=16, num_instances=4,
                  image_size=(64, 32), dataset_opts=dict(n_train_ids=5, n_test_ids=4, images_per_cam=3), progress=False, device="cpu")
    ifd = fit(make_config("ifd", "synth-prcc", name="ifd", **common))
    fit(make_config("ifd", "synth-prcc", name="ifd-base", method_opts={"variant": "baseline"}, **common))
    fit(make_config("baseline", "synth-prcc", name="base", **common))
    out = tmp_path / "report"
    p = subprocess.run([str(BIN / "papermill"), str(ROOT / "nbs" / "report.ipynb"), str(tmp_path / "report.ipynb"), "-k", "python3",
                        "-p", "runs_dir", str(tmp_path / "runs"), "-p", "out", str(out)], capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-4000:]
    md = (out / "tables.md").read_text()
    cc_map = 100 * ifd["protocols"]["cc"]["mAP"]
    assert f"{cc_map:.1f} ({cc_map - 61.7:+.1f})" in md                # ours beside the paper's 61.7, with the difference
    assert "no run" in md and "synthetic" in md and "multi-shot" in md
    assert "\\toprule" in (out / "tables.tex").read_text()
    pngs = {f.name for f in out.glob("*.png")}
    assert {"cmc.png", "camera-probe.png", "gradcam.png", "ifd-attention.png", "ifd-ranks.png", "ifd-embedding.png", "base-curves.png"} <= pngs
    assert "ifd-base-attention.png" not in pngs and "base-attention.png" not in pngs   # W_I exists only with IKT
    assert "Mechanism probes" in md and "camera probe (acc / chance)" in md       # every run's probes, in a table
    assert {"study-ifd-budget.png", "study-ccafl-budget.png"} <= pngs               # the committed studies' curves join the report
