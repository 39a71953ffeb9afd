"""dynunc/training/online_pruning.py: the rescaled loss is unbiased, the budget is exact, the plan
is a pure function of (scores, seed, epoch), the streaming dynunc score equals its
definition, the per-sample losses are the criterion's; the learning-rate schedule over
pruned epochs; a dynunc run of main.py in one process."""
import json
import math
import os

import numpy as np
import pytest
import torch
from torch import nn

from conftest import ROOT
from data.reader import epoch_permutation, shard
from dynunc.training.online_pruning import (DynamicPruner, DynUncScore, LossScore, anneal_start, check_config, dropped_count,
                                   per_sample_loss, plan_epoch)
from utils.config import load_config
from utils.lr_scheduler import LRScheduler

CONFIG = os.path.join(ROOT, "configs", "demo-mnist.yaml")


def fixed_losses(n=600, seed=0):
    return np.random.default_rng(seed).gamma(2.0, 0.5, n)


def epoch_estimate(losses, plan):
    """The epoch's summed rescaled loss over N: sum over the trained samples of weight x loss."""
    weights = np.ones(len(losses))
    if plan.weighted is not None:
        weights[plan.weighted] = plan.scale
    return float(np.sum(weights[plan.order] * losses[plan.order])) / len(losses)


@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.8])
def test_rescaled_loss_is_an_unbiased_estimate_of_the_full_data_mean(ratio):
    """Many epochs' draws over fixed per-sample losses: the mean estimate is within 5
    standard errors of the full-data mean loss; the bound comes from the estimator's
    variance (simple random sampling without replacement of the kept candidates), which
    the draws also reproduce. Unweighted, the same draws miss by far more."""
    losses = fixed_losses()
    n, draws = len(losses), 3000
    scored = np.ones(n, dtype=bool)
    estimates, unweighted = [], []
    for epoch in range(1, draws + 1):
        plan = plan_epoch(losses, scored, ratio, seed=11, epoch=epoch)
        estimates.append(epoch_estimate(losses, plan))
        unweighted.append(float(losses[plan.order].sum()) / n)
    candidates = losses[losses < losses.mean()]
    c = len(candidates)
    kept = c - dropped_count(ratio, c)
    # Var(sum of the kept candidates) = kept^2 * S^2 / kept * (1 - kept / c); each weighted by c / kept.
    variance = (c / kept) ** 2 * kept * candidates.var(ddof=1) * (1 - kept / c) / n ** 2
    standard_error = math.sqrt(variance / draws)
    truth = losses.mean()
    assert abs(np.mean(estimates) - truth) < 5 * standard_error
    assert np.var(estimates, ddof=1) == pytest.approx(variance, rel=0.2)
    assert abs(np.mean(unweighted) - truth) > 50 * standard_error


def test_the_budget_is_exact_and_only_candidates_are_dropped():
    rng = np.random.default_rng(3)
    for epoch, n in enumerate([10, 97, 1000, 4321], start=1):
        scores = rng.random(n)
        scored = rng.random(n) < 0.9
        for ratio in (0.1, 0.3, 0.5, 0.75):
            plan = plan_epoch(scores, scored, ratio, seed=5, epoch=epoch)
            candidate = scored & (scores < scores[scored].mean())
            assert plan.candidates == candidate.sum()
            assert plan.dropped == round(ratio * plan.candidates)
            trained = np.zeros(n, dtype=bool)
            trained[plan.order] = True
            assert len(plan.order) == len(set(plan.order.tolist())) == n - plan.dropped
            assert np.all(candidate[~trained])  # only candidates are dropped
            if plan.dropped:
                np.testing.assert_array_equal(plan.weighted, candidate & trained)
            else:  # nothing dropped: nothing weighted
                assert plan.weighted is None
            assert plan.scale == plan.candidates / (plan.candidates - plan.dropped)


def test_at_least_one_candidate_is_kept():
    assert dropped_count(0.5, 1) == 0 and dropped_count(0.9, 5) == 4 and dropped_count(0.9, 6) == 5
    assert dropped_count(0.5, 0) == 0


def test_the_plan_depends_on_seed_and_epoch_only():
    scores = fixed_losses(500)
    scored = np.ones(500, dtype=bool)
    a, b = plan_epoch(scores, scored, 0.5, 1, 4), plan_epoch(scores.copy(), scored.copy(), 0.5, 1, 4)
    np.testing.assert_array_equal(a.order, b.order)
    assert not np.array_equal(a.order, plan_epoch(scores, scored, 0.5, 1, 5).order)
    assert not np.array_equal(a.order, plan_epoch(scores, scored, 0.5, 2, 4).order)
    np.random.seed(0)  # the global generator plays no part
    torch.manual_seed(0)
    np.testing.assert_array_equal(a.order, plan_epoch(scores, scored, 0.5, 1, 4).order)
    # The order is epoch_permutation over the kept samples, in index order.
    kept = np.sort(a.order)
    np.testing.assert_array_equal(a.order, kept[epoch_permutation(len(kept), 1, 4)])


