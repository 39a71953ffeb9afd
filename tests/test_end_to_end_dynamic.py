"""Dynamic pruning for real: torchrun with 2 processes (gloo, CPU) on the tiny tree of
test_end_to_end.py. The budget is exact and both ranks train equal shards of the same
plan (recomputed here from each checkpoint's scores); the learning rate reaches MIN_LR
over the steps taken; a killed run resumes to a byte-identical history; get_coreset
exports a static coreset from the dynamic run."""
import os
import re

import numpy as np
import pytest
import torch

from data.reader import shard
from dynunc.training.online_pruning import LossScore, plan_epoch
from test_end_to_end import (EPOCHS, data, half_coreset, history, kill_and_resume, metrics, run,  # noqa: F401
                             torchrun)

# EPOCHS = 4: epoch 0 unpruned (no scores), 1 and 2 pruned, 3 the anneal epoch (0.25 x 4).
DYNAMIC = ["TRAIN.DYNAMIC_PRUNE.ENABLE", "True", "TRAIN.DYNAMIC_PRUNE.RATIO", "0.5",
           "TRAIN.DYNAMIC_PRUNE.ANNEAL", "0.25"]
N, SEED, WORLD, BATCH = 33, 7, 2, 4


@pytest.fixture(scope="module")
def dynamic(data):
    root, opts = data
    out = str(root / "dynamic")
    run(torchrun("main_and_produce.py", "--config", "configs/demo-mnist.yaml", "--output", out, "--opts", *opts,
                 *DYNAMIC))
    return out


def scores_after(out, epoch):
    """The loss scores a checkpoint holds (those the next epoch is planned from)."""
    state = torch.load(os.path.join(out, "ckpts", f"ckpt_epoch_{epoch}.pth"), weights_only=True)["dynamic_prune"]
    score = LossScore(N)
    score.last[...], score.seen[...] = state["arrays"]["last"].numpy(), state["arrays"]["seen"].numpy()
    return score.scores()


def plan_lines(out, rank):
    with open(os.path.join(out, f"log_rank{rank}.txt")) as f:
        return [re.sub(r"^\[[^]]*\] ", "", line) for line in f if ": dynamic pruning" in line]


def test_exact_budget_same_plan_on_both_ranks_equal_shards(dynamic):
    records = metrics(dynamic)
    assert [r["prune_dropped"] for r in records][0::3] == [0, 0]  # epoch 0 and the anneal epoch
    for epoch in range(EPOCHS):
        record = records[epoch]
        seen = ~np.isnan(history(dynamic, epoch))
        if epoch in (1, 2):
            plan = plan_epoch(*scores_after(dynamic, epoch - 1), 0.5, SEED, epoch)
            assert record["prune_candidates"] == plan.candidates > 0
            assert record["prune_dropped"] == plan.dropped == round(0.5 * plan.candidates)
            parts = [shard(plan.order, rank, WORLD, BATCH) for rank in range(WORLD)]
            assert len(parts[0]) == len(parts[1])
            expected = np.zeros(N, dtype=bool)
            expected[np.concatenate(parts)] = True
            # Each sample trained by one rank (the recorder saw exactly these): the ranks
            # drew the same plan and split it into equal, disjoint shards.
            np.testing.assert_array_equal(seen, expected)
        assert record["images_seen"] == seen.sum() == (N - record["prune_dropped"]) // WORLD // BATCH * WORLD * BATCH
    assert records[1]["images_seen"] < records[0]["images_seen"]
    # The schedule runs over the steps taken: the cosine reaches MIN_LR (0) at the last one.
    assert records[-1]["lr"] == pytest.approx(0.0, abs=1e-12)
    lines = plan_lines(dynamic, 0)
    assert len(lines) == EPOCHS and lines == plan_lines(dynamic, 1)


def test_killed_dynamic_run_resumes_to_a_byte_identical_history(data, dynamic):
    root, opts = data
    out = str(root / "dynamic_killed")
    kill_and_resume(out, [*opts, *DYNAMIC])
    with open(os.path.join(out, "log_rank0.txt")) as f:
        assert "resumed from" in f.read()
    for epoch in range(EPOCHS):
        for kind in ("prob", "correct", "margin", "el2n"):
            name = os.path.join("pred_prob_history", f"{kind}_{epoch}.npy")
            with open(os.path.join(out, name), "rb") as a, open(os.path.join(dynamic, name), "rb") as b:
                assert a.read() == b.read(), name
    keys = ("epoch", "images_seen", "prune_candidates", "prune_dropped", "lr")
    assert [[r[k] for k in keys] for r in metrics(out)] == [[r[k] for k in keys] for r in metrics(dynamic)]


def test_static_coreset_from_a_dynamic_run(data, dynamic):
    """Skipped samples are unseen in that epoch's history (NaN), as the remainder is:
    get_coreset reads the history as it reads any other."""
    root, _ = data
    dropped = metrics(dynamic)[1]["prune_dropped"]
    assert np.isnan(history(dynamic, 1)).sum() == N - metrics(dynamic)[1]["images_seen"] > dropped > 0
    half_coreset(root, dynamic, str(root / "dynamic_coreset.txt"))
