"""What --dedup costs (dynunc/scoring/dedup.py): wall time, CPU time and peak RSS of one
deduplication, in a child process (benchmarks/measure.py), at one or several sizes.

    python benchmarks/bench_dedup.py [--n 1281167 ...] [--dim 128] [--threshold 0.95] [--planted 0.05]

Synthetic embeddings, float16 N x D in a .npy file that the child memory-maps as
get_coreset.py does: N / 1,000 Gaussian blobs (a centre drawn N(0, 1) per dimension, each
point the centre plus N(0, 1) noise, so two points of one blob have cosine ~0.5), and a
share `--planted` of the rows replaced by near-copies of other rows (the source plus
N(0, 0.02) noise per dimension: cosine ~0.9998). The child runs the three stages of
`deduplicate` (k-means with the default sqrt(N) clusters, trained on a sample and
assigning every row; the groups) and prints
their times, the groups, and how many planted copies ended in their source's group.
With several sizes, the time is fitted as c * N^a and extrapolated to ImageNet-21K's
13,153,500 rows, beside the bound N^1.5 from the largest size (with sqrt(N) clusters,
assigning N rows to k centroids and comparing N rows with the N / k of their cluster
both cost N^1.5 D; training k-means on 256 rows per centroid costs N D). Nothing is
asserted.
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.measure import run_child  # noqa: E402

IMAGENET_21K = 13_153_500
BLOB_SIZE = 1000


def write_embeddings(path: str, n: int, dim: int, planted: float, seed: int = 0) -> np.ndarray:
    """The synthetic embeddings (see the module) to `path`; returns the planted
    (copy, source) rows, int64 (P, 2)."""
    rng = np.random.default_rng(seed)
    blobs = max(1, n // BLOB_SIZE)
    centres = rng.standard_normal((blobs, dim), dtype=np.float32)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, dim))
    step = 1 << 18
    for start in range(0, n, step):
        rows = min(step, n - start)
        blob = rng.integers(0, blobs, rows)
        out[start:start + rows] = centres[blob] + rng.standard_normal((rows, dim), dtype=np.float32)
    count = int(n * planted)
    chosen = rng.choice(n, 2 * count, replace=False)
    copies, sources = np.sort(chosen[:count]), chosen[count:]
    order = np.argsort(copies)
    sources = sources[order]
    out[copies] = (out[sources].astype(np.float32)
                   + rng.normal(0, 0.02, (count, dim)).astype(np.float32)).astype(np.float16)
    out.flush()
    del out
    return np.stack([copies, sources], axis=1).astype(np.int64)


def child(path: str, planted_path: str, threshold: float) -> None:
    from dynunc.scoring import dedup

    timings = {}
    embeddings = np.load(path, mmap_mode="r")
    t = time.perf_counter()
    clusters = dedup.default_clusters(len(embeddings))
    assigned, centroids = dedup.spherical_clusters(embeddings, clusters)
    timings["kmeans_s"] = time.perf_counter() - t
    t = time.perf_counter()
    result = dedup.duplicate_groups(embeddings, assigned, centroids, threshold)
    timings["groups_s"] = time.perf_counter() - t
    planted = np.load(planted_path)
    group_of = np.full(len(embeddings), -1, dtype=np.int64)
    group_of[result.index] = result.group
    found = (group_of[planted[:, 0]] >= 0) & (group_of[planted[:, 0]] == group_of[planted[:, 1]])
    in_planted = np.zeros(len(embeddings), dtype=bool)
    in_planted[planted.ravel()] = True
    sizes = np.bincount(assigned, minlength=clusters)
    print(json.dumps({**timings, "clusters": clusters, "largest_cluster": int(sizes.max()),
                      "groups": result.num_groups, "removed": result.num_removed,
                      "planted": len(planted), "planted_found": int(found.sum()),
                      "grouped_outside_planted": int(np.count_nonzero(~in_planted[result.index]))}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[1_281_167], help="sizes (ImageNet-1K's by default)")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--threshold", type=float, default=0.95)
    ap.add_argument("--planted", type=float, default=0.05, help="share of rows replaced by near-copies")
    ap.add_argument("--child", nargs=3, metavar=("EMBED", "PLANTED", "THRESHOLD"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.child[1], float(args.child[2]))
        return
    measured = []
    with tempfile.TemporaryDirectory(prefix="bench_dedup_") as tmp:
        for n in args.n:
            path, planted_path = os.path.join(tmp, "embed.npy"), os.path.join(tmp, "planted.npy")
            np.save(planted_path, write_embeddings(path, n, args.dim, args.planted))
            run = run_child([sys.executable, os.path.abspath(__file__), "--child", path, planted_path,
                             str(args.threshold)])
            stats = json.loads(run.stdout.strip().splitlines()[-1])
            print(f"N = {n:,}, D = {args.dim}, threshold {args.threshold}: {run.summary()}; "
                  f"k-means ({stats['clusters']} clusters, largest "
                  f"{stats['largest_cluster']}) {stats['kmeans_s']:.1f} s, groups {stats['groups_s']:.1f} s; "
                  f"{stats['groups']} groups, {stats['removed']} removed; planted copies found "
                  f"{stats['planted_found']} of {stats['planted']}; rows grouped outside the planted pairs "
                  f"{stats['grouped_outside_planted']}", flush=True)
            measured.append((n, run.wall_s, run.peak_rss_mib))
    if len(measured) >= 2:
        sizes, walls, rss = (np.array(v, dtype=np.float64) for v in zip(*measured))
        slope, intercept = np.polyfit(np.log(sizes), np.log(walls), 1)
        rss_slope, rss_intercept = np.polyfit(sizes, rss, 1)
        bound = walls[-1] * (IMAGENET_21K / sizes[-1]) ** 1.5
        print(f"fit: wall ~ N^{slope:.2f}; at N = {IMAGENET_21K:,}: about "
              f"{np.exp(intercept) * IMAGENET_21K ** slope / 60:.0f} min wall by the fit, at most "
              f"{bound / 60:.0f} min if every stage grew as N^1.5 (the assignment and the pairs do; k-means "
              f"training, on 256 rows per centroid, grows as N), and "
              f"{(rss_intercept + rss_slope * IMAGENET_21K) / 1024:.1f} GiB peak RSS (RSS fitted linear in N)")


if __name__ == "__main__":
    main()
