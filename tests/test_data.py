"""Loaders on small trees in the real naming patterns: exact counts, labels and cameras; masks through transforms;
DDP sampler splits; and every bad input's error."""
from pathlib import Path
import numpy as np
import pytest
import torch
from PIL import Image
from reid_nb.data import (load_dataset, intra_camera_labels, ImageDataset, mask_path_for, DatasetLayoutError, LIP, read_mask)
from reid_nb.transforms import PairTransform, TransformConfig
from reid_nb.samplers import RandomIdentitySampler, ProportionalRASSampler, CameraAwareSampler

def jpg(path: Path, size=(16, 32), color=(100, 50, 20)):
    path.parent.mkdir(parents=True, exist_ok=True); Image.new("RGB", size, color).save(path); return path

def mask_for(img: Path, root: Path, value=5, size=(16, 32)):
    mp = mask_path_for(img, root); mp.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size[::-1], value, np.uint8)).save(mp); return mp

# ---- trees in the real layouts -------------------------------------------------------------------------------------
@pytest.fixture
def market(tmp_path):
    b = tmp_path / "Market-1501-v15.09.15"
    for n in ["0002_c1s1_000451_03.jpg", "0002_c2s1_000301_01.jpg", "0007_c3s1_000001_01.jpg", "0007_c6s2_000001_01.jpg", "0011_c4s1_000001_01.jpg"]:
        jpg(b / "bounding_box_train" / n)
    for n in ["0003_c1s1_000551_01.jpg", "0004_c5s1_000001_01.jpg"]: jpg(b / "query" / n)
    for n in ["0003_c2s1_000001_01.jpg", "0003_c1s1_000002_01.jpg", "0004_c1s1_000001_01.jpg", "0000_c3s1_000001_01.jpg",
              "0000_c6s1_000009_02.jpg", "-1_c1s1_000001_01.jpg", "-1_c2s1_000001_01.jpg"]:
        jpg(b / "bounding_box_test" / n)
    return tmp_path

def test_market(market):
    d = load_dataset("market1501", market)
    assert [(s.pid, s.camid) for s in d.train] == [(0, 0), (0, 1), (1, 2), (1, 5), (2, 3)]
    assert d.num_train_pids == 3 and d.num_train_cams == 5 and not d.has_clothes
    assert len(d.query) == 2 and len(d.gallery) == 5                 # two junk (-1) dropped, distractors (0) kept
    assert d.extra["junk"] == {"bounding_box_test": 2}
    assert sorted({s.pid for s in d.gallery}) == [0, 3, 4]
    assert list(d.protocols) == ["standard"]
    assert "market1501" in d.summary() and "full release: 751 ids, 12936 images" in d.summary()
    # the dataset folder itself is accepted as root too
    assert len(load_dataset("market1501", market / "Market-1501-v15.09.15").train) == 5

def test_duke(tmp_path):
    b = tmp_path / "DukeMTMC-reID"
    for n in ["0001_c2_f0046182.jpg", "0001_c8_f0000001.jpg", "0005_c1_f0000001.jpg"]: jpg(b / "bounding_box_train" / n)
    jpg(b / "query" / "0009_c3_f0000001.jpg"); jpg(b / "bounding_box_test" / "0009_c7_f0000001.jpg")
    d = load_dataset("dukemtmc", tmp_path)
    assert [(s.pid, s.camid) for s in d.train] == [(0, 1), (0, 7), (1, 0)]
    jpg(b / "query" / "0009_c9_f0000002.jpg")
    with pytest.raises(DatasetLayoutError, match="camera 9, expected 1..8"): load_dataset("dukemtmc", tmp_path)

def test_ltcc(tmp_path):
    b = tmp_path / "LTCC_ReID"
    for n in ["001_1_c1_015.png", "001_1_c2_016.png", "001_2_c3_001.png", "004_1_c5_001.png", "004_3_c11_001.png"]: jpg(b / "train" / n)
    for n in ["010_1_c1_001.png", "011_2_c2_001.png"]: jpg(b / "query" / n)
    for n in ["010_1_c3_001.png", "010_2_c4_001.png", "011_2_c5_001.png", "011_1_c6_001.png"]: jpg(b / "test" / n)
    d = load_dataset("ltcc", tmp_path)
    assert [(s.pid, s.camid, s.clothes) for s in d.train] == [(0, 0, 0), (0, 1, 0), (0, 2, 1), (1, 4, 2), (1, 10, 3)]
    assert d.num_train_clothes == 4 and set(d.protocols) == {"general", "cc"} and d.protocols["cc"].mode == "cc"
    q = {Path(s.path).name: s.clothes for s in d.query}; g = {Path(s.path).name: s.clothes for s in d.gallery}
    assert q["010_1_c1_001.png"] == g["010_1_c3_001.png"] != g["010_2_c4_001.png"]   # (pid, clothes) pairs shared by query and gallery
    assert q["011_2_c2_001.png"] == g["011_2_c5_001.png"] != g["011_1_c6_001.png"]
    jpg(b / "train" / "badname.png")
    with pytest.raises(DatasetLayoutError, match="badname.png"): load_dataset("ltcc", tmp_path)

