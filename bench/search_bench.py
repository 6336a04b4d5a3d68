"""Search benchmark: reid_nb.search's exact blocked search against faiss approximate indexes, measured in the same run.

Gallery and queries are seeded identity-correlated features (a centre per identity, a camera bias, noise of varying size),
L2-normalised, about as clustered as a trained model's (`--noise 0.5`: same-identity cosine similarity near 0.8, other
identities near 0.1); with much noisier features every approximate index loses recall, as it would on an untrained model. For each faiss index the benchmark prints its build time, its search time as a ratio of the exact search's,
its size as a ratio of the float32 gallery's, and recall@1 / recall@k: the share of the exact search's top 1 / top k that
the index returns in its top 1 / top k (exact = 1 by definition).

    python bench/search_bench.py                                   # 200k x 256, 1000 queries
    python bench/search_bench.py --gallery 1000000 --dim 512 --factories "IVF{nlist},SQ8" "IVF{nlist},PQ64"
"""
import argparse, os, time
import numpy as np
import torch

def make_features(n_g: int, n_q: int, dim: int, n_ids: int, noise: float = 0.5, n_cams: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centers, cam_bias = torch.randn(n_ids, dim, generator=g), torch.randn(n_cams, dim, generator=g)
    def feats(n):
        out = torch.empty(n, dim)
        for s in range(0, n, 65536):
            m = min(65536, n - s)
            p, c = torch.randint(0, n_ids, (m,), generator=g), torch.randint(0, n_cams, (m,), generator=g)
            eps = noise * torch.exp(0.5 * torch.randn(m, 1, generator=g)) * torch.randn(m, dim, generator=g)
            out[s:s + m] = centers[p] + 0.3 * cam_bias[c] + eps
        return out.div_(out.norm(dim=1, keepdim=True))
    return feats(n_q), feats(n_g)

def recall(approx: torch.Tensor, exact: torch.Tensor, k: int) -> float:
    "Mean share of each query's exact top-k found in its approximate top-k."
    a, e = approx[:, :k].numpy(), exact[:, :k].numpy()
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a, e)]))

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gallery", type=int, default=200_000); ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=256); ap.add_argument("--ids", type=int, default=20_000)
    ap.add_argument("--noise", type=float, default=0.5, help="noise / identity scale: 0.5 puts same-identity cosines near 0.8, others near 0.1"); ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--factories", nargs="+", default=["IVF{nlist},SQ8", "IVF{nlist},Flat", "HNSW32"])
    ap.add_argument("--nprobe", type=int, nargs="+", default=[16, 64])
    a = ap.parse_args()
    torch.set_num_threads(os.cpu_count())
    from reid_nb.search import FaissIndex, topk_exact
    import faiss
    qf, gf = make_features(a.gallery, a.queries, a.dim, a.ids, a.noise)
    print(f"gallery {a.gallery} x {a.dim}, {a.queries} queries, k={a.k}, {os.cpu_count()} CPU threads, torch {torch.__version__}, faiss {faiss.__version__}")
    t = time.perf_counter(); _, exact = topk_exact(qf, gf, a.k); t_exact = time.perf_counter() - t
    print(f"exact blocked search: {t_exact:.3f} s ({a.queries / t_exact:.0f} queries/s) — the reference")
    g_bytes = gf.numel() * 4
    for fac in a.factories:
        t = time.perf_counter(); idx = FaissIndex(gf, factory=fac); t_build = time.perf_counter() - t
        size = len(faiss.serialize_index(idx.index))
        for nprobe in (a.nprobe if "IVF" in fac else [None]):
            if nprobe is not None: faiss.extract_index_ivf(idx.index).nprobe = min(nprobe, idx.nlist)
            t = time.perf_counter(); _, got = idx.search(qf, a.k); t_s = time.perf_counter() - t
            tag = fac.format(nlist=idx.nlist) + (f" nprobe={nprobe}" if nprobe else "")
            print(f"{tag:28s} build {t_build:7.2f} s  search {t_s:7.3f} s = {t_s / t_exact:5.2f} x exact  size {size / g_bytes:4.2f} x gallery  "
                  f"recall@1 {recall(got, exact, 1):.3f}  recall@{a.k} {recall(got, exact, a.k):.3f}")

if __name__ == "__main__": main()
