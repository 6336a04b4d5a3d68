"""Synthetic people: determinism, masks that match the drawn pixels, real loaders on the written trees, the CLI, atomic
writes, and difficulty knobs that move the measured gaps."""
import hashlib, subprocess, sys
from pathlib import Path
import numpy as np
import pytest
from PIL import Image
from reid_nb import synth
from reid_nb.synth import SynthConfig, World, write_dataset, PARTS, part_lut, clothes_change_gap, camera_gap
from reid_nb.data import load_dataset, read_mask, LIP, ATR
from conftest import BIN

def digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}

SMALL = dict(n_train_ids=3, n_test_ids=2, images_per_cam=2)

def test_same_seed_same_bytes(tmp_path):
    a = write_dataset(SynthConfig(layout="ltcc", **SMALL), tmp_path / "a")
    b = write_dataset(SynthConfig(layout="ltcc", **SMALL), tmp_path / "b")
    c = write_dataset(SynthConfig(layout="ltcc", seed=1, **SMALL), tmp_path / "c")
    da, db, dc = digest(a), digest(b), digest(c)
    assert da == db and len(da) > 20
    assert da.keys() == dc.keys() and da != dc

@pytest.mark.parametrize("label_set", ["lip", "atr"])
def test_masks_match_drawn_pixels(tmp_path, label_set):
    "Neutral cameras, PNG images: every labelled pixel has the colour of its factor (up to shading, noise and pattern)."
    cfg = SynthConfig(layout="ltcc", camera_bias=0.0, label_set=label_set, **SMALL)
    root = write_dataset(cfg, tmp_path / "d")
    world = World.build(cfg)
    data = load_dataset("ltcc", root, masks=True, label_set=label_set)
    ls = LIP if label_set == "lip" else ATR
    lut = part_lut(label_set)
    checked = bags = 0
    for s in data.train:
        pid, o = int(Path(s.path).name[:3]) - 1, int(Path(s.path).name.split("_")[1]) - 1
        img = np.asarray(Image.open(s.path)).astype(float)
        lab = read_mask(s.mask, ls, size=(img.shape[1], img.shape[0]))
        ident, outfit = world.identities[pid], world.outfits[pid][o]
        for part, cols in [("hair", [ident.hair]), ("upper-clothes", [outfit.top, outfit.top2]), ("pants", [outfit.bottom, outfit.bottom2]),
                           ("left-shoe", [outfit.shoes])]:
            px = img[lab == lut[PARTS.index(part)]]
            if len(px) < 5: continue
            near = np.min([np.abs(px - c[None]).max(1) for c in cols], 0) <= 0.09 * 255 + 8
            assert near.mean() > 0.95, (s.path, part, near.mean())
            checked += 1
        if outfit.bag is not None:                                         # bag -> ATR 'bag', LIP 'coat' (both in C)
            assert (lab == ls.names.index("bag" if label_set == "atr" else "coat")).any(); bags += 1
        bg = img[lab == 0]
        assert np.abs(bg - np.array([128, 128, 128])).max(1).mean() < 25      # neutral background
    assert checked >= 30 and bags > 0
    assert {"coat" if label_set == "lip" else "bag"} <= set(ls.clothes)

@pytest.mark.parametrize("layout,loader", [("prcc", "prcc"), ("ltcc", "ltcc"), ("market", "market1501")])
def test_written_trees_load_with_expected_counts(tmp_path, layout, loader):
    cfg = SynthConfig(layout=layout, n_train_ids=5, n_test_ids=4, images_per_cam=3, n_cams=4, cams_per_id=2)
    root = write_dataset(cfg, tmp_path / layout)
    d = load_dataset(loader, root, masks=True)
    assert d.has_masks and d.num_train_pids == 5
    if layout == "prcc":
        assert len(d.train) == 5 * 3 * 3 and d.num_train_clothes == 10
        assert [len(d.protocols[p].query) for p in ("sc", "cc")] == [12, 12] and len(d.gallery) == 12
    elif layout == "ltcc":
        assert len(d.train) == 5 * 2 * 3 and len(d.query) == 4 * 2 and len(d.gallery) == 4 * 2 * 2
        assert d.num_train_cams <= 4 and {s.clothes for s in d.train} == set(range(d.num_train_clothes))
    else:
        assert len(d.train) == 5 * 2 * 3 and len(d.query) == 4 * 2
        assert len(d.gallery) == 4 * 2 * 2 + 2 and d.extra["junk"] == {"bounding_box_test": 2}     # +2 distractors, 2 junk dropped
    via_registry = load_dataset(f"synth-{layout}", tmp_path / "cache", n_train_ids=5, n_test_ids=4, images_per_cam=3, n_cams=4, cams_per_id=2)
    assert [s.pid for s in via_registry.train] == [s.pid for s in d.train] and via_registry.name == f"synth-{layout}"

def test_registry_caches_and_rejects_unknown_options(tmp_path):
    d1 = load_dataset("synth-prcc", tmp_path, **SMALL)
    stamp = next(tmp_path.glob("synth-prcc-*")) / "synth.json"
    t = stamp.stat().st_mtime_ns
    load_dataset("synth-prcc", tmp_path, **SMALL)
    assert stamp.stat().st_mtime_ns == t                                   # cached: not regenerated
    with pytest.raises(ValueError, match="did you mean 'clothes_change'"): load_dataset("synth-prcc", tmp_path, clothes_chnge=0.5)

def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = World.image
    def flaky(self, *a):
        calls["n"] += 1
        if calls["n"] > 5: raise KeyboardInterrupt
        return real(self, *a)
    monkeypatch.setattr(World, "image", flaky)
    with pytest.raises(KeyboardInterrupt): write_dataset(SynthConfig(**SMALL), tmp_path / "x")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "mine").mkdir()
    monkeypatch.setattr(World, "image", real)
    with pytest.raises(FileExistsError, match="not a synthetic dataset"): write_dataset(SynthConfig(**SMALL), tmp_path / "mine", overwrite=True)

def test_cli(tmp_path):
    out = tmp_path / "cli"
    p = subprocess.run([BIN / "reid-synth", "--layout", "market", "--ids", "3", "--test-ids", "2", "--images-per-cam", "2",
                        "--out", str(out)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "market1501" in p.stdout and (out / "Market-1501-v15.09.15" / "bounding_box_train").is_dir()
    p = subprocess.run([BIN / "reid-synth", "--layout", "market", "--out", str(out)], capture_output=True, text=True)
    assert p.returncode != 0 and "exists" in p.stderr

def test_knobs_move_the_gaps(tmp_path):
    "Same experiment as the notebook, another seed: the gaps must open with the knobs."
    kw = dict(n_train_ids=2, n_test_ids=24, images_per_cam=4, seed=7)
    on, off = clothes_change_gap(tmp_path, clothes_change=1.0, **kw), clothes_change_gap(tmp_path, clothes_change=0.0, **kw)
    assert on["sc"]["mAP"] - on["cc"]["mAP"] > 0.1
    assert (on["sc"]["mAP"] - on["cc"]["mAP"]) > (off["sc"]["mAP"] - off["cc"]["mAP"]) + 0.1
    kw = dict(n_train_ids=24, n_test_ids=24, n_cams=4, cams_per_id=3, images_per_cam=4, seed=7)
    on, off = camera_gap(tmp_path, camera_bias=1.0, **kw), camera_gap(tmp_path, camera_bias=0.0, **kw)
    assert on["within"]["mAP"] - on["across"]["mAP"] > 0.15
    assert (on["within"]["mAP"] - on["across"]["mAP"]) > (off["within"]["mAP"] - off["across"]["mAP"]) + 0.1
