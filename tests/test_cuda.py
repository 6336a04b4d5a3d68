"""What CUDA must keep true, run with `pytest -m cuda` (and by `bench/gpu_check.py`); every test here is skipped where no
CUDA GPU is present. Tests that mean the CPU say `device="cpu"` elsewhere; these say `device="cuda"`."""
import os, signal, subprocess, sys, time
from pathlib import Path
import pytest
import torch
from reid_nb.engine import fit, load_methods, make_config, prepare_run, smoke_config, train_batches, _to
from reid_nb.core import load_checkpoint
from conftest import ROOT, BIN

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
METHODS = sorted(load_methods())         # every registered method, a plugin's too, at its `smoke` setting
OPTS = {"ccafl": {"ical_end": 3}}        # CCAFL's ICAL window over the last two of the three epochs

def cuda_cfg(tmp, method, **kw):
    base = dict(name=method, data_root=str(tmp / "data"), out_dir=str(tmp / "runs"), epochs=3, batch_size=16, num_instances=4,
                image_size=(64, 32), dataset_opts=dict(n_train_ids=8, n_test_ids=4, images_per_cam=4), method_opts=OPTS.get(method, {}),
                eval_every=0, progress=False, device="cuda", iters_per_epoch=6)
    return smoke_config(method, **{**base, **kw})

def weights(cfg, name=None):
    return torch.load(Path(cfg.out_dir) / (name or cfg.name) / "model.pt", weights_only=True, map_location="cpu")

def same(a, b): return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

@pytest.mark.parametrize("method", METHODS)
def test_deterministic_runs_are_bit_identical(tmp_path, method):
    cfg = cuda_cfg(tmp_path, method, deterministic=True)
    fit(cfg); fit(cfg.replace(name="again"))
    assert same(weights(cfg), weights(cfg, "again"))

@pytest.mark.parametrize("method", METHODS)
def test_killed_mid_epoch_and_resumed_is_bit_identical(tmp_path, method):
    cfg = cuda_cfg(tmp_path, method, deterministic=True, epochs=4, name="killed")
    cfg.save(tmp_path / "cfg.json")
    p = subprocess.Popen([str(BIN / "reid-train"), "--config", str(tmp_path / "cfg.json")], cwd=ROOT, stdout=subprocess.DEVNULL,
                         stderr=subprocess.STDOUT)
    ckpt = Path(cfg.out_dir) / "killed" / "checkpoints" / "last.pt"
    deadline = time.time() + 600
    while time.time() < deadline and p.poll() is None and not ckpt.is_file(): time.sleep(0.01)
    p.send_signal(signal.SIGKILL); p.wait()
    assert p.returncode == -signal.SIGKILL and load_checkpoint(ckpt)["epoch"] < 4, "the run ended before it could be killed"
    fit(cfg.replace(resume=True)); fit(cfg.replace(name="straight"))
    assert same(weights(cfg), weights(cfg, "straight"))

@pytest.mark.parametrize("amp", ["bf16", "fp16"])
@pytest.mark.parametrize("method", METHODS)
def test_mixed_precision_trains(tmp_path, method, amp):
    if amp == "bf16" and not torch.cuda.is_bf16_supported(): pytest.skip("this GPU has no bf16")
    m = fit(cuda_cfg(tmp_path, method, amp=amp, epochs=2))
    import pandas as pd
    log = pd.read_csv(tmp_path / "runs" / method / "log.csv")
    assert log["loss"].notna().all() and (log["loss"].abs() < 1e4).all() and all(0 <= p["mAP"] <= 1 for p in m["protocols"].values())

def test_ddp_on_the_gpus_present(tmp_path):
    "NCCL with SyncBatchNorm on every GPU present (a one-process world on a single GPU): the run completes with one writer."
    n = torch.cuda.device_count()
    cfg = cuda_cfg(tmp_path, "baseline", sync_bn=True, name="ddp", batch_size=16 if n in (1, 2, 4) else 4 * n)
    cfg.save(tmp_path / "cfg.json")
    p = subprocess.run([str(BIN / "torchrun"), "--standalone", "--nproc_per_node", str(n), "-m", "reid_nb.engine", "--config",
                        str(tmp_path / "cfg.json")], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert (tmp_path / "runs" / "ddp" / "metrics.json").is_file()
    assert len((tmp_path / "runs" / "ddp" / "log.csv").read_text().splitlines()) == 1 + cfg.epochs

@pytest.mark.parametrize("on_device", [False, True])
@pytest.mark.parametrize("method", ["baseline", "ifd"])
def test_cache_path_augmented_on_the_gpu_equals_the_pil_path(tmp_path, method, on_device):
    "The first training batch: decoded once (in host or GPU memory) and augmented on the GPU = decoded and augmented per sample on the CPU."
    cfg = cuda_cfg(tmp_path, method, data_path="cache", cache_on_device=on_device)
    run = prepare_run(cfg)
    run.sampler.set_epoch(0)
    assert (run.cache.images.device.type == "cuda") == on_device
    gpu = next(iter(train_batches(cfg, run.ds, run.sampler, run.device, run.cache)))
    pil = _to(next(iter(train_batches(cfg, run.ds, run.sampler, run.device))), run.device)
    for k in ("img", "mask", "masked_img"):
        if k in pil: torch.testing.assert_close(gpu[k].to(run.device), pil[k], atol=1e-5, rtol=0, msg=k)