def test_prcc(tmp_path):
    b = tmp_path / "prcc" / "rgb"
    for pid, names in {"001": ["A_cropped_rgb001.jpg", "B_cropped_rgb010.jpg", "C_cropped_rgb100.jpg"], "007": ["A_x.jpg", "C_y.jpg"]}.items():
        for n in names: jpg(b / "train" / pid / n)
    jpg(b / "val" / "003" / "B_a.jpg")
    for cam, files in {"A": ["1.jpg", "2.jpg"], "B": ["3.jpg"], "C": ["4.jpg", "5.jpg", "6.jpg"]}.items():
        for pid in ["050", "060"]:
            for f in files: jpg(b / "test" / cam / pid / f)
    d = load_dataset("prcc", tmp_path)
    assert [(s.pid, s.camid, s.clothes) for s in d.train] == [(0, 0, 0), (0, 1, 0), (0, 2, 1), (1, 0, 2), (1, 2, 3)]
    p = d.protocols
    assert set(p) == {"sc", "cc", "sc_single", "cc_single"} and p["cc_single"].single_shot_trials == 10
    assert len(p["sc"].query) == 2 and len(p["cc"].query) == 6 and len(p["sc"].gallery) == 4
    assert {s.camid for s in p["sc"].query} == {1} and {s.camid for s in p["cc"].query} == {2} and {s.camid for s in p["cc"].gallery} == {0}
    assert {s.clothes for s in p["sc"].query if s.pid == 50} == {s.clothes for s in p["sc"].gallery if s.pid == 50}
    assert not {s.clothes for s in p["cc"].query if s.pid == 50} & {s.clothes for s in p["cc"].gallery if s.pid == 50}
    assert len(d.extra["val"]) == 1
    rows = {r["split"]: r for r in d.split_stats()}
    assert rows["val"]["images"] == 1 and rows["test (all)"]["images"] == 12 and rows["test (all)"]["ids"] == 2
    summary = d.summary()
    assert "None" not in summary and "(full release: 5002 images)" in summary and "(full release: 71 ids, 10800 images)" in summary
    jpg(b / "train" / "001" / "D_bad.jpg")
    with pytest.raises(DatasetLayoutError, match="camera letter"): load_dataset("prcc", tmp_path)

MSMT_LISTS = {"list_train.txt": ("train", ["0000/0000_000_01_0303morning_0015_0.jpg 0", "0000/0000_001_05_0303morning_0016_1.jpg 0",
                                            "0001/0001_000_15_0303noon_0001_0.jpg 1"]),
              "list_val.txt": ("train", ["0002/0002_000_03_0303noon_0001_0.jpg 2"]),
              "list_query.txt": ("test", ["0000/0000_000_02_0303morning_0001_0.jpg 0"]),
              "list_gallery.txt": ("test", ["0000/0000_003_07_0303morning_0001_0.jpg 0", "0001/0001_000_09_0303noon_0003_1.jpg 1"])}

def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*"))}

def msmt_tree(b: Path, folders=("train", "test")) -> Path:
    for lf, (folder, lines) in MSMT_LISTS.items():
        for ln in lines: jpg(b / folders[folder == "test"] / ln.split()[0])
        (b / lf).write_text("\n".join(lines) + "\n")
    return b

@pytest.mark.parametrize("version,folders", [("MSMT17_V1", ("train", "test")), ("MSMT17_V2", ("mask_train_v2", "mask_test_v2"))])
@pytest.mark.parametrize("nesting", ["", "msmt17"])            # data/MSMT17_Vx, or torchreid's data/msmt17/MSMT17_Vx
def test_msmt17_versions(tmp_path, version, folders, nesting):
    msmt_tree(tmp_path / nesting / version, folders)
    before = _snapshot(tmp_path)
    for root in (tmp_path, tmp_path / nesting / version):       # the data root, or the dataset folder itself
        d = load_dataset("msmt17", root)
        assert d.root == tmp_path / nesting / version and d.extra["layout"].startswith(version)
        assert [(s.pid, s.camid) for s in d.train] == [(0, 0), (0, 4), (1, 14), (2, 2)]
        assert [(s.pid, s.camid) for s in d.gallery] == [(0, 6), (1, 8)] and len(d.query) == 1
        assert all(f"/{folders[0]}/" in s.path for s in d.train) and all(f"/{folders[1]}/" in s.path for s in d.gallery)
        assert "layout: " + version in d.summary()
    assert _snapshot(tmp_path) == before                          # nothing of the user's tree is written, moved or touched