def test_without_pruning_the_order_is_the_plain_permutation():
    scores = fixed_losses(200)
    for scored, ratio, prune in ((np.zeros(200, bool), 0.5, True), (np.ones(200, bool), 0.0, True),
                                 (np.ones(200, bool), 0.5, False)):
        plan = plan_epoch(scores, scored, ratio, 3, 2, prune=prune)
        np.testing.assert_array_equal(plan.order, epoch_permutation(200, 3, 2))
        assert plan.weighted is None and plan.dropped == 0 and plan.scale == 1.0


def test_equal_shards_of_a_pruned_epoch():
    plan = plan_epoch(fixed_losses(1001), np.ones(1001, bool), 0.5, 0, 1)
    parts = [shard(plan.order, r, 4, 8) for r in range(4)]
    assert len({len(p) for p in parts}) == 1 and len(parts[0]) % 8 == 0
    together = np.concatenate(parts)
    assert len(set(together.tolist())) == len(together) and set(together.tolist()) <= set(plan.order.tolist())
    assert len(plan.order) - len(together) < 4 * 8 + 4


def infobatch_first_full_epoch(num_epochs, delta):
    """InfoBatch's sampler (NUS-HPC-AI-Lab/InfoBatch, infobatch.py, IBSampler), its
    schedule transcribed: `iterations` starts at 0 and each reset adds 1; the sampler is
    reset once when it is built and once at the start of every epoch (its __iter__);
    a reset prunes while `iterations <= num_epochs * delta` (`stop_prune`), else it
    gives the full data. Returns the first epoch given the full data (num_epochs if none)."""
    stop_prune = num_epochs * delta
    iterations = 0

    def reset():
        nonlocal iterations
        full = iterations > stop_prune
        iterations += 1
        return full

    reset()  # IBSampler.__init__
    for epoch in range(num_epochs):
        if reset():  # the epoch's __iter__
            return epoch
    return num_epochs


def test_anneal_epochs_are_infobatchs():
    from fractions import Fraction

    assert infobatch_first_full_epoch(90, 0.875) == 78  # 78 of 90, where round() gave 79
    for epochs in range(1, 201):  # InfoBatch's default, delta 0.875, exact in binary: its code as it runs
        assert anneal_start(epochs, 0.125) == infobatch_first_full_epoch(epochs, 0.875), epochs
    # Other deltas: its rule with delta x EPOCHS exact. Its code's float product can fall
    # just below a whole number (0.7 x 90 = 62.99999999999999: one pruned epoch less).
    for anneal, delta in (("0.2", "0.8"), ("0.25", "0.75"), ("0.1", "0.9"), ("0.5", "0.5"), ("0.3", "0.7")):
        for epochs in range(1, 201):
            assert anneal_start(epochs, float(anneal)) == infobatch_first_full_epoch(epochs, Fraction(delta)), \
                (anneal, epochs)
    assert infobatch_first_full_epoch(90, 0.7) == 62 and anneal_start(90, 0.3) == 63
    assert anneal_start(8, 0.125) == 7 and anneal_start(90, 0.125) == 78
    assert anneal_start(10, 0.0) == 10 and anneal_start(10, 1.0) == 0


def reference_dynunc(observations, window):
    """The definition: mean over the windows of `window` consecutive observations of the
    std (ddof=1) of the probabilities; None before the first full window."""
    if len(observations) < window:
        return None
    return np.mean([np.std(observations[k:k + window], ddof=1) for k in range(len(observations) - window + 1)])


@pytest.mark.parametrize("window", [2, 3, 5])
def test_streaming_dynunc_equals_its_definition(window):
    rng = np.random.default_rng(window)
    n, epochs = 64, 9
    score = DynUncScore(n, window)
    seen_values = [[] for _ in range(n)]
    for _ in range(epochs):
        observed = rng.random(n).astype(np.float32)
        unseen = rng.random(n) < 0.3  # dropped or in the remainder: not trained this epoch
        observed[unseen] = -np.inf
        for i in np.flatnonzero(~unseen):
            seen_values[i].append(float(observed[i]))
        score.update(observed)
    values, scored = score.scores()
    for i in range(n):
        expected = reference_dynunc(np.array(seen_values[i], dtype=np.float64), window)
        assert scored[i] == (expected is not None)
        if expected is not None:
            assert values[i] == pytest.approx(expected, rel=1e-12)


