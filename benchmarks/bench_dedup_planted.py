"""Can deduplication find planted copies in the embeddings a real produce run records,
and in a pretrained-style model's (embed.py)? ROC points on the demo's digits
(data/planted_copies.py: 900 originals, 100 near-copies made by a small resize, shift and
JPEG re-encode, 20 exact copies), for the criterion of at least 95% of the copies found
with at most 1% false positives.

    python benchmarks/bench_dedup_planted.py [--epochs 3] [--embed-dim 128] [--output DIR]
        [--features produce pretrained untrained] [--steps N]

Features "pretrained": models/invariant_digits.py trains timm's test_resnet (self-
supervised, NT-Xent, on digits that are not in the list: the role of a pretrained model)
to be invariant to resize, shift and JPEG; embed.py embeds the list with its saved weights
through the DALI eval view, and the ROC is taken on that embed_0.npy. "untrained": the
same through embed.py with the untrained weights (what the training adds).

One single-process produce run of configs/demo-mnist.yaml on that list (validating on a
separate list of 100 digits), recording the embeddings of EVERY epoch
(PRODUCE.EMBED_EPOCHS all, PRODUCE.EMBED_DIM --embed-dim): each epoch's embed_{e} comes
from one model, the weights at the end of epoch e (dynunc/training/embeddings.py). For each
epoch, per threshold, SemDeDup as get_coreset.py --dedup runs it (dynunc/scoring/dedup.py,
sqrt(N) clusters): the near and the exact copies found (in one group with their source)
and the false positives (removed images whose group holds no image they were planted
with, over all images); the best point (the most near-copies found with at most 1% false
positives); and, by brute force over all pairs, the share of near-copies whose nearest
neighbour is their source and the exact copies' lowest cosine to theirs. As a diagnostic
(not a setting), the best point again on the rows less their mean. Nothing is asserted.
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
from dynunc.scoring.dedup import deduplicate  # noqa: E402
from dynunc.scoring.knn import float32_copy  # noqa: E402

THRESHOLDS = (0.9, 0.95, 0.97, 0.98, 0.985, 0.99, 0.993, 0.995, 0.997, 0.998, 0.999)
ORIGINALS, NEAR, EXACT = 900, 100, 20
MAX_FALSE = 0.01  # the bound on false positives, a share of all images


def found_and_false(result, planted: dict) -> tuple:
    group_of = np.full(len(result.removed), -1)
    group_of[result.index] = result.group
    partner = {**planted, **{s: c for c, s in planted.items()}}
    found = {c for c, s in planted.items() if group_of[c] >= 0 and group_of[c] == group_of[s]}
    false = [i for i in result.index[~result.kept].tolist()
             if i not in partner or group_of[partner[i]] != group_of[i]]
    return found, len(false)


def roc(embeddings: np.ndarray, near: dict, exact: dict) -> list:
    """[(threshold, near-copies found, exact copies found, false positives)] over THRESHOLDS."""
    points = []
    for t in THRESHOLDS:
        found, false = found_and_false(deduplicate(embeddings, t), {**near, **exact})
        points.append((t, len(found & set(near)), len(found & set(exact)), false))
    return points


def best_point(points: list, n: int) -> str:
    """The ROC point that finds the most near-copies with at most MAX_FALSE false positives."""
    ok = [p for p in points if p[3] <= MAX_FALSE * n]
    if not ok:
        return "none"
    t, found, _, false = max(ok, key=lambda p: (p[1], -p[3]))
    return f"{found} of {NEAR} at {t} ({false / n:.1%})"


def row(label: str, embeddings: np.ndarray, near: dict, exact: dict, n: int) -> str:
    """One table row: nearest-neighbour share, the exact copies' lowest cosine, the ROC
    cells, the best point and the same on the rows less their mean."""
    x = float32_copy(embeddings, normalise=True).astype(np.float64)
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    nearest = sims.argmax(axis=1)
    exact_cos = min(sims[c, s] for c, s in exact.items())
    points = roc(embeddings, near, exact)
    cells = [f"{p[1]} / {p[3] / n:.1%}" + ("" if p[2] == len(exact) else f" (exact {p[2]})") for p in points]
    # Diagnostic, not a setting: the same rows less their mean (post-ReLU features
    # share one dominant direction, which lifts every cosine).
    centred = roc(embeddings.astype(np.float32) - embeddings.astype(np.float32).mean(axis=0), near, exact)
    return (f"| {label} | {np.mean([nearest[c] == s for c, s in near.items()]):.0%} | {exact_cos:.4f} | "
            + " | ".join(cells) + f" | {best_point(points, n)} | {best_point(centred, n)} |")


def embed_with(weights: str, train: str, val: str, out: str) -> np.ndarray:
    """embed.py's embed_0.npy of the planted list with test_resnet and `weights`."""
    subprocess.run([sys.executable, "embed.py", "--config", "configs/demo-mnist.yaml", "--model", "test_resnet",
                    "--weights", weights, "--img-size", "32", "--output", out, "--opts", "DATA.DATA_PATH_TRAIN",
                    train, "DATA.DATA_PATH_VAL", val, "DATA.NUM_WORKERS", "1"],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env=dict(os.environ, OMP_NUM_THREADS="1"))
    return np.load(os.path.join(out, "embed_0.npy"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--embed-dim", type=int, default=128)
    ap.add_argument("--features", nargs="+", default=["produce", "pretrained", "untrained"],
                    choices=["produce", "pretrained", "untrained"])
    ap.add_argument("--steps", type=int, help="the invariant model's training steps (default: the module's)")
    ap.add_argument("--output", help="folder for the data and the run (default: a temporary one)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_dedup_planted_") as tmp:
        root = args.output or tmp
        train, val = os.path.join(root, "train"), os.path.join(root, "val")
        planted = write_planted_list(train, ORIGINALS, NEAR, EXACT)
        write_planted_list(val, 100, 0, 0, seed=1)
        near, exact = planted["near"], planted["exact"]
        n = ORIGINALS + NEAR + EXACT
        header = (" | nearest neighbour is the source | exact copies' min cosine | " + " | ".join(map(str, THRESHOLDS))
                  + " | best point with <= 1% false positives | the same, rows less their mean |")
        rule = "|---:|---:|---:|" + "---:|" * len(THRESHOLDS) + "---|---|"
        print(f"{n} images: {len(near)} near-copies, {len(exact)} exact copies; cells: near-copies found / false "
              f"positives (share of all images)\n")
        if "pretrained" in args.features or "untrained" in args.features:
            import timm
            import torch

            from models.invariant_digits import DEFAULT_STEPS, train_invariant_model

            print("| embed.py features" + header)
            print(rule.replace("---:", "---", 1))
            if "pretrained" in args.features:
                steps = args.steps or DEFAULT_STEPS
                weights = os.path.join(root, "invariant.pth")
                figures = train_invariant_model(weights, steps=steps)
                embeddings = embed_with(weights, train, val, os.path.join(root, "emb_invariant"))
                print(row(f"test_resnet, self-supervised, {steps} steps ({figures['seconds']:.0f} s)", embeddings,
                          near, exact, n), flush=True)
            if "untrained" in args.features:
                torch.manual_seed(0)
                weights = os.path.join(root, "untrained.pth")
                torch.save(timm.create_model("test_resnet", num_classes=0).state_dict(), weights)
                embeddings = embed_with(weights, train, val, os.path.join(root, "emb_untrained"))
                print(row("test_resnet, untrained", embeddings, near, exact, n), flush=True)
            print()
        if "produce" not in args.features:
            return
        out = os.path.join(root, "produce")
        subprocess.run([sys.executable, "main_and_produce.py", "--config", "configs/demo-mnist.yaml", "--output", out,
                        "--opts", "DATA.DATA_PATH_TRAIN", train, "DATA.DATA_PATH_VAL", val, "TRAIN.EPOCHS",
                        str(args.epochs), "DATA.NUM_WORKERS", "1", "PRODUCE.EMBED_DIM", str(args.embed_dim),
                        "PRODUCE.EMBED_EPOCHS", str(list(range(args.epochs)))],
                       cwd=ROOT, check=True, stdout=subprocess.DEVNULL, env=dict(os.environ, OMP_NUM_THREADS="1"))
        print(f"| produce run, {args.epochs} epochs, D = {args.embed_dim}: epoch" + header)
        print(rule)
        for epoch in range(args.epochs):
            embeddings = np.load(os.path.join(out, "pred_prob_history", f"embed_{epoch}.npy"))
            print(row(str(epoch), embeddings, near, exact, n), flush=True)


if __name__ == "__main__":
    main()