def test_msmt17_market_layout(tmp_path):
    "The CCAFL authors' copy: MSMT17/{bounding_box_train,query,bounding_box_test}, cameras 1..15; dukemtmc names the mix-up."
    b = tmp_path / "MSMT17"
    for n in ["0000_c1_0303morning_0015_0.jpg", "0000_c15_0303morning_0016_1.jpg", "0001_c14_0303noon_0001_0.jpg"]: jpg(b / "bounding_box_train" / n)
    for n in ["0000_c2_0303morning_0001_0.jpg"]: jpg(b / "query" / n)
    for n in ["0000_c7_0303morning_0001_0.jpg", "0001_c9_0303noon_0003_1.jpg", "0001_c12_0303noon_0003_2.jpg"]: jpg(b / "bounding_box_test" / n)
    before = _snapshot(tmp_path)
    d = load_dataset("msmt17", tmp_path)
    assert _snapshot(tmp_path) == before
    assert d.root == b and "Market-1501 layout" in d.extra["layout"]
    assert sorted((s.pid, s.camid) for s in d.train) == [(0, 0), (0, 14), (1, 13)] and len(d.query) == 1 and len(d.gallery) == 3
    assert d.num_train_cams == 3 and {s.camid for s in d.gallery} == {6, 8, 11}
    with pytest.raises(DatasetLayoutError, match="camera 1[45], expected 1..8; cameras up to 15 are MSMT17's.*'msmt17'"): load_dataset("dukemtmc", b)

def test_msmt17_train_counts_and_choice(tmp_path):
    "merge_val decides the training set, and summary() compares with the matching published count."
    msmt_tree(tmp_path / "MSMT17_V1")
    merged, alone = load_dataset("msmt17", tmp_path), load_dataset("msmt17", tmp_path, merge_val=False)
    assert (len(merged.train), len(alone.train)) == (4, 3)
    assert "32621 images" in merged.summary() and "list_train + list_val" in merged.summary()
    assert "30248 images" in alone.summary() and "list_train only" in alone.summary()

def test_msmt17_layout_errors(tmp_path):
    with pytest.raises(DatasetLayoutError, match="neither|no train/ \\+ test/"): load_dataset("msmt17", tmp_path)
    msmt_tree(tmp_path / "MSMT17_V2", ("mask_train_v2", "mask_test_v2"))
    (tmp_path / "MSMT17_V2" / "list_val.txt").unlink()
    with pytest.raises(DatasetLayoutError, match="MSMT17_V2's folders but not list_val.txt"): load_dataset("msmt17", tmp_path)

@pytest.mark.parametrize("name,parent,folder,n", [("market1501", "market1501", "Market-1501-v15.09.15", "0002_c1s1_000451_03.jpg"),
                                                  ("dukemtmc", "dukemtmc-reid", "DukeMTMC-reID", "0002_c1_f0044158.jpg")])
def test_torchreid_nested_roots(tmp_path, name, parent, folder, n):
    "torchreid's data root (data/<name>/<dataset folder>) loads with root='data'; an unknown nesting keeps the clear error."
    b = tmp_path / parent / folder
    for split in ("bounding_box_train", "query", "bounding_box_test"): jpg(b / split / n)
    d = load_dataset(name, tmp_path)
    assert d.root == b and len(d.train) == len(d.query) == len(d.gallery) == 1
    (tmp_path / parent).rename(tmp_path / "elsewhere")
    with pytest.raises(DatasetLayoutError, match=f"{folder} and .*{parent}/{folder} do not exist"): load_dataset(name, tmp_path)

