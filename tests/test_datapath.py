"""The decode-cache data path gives the PIL path's training exactly: the same batches and evaluation inputs, so the same
weights, logs and metrics after fit — for the baseline, IFD (masks, two phases) and CCAFL (its passes over the training set)."""
import shutil
import pandas as pd
import pytest
import torch
from reid_nb.engine import fit, make_config

SMALL = dict(n_train_ids=8, n_test_ids=6, images_per_cam=3)
MARKET = dict(n_train_ids=8, n_test_ids=6, n_cams=3, cams_per_id=2, images_per_cam=3)
CCAFL = dict(prompt_epochs=1, icdl_epochs=1, cluster_text_start=1, ical_start=1, ical_end=2, assoc_rate=1.0)

def _cfg(tmp, method):
    kw = dict(data_root=str(tmp / "data"), out_dir=str(tmp / "runs"), epochs=2, batch_size=16, num_instances=4, image_size=(64, 32),
              eval_every=1, progress=False, device="cpu")
    if method == "ccafl": return make_config("ccafl", "synth-market", backbone="reid-tiny-rn", dataset_opts=MARKET, method_opts=CCAFL, **kw)
    return make_config(method, "synth-prcc", dataset_opts=SMALL, method_opts={"attn_epochs": 1} if method == "ifd" else {}, **kw)

@pytest.mark.parametrize("method", ["baseline", "ifd", "ccafl"])
def test_fit_on_the_cache_equals_fit_on_pil(tmp_path, method):
    got = {}
    for path, kw in (("pil", {}), ("cache", dict(data_path="cache")), ("disk", dict(data_path="cache", cache_dir=str(tmp_path / "cache")))):
        m = fit(_cfg(tmp_path, method).replace(name=path, **kw))
        log = pd.read_csv(tmp_path / "runs" / path / "log.csv").drop(columns=["images_per_s", "seconds"])
        got[path] = (torch.load(tmp_path / "runs" / path / "model.pt", weights_only=True), m["protocols"], log)
        shutil.rmtree(tmp_path / "runs" / path / "checkpoints")          # a few hundred MB a run, not needed here
    ref_sd, ref_m, ref_log = got["pil"]
    for path in ("cache", "disk"):
        sd, m, log = got[path]
        assert all(torch.equal(sd[k], ref_sd[k]) for k in ref_sd), path
        assert m == ref_m, path
        pd.testing.assert_frame_equal(log, ref_log)                   # losses, lr, mid-run evaluations (and CCAFL's association)
    assert any((tmp_path / "cache").glob("*.images.u8"))

def test_persistent_workers_change_nothing(tmp_path):
    "The PIL path with 2 workers kept across epochs trains exactly as in one process: augmentations come from sampler keys."
    base = _cfg(tmp_path, "baseline").replace(epochs=3, eval_every=0)
    sds = []
    for name, w in (("w0", 0), ("w2", 2)):
        fit(base.replace(name=name, num_workers=w))
        sds.append(torch.load(tmp_path / "runs" / name / "model.pt", weights_only=True))
    assert all(torch.equal(sds[0][k], sds[1][k]) for k in sds[0])

def test_ddp_on_the_cache_equals_ddp_on_pil(tmp_path):
    """Two gloo ranks: each takes its slice of every global batch from the memory-mapped cache (written by the node's first
    process, mapped by the other) and trains exactly as the PIL path does."""
    import os, subprocess
    from conftest import BIN, ROOT
    base = _cfg(tmp_path, "baseline").replace(eval_every=0, sync_bn=True)
    sds = []
    for name, kw in (("ddp_pil", {}), ("ddp_cache", dict(data_path="cache", cache_dir=str(tmp_path / "cache")))):
        base.replace(name=name, **kw).save(tmp_path / f"{name}.json")
        p = subprocess.run([str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "reid_nb.engine", "--config",
                            str(tmp_path / f"{name}.json")], cwd=ROOT, capture_output=True, text=True, timeout=600,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        sds.append(torch.load(tmp_path / "runs" / name / "model.pt", weights_only=True))
    assert all(torch.equal(sds[0][k], sds[1][k]) for k in sds[0])
    assert list((tmp_path / "cache").glob("*.json")) and not list((tmp_path / "cache").glob(".*"))   # complete, no temporary left
