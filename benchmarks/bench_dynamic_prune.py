"""What dynamic pruning's bookkeeping costs the training loop (TRAIN.DYNAMIC_PRUNE).

    python benchmarks/bench_dynamic_prune.py [--n 1281167] [--batch 128 256] [--classes 1000] [--device cpu]

1. per step: the loss and its backward to the logits with dynamic pruning (per-sample
   loss, the weight lookup, the score observation: DynamicPruner.weighted_loss) against
   the plain criterion, on the same logits, for each score; and the operators each adds
   (torch profiler), which is what it costs on a GPU, where each is one small kernel;
2. per epoch at N samples: the plan (threshold, the draw, the kept order) and the end of
   the epoch (gather, score update; world size 1), for each score, about 25% of the
   samples not trained that epoch; the peak RSS of this process.
On the CPU the figures are CPU time of the one thread that does the work (the machine may
be shared); on a GPU, wall time with the device synchronised.
Nothing is asserted; the figures are printed.
"""
import argparse
import os
import sys
import time

import numpy as np

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # the profiler's start/stop notices
import torch  # noqa: E402
from torch import nn  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.measure import this_process  # noqa: E402
from engine import seconds_per_call  # noqa: E402
from dynunc.training.online_pruning import SCORES, DynamicPruner  # noqa: E402
from utils.config import load_config  # noqa: E402


def make_pruner(score: str, n: int, device: torch.device) -> DynamicPruner:
    prune = load_config(None, ["TRAIN.DYNAMIC_PRUNE.SCORE", score]).TRAIN.DYNAMIC_PRUNE
    return DynamicPruner(prune, n, 90, 0, device)


def operators(fn) -> int:
    """The operators one call of `fn` runs (forward and backward), as the profiler counts
    them (its start/stop notices on stderr are silenced)."""
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
                fn()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    return sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))


def cpu_us_per_call(fn, warmup: int, iters: int) -> float:
    """CPU time of this thread per call, in microseconds (torch on one thread: all the
    work is this thread's). On a shared machine, wall time (engine.seconds_per_call)
    counts the time other jobs hold the cores; this does not."""
    for _ in range(warmup):
        fn()
    start = time.thread_time()
    for _ in range(iters):
        fn()
    return (time.thread_time() - start) / iters * 1e6


def per_step(args, device: torch.device) -> None:
    """Plain and pruned calls timed in alternation (--rounds), medians compared: a busy
    machine's drift hits both alike."""
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    for classes in args.classes:
        for batch in args.batch:
            logits = (torch.randn(batch, classes, device=device) * 3).requires_grad_()
            labels = torch.randint(0, classes, (batch,), device=device)
            indices = torch.randint(0, args.n, (batch,), device=device)

            def plain():
                criterion(logits, labels).backward()
                logits.grad = None

            calls = {"plain": plain}
            for score in SCORES:
                pruner = make_pruner(score, args.n, device)
                pruner.weighted[indices[::2]] = True  # half the batch weighted, as in a pruned epoch
                pruner.scale = 2.0

                def pruned(pruner=pruner):
                    pruner.weighted_loss(criterion, logits, labels, labels, indices).backward()
                    logits.grad = None

                calls[score] = pruned
            times = {name: [] for name in calls}
            for round_ in range(args.rounds + 1):  # round 0 warms the allocator and caches, and is dropped
                for name, fn in calls.items():
                    if round_ == 0:
                        cpu_us_per_call(fn, 0, args.iters)
                        continue
                    if device.type == "cpu":
                        times[name].append(cpu_us_per_call(fn, 5, args.iters))
                    else:
                        times[name].append(seconds_per_call(fn, device, 5, args.iters) * 1e6)
            base = float(np.median(times["plain"]))
            base_ops = operators(plain)
            for score in SCORES:
                cost = float(np.median(times[score]))
                clock = "CPU" if device.type == "cpu" else "wall"
                print(f"per step, batch {batch} x {classes} logits, {device}, score {score}: loss + backward ({clock}) "
                      f"{cost:.0f} us against {base:.0f} us plain (+{cost - base:.0f} us, medians of "
                      f"{args.rounds} alternating rounds of {args.iters}); {operators(calls[score])} operators "
                      f"against {base_ops}")


def per_epoch(args, device: torch.device) -> None:
    rng = np.random.default_rng(0)
    for score in SCORES:
        pruner = make_pruner(score, args.n, device)
        plans, ends = [], []
        for epoch in range(args.epochs):
            start = time.thread_time()
            plan = pruner.plan(epoch)
            plans.append(time.thread_time() - start)
            values = rng.gamma(2.0, 0.5, args.n) if score == "loss" else rng.random(args.n)
            values[rng.random(args.n) < 0.25] = -np.inf  # dropped or in the remainder
            pruner.observed.copy_(torch.from_numpy(values.astype(np.float32)))
            start = time.thread_time()
            pruner.end_epoch()
            ends.append(time.thread_time() - start)
        pruned = plans[-3:]  # the last epochs have scores and drop samples
        print(f"per epoch, N {args.n:,}, score {score}: plan {np.median(pruned):.3f} s (median of the last 3 of "
              f"{args.epochs}; {plan.dropped:,} of {plan.candidates:,} candidates dropped), end of epoch "
              f"{np.median(ends):.3f} s (median)")
    print(f"peak RSS of this process: {this_process(0.0).peak_rss_mib:.0f} MiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_281_167)
    ap.add_argument("--batch", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--classes", type=int, nargs="+", default=[1000])
    ap.add_argument("--epochs", type=int, default=6, help="epochs simulated for the per-epoch figures")
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steady figures on a busy machine)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    per_step(args, device)
    per_epoch(args, device)


if __name__ == "__main__":
    main()