def test_loss_score_keeps_the_last_loss():
    score = LossScore(4)
    score.update(np.array([1.0, -np.inf, 2.0, -np.inf], dtype=np.float32))
    score.update(np.array([0.5, 3.0, -np.inf, -np.inf], dtype=np.float32))
    values, scored = score.scores()
    np.testing.assert_array_equal(scored, [True, True, True, False])
    np.testing.assert_array_equal(values[scored], [0.5, 3.0, 2.0])


def test_per_sample_loss_is_what_the_criterion_averages():
    from timm.loss import SoftTargetCrossEntropy

    torch.manual_seed(0)
    output, labels = torch.randn(6, 5), torch.randint(0, 5, (6,))
    for criterion in (nn.CrossEntropyLoss(), nn.CrossEntropyLoss(label_smoothing=0.1)):
        torch.testing.assert_close(per_sample_loss(criterion, output, labels).mean(), criterion(output, labels))
    soft = torch.softmax(torch.randn(6, 5), dim=-1)
    torch.testing.assert_close(per_sample_loss(SoftTargetCrossEntropy(), output, soft).mean(),
                               SoftTargetCrossEntropy()(output, soft))
    with pytest.raises(TypeError, match="per-sample loss"):
        per_sample_loss(nn.MSELoss(), output, labels)


def pruner(n=40, score="loss", epochs=8, **extra):
    opts = ["TRAIN.DYNAMIC_PRUNE.SCORE", score]
    for key, value in extra.items():
        opts += [f"TRAIN.DYNAMIC_PRUNE.{key}", str(value)]
    prune = load_config(None, opts).TRAIN.DYNAMIC_PRUNE
    return DynamicPruner(prune, n, epochs, 0, torch.device("cpu"))


def test_batch_loss_weights_the_kept_candidates_and_records_the_scores():
    p = pruner(40)
    torch.manual_seed(1)
    output, labels = torch.randn(40, 3), torch.randint(0, 3, (40,))
    criterion = nn.CrossEntropyLoss()
    p.plan(0)
    for start in (0, 20):  # epoch 0: weights 1, every loss recorded
        batch = torch.arange(start, start + 20)
        torch.testing.assert_close(p.weighted_loss(criterion, output[batch], labels[batch], labels[batch], batch),
                                   criterion(output[batch], labels[batch]))
    p.end_epoch()
    losses = per_sample_loss(criterion, output, labels)
    np.testing.assert_array_equal(p.score.last, losses.numpy())
    plan = p.plan(1)
    assert plan.dropped == round(0.5 * plan.candidates) > 0
    batch = torch.from_numpy(np.sort(plan.order[:16]).astype(np.int64))
    weights = torch.where(torch.from_numpy(plan.weighted)[batch], plan.scale, 1.0)
    torch.testing.assert_close(p.weighted_loss(criterion, output[batch], labels[batch], labels[batch], batch),
                               (losses[batch] * weights).mean())


def test_state_round_trip_and_mismatch_refused():
    a = pruner(30, "dynunc", WINDOW=2)
    rng = np.random.default_rng(0)
    for _ in range(3):
        a.score.update(rng.random(30).astype(np.float32))
    b = pruner(30, "dynunc", WINDOW=2)
    b.load_state_dict(a.state_dict(), "ckpt.pth")
    for x, y in zip(a.score.scores(), b.score.scores()):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError, match="ckpt.pth: its dynamic-pruning scores"):
        pruner(30, "loss").load_state_dict(a.state_dict(), "ckpt.pth")


@pytest.mark.parametrize("key, value, message", [
    ("RATIO", 1.0, "RATIO must be in [0, 1), got 1.0"), ("RATIO", -0.1, "RATIO must be in [0, 1)"),
    ("ANNEAL", 1.5, "ANNEAL must be in [0, 1], got 1.5"), ("SCORE", "entropy", "unknown score 'entropy'"),
    ("WINDOW", 1, "WINDOW must be >= 2")])
def test_config_problems(key, value, message):
    prune = load_config(None, [f"TRAIN.DYNAMIC_PRUNE.{key}", str(value)]).TRAIN.DYNAMIC_PRUNE
    problems = check_config(prune)
    assert len(problems) == 1 and message in problems[0]
    assert check_config(load_config(None, []).TRAIN.DYNAMIC_PRUNE) == []


