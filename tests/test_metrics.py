"""reid_nb.metrics against independent full-sort references (torchreid's eval_market1501 and CAL's evaluate_with_clothes,
re-written here with a stable argsort), on random data with many ids, cameras, ties and queries without a valid match."""
import numpy as np
import pytest
import torch
from reid_nb.metrics import evaluate, evaluate_distmat, pairwise_distance

def ref_market1501(distmat, q_pids, g_pids, q_cams, g_cams, max_rank):
    "torchreid's eval_market1501 (python version), ties broken by gallery index; plus mINP as in fast-reid."
    indices = np.argsort(distmat, axis=1, kind="stable")
    matches = (g_pids[indices] == q_pids[:, None]).astype(np.int32)
    all_cmc, all_ap, all_inp = [], [], []
    for i in range(len(q_pids)):
        order = indices[i]
        keep = ~((g_pids[order] == q_pids[i]) & (g_cams[order] == q_cams[i]))
        raw = matches[i][keep]
        if not raw.any(): continue
        cmc = raw.cumsum(); cmc[cmc > 1] = 1
        all_cmc.append(cmc[:max_rank])
        pos = np.where(raw == 1)[0]
        all_inp.append(raw.sum() / (pos.max() + 1))
        tmp = raw.cumsum() / (np.arange(len(raw)) + 1.0) * raw
        all_ap.append(tmp.sum() / raw.sum())
    return np.mean(all_ap), np.asarray(all_cmc).astype(np.float64).mean(0), np.mean(all_inp), len(all_ap)

def ref_with_clothes(distmat, q_pids, g_pids, q_cams, g_cams, q_clo, g_clo, mode, max_rank):
    "CAL's evaluate_with_clothes (good / junk index sets), ties broken by gallery index."
    aps, cmcs, n = [], [], 0
    for i in range(len(q_pids)):
        index = np.argsort(distmat[i], kind="stable")
        same = np.where(g_pids == q_pids[i])[0]
        cam = np.where(g_cams == q_cams[i])[0]
        clo = np.where(g_clo == q_clo[i])[0]
        good = np.setdiff1d(same, cam)
        if mode == "cc": good = np.setdiff1d(good, clo); junk = np.union1d(np.intersect1d(same, cam), np.intersect1d(same, clo))
        else: good = np.intersect1d(good, clo); junk = np.union1d(np.intersect1d(same, cam), np.setdiff1d(same, clo))
        if len(good) == 0: continue
        index = index[~np.isin(index, junk)]
        rows = np.where(np.isin(index, good))[0]
        cmc = np.zeros(len(index)); cmc[rows[0]:] = 1
        aps.append(sum((k + 1) / (r + 1) for k, r in enumerate(rows)) / len(good)); cmcs.append(cmc[:max_rank]); n += 1
    return np.mean(aps), np.mean(cmcs, 0), n

def random_problem(seed, n_q=300, n_g=1500, n_ids=120, n_cams=6, n_clothes=3, decimals=1):
    rng = np.random.default_rng(seed)
    q_pids = rng.integers(0, n_ids + 20, n_q)        # ids >= n_ids are absent from the gallery: no valid match
    g_pids = rng.integers(0, n_ids, n_g)
    q_cams, g_cams = rng.integers(0, n_cams, n_q), rng.integers(0, n_cams, n_g)
    q_clo, g_clo = rng.integers(0, n_clothes, n_q), rng.integers(0, n_clothes, n_g)
    d = rng.random((n_q, n_g)) - 0.4 * (q_pids[:, None] == g_pids[None])
    return np.round(d, decimals), q_pids, g_pids, q_cams, g_cams, q_clo, g_clo  # rounding makes many ties

@pytest.mark.parametrize("dtype", [np.float32, np.float64])   # float32: packed-key path; float64: sort path
@pytest.mark.parametrize("seed,decimals", [(0, 1), (1, 2), (2, 6)])
def test_standard_equals_torchreid(seed, decimals, dtype):
    D, qp, gp, qc, gc, _, _ = random_problem(seed, decimals=decimals)
    D = D.astype(dtype)
    mAP, cmc, minp, nv = ref_market1501(D, qp, gp, qc, gc, 50)
    m = evaluate_distmat(D, qp, gp, qc, gc, max_rank=50)
    assert m.num_valid == nv and m.num_skipped == len(qp) - nv and m.num_skipped > 0
    assert abs(m.mAP - mAP) < 1e-6 and abs(m.mINP - minp) < 1e-6
    np.testing.assert_allclose(m.cmc, cmc, atol=1e-6)
    assert np.isnan(m.ap).sum() == m.num_skipped

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mode", ["cc", "sc"])
def test_clothes_modes_equal_cal(mode, dtype):
    D, qp, gp, qc, gc, qcl, gcl = random_problem(3)
    D = D.astype(dtype)
    mAP, cmc, nv = ref_with_clothes(D, qp, gp, qc, gc, qcl, gcl, mode, 20)
    m = evaluate_distmat(D, qp, gp, qc, gc, qcl, gcl, mode=mode, max_rank=20)
    assert m.num_valid == nv
    assert abs(m.mAP - mAP) < 1e-6
    np.testing.assert_allclose(m.cmc, cmc, atol=1e-6)

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_blocks_do_not_change_results(dtype):
    D, qp, gp, qc, gc, qcl, gcl = random_problem(4)
    D = D.astype(dtype)
    whole = evaluate_distmat(D, qp, gp, qc, gc, qcl, gcl, mode="cc")
    tiny = evaluate_distmat(D, qp, gp, qc, gc, qcl, gcl, mode="cc", block_bytes=1)    # one query per block
    assert whole.mAP == tiny.mAP and whole.mINP == tiny.mINP and (whole.cmc == tiny.cmc).all()

