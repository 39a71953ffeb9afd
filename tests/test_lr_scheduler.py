"""utils/lr_scheduler.py: warm-up, cosine, linear, step, multistep, resume."""
import math

import pytest
import torch

from utils.config import load_config
from utils.lr_scheduler import LRScheduler

UPE = 10  # updates per epoch


def make(name="cosine", epochs=10, warmup=2, base=0.1, warmup_lr=0.001, min_lr=0.0001, *extra, groups=None):
    config = load_config(None, [
        "TRAIN.LR_SCHEDULER.NAME", name, "TRAIN.EPOCHS", str(epochs), "TRAIN.WARMUP_EPOCHS", str(warmup),
        "TRAIN.BASE_LR", str(base), "TRAIN.WARMUP_LR", str(warmup_lr), "TRAIN.MIN_LR", str(min_lr), *extra,
    ])
    params = groups or [{"params": [torch.nn.Parameter(torch.zeros(1))]}]
    optimizer = torch.optim.SGD(params, lr=123.0)
    return optimizer, LRScheduler(optimizer, config, UPE)


def lr(optimizer, group=0):
    return optimizer.param_groups[group]["lr"]


def advance(scheduler, n):
    for _ in range(n):
        scheduler.step()


def lrs(name, total, **kwargs):
    optimizer, scheduler = make(name, **kwargs)
    out = [lr(optimizer)]
    for _ in range(total):
        scheduler.step()
        out.append(lr(optimizer))
    return out


@pytest.mark.parametrize("name", ["cosine", "linear", "step", "multistep"])
def test_warmup(name):
    optimizer, scheduler = make(name, 10, 2, 0.1, 0.001, 0.0001, "TRAIN.LR_SCHEDULER.MULTISTEPS", "[5]")
    assert lr(optimizer) == pytest.approx(0.001)  # applied at construction, replacing the optimizer's lr
    advance(scheduler, 10)
    assert lr(optimizer) == pytest.approx(0.001 + (0.1 - 0.001) * 0.5)
    advance(scheduler, 9)
    assert lr(optimizer) == pytest.approx(0.001 + (0.1 - 0.001) * 19 / 20)
    advance(scheduler, 1)
    assert lr(optimizer) == pytest.approx(0.1)  # end of warm-up: BASE_LR


def test_warmup_is_increasing():
    values = lrs("cosine", 20)
    assert all(b > a for a, b in zip(values, values[1:]))


def test_cosine():
    values = lrs("cosine", 120)
    warmup, total = 20, 100
    assert values[warmup] == pytest.approx(0.1)
    middle = warmup + (total - warmup) // 2
    assert values[middle] == pytest.approx((0.1 + 0.0001) / 2)
    t = warmup + 17
    expected = 0.0001 + 0.5 * (0.1 - 0.0001) * (1 + math.cos(math.pi * 17 / 80))
    assert values[t] == pytest.approx(expected)
    assert values[total] == pytest.approx(0.0001)  # ends at MIN_LR
    assert values[total + 20] == pytest.approx(0.0001)  # and stays there
    after = values[warmup:total + 1]
    assert all(b <= a for a, b in zip(after, after[1:]))


def test_cosine_without_warmup():
    values = lrs("cosine", 100, warmup=0)
    assert values[0] == pytest.approx(0.1)
    assert values[100] == pytest.approx(0.0001)


def test_linear():
    values = lrs("linear", 110)
    assert values[20] == pytest.approx(0.1)
    assert values[60] == pytest.approx((0.1 + 0.0001) / 2)
    assert values[40] == pytest.approx(0.1 + (0.0001 - 0.1) * 0.25)
    assert values[100] == pytest.approx(0.0001)
    assert values[110] == pytest.approx(0.0001)


def test_step():
    values = lrs("step", 100, warmup=0, epochs=10, base=0.8)
    # defaults: DECAY_EPOCHS 30 -> no decay within 10 epochs
    assert values[99] == pytest.approx(0.8)
    optimizer, scheduler = make("step", 10, 0, 0.8, 0.0, 0.0, "TRAIN.LR_SCHEDULER.DECAY_EPOCHS", "3",
                                "TRAIN.LR_SCHEDULER.DECAY_RATE", "0.5")
    expected = {0: 0.8, 29: 0.8, 30: 0.4, 59: 0.4, 60: 0.2, 90: 0.1}
    t = 0
    for target in sorted(expected):
        advance(scheduler, target - t)
        t = target
        assert lr(optimizer) == pytest.approx(expected[target]), target


def test_step_counts_epochs_from_the_start_with_warmup():
    optimizer, scheduler = make("step", 10, 2, 0.8, 0.0, 0.0, "TRAIN.LR_SCHEDULER.DECAY_EPOCHS", "3",
                                "TRAIN.LR_SCHEDULER.DECAY_RATE", "0.1")
    advance(scheduler, 20)
    assert lr(optimizer) == pytest.approx(0.8)
    advance(scheduler, 10)
    assert lr(optimizer) == pytest.approx(0.08)


def test_multistep():
    optimizer, scheduler = make("multistep", 10, 0, 1.0, 0.0, 0.0, "TRAIN.LR_SCHEDULER.MULTISTEPS", "[2, 5]",
                                "TRAIN.LR_SCHEDULER.DECAY_RATE", "0.1")
    expected = {0: 1.0, 19: 1.0, 20: 0.1, 49: 0.1, 50: 0.01, 99: 0.01}
    t = 0
    for target in sorted(expected):
        advance(scheduler, target - t)
        t = target
        assert lr(optimizer) == pytest.approx(expected[target]), target


def test_lr_scale_per_group():
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))]},
              {"params": [torch.nn.Parameter(torch.zeros(1))], "lr_scale": 0.5}]
    optimizer, scheduler = make("cosine", warmup=0, groups=groups)
    assert lr(optimizer, 0) == pytest.approx(0.1)
    assert lr(optimizer, 1) == pytest.approx(0.05)
    advance(scheduler, 50)
    assert lr(optimizer, 1) == pytest.approx(0.5 * lr(optimizer, 0))


@pytest.mark.parametrize("name", ["cosine", "linear", "step", "multistep"])
def test_resume_gives_the_same_lr(name):
    extra = ["TRAIN.LR_SCHEDULER.DECAY_EPOCHS", "4", "TRAIN.LR_SCHEDULER.MULTISTEPS", "[3, 6]"]
    optimizer, scheduler = make(name, 10, 2, 0.1, 0.001, 0.0001, *extra)
    advance(scheduler, 37)
    state = scheduler.state_dict()
    before = lr(optimizer)
    advance(scheduler, 13)
    continued = lr(optimizer)

    optimizer2, scheduler2 = make(name, 10, 2, 0.1, 0.001, 0.0001, *extra)
    scheduler2.load_state_dict(state)
    assert lr(optimizer2) == pytest.approx(before)
    advance(scheduler2, 13)
    assert lr(optimizer2) == pytest.approx(continued)
    assert scheduler2.state_dict() == scheduler.state_dict()


def test_state_dict_is_plain_data():
    _, scheduler = make()
    advance(scheduler, 3)
    state = scheduler.state_dict()
    assert state == {"num_updates": 3}


def test_unknown_schedule():
    with pytest.raises(ValueError, match="cosinus"):
        make("cosinus")
