"""The methods as the papers and the authors' code define them (issue: fidelity): the paper presets' learning-rate curves over
the whole run, the schedule `fit` really applies across stages, the parsing label set reaching IFD's masked image, and the
authors' 200-iteration epochs."""
import pandas as pd
import pytest
import torch
import reid_nb.engine as engine
from reid_nb.engine import fit, make_config, lr_factor
from reid_nb.data import ImageDataset, clothes_mask, load_dataset
from reid_nb.transforms import TransformConfig, build_transforms

TINY = dict(n_train_ids=6, n_test_ids=4, images_per_cam=4)

def curve(cfg, total):
    return [round(cfg.lr * lr_factor(e, total, cfg), 12) for e in range(total)]

def test_ifd_paper_preset_steps_at_global_epochs_20_and_40():
    cfg = make_config("ifd", "prcc", preset="paper")
    assert cfg.schedule == "global" and cfg.batch_size == 64 and cfg.num_instances == 8
    want = [3.5e-4] * 20 + [3.5e-5] * 20 + [3.5e-6] * 20          # CAL's steps, the 10-epoch attention phase included
    assert curve(cfg, 60) == pytest.approx(want, rel=1e-9)

@pytest.mark.parametrize("dataset", ["market1501", "dukemtmc", "msmt17"])
def test_ccafl_paper_preset_is_the_authors_warmup_multistep(dataset):
    "The authors' WarmupMultiStepLR([40, 50], gamma 0.1, warmup_factor 0.01, 10 linear warm-up epochs) over stages 2-3."
    cfg = make_config("ccafl", dataset, preset="paper")
    assert cfg.iters_per_epoch == 200 and cfg.epochs == 80 and cfg.schedule == "global"
    def authors(e):
        w = 0.01 * (1 - e / 10) + e / 10 if e < 10 else 1.0
        return 3.5e-4 * w * 0.1 ** sum(e >= m for m in (40, 50))
    assert curve(cfg, 80) == pytest.approx([authors(e) for e in range(80)], rel=1e-9)

@pytest.mark.parametrize("schedule, want", [("global", [1, 1, 1, 0.1, 0.1, 0.01]), ("stage", [1, 1, 1, 1, 1, 0.1])])
def test_fit_applies_the_schedule_across_stages(tmp_path, schedule, want):
    "IFD: 2 attention epochs then 4 joint; milestones 3 and 5 count the whole run (global) or restart with the stage."
    cfg = make_config("ifd", "synth-prcc", name=schedule, data_root=str(tmp_path / "data"), out_dir=str(tmp_path / "runs"), epochs=6,
                      batch_size=16, num_instances=4, image_size=(64, 32), dataset_opts=TINY, progress=False, eval_every=0,
                      milestones=(3, 5), schedule=schedule, method_opts={"attn_epochs": 2}, device="cpu")
    fit(cfg)
    log = pd.read_csv(tmp_path / "runs" / schedule / "log.csv")
    assert log.stage.tolist() == ["attention"] * 2 + ["joint"] * 4
    assert log.lr.tolist() == pytest.approx([cfg.lr * w for w in want], rel=1e-9)

def test_ifd_label_set_reaches_the_masked_image(tmp_path, monkeypatch):
    "With ATR parsing masks (label_set='atr'), every dataset fit builds masks clothes by ATR's labels, not LIP's."
    opts = {**TINY, "label_set": "atr"}
    data = load_dataset("synth-prcc", tmp_path / "data", masks=True, **opts)
    tf, _ = build_transforms(TransformConfig(size=(64, 32)))
    s = ImageDataset(data.train, tf, label_set="atr")[0]
    hidden = (s["masked_img"] == 0).all(0)
    assert torch.equal(hidden & (s["img"] != 0).any(0), clothes_mask(s["mask"], "atr").bool() & (s["img"] != 0).any(0))
    lip = ImageDataset(data.train, tf, label_set="lip")[0]                   # the same ATR mask read as LIP: other pixels
    assert not torch.equal(clothes_mask(lip["mask"], "lip"), clothes_mask(s["mask"], "atr"))
    seen = []
    class Spy(ImageDataset):
        def __init__(self, *a, **kw): super().__init__(*a, **kw); seen.append(self.label_set.name)
    monkeypatch.setattr(engine, "ImageDataset", Spy)
    fit(make_config("ifd", "synth-prcc", data_root=str(tmp_path / "data"), out_dir=str(tmp_path / "runs"), epochs=2, batch_size=16,
                    num_instances=4, image_size=(64, 32), dataset_opts=opts, progress=False, eval_every=0, device="cpu",
                    method_opts={"label_set": "atr", "attn_epochs": 1}))
    assert len(seen) >= 2 and set(seen) == {"atr"}, seen               # the training set and every evaluated list

