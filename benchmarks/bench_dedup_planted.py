"""Can deduplication find planted copies in the embeddings a real produce run records?
ROC points on the demo's digits (data/planted_copies.py: 900 originals, 100 near-copies
made by a small resize, shift and JPEG re-encode, 20 exact copies), for the issue's
criterion (at least 95% of the copies found, at most 1% false positives).

    python benchmarks/bench_dedup_planted.py [--epochs 3] [--output DIR]

One single-process produce run of configs/demo-mnist.yaml on that list, validating on
the same list, so that the last epoch gives two embeddings of every image: embed_{E}
(the recorder's, each image on its own training step's eval-view forward, with that
step's weights) and val_embed_{E} (the validation pass, with the epoch's final weights).
For each, per threshold, SemDeDup as get_coreset.py --dedup runs it (pruning/dedup.py,
sqrt(N) clusters): the near and the exact copies found (in one group with their
source) and the false positives (removed images whose group holds no image they were
planted with, over all images); and, by brute force over all pairs, the share of
near-copies whose nearest neighbour is their source. Nothing is asserted.
"""
import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from data.planted_copies import write_planted_list  # noqa: E402
from pruning.dedup import deduplicate  # noqa: E402
from pruning.knn import float32_copy  # noqa: E402

THRESHOLDS = (0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.998, 0.999)


def found_and_false(result, planted: dict) -> tuple:
    group_of = np.full(len(result.removed), -1)
    group_of[result.index] = result.group
    partner = {**planted, **{s: c for c, s in planted.items()}}
    found = {c for c, s in planted.items() if group_of[c] >= 0 and group_of[c] == group_of[s]}
    false = [i for i in result.index[~result.kept].tolist()
             if i not in partner or group_of[partner[i]] != group_of[i]]
    return found, len(false)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--output", help="folder for the data and the run (default: a temporary one)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_dedup_planted_") as tmp:
        root = args.output or tmp
        train = os.path.join(root, "train")
        planted = write_planted_list(train, 900, 100, 20)
        out = os.path.join(root, "produce")
        subprocess.run([sys.executable, "main_and_produce.py", "--config", "configs/demo-mnist.yaml", "--output", out,
                        "--opts", "DATA.DATA_PATH_TRAIN", train, "DATA.DATA_PATH_VAL", train, "TRAIN.EPOCHS",
                        str(args.epochs), "DATA.NUM_WORKERS", "1"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
        near, exact = planted["near"], planted["exact"]
        n = 1020
        last = args.epochs - 1
        print(f"{n} images: {len(near)} near-copies, {len(exact)} exact copies; embeddings of epoch {last}")
        for kind in ("embed", "val_embed"):
            embeddings = np.load(os.path.join(out, "pred_prob_history", f"{kind}_{last}.npy"))
            x = float32_copy(embeddings, normalise=True).astype(np.float64)
            sims = x @ x.T
            np.fill_diagonal(sims, -np.inf)
            nearest = sims.argmax(axis=1)
            exact_cos = np.array([sims[c, s] for c, s in exact.items()])
            print(f"\n{kind}_{last}: near-copies whose nearest neighbour is their source "
                  f"{np.mean([nearest[c] == s for c, s in near.items()]):.0%}; exact copies' cosine to their source "
                  f"min {exact_cos.min():.4f}, median {np.median(exact_cos):.4f}\n")
            print("| threshold | near-copies found | exact copies found | false positives (share of all images) |")
            print("|---:|---:|---:|---:|")
            for t in THRESHOLDS:
                result = deduplicate(embeddings, t)
                found, false = found_and_false(result, {**near, **exact})
                print(f"| {t} | {len(found & set(near))} of {len(near)} | {len(found & set(exact))} of {len(exact)} "
                      f"| {false} ({false / n:.1%}) |")


if __name__ == "__main__":
    main()
