"""How much prototype's kept sets depend on the seed: one k-means run and the hardest kept
at every fraction (prototype before issue 26) against the best of several runs and
Sorscher's rule (the easiest below --prototype-switch), on a produce run's embeddings.

    python benchmarks/bench_prototype_stability.py --run curve_output/clean/produce \
        --list curve_output/clean/data/train/file_list.txt [--flipped curve_output/noise0.2/train_noisy.txt.flipped.npy]

For each rule and fraction: the overlap |A & B| / keep of the kept sets of every pair of
seeds (min, mean, max over the pairs), the k-means objective's spread over the seeds
(the restarts' purpose), and, given the flipped lines of a noisy list, the share of them
kept (mean over the seeds). The kept sets are get_coreset.py's (dynunc/ranking.py's top,
ties drawn with the seed)."""
import argparse
import itertools
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from dynunc.lists.file_list import read_file_list  # noqa: E402
from dynunc.history import find_history_dir, list_embed_epochs, load_embeddings  # noqa: E402
from dynunc.ranking import top  # noqa: E402
from dynunc.scoring import knn  # noqa: E402
from dynunc.scoring.geometry import (PROTOTYPE_RESTARTS, PROTOTYPE_SWITCH, cosine_to_nearest,  # noqa: E402
                                     prototype_keeps_easiest)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="produce run (or its history folder) with embed_{epoch}.npy")
    p.add_argument("--list", required=True, help="the training list it was recorded on")
    p.add_argument("--flipped", help="the .flipped.npy of a noisy list (line numbers of the relabelled images)")
    p.add_argument("--fractions", nargs="+", type=float, default=[0.9, 0.7, 0.5, 0.3])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--restarts", type=int, default=PROTOTYPE_RESTARTS)
    args = p.parse_args(argv)
    hdir = find_history_dir(args.run)
    labels = np.asarray(read_file_list(args.list).labels)
    n = len(labels)
    epoch = list_embed_epochs(hdir)[-1]
    embeddings = load_embeddings(hdir, n, epoch)
    k = int(labels.max()) + 1
    flipped = np.load(args.flipped) if args.flipped else None
    train = knn.float32_copy(embeddings, normalise=True)
    print(f"{hdir}, embed_{epoch}.npy ({n} x {embeddings.shape[1]}), k = {k}, seeds {args.seeds}")
    rows = []
    for name, restarts, rule in (("before: 1 run, hardest kept", 1, "hard"),
                                 (f"after: best of {args.restarts} runs, Sorscher's rule", args.restarts, "auto")):
        scores, objectives = {}, []
        for seed in args.seeds:
            centroids = knn.kmeans(embeddings, k, seed, spherical=True, restarts=restarts)
            objectives.append(knn.kmeans_objective(train, centroids))
            scores[seed] = cosine_to_nearest(embeddings, centroids)
        print(f"{name}: k-means objective over the seeds {min(objectives):.2f} to {max(objectives):.2f}")
        for fraction in args.fractions:
            keep = int(n * fraction)
            easiest = prototype_keeps_easiest(rule, PROTOTYPE_SWITCH, keep, n)
            kept = {seed: set(top(-s if easiest else s, keep, seed).tolist()) for seed, s in scores.items()}
            overlaps = [len(kept[a] & kept[b]) / keep for a, b in itertools.combinations(args.seeds, 2)]
            share = "" if flipped is None else \
                f" | {np.mean([np.isin(flipped, list(kept[s])).mean() for s in args.seeds]):.1%}"
            rows.append(f"| {name} | {fraction:g} | {'easiest' if easiest else 'hardest'} | {min(overlaps):.2f} | "
                        f"{np.mean(overlaps):.2f} | {max(overlaps):.2f}{share} |")
    flipped_column = " | flipped kept" if flipped is not None else ""
    print(f"\n| rule | keep | side | overlap min | mean | max{flipped_column} |")
    print("|---|---:|---|---:|---:|---:|" + ("---:|" if flipped is not None else ""))
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
