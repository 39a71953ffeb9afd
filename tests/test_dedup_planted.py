"""Deduplication on embeddings a real produce run recorded (issue 17, item 5): a training
list of MNIST digits (the demo's embedded data) in which 100 of 1,000 images are
near-copies of others, each made with Pillow by a small resize, a shift and a JPEG
re-encode, plus 20 exact copies (the same file under another name); a one-process,
3-epoch produce run of resnet_tiny records the embeddings; then `get_coreset.py --dedup`.

Found: a planted copy in one group with its source. False positive: a removed image whose
group holds no image it was planted with (its source or its copy), over all images.

Exact copies are found: the embeddings of an epoch all come from one model (an
eval-mode eval-view pass over every training line after the epoch's last update,
dynunc/training/embeddings.py), so byte-identical images get the same row up to float16
rounding. (When the rows came from the recorder's forwards during the epoch, each with
its own step's weights, exact copies reached only cosine 0.88 and 2 of 20 were found.)

Near-copies are not found in those embeddings, and that test is a strict xfail, which
fails the run the day it passes: NEAR_COPIES_XFAIL says why, with the measured best point.
They are found in the features of a model trained to be invariant to such changes, as a
pretrained self-supervised model is: models/invariant_digits.py trains timm's test_resnet
(NT-Xent on near-copy-like views of the 4,100 digits that the list does not use: the
test's images are never seen), embed.py embeds the list with the saved weights through
the DALI eval view, and get_coreset.py --embeddings reads them with the produce run's
history. Measured (2 CPU cores, training seeds 0 and 1, the embeddings computed with
Pillow rather than DALI; found near / false positives of 1,020): 0.95: 99-100 / 7-9;
0.975: 99 / 0-2; 0.99: 89-93 / 0; through embed.py (DALI's resize), 0.97: 99 / 2 and 0.98:
99 / 1 (docs/benchmarks.md). INVARIANT_THRESHOLD sits in the middle of the window with
>= 90 found and <= 10 false.
"""
import csv
import os
import subprocess
import sys

import pytest

from data.planted_copies import write_planted_list

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ORIGINALS, COPIES, EXACT = 900, 100, 20  # 10% of the 1,000 lines are near-copies; 20 more lines exact copies
EPOCHS = 3
THRESHOLD = 0.95  # the near-copies' test
EXACT_THRESHOLD = 0.999  # equal up to float16 rounding
INVARIANT_THRESHOLD = 0.975  # the self-supervised model's (module docstring)
NEAR_COPIES_XFAIL = (
    "resnet_tiny's embeddings do not separate near-copies (resize, shift, JPEG) from other digits of their class: "
    "over thresholds 0.9-0.999 and every epoch of 3-, 12- and 30-epoch runs at PRODUCE.EMBED_DIM 32, 128 and 512, the "
    "best point with <= 1% false positives finds 10 of 100 (30 epochs, epoch 16, D 128, threshold 0.998, 0.9%); the "
    "source is the nearest neighbour of at most 84% of the copies (benchmarks/bench_dedup_planted.py, "
    "docs/benchmarks.md)")


@pytest.fixture(scope="module")
def produced(tmp_path_factory):
    """The planted list and a one-process produce run on it, with embeddings of the last epoch."""
    root = tmp_path_factory.mktemp("planted")
    planted = write_planted_list(str(root / "train"), ORIGINALS, COPIES, EXACT)
    write_planted_list(str(root / "val"), 100, 0, 0, seed=1)  # any small list: the run validates each epoch
    out = root / "produce"
    cmd = [sys.executable, "main_and_produce.py", "--config", "configs/demo-mnist.yaml", "--output", str(out),
           "--opts", "DATA.DATA_PATH_TRAIN", str(root / "train"), "DATA.DATA_PATH_VAL", str(root / "val"),
           "TRAIN.EPOCHS", str(EPOCHS), "DATA.NUM_WORKERS", "1"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return dict(root=root, out=out, list=root / "train" / "file_list.txt", planted=planted)


def outcome(groups_path: str, planted: dict):
    """(planted copies found, false positives) from a dedup_groups.tsv; `planted`:
    {copy line: source line} of every copy planted."""
    with open(groups_path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    group_of = {int(r["index"]): int(r["group"]) for r in rows}
    partner = {**planted, **{s: c for c, s in planted.items()}}
    found = sum(1 for c, s in planted.items() if c in group_of and group_of.get(s) == group_of[c])
    false = sum(1 for r in rows if r["kept"] == "no"
                and group_of.get(partner.get(int(r["index"]), -1)) != int(r["group"]))
    return found, false


def dedup_run(produced, threshold, embeddings=None):
    out = produced["root"] / f"dedup_{threshold}{'_' + os.path.basename(embeddings) if embeddings else ''}.txt"
    extra = ["--embeddings", str(embeddings)] if embeddings else []
    proc = subprocess.run([sys.executable, "get_coreset.py", "--input", str(produced["out"]), "--dataset_file_list",
                           str(produced["list"]), "--window", "2", "--fraction", "1", "--dedup", str(threshold),
                           "--output", str(out), *extra], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return f"{out}.dedup_groups.tsv"


def test_exact_copies_are_found_in_a_real_runs_embeddings(produced):
    planted = {**produced["planted"]["near"], **produced["planted"]["exact"]}
    groups = dedup_run(produced, EXACT_THRESHOLD)
    _, false = outcome(groups, planted)
    exact_found, _ = outcome(groups, produced["planted"]["exact"])
    assert exact_found == EXACT
    assert false <= 0.01 * (ORIGINALS + COPIES + EXACT), f"{false} false positives"


@pytest.mark.xfail(strict=True, reason=NEAR_COPIES_XFAIL)
def test_planted_near_copies_are_found(produced):
    planted = {**produced["planted"]["near"], **produced["planted"]["exact"]}
    groups = dedup_run(produced, THRESHOLD)
    _, false = outcome(groups, planted)
    near_found, _ = outcome(groups, produced["planted"]["near"])
    assert near_found >= 0.95 * COPIES, f"found {near_found} of {COPIES} planted near-copies"
    assert false <= 0.01 * (ORIGINALS + COPIES + EXACT), f"{false} false positives"


def test_planted_near_copies_are_found_with_a_self_supervised_models_features(produced):
    from models.invariant_digits import train_invariant_model

    root = produced["root"]
    weights = str(root / "invariant.pth")
    train_invariant_model(weights)
    emb = root / "emb_invariant"
    proc = subprocess.run([sys.executable, "embed.py", "--config", "configs/demo-mnist.yaml", "--model", "test_resnet",
                           "--weights", weights, "--img-size", "32", "--output", str(emb), "--opts",
                           "DATA.DATA_PATH_TRAIN", str(root / "train"), "DATA.DATA_PATH_VAL", str(root / "val"),
                           "DATA.NUM_WORKERS", "1"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    planted = {**produced["planted"]["near"], **produced["planted"]["exact"]}
    groups = dedup_run(produced, INVARIANT_THRESHOLD, embeddings=emb)
    _, false = outcome(groups, planted)
    near_found, _ = outcome(groups, produced["planted"]["near"])
    exact_found, _ = outcome(groups, produced["planted"]["exact"])
    assert exact_found == EXACT
    assert near_found >= 0.9 * COPIES, f"found {near_found} of {COPIES} planted near-copies ({false} false positives)"
    assert false <= 0.01 * (ORIGINALS + COPIES + EXACT), f"{false} false positives ({near_found} near-copies found)"
