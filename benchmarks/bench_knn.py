"""The embedding engine (dynunc/scoring/knn.py) at ImageNet scale: k-means plus a k = 10 nearest-
neighbour graph over N float16 embeddings, wall time, CPU time and peak RSS of the
process that does it (benchmarks/measure.py), and the graph's recall@10 against exact
search on a sample of queries; with --selection, kcenter's and d2's selection time too.

    python benchmarks/bench_knn.py                       # N = 1.28M, D = 128
    python benchmarks/bench_knn.py --n 160000 320000 640000 1280000 --selection

Synthetic embeddings: a mixture of --clusters (1,000) Gaussians in D dimensions, centres
drawn from N(0, I), each sample its centre plus N(0, 0.5^2 I) noise (clusters about
half as wide as the distance between centres), stored float16 as a produce run stores
them. The k-means has C = --centroids (1,000) centroids at N = 1.28M and C proportional
to sqrt(N) at other sizes (the graph's cells, about N / C rows each, as dynunc/scoring/knn.py
chooses by default), so that the measured times extrapolate to 13M with the engine's
own scaling.
"""
import argparse
import json
import math
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.measure import run_child  # noqa: E402

REFERENCE_N = 1_280_000


def centroids_for(n: int, at_reference: int) -> int:
    return max(1, round(at_reference * math.sqrt(n / REFERENCE_N)))


def make(path: str, n: int, dim: int, clusters: int, seed: int) -> None:
    """The synthetic embeddings, float16 N x D, written block by block (and the cluster of each row)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, dim))
    labels = np.empty(n, dtype=np.int64)
    for lo in range(0, n, 1 << 16):
        hi = min(n, lo + (1 << 16))
        labels[lo:hi] = rng.integers(0, clusters, hi - lo)
        out[lo:hi] = centres[labels[lo:hi]] + 0.5 * rng.normal(size=(hi - lo, dim)).astype(np.float32)
    out.flush()
    np.save(path + ".labels.npy", labels)


def graph(path: str, centroids: int, k: int, out: str) -> None:
    """The measured step: k-means, then the kNN graph with the k-means cells as lists."""
    from dynunc.scoring import knn

    x = np.load(path, mmap_mode="r")
    t0 = time.perf_counter()
    c = knn.kmeans(x, centroids, seed=0)
    t1 = time.perf_counter()
    neighbours, _ = knn.knn_graph(x, k, seed=0, centroids=c)
    t2 = time.perf_counter()
    np.save(out, neighbours)
    print(json.dumps({"kmeans_s": t1 - t0, "graph_s": t2 - t1}))


def recall(path: str, graph_path: str, queries: int, k: int) -> None:
    """recall@k of the graph against exact search for `queries` random rows."""
    from dynunc.scoring import knn

    faiss = knn._faiss()
    x = np.load(path, mmap_mode="r")
    rows = np.sort(np.random.default_rng(1).choice(len(x), size=min(queries, len(x)), replace=False))
    index = faiss.IndexFlatL2(x.shape[1])
    for block in knn.chunks(len(x)):
        index.add(knn.as_float32(x, block))
    _, exact = index.search(knn.float32_copy(x[rows]), k + 1)
    found = np.load(graph_path)[rows]
    hits = [len(set(e[e != r][:k].tolist()) & set(f.tolist())) for r, e, f in zip(rows, exact, found)]
    print(json.dumps({"recall": float(np.sum(hits) / (k * len(rows))), "queries": len(rows)}))


def selection(path: str, method: str) -> None:
    from dynunc.scoring import geometry as es
    from dynunc.scoring import knn

    x = np.load(path, mmap_mode="r")
    t0 = time.perf_counter()
    if method == "kcenter":
        es.kcenter_scores(x, seed=0)
        print(json.dumps({"total_s": time.perf_counter() - t0}))
        return
    difficulty = np.random.default_rng(2).random(len(x))
    neighbours, distances = knn.knn_graph(x, es.D2_KNN, seed=0, normalise=True)
    t1 = time.perf_counter()
    density = es.d2_forward(difficulty, neighbours, distances, es.D2_GAMMA_FORWARD)
    es.d2_order(density, neighbours, distances, es.D2_GAMMA_REVERSE)
    print(json.dumps({"graph_s": t1 - t0, "passing_s": time.perf_counter() - t1, "total_s": time.perf_counter() - t0}))


def child(*args: str):
    return run_child([sys.executable, os.path.abspath(__file__), *args])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, nargs="+", default=[REFERENCE_N])
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--clusters", type=int, default=1000, help="Gaussians of the synthetic mixture")
    p.add_argument("--centroids", type=int, default=1000, help="k-means centroids at N = 1.28M")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--queries", type=int, default=10_000, help="exact-search queries for recall@k")
    p.add_argument("--selection", action="store_true", help="also time kcenter and d2 at the largest N")
    p.add_argument("--step", nargs="+", help=argparse.SUPPRESS)  # a child's work
    args = p.parse_args()
    if args.step:
        step, *rest = args.step
        {"make": lambda: make(rest[0], int(rest[1]), int(rest[2]), int(rest[3]), 0),
         "graph": lambda: graph(rest[0], int(rest[1]), int(rest[2]), rest[3]),
         "recall": lambda: recall(rest[0], rest[1], int(rest[2]), int(rest[3])),
         "selection": lambda: selection(rest[0], rest[1])}[step]()
        return 0
    print(f"threads: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, {os.cpu_count()} CPUs; "
          f"load before: {os.getloadavg()[0]:.2f}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_knn_") as tmp:
        for n in sorted(args.n):
            data, found = os.path.join(tmp, f"x{n}.npy"), os.path.join(tmp, f"g{n}.npy")
            child("--step", "make", data, str(n), str(args.dim), str(args.clusters))
            c = centroids_for(n, args.centroids)
            run = child("--step", "graph", data, str(c), str(args.k), found)
            parts = json.loads(run.stdout.strip().splitlines()[-1])
            r = json.loads(child("--step", "recall", data, found, str(args.queries), str(args.k)).stdout.splitlines()[-1])
            rows.append((n, c, run, parts, r))
            print(f"N {n:>9,}  C {c:>5}: {run.summary()} (k-means {parts['kmeans_s']:.1f} s, graph "
                  f"{parts['graph_s']:.1f} s); recall@{args.k} {r['recall']:.4f} on {r['queries']:,} queries; "
                  f"load {os.getloadavg()[0]:.2f}", flush=True)
            os.remove(found)
            if args.selection and n == max(args.n):
                for method in ("kcenter", "d2"):
                    sel = child("--step", "selection", data, method)
                    print(f"  {method} at N {n:,}: {sel.summary()}; {sel.stdout.strip().splitlines()[-1]}; "
                          f"load {os.getloadavg()[0]:.2f}", flush=True)
    if len(rows) >= 2:
        ns = np.log([row[0] for row in rows])
        walls = np.log([row[2].wall_s for row in rows])
        slope, intercept = np.polyfit(ns, walls, 1)
        target = 13_153_500
        print(f"wall ~ N^{slope:.2f}: at N = {target:,} (C = {centroids_for(target, args.centroids)}) about "
              f"{math.exp(intercept + slope * math.log(target)) / 60:.0f} min on these cores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