def test_msmt17(tmp_path):
    b = tmp_path / "MSMT17_V1"
    lists = {"list_train.txt": ("train", ["0000/0000_000_01_0303morning_0015_0.jpg 0", "0000/0000_001_05_0303morning_0016_1.jpg 0",
                                          "0001/0001_000_15_0303noon_0001_0.jpg 1"]),
             "list_val.txt": ("train", ["0002/0002_000_03_0303noon_0001_0.jpg 2"]),
             "list_query.txt": ("test", ["0000/0000_000_02_0303morning_0001_0.jpg 0"]),
             "list_gallery.txt": ("test", ["0000/0000_003_07_0303morning_0001_0.jpg 0", "0001/0001_000_09_0303noon_0003_1.jpg 1"])}
    for lf, (folder, lines) in lists.items():
        for ln in lines: jpg(b / folder / ln.split()[0])
        (b / lf).write_text("\n".join(lines) + "\n")
    d = load_dataset("msmt17", tmp_path)
    assert [(s.pid, s.camid) for s in d.train] == [(0, 0), (0, 4), (1, 14), (2, 2)]       # list_val merged
    assert len(load_dataset("msmt17", tmp_path, merge_val=False).train) == 3
    assert [(s.pid, s.camid) for s in d.gallery] == [(0, 6), (1, 8)]
    (b / "list_query.txt").write_text("0000/missing_000_02_x.jpg 0\n")
    with pytest.raises(FileNotFoundError, match="missing_000_02_x.jpg"): load_dataset("msmt17", tmp_path)

def test_folder(tmp_path):
    for split in ["train", "query", "gallery"]:
        for pid in ["1", "2"]: jpg(tmp_path / split / pid / "a.jpg"); jpg(tmp_path / split / pid / "b.jpg")
    d = load_dataset("folder", tmp_path)
    assert {s.camid for s in d.query} == {0} and {s.camid for s in d.gallery} == {1} and not d.has_clothes
    (tmp_path / "meta.csv").write_text("path,camera,clothes\ntrain/1/a.jpg,3,red\ntrain/1/b.jpg,4,blue\n")
    d = load_dataset("folder", tmp_path)
    assert [(s.camid, s.clothes) for s in d.train[:2]] == [(3, 1), (4, 0)] and "cc" in d.protocols   # (1,"blue") < (1,"red")
    (tmp_path / "meta.csv").write_text("file,cam\n")
    with pytest.raises(DatasetLayoutError, match="expected"): load_dataset("folder", tmp_path)

# ---- masks ---------------------------------------------------------------------------------------------------------
def test_masks_attach_and_missing(market):
    base = market / "Market-1501-v15.09.15"
    imgs = sorted(f for f in base.glob("*/*.jpg") if not f.name.startswith("-1"))   # junk is never loaded
    for f in imgs[1:]: mask_for(f, base)
    with pytest.raises(FileNotFoundError, match=imgs[0].name.replace(".jpg", ".png")): load_dataset("market1501", market)
    d = load_dataset("market1501", market, missing_masks="skip")
    assert d.extra["skipped_without_mask"] == 1 and d.has_masks
    assert not load_dataset("market1501", market, masks=False).has_masks
    mask_for(imgs[0], base)
    assert load_dataset("market1501", market, masks=True).has_masks

def test_masks_required_but_absent(market):
    with pytest.raises(FileNotFoundError, match="masks=True"): load_dataset("market1501", market, masks=True)

def test_mask_with_bad_labels_or_size(tmp_path):
    mp = tmp_path / "m.png"
    Image.fromarray(np.full((8, 4), 25, np.uint8)).save(mp)
    with pytest.raises(ValueError, match="label 25"): read_mask(mp, "lip")
    Image.fromarray(np.full((8, 4), 2, np.uint8)).save(mp)
    with pytest.raises(ValueError, match="4x8, but its image is 16x32"): read_mask(mp, "lip", size=(16, 32))

def test_masks_align_through_dataset_and_transform(tmp_path):
    "Through ImageDataset + train transform: the red channel encodes the label, and they still agree."
    root = tmp_path / "folder"
    m = np.zeros((256, 128), np.uint8); m[30:120, 20:108] = 5; m[120:230, 30:98] = 9; m[:30, 40:90] = 2; m[40:110, 0:20] = 14
    arr = np.stack([m * 12, np.full_like(m, 50), np.full_like(m, 9)], -1)
    for split in ["train", "query", "gallery"]:
        f = root / split / "1" / "a.png"; f.parent.mkdir(parents=True); Image.fromarray(arr).save(f)
        mp = mask_path_for(f, root); mp.parent.mkdir(parents=True); Image.fromarray(m).save(mp)
    d = load_dataset("folder", root, masks=True)
    tr = PairTransform(TransformConfig(erase_p=0.0), train=True)
    ds = ImageDataset(d.train, tr)
    flips = 0
    for seed in range(8):
        torch.manual_seed(seed)
        item = ds[0]
        red = torch.round((item["img"][0] * 0.229 + 0.485) * 255).long()
        lab = item["mask"]
        flips += int((lab == 15).any())
        unflipped = tr.flip_perm[lab] if (lab == 15).any() else lab
        assert torch.equal(red, unflipped * 12)
        clothes = (lab == 5) | (lab == 9)
        assert (item["masked_img"][:, clothes] == 0).all() and torch.equal(item["masked_img"][:, ~clothes], item["img"][:, ~clothes])
    assert 0 < flips < 8