def schedule(updates_per_epoch, epoch_updates, name="cosine", warmup=2):
    config = load_config(None, ["TRAIN.LR_SCHEDULER.NAME", name, "TRAIN.EPOCHS", str(len(epoch_updates)),
                                "TRAIN.WARMUP_EPOCHS", str(warmup), "TRAIN.BASE_LR", "0.1", "TRAIN.WARMUP_LR",
                                "0.001", "TRAIN.MIN_LR", "0.0001"])
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = LRScheduler(optimizer, config, updates_per_epoch)
    lrs = []
    for epoch, updates in enumerate(epoch_updates):
        scheduler.start_epoch(epoch, updates)
        for _ in range(updates):
            lrs.append(optimizer.param_groups[0]["lr"])
            scheduler.step()
    return lrs, optimizer.param_groups[0]["lr"], scheduler


def test_full_epochs_through_start_epoch_give_the_plain_schedule():
    lrs, _, _ = schedule(10, [10] * 6)
    config = load_config(None, ["TRAIN.EPOCHS", "6", "TRAIN.WARMUP_EPOCHS", "2", "TRAIN.BASE_LR", "0.1",
                                "TRAIN.WARMUP_LR", "0.001", "TRAIN.MIN_LR", "0.0001"])
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    plain = LRScheduler(optimizer, config, 10)
    expected = []
    for _ in range(60):
        expected.append(optimizer.param_groups[0]["lr"])
        plain.step()
    assert lrs == expected


def test_pruned_epochs_span_their_share_of_the_schedule():
    updates = [10, 6, 4, 7, 5, 10]
    lrs, final, scheduler = schedule(10, updates)
    starts = np.cumsum([0] + updates[:-1])
    assert lrs[starts[2]] == pytest.approx(0.1)  # warm-up ends at the start of epoch WARMUP_EPOCHS
    assert lrs[starts[1]] == pytest.approx(0.001 + (0.1 - 0.001) / 2)
    assert lrs[starts[1] + 3] == pytest.approx(0.001 + (0.1 - 0.001) * 1.5 / 2)  # half of epoch 1's 6 steps
    assert final == pytest.approx(0.0001)  # the cosine ends at MIN_LR after the last step taken
    assert all(b < a for a, b in zip(lrs[starts[2]:], lrs[starts[2] + 1:]))
    # Resume from a checkpoint taken at the end of epoch 3: the same rates after it.
    state = dict(scheduler.state_dict())
    assert state == {"num_updates": sum(updates), "epoch": 5, "epoch_updates": 10, "in_epoch": 10}
    _, _, again = schedule(10, updates[:4])
    restored = schedule(10, [10])[2]
    restored.load_state_dict(again.state_dict())
    assert restored.position() == again.position() == 40


def test_a_dynunc_run_in_one_process_prunes_and_logs_images_seen(image_tree, tmp_path):
    from main import main, parse_args

    train, val = image_tree
    out = str(tmp_path / "run")
    main(parse_args(["--config", CONFIG, "--output", out, "--opts", "DATA.DATA_PATH_TRAIN", str(train),
                     "DATA.DATA_PATH_VAL", str(val), "MODEL.NUM_CLASSES", "3", "DATA.IMG_SIZE", "16",
                     "DATA.BATCH_SIZE_TRAIN", "2", "DATA.BATCH_SIZE_VAL", "4", "TRAIN.EPOCHS", "6",
                     "DATA.NUM_WORKERS", "1", "TRAIN.DYNAMIC_PRUNE.ENABLE", "True", "TRAIN.DYNAMIC_PRUNE.SCORE",
                     "dynunc", "TRAIN.DYNAMIC_PRUNE.WINDOW", "2", "TRAIN.DYNAMIC_PRUNE.ANNEAL", "0.2"]))
    with open(os.path.join(out, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    dropped = [r["prune_dropped"] for r in records]
    # 30 samples: epochs 0 and 1 build the first window; epochs 4 and 5 are the anneal
    # epochs (from floor(0.8 x 6) = 4, as InfoBatch's sampler runs it).
    assert dropped[0] == dropped[1] == dropped[4] == dropped[5] == 0 and all(d > 0 for d in dropped[2:4])
    for r in records:
        assert r["prune_dropped"] == round(0.5 * r["prune_candidates"]) or r["epoch"] in (0, 1, 4, 5)
        assert r["images_seen"] == (30 - r["prune_dropped"]) // 2 * 2
    with open(os.path.join(out, "log_rank0.txt")) as f:
        log = f.read()
    assert "epoch 2: dynamic pruning (dynunc): " in log and "epoch 4: dynamic pruning off (anneal: full data)" in log
