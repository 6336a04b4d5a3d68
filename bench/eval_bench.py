"""Evaluation benchmark: reid_nb.metrics.evaluate against the bare distance matmul and a plain full-sort reference.

Features are identity-correlated (a centre per id, a bias per camera, noise) at Market-1501 and MSMT17 test scale, seeded.
Each measurement runs in its own process so that its peak memory (ru_maxrss) is its own. Prints times, peak memory and the
ratio of evaluate's time to the fastest bare matmul measured in the same run: torch's addmm in evaluate's blocks, and numpy's
BLAS (q @ g.T, g.T laid out contiguously, its fastest layout here) in blocks of 64, 128 and 256 MB; the reference (torchreid-style stable argsort of the
whole matrix) runs on the first --ref-queries queries against the full gallery and must agree exactly with reid_nb there.

    python bench/eval_bench.py                      # both scales
    python bench/eval_bench.py --scales market --ref-queries 3368
"""
import argparse, multiprocessing as mp, os, resource, sys, time
import numpy as np
import torch

BLOCK_BYTES = 2**27   # reid_nb.metrics' default block of distances

SCALES = {  # (ids, queries, gallery, cameras, dims) of the real test splits
    "market": (750, 3368, 15913, 6, 2048),
    "msmt": (3060, 11659, 82161, 15, 2048),
}

def rss_mb():
    with open("/proc/self/statm") as f: return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

