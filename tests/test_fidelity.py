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