# ---- bad images ----------------------------------------------------------------------------------------------------
def test_unreadable_image_error_and_skip(market):
    bad = market / "Market-1501-v15.09.15" / "query" / "0003_c1s1_000551_01.jpg"
    bad.write_bytes(bad.read_bytes()[:50])                                 # truncated
    load_dataset("market1501", market)                                     # listing does not open images
    with pytest.raises(OSError, match="0003_c1s1_000551_01.jpg"): load_dataset("market1501", market, verify=True)
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        d = load_dataset("market1501", market, verify=True, skip_unreadable=True)
    assert len(d.extra["skipped_unreadable"]) == 1 and len(d.query) == 1 and len(d.protocols["standard"].query) == 1
    ds = ImageDataset(load_dataset("market1501", market).query)
    with pytest.raises(OSError, match="0003_c1s1_000551_01.jpg"): ds[0]

def test_layout_errors(tmp_path, market):
    with pytest.raises(DatasetLayoutError, match="does not exist"): load_dataset("ltcc", tmp_path / "nowhere")
    with pytest.raises(DatasetLayoutError, match="LTCC_ReID/train/<pid>_<clothes>_c<cam>"): load_dataset("ltcc", tmp_path)
    for f in (market / "Market-1501-v15.09.15" / "query").iterdir(): f.unlink()
    with pytest.raises(DatasetLayoutError, match="query split is empty"): load_dataset("market1501", market)
    with pytest.raises(ValueError, match="registered: .*reid_nb.plugins"): load_dataset("cuhk03", tmp_path)

# ---- intra-camera labels and samplers ------------------------------------------------------------------------------
def test_intra_camera_labels_have_no_cross_camera_links(market):
    d = load_dataset("market1501", market)
    ics = intra_camera_labels(d.train)
    assert ics.num_classes == 5                                            # (0,c0) (0,c1) (1,c2) (1,c5) (2,c3)
    for i, s in enumerate(d.train):
        for j, t in enumerate(d.train):
            assert (ics.cls[i] == ics.cls[j]) == (s.camid == t.camid and s.pid == t.pid)
    for c, n in ics.classes_per_camera.items():
        assert sorted(set(ics.local[ics.cam == c])) == list(range(n))
    assert "5 intra-camera classes over 5 cameras" in ics.report()

@pytest.mark.parametrize("make", [
    lambda kw: RandomIdentitySampler(np.repeat(np.arange(20), 6), batch_size=16, num_instances=4, **kw),
    lambda kw: ProportionalRASSampler(np.repeat(np.arange(20), 6), np.arange(120) % 2 + np.repeat(np.arange(20), 6) * 2, batch_size=16, num_instances=4, **kw),
    lambda kw: CameraAwareSampler(np.repeat(np.arange(24), 5), np.repeat(np.arange(24), 5) % 3, batch_size=16, num_instances=4, **kw),
])
def test_samplers_split_across_ranks(make):
    "Two ranks draw, step by step, the two halves of the global batch one process draws, with the same augmentation seeds."
    one = make(dict(seed=3)); one.set_epoch(2)
    ranks = [make(dict(seed=3, num_replicas=2, rank=r)) for r in range(2)]
    for r in ranks: r.set_epoch(2)
    allb = one.epoch_batches()
    assert len(allb) >= 2
    assert [a + b for a, b in zip(*(r.rank_batches() for r in ranks))] == allb    # together: the same global batches
    assert len({len(r) for r in ranks}) == 1                                   # equal shares: no rank waits at a barrier
    pairs, halves = list(one), [list(r) for r in ranks]
    assert [p for j in range(len(allb)) for h in halves for p in h[8 * j:8 * j + 8]] == pairs    # same (index, seed) pairs
    st = ranks[0].state_dict(); fresh = make(dict(seed=0, num_replicas=2, rank=0)); fresh.load_state_dict(st)
    assert list(fresh) == list(ranks[0])                                       # resumable