def peak_mb(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

# (identity weight, spread of per-item noise): "realistic" gives Market mAP ~89 / mINP ~42 and MSMT17 mAP ~76 / mINP ~9
# (a trained model's range; real MSMT17 mINP is ~15 for AGW); "hard" gives mAP ~50 / ~44 with mINP ~3 / ~1, where the
# last positive sits deep in the ranking and a full sort is nearly unavoidable.
PROFILES = {"realistic": {"market": (0.5, 0.6), "msmt": (0.42, 0.6)}, "hard": {"market": (0.3, 0.3), "msmt": (0.3, 0.3)}}

def make_features(scale, profile="realistic", seed=0):
    "Seeded identity-correlated features, generated in chunks so generation does not raise the peak."
    w_id, spread = PROFILES[profile][scale]
    n_ids, n_q, n_g, n_cams, dim = SCALES[scale]
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(n_ids, dim, generator=g)
    cam_bias = torch.randn(n_cams, dim, generator=g)
    q_pids, g_pids = torch.randint(0, n_ids, (n_q,), generator=g), torch.randint(0, n_ids, (n_g,), generator=g)
    q_cams, g_cams = torch.randint(0, n_cams, (n_q,), generator=g), torch.randint(0, n_cams, (n_g,), generator=g)
    def feats(p, c):
        out = torch.empty(len(p), dim)
        for s in range(0, len(p), 4096):
            sl = slice(s, s + 4096)
            noise = torch.exp(spread * torch.randn(len(p[sl]), 1, generator=g)) * torch.randn(len(p[sl]), dim, generator=g)
            out[sl] = w_id * centers[p[sl]] + 0.15 * cam_bias[c[sl]] + noise
        return out.div_(out.norm(dim=1, keepdim=True))
    return feats(q_pids, q_cams), feats(g_pids, g_cams), q_pids, g_pids, q_cams, g_cams

def job(kind, scale, profile, ref_queries, conn, block_bytes=BLOCK_BYTES):
    torch.set_num_threads(os.cpu_count())
    from reid_nb.metrics import evaluate, evaluate_distmat, pairwise_distance, _rows_per_block
    qf, gf, qp, gp, qc, gc = make_features(scale, profile)
    base = rss_mb()
    out = {}
    t = time.perf_counter()
    if kind == "matmul":       # the bare cost: the same blocks of distances, nothing else
        step = _rows_per_block(len(gf), 4, BLOCK_BYTES)
        for s in range(0, len(qf), step): D = pairwise_distance(qf[s:s + step], gf); del D
    elif kind == "numpy":      # numpy's BLAS, the bare product (faster than torch's on some CPUs)
        step = _rows_per_block(len(gf), 4, block_bytes)
        q, g = qf.numpy(), np.ascontiguousarray(gf.numpy().T)
        t = time.perf_counter()
        for s in range(0, len(q), step): D = q[s:s + step] @ g; del D
    elif kind == "evaluate":
        m = evaluate(qf, gf, qp, gp, qc, gc, normalize=False, block_bytes=BLOCK_BYTES)
        out["metrics"] = m.to_dict()
    elif kind == "reference":  # full-sort reference on the first ref_queries queries, and reid_nb on the same subset
        n = min(ref_queries, len(qf))
        D = pairwise_distance(qf[:n], gf).numpy()
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
        from test_metrics import ref_market1501
        mAP, cmc, minp, nv = ref_market1501(D, qp[:n].numpy(), gp.numpy(), qc[:n].numpy(), gc.numpy(), 50)
        out["ref_time"] = time.perf_counter() - t
        m = evaluate_distmat(D, qp[:n], gp, qc[:n], gc)
        out["agree"] = bool(abs(m.mAP - mAP) < 1e-6 and abs(m.mINP - minp) < 1e-6 and np.allclose(m.cmc, cmc, atol=1e-6))
        out["n"], out["ref_mAP"] = n, float(mAP)
    out["time"] = time.perf_counter() - t
    out["peak_mb"], out["extra_mb"], out["features_mb"] = peak_mb(), peak_mb() - base, (qf.numel() + gf.numel()) * 4 / 2**20
    conn.send(out)

def measure(kind, scale, profile, ref_queries, block_bytes=BLOCK_BYTES):
    ctx = mp.get_context("spawn")
    a, b = ctx.Pipe()
    p = ctx.Process(target=job, args=(kind, scale, profile, ref_queries, b, block_bytes)); p.start()
    r = a.recv(); p.join()
    return r

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scales", nargs="+", default=["market", "msmt"], choices=list(SCALES))
    ap.add_argument("--profile", default="realistic", choices=list(PROFILES))
    ap.add_argument("--ref-queries", type=int, default=1000, help="queries the full-sort reference checks (full gallery)")
    args = ap.parse_args()
    print(f"{os.cpu_count()} CPU threads, torch {torch.__version__}, feature profile {args.profile!r}")
    ok = True
    for s in args.scales:
        n_ids, n_q, n_g, n_cams, dim = SCALES[s]
        mm, ev, ref = (measure(k, s, args.profile, args.ref_queries) for k in ("matmul", "evaluate", "reference"))
        npm = {bb: measure("numpy", s, args.profile, args.ref_queries, bb) for bb in (2**26, 2**27, 2**28)}
        fastest = min([mm["time"]] + [r["time"] for r in npm.values()])
        ok &= ref["agree"]
        est = ref["ref_time"] * n_q / ref["n"]
        print(f"\n{s}: {n_q} queries x {n_g} gallery, {dim}-d float32 ({mm['features_mb']:.0f} MB of features)")
        print(f"  bare matmul (blocks)   {mm['time']:7.2f} s   peak {mm['peak_mb']:6.0f} MB   (torch, {BLOCK_BYTES >> 20} MB blocks)")
        for bb, r in npm.items():
            print(f"  numpy matmul (blocks)  {r['time']:7.2f} s   peak {r['peak_mb']:6.0f} MB   (numpy's BLAS, {bb >> 20} MB blocks)")
        print(f"  reid_nb evaluate       {ev['time']:7.2f} s   peak {ev['peak_mb']:6.0f} MB (+{ev['extra_mb']:.0f} MB over the features)"
              f"   ratio to the fastest matmul {ev['time'] / fastest:.2f}x")
        print(f"  full-sort reference    {ref['ref_time']:7.2f} s on {ref['n']} queries (~{est:.0f} s for all), peak {ref['peak_mb']:.0f} MB;"
              f" agrees with reid_nb: {ref['agree']}")
        print(f"  {ev['metrics']}")
    sys.exit(0 if ok else 1)

if __name__ == "__main__":
    main()
