"""The decode-cache data path gives the PIL path's training exactly: the same batches and evaluation inputs, so the same
weights, logs and metrics after fit — for the baseline, IFD (masks, two phases) and CCAFL (its passes over the training set)."""
import shutil
import pandas as pd
import pytest
import torch
from reid_nb.engine import fit, load_methods, smoke_config

SMALL = dict(n_train_ids=8, n_test_ids=6, images_per_cam=3)
REGISTERED = sorted(load_methods())      # every registered method, a plugin's too (`Method.smoke`: its tiny run)

def _cfg(tmp, method):
    return smoke_config(method, data_root=str(tmp / "data"), out_dir=str(tmp / "runs"), epochs=2, batch_size=16, num_instances=4,
                        image_size=(64, 32), eval_every=1, progress=False, device="cpu", dataset_opts=SMALL)

@pytest.mark.parametrize("method", REGISTERED)
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

def _plain_augment(tr, x, m, params):
    "The training geometry written plainly, one sample at a time: zero-pad, crop, mirror (mask labels through flip_perm)."
    p, (H, W) = tr.cfg.pad, tr.cfg.size
    xs, ms = [], []
    for k, (i, j, flip, *_) in enumerate(params):
        xk = torch.nn.functional.pad(x[k], [p] * 4)[:, i:i + H, j:j + W]
        mk = None if m is None else torch.nn.functional.pad(m[k], [p] * 4)[i:i + H, j:j + W]
        if flip: xk, mk = xk.flip(-1), None if mk is None else tr.flip_perm[mk.flip(-1).long()].to(m.dtype)
        xs.append(xk); ms.append(mk)
    return torch.stack(xs), None if m is None else torch.stack(ms)

@pytest.mark.parametrize("seed", range(12))
def test_crop_flip_in_place_equals_pad_crop_flip(seed):
    from reid_nb.transforms import PairTransform, TransformConfig
    g = torch.Generator().manual_seed(seed)
    (H, W), pad = [(16, 8), (9, 7), (32, 16)][seed % 3], [0, 3, 10, 20][seed % 4]      # pad 20 > 9: windows wholly in the padding
    tr = PairTransform(TransformConfig(size=(H, W), pad=pad, erase_p=0.0), train=True)
    x = torch.randint(0, 256, (7, 3, H, W), dtype=torch.uint8, generator=g)
    m = torch.randint(0, 20, (7, H, W), generator=g).to(torch.uint8)
    rows = torch.randint(0, 7, (5,), generator=g)
    params = [tr.draw(torch.Generator().manual_seed(100 * seed + k)) for k in range(5)]
    assert any(q[2] for q in params) or seed % 4 == 0
    xo, mo = tr._crop_flip(x, m, params, rows)
    xr, mr = _plain_augment(tr, x[rows], m[rows], params)
    assert torch.equal(xo, xr) and torch.equal(mo, mr)
    xa, ma = tr.apply_batch(x, m, params, rows)                           # rows read in place == the gathered batch
    xb, mb = tr.apply_batch(x[rows], m[rows], params)
    assert torch.equal(xa, xb) and torch.equal(ma, mb)