def test_iters_per_epoch_runs_exactly_that_many_steps(tmp_path):
    "The authors' epochs are 200 iterations whatever one pass over the data gives: `iters_per_epoch` continues the sampler."
    cfg = make_config("baseline", "synth-prcc", data_root=str(tmp_path / "data"), out_dir=str(tmp_path / "runs"), epochs=1,
                      batch_size=16, num_instances=4, image_size=(64, 32), dataset_opts=TINY, progress=False, eval_every=0,
                      iters_per_epoch=7, device="cpu")
    fit(cfg)
    log = pd.read_csv(tmp_path / "runs" / "demo" / "log.csv")
    assert log.seconds.iloc[0] > 0 and round(log.images_per_s.iloc[0] * log.seconds.iloc[0]) == 7 * 16

# --- fidelity, round 2 -------------------------------------------------------------------------------------------------------

def test_a_dataset_label_set_other_than_the_methods_is_an_error(tmp_path, monkeypatch):
    "ATR masks read as LIP would turn clothes into other parts: refused before anything loads or trains; the method's set decides."
    kw = dict(data_root=str(tmp_path / "data"), out_dir=str(tmp_path / "runs"), epochs=2, batch_size=16, num_instances=4,
              image_size=(64, 32), progress=False, eval_every=0, device="cpu")
    with pytest.raises(ValueError, match="label_set='atr' but method 'ifd' reads the masks as 'lip'"):
        fit(make_config("ifd", "synth-prcc", dataset_opts={**TINY, "label_set": "atr"}, **kw))
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()
    seen = []
    monkeypatch.setattr(engine, "load_dataset", lambda *a, **o: seen.append(o.get("label_set")) or load_dataset(*a, **o))
    cfg = make_config("ifd", "synth-prcc", dataset_opts=TINY, method_opts={"label_set": "atr"}, **kw)
    assert engine.load_data(cfg, engine.METHODS["ifd"]) and seen == ["atr"]                  # the method's set reaches the loader
    assert engine.METHODS["ifd"](cfg, None).label_set == "atr"
    engine.load_data(make_config("baseline", "synth-prcc", dataset_opts=TINY, **kw), engine.METHODS["baseline"])
    assert seen[-1] is None                                                    # a method without masks asks for no label set

def test_ifd_paper_preset_augments_as_cal():
    from reid_nb.engine import transform_config
    t = transform_config(make_config("ifd", "prcc", preset="paper"))
    assert (t.crop, t.crop_p, t.erase_style, t.erase_p, t.flip_p, t.size) == ("cal", 0.5, "cal", 0.5, 0.5, (384, 192))
    assert transform_config(make_config("ifd", "prcc")).crop == "pad"           # the demo keeps torchreid's pad + crop
    with pytest.raises(ValueError, match="image_size"): transform_config(make_config("ifd", "prcc", transform_opts={"size": [8, 4]}))

def _ccl_rank(rank, world, init, x, pid, clo, out):
    import torch.distributed as dist
    from reid_nb.ifd import clothing_contrastive_loss
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    n = len(x) // world
    xr = x[rank * n:(rank + 1) * n].clone().requires_grad_()
    loss = clothing_contrastive_loss(xr, pid[rank * n:(rank + 1) * n], clo[rank * n:(rank + 1) * n], all_ranks=True)
    loss.backward()
    torch.save({"loss": loss.detach(), "grad": xr.grad}, f"{out}.{rank}")
    dist.destroy_process_group()