def test_features_match_distmat_and_reference():
    rng = np.random.default_rng(5)
    centers = rng.normal(size=(50, 64))
    qp, gp = rng.integers(0, 60, 200), rng.integers(0, 50, 900)
    qf = np.where((qp < 50)[:, None], centers[np.minimum(qp, 49)], 0) + rng.normal(size=(200, 64)) * 1.5
    gf = centers[gp] + rng.normal(size=(900, 64)) * 1.5
    qc, gc = rng.integers(0, 4, 200), rng.integers(0, 4, 900)
    qt, gt = torch.nn.functional.normalize(torch.tensor(qf, dtype=torch.float32)), torch.nn.functional.normalize(torch.tensor(gf, dtype=torch.float32))
    D = pairwise_distance(qt, gt).numpy()
    m_blocks = evaluate(qf.astype(np.float32), gf.astype(np.float32), qp, gp, qc, gc, block_bytes=10_000)
    mAP, cmc, minp, nv = ref_market1501(D, qp, gp, qc, gc, 50)
    assert m_blocks.num_valid == nv
    assert abs(m_blocks.mAP - mAP) < 1e-6 and abs(m_blocks.mINP - minp) < 1e-6
    np.testing.assert_allclose(m_blocks.cmc, cmc, atol=1e-6)
    assert 0.2 < m_blocks.mAP < 0.95   # a non-trivial problem
    e = evaluate(qf, gf, qp, gp, qc, gc, metric="euclidean")
    De = pairwise_distance(qt.double(), gt.double(), "euclidean").numpy()
    assert abs(e.mAP - ref_market1501(De, qp, gp, qc, gc, 50)[0]) < 1e-6

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_negative_and_zero_distances_order(dtype):
    # -0.0 and 0.0 are equal (tie -> index order); negative distances rank first
    D = np.array([[0.0, -0.0, -1.0, 2.0]], dtype=dtype)
    m = evaluate_distmat(D, [1], [1, 2, 3, 1], [0], [1, 1, 1, 1], max_rank=4)
    assert m.cmc.tolist() == [0, 1, 1, 1] and abs(m.mAP - (1/2 + 2/4) / 2) < 1e-12

def test_bad_distmat():
    with pytest.raises(ValueError, match="NaN or infinite"):
        evaluate_distmat(np.array([[np.nan, 1.0]]), [1], [1, 2], [0], [1, 1])
    with pytest.raises(ValueError, match="2-D"):
        evaluate_distmat(np.zeros(3), [1], [1, 2, 3], [0], [1, 1, 1])

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_block_without_any_match(dtype):
    m = evaluate_distmat(np.random.rand(3, 4).astype(dtype), [7, 8, 9], [1, 2, 3, 4], [0, 0, 0], [1, 1, 1, 1], max_rank=4)
    assert (m.num_valid, m.num_skipped) == (0, 3)

@pytest.mark.parametrize("block_bytes,stats_bytes", [(2**27, 2**25), (40_000, 10_000), (10_000, 40_000)])
def test_overlapped_blocks_exact_with_ties(monkeypatch, block_bytes, stats_bytes):
    # integer features: every dot product is exact in float32 whatever the BLAS order, and many distances tie exactly, so the
    # CPU path (numpy BLAS blocks, statistics in sub-blocks on a second thread) must break ties by gallery index like the reference
    import reid_nb.metrics as M
    monkeypatch.setattr(M, "_STATS_BYTES", stats_bytes)
    rng = np.random.default_rng(6)
    qp, gp = rng.integers(0, 45, 300), rng.integers(0, 40, 1200)
    qc, gc, qcl, gcl = rng.integers(0, 4, 300), rng.integers(0, 4, 1200), rng.integers(0, 3, 300), rng.integers(0, 3, 1200)
    centers = rng.integers(-2, 3, (45, 8))
    qf = (centers[qp] + rng.integers(-1, 2, (300, 8))).astype(np.float32)
    gf = (centers[gp] + rng.integers(-1, 2, (1200, 8))).astype(np.float32)
    D = 1.0 - qf.astype(np.float64) @ gf.T.astype(np.float64)
    assert len(np.unique(D)) < 100                               # 360,000 distances, ties everywhere
    for mode in ("standard", "cc"):
        m = evaluate(qf, gf, qp, gp, qc, gc, qcl, gcl, mode=mode, normalize=False, block_bytes=block_bytes)
        ref = ref_market1501(D, qp, gp, qc, gc, 50) if mode == "standard" else ref_with_clothes(D, qp, gp, qc, gc, qcl, gcl, mode, 50)
        assert m.num_valid == ref[-1] and abs(m.mAP - ref[0]) < 1e-9
        np.testing.assert_allclose(m.cmc, ref[1], atol=1e-9)
        if mode == "standard": assert abs(m.mINP - ref[2]) < 1e-9