def test_ccl_under_ddp_equals_one_process(tmp_path):
    "2 gloo ranks, each half of the batch, features gathered: the mean of their losses and their (DDP-averaged) gradients are one process's."
    from reid_nb.ifd import clothing_contrastive_loss
    g = torch.Generator().manual_seed(0)
    x, pid = torch.randn(16, 8, generator=g), torch.arange(4).repeat_interleave(4)
    clo = pid * 2 + torch.tensor([0, 0, 1, 1]).repeat(4)                           # two outfits per identity
    perm = torch.tensor([0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15])  # each rank: every identity, both of its halves elsewhere
    x, pid, clo = x[perm], pid[perm], clo[perm]
    torch.multiprocessing.spawn(_ccl_rank, args=(2, f"file://{tmp_path / 'init'}", x, pid, clo, str(tmp_path / "r")), nprocs=2)
    r = [torch.load(f"{tmp_path / 'r'}.{k}", weights_only=True) for k in (0, 1)]
    xs = x.clone().requires_grad_()
    one = clothing_contrastive_loss(xs, pid, clo); one.backward()
    torch.testing.assert_close((r[0]["loss"] + r[1]["loss"]) / 2, one.detach())
    torch.testing.assert_close(torch.cat([r[0]["grad"], r[1]["grad"]]) / 2, xs.grad)   # DDP averages the ranks' gradients
    local = clothing_contrastive_loss(x[:8], pid[:8], clo[:8])                     # without gathering: another loss
    assert abs(float(local) - float(r[0]["loss"])) > 1e-3

@pytest.mark.parametrize("dataset, offset", [("market1501", 1), ("dukemtmc", 2), ("msmt17", 1)])
def test_ccafl_paper_preset_is_the_authors_run(dataset, offset):
    cfg = make_config("ccafl", dataset, preset="paper")
    assert cfg.flip_test is False and cfg.bias_lr_factor == 2.0                  # their evaluator: one view; their optimiser
    assert cfg.method_opts["sampler"] == "uniform" and cfg.method_opts["prompt_offset"] == offset
    assert make_config("ifd", "prcc", preset="paper").flip_test is True           # CAL's test-time flip stays IFD's

def test_ccafl_warns_on_a_class_count_other_than_the_authors(tmp_path):
    "A real-layout copy (here a small synthetic Market-1501) with another number of intra-camera classes than the authors' 3,262."
    from reid_nb.synth import SynthConfig, write_dataset
    from reid_nb.data import DATASETS
    from reid_nb.ccafl import CCAFL
    d = write_dataset(SynthConfig(layout="market", n_train_ids=6, n_test_ids=4, images_per_cam=2), tmp_path / "Market-1501-v15.09.15")
    data = DATASETS["market1501"](d)
    cfg = make_config("ccafl", "market1501", backbone="reid-tiny-rn", data_root=str(tmp_path))
    with pytest.warns(UserWarning, match=r"market1501 at .*: \d+ intra-camera classes .* hard-code 3262"): CCAFL(cfg, data)

def test_metrics_hold_the_best_evaluated_epoch_beside_the_last(tmp_path):
    "The papers' reporting (best of the evaluated epochs) is in metrics.json and the report, labelled; the last epoch stays primary."
    import json
    from reid_nb.report import collect_runs, ifd_table1, BEST_ROW
    cfg = make_config("ifd", "synth-prcc", name="best", data_root=str(tmp_path / "data"), out_dir=str(tmp_path / "runs"), epochs=3,
                      batch_size=16, num_instances=4, image_size=(64, 32), dataset_opts=TINY, progress=False, eval_every=1, device="cpu",
                      method_opts={"variant": "ifd", "attn_epochs": 1})
    m = fit(cfg)
    b = json.loads((tmp_path / "runs" / "best" / "metrics.json").read_text())["best_of_evaluated"]
    log = pd.read_csv(tmp_path / "runs" / "best" / "log.csv")
    assert b["evaluated_epochs"] == [1, 2, 3] and b["rule"].startswith("best cc R1")
    row = log[log.epoch == b["epoch"]].iloc[0]
    assert row.cc_R1 == log.cc_R1.max() and b["protocols"]["sc"]["mAP"] == pytest.approx(row.sc_mAP)
    assert log.cc_mAP.iloc[-1] == pytest.approx(m["protocols"]["cc"]["mAP"])          # the last epoch is the primary figure
    t = ifd_table1(collect_runs(tmp_path / "runs"), synthetic=True)
    assert BEST_ROW in t.df.index and "best of their evaluated epochs" in t.to_markdown()
