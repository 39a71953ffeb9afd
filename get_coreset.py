"""Select coresets from a produce run's prediction history: dynamic uncertainty (the
paper's method, the default) and the standard baselines that need only training
dynamics, for one or several fractions, from one pass over the history.

    python get_coreset.py --input OUTPUT --dataset_file_list LIST --fraction 0.75 \
        --window 10 --output CORESET
    python get_coreset.py --input OUTPUT --dataset_file_list LIST --fraction 0.5 0.75 0.9 \
        --method dynunc forgetting el2n aum variability confidence random --window 10 \
        --output out/{method}_{fraction}.txt

`--input` is the produce run's output folder (history in OUTPUT/pred_prob_history/) or
the history folder itself. Epoch files are prob_{epoch}.npy (NaN = unseen) or the
paper's prob_{epoch}.txt (0 = unseen), with correct_/margin_/el2n_{epoch}.npy beside
them for the methods that need those; epochs must run 0..K-1 without a gap.

By default (dynunc) the scores are exactly the paper's (REFERENCE.md section 2): K-J
windows, the window that ends at the last epoch is NOT used (`--include-last-window`
adds it). The int(N * fraction) highest scores are kept, ties going to the lower line
index (pruning/scores.py: the methods; pruning/select.py: the selection rules).

Writes, atomically and all together at the end: each coreset (the kept lines of LIST
in LIST's order) and, once per method, its scores (float64, one per line of LIST). On
any refusal nothing is written and the exit code is 2; an interrupted run leaves the
old outputs as they were.
"""
import argparse
import contextlib
import os
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from data.file_list import FileListError, read_file_list
from data.list_lines import count_entries, write_entries
from pruning.flags import (check_methods, check_not_repeated, check_window, check_window_fits, fraction_keeps,
                           open_history)
from pruning.history import HistoryError, check_records, record_loader
from pruning.scores import METHODS, ScoreParams, parse_epoch_slice, score_history
from pruning.select import CCS, Ranking
from utils.io import atomic_group, remove_stale_temporaries

METHOD_PLACEHOLDER, FRACTION_PLACEHOLDER = "{method}", "{fraction}"
SCORES_FRACTION = "all"  # what {fraction} becomes in a scores file's name


def scores_path(output: str) -> str:
    return output + ".scores.npy"


def _method_help() -> str:
    return "; ".join(f"{name}: {m.score} ({m.paper})" for name, m in METHODS.items())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="get_coreset.py",
        description="Keep the samples with the highest pruning scores (dynamic uncertainty by default).",
    )
    p.add_argument("--input", required=True, help="produce run's output folder, or its pred_prob_history folder")
    p.add_argument("--dataset_file_list", required=True, help="the training file list the history was recorded on")
    p.add_argument("--fraction", required=True, nargs="+", metavar="F",
                   help="fraction(s) of lines to keep, each in (0, 1]")
    p.add_argument("--method", nargs="+", default=["dynunc"], metavar="NAME",
                   help=f"scoring method(s), default dynunc. {_method_help()}")
    p.add_argument(
        "--output", required=True,
        help="coreset file to write. With several methods it must contain {method}, with several fractions "
        "{fraction} (as written in --fraction), e.g. out/{method}_{fraction}.txt. Each method's scores go "
        "once to OUTPUT.scores.npy, with {fraction} written as 'all' (out/dynunc_all.txt.scores.npy)",
    )
    p.add_argument("--window", type=int,
                   help="dynunc: window length J (>= 2, <= number of epochs - 1); required by dynunc only")
    p.add_argument(
        "--include-last-window",
        action="store_true",
        help="dynunc: also score the window ending at the last epoch (the paper's code does not; "
        "then window may be up to the number of epochs)",
    )
    p.add_argument("--epochs", metavar="START:STOP",
                   help="el2n: average EL2N over these epochs, a Python slice of the recorded epochs 0..K-1. "
                   "Default: EL2N of the single epoch K//10 (at least 1), about 10%% into training, as Paul et al. "
                   "score one early checkpoint; a sample not seen in that epoch takes its next seen epoch's")
    p.add_argument("--seed", type=int, default=0,
                   help="ties at a cut: which of the tied images are kept (a uniform draw); random: the subset "
                   "drawn; --ccs: the draws in each bin")
    p.add_argument("--class-balanced", action="store_true",
                   help="each class keeps its share of the budget, in proportion to its size (largest remainders); "
                   "top scores (or CCS) within the class. Classes: the file list's labels")
    p.add_argument("--ccs", type=float, metavar="BETA",
                   help="coverage-centric selection (Zheng et al. 2023): drop the hardest BETA fraction (BETA in "
                   "[0, 1)), then spread the budget over equal-width score bins, smallest bin first")
    p.add_argument("--ccs-bins", type=int, default=50, help="--ccs: the number of score bins (default 50)")
    return p


@dataclass(frozen=True)
class Output:
    method: str
    fraction: str  # as written on the command line
    keep: int
    path: str


def render(template: str, method: str, fraction: str) -> str:
    return template.replace(METHOD_PLACEHOLDER, method).replace(FRACTION_PLACEHOLDER, fraction)


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (HistoryError, FileListError, ValueError) as e:
        parser.error(str(e))  # exits with code 2
    except KeyboardInterrupt:
        print("get_coreset.py: interrupted; no output was replaced", file=sys.stderr)
        return 130
    return 2  # unreachable


def check_arguments(args: argparse.Namespace) -> None:
    """The checks that need neither the list nor the history."""
    check_methods(args.method)
    check_not_repeated("--fraction", args.fraction)
    if "dynunc" in args.method:  # --window is ignored by the other methods
        check_window(args.window, required=True)
    for flag, value, method in (("--epochs", args.epochs, "el2n"),):
        if value is not None and method not in args.method:
            print(f"warning: {flag} is used by method {method} only; ignored", file=sys.stderr)
    if args.ccs is not None:
        CCS(args.ccs, args.ccs_bins, args.seed)  # ValueError naming --ccs / --ccs-bins
    for flag, needed in ((METHOD_PLACEHOLDER, len(args.method) > 1), (FRACTION_PLACEHOLDER, len(args.fraction) > 1)):
        if needed and flag not in args.output:
            raise ValueError(f"--output {args.output!r} must contain {flag}: several "
                             f"{'methods' if flag == METHOD_PLACEHOLDER else 'fractions'} are asked for")


def plan_outputs(args: argparse.Namespace, n: int) -> List[Output]:
    return [Output(m, fraction, keep, render(args.output, m, fraction))
            for fraction, keep in fraction_keeps(args.fraction, n).items() for m in args.method]


def method_scores_path(template: str, method: str) -> str:
    return scores_path(render(template, method, SCORES_FRACTION))


def check_output_paths(args: argparse.Namespace, outputs: Sequence[Output]) -> None:
    listed = os.path.realpath(args.dataset_file_list)
    written = [o.path for o in outputs] + [method_scores_path(args.output, m) for m in args.method]
    seen: Dict[str, str] = {}
    for path in written:
        real = os.path.realpath(path)
        if real == listed:
            raise ValueError(f"{path!r} would overwrite --dataset_file_list {args.dataset_file_list!r}")
        if real in seen:
            raise ValueError(f"--output {args.output!r}: two outputs would both be written to {path!r}")
        seen[real] = path


def check_history(args: argparse.Namespace, hdir: str, num_epochs: int, params: ScoreParams) -> None:
    """--window against K, and every record file the methods read exists (naming the
    first missing one and the method), before anything is read."""
    if "dynunc" in args.method:
        check_window_fits(args.window, args.include_last_window, num_epochs, hdir)
    check_records(hdir, args.method, params, num_epochs)


def run(args: argparse.Namespace) -> int:
    # Cheap checks first; nothing is written until every check has passed and every
    # score is computed.
    check_arguments(args)
    # The list is never held as Python strings (13M lines would take ~1.3 GB): it is
    # counted here, and after scoring copied to the coresets in byte blocks.
    n = count_entries(args.dataset_file_list)
    if n == 0:
        raise ValueError(f"{args.dataset_file_list}: the file list is empty")
    outputs = plan_outputs(args, n)
    check_output_paths(args, outputs)
    hdir, paths = open_history(args.input, args.dataset_file_list, n)
    num_epochs = len(paths)
    el2n_epochs = (parse_epoch_slice(args.epochs, num_epochs) if args.epochs is not None and "el2n" in args.method
                   else None)
    params = ScoreParams(args.window, args.include_last_window, el2n_epochs, args.seed)
    check_history(args, hdir, num_epochs, params)
    labels = None
    if args.class_balanced:
        labels = read_file_list(args.dataset_file_list).labels
        if len(labels) != n:
            raise ValueError(f"{args.dataset_file_list}: changed while being read ({n} lines, now {len(labels)})")
    ccs = CCS(args.ccs, args.ccs_bins, args.seed) if args.ccs is not None else None

    load = record_loader(hdir, paths, n, mmap=True)

    t0 = time.perf_counter()
    scores = score_history(args.method, num_epochs, n, load, params)
    kept = {}  # output -> one bool per line (N bytes, not 8 bytes per kept line)
    cuts = {}  # output -> how its cut meets ties (select.Cut)
    for method in args.method:
        ranking = Ranking(scores[method], labels, args.seed)
        for o in outputs:
            if o.method == method:
                try:
                    indices = ranking.select(o.keep, class_balanced=args.class_balanced, ccs=ccs)
                except ValueError as e:
                    if ccs is None:
                        raise
                    raise ValueError(f"--ccs {args.ccs} with --fraction {o.fraction} ({method}): {e}") from None
                kept[o] = np.zeros(n, dtype=bool)
                kept[o][indices] = True
                if ccs is None:
                    cuts[o] = ranking.cut(o.keep, class_balanced=args.class_balanced)
    elapsed = time.perf_counter() - t0
    written = [method_scores_path(args.output, m) for m in args.method] + [o.path for o in outputs]
    t1 = time.perf_counter()
    for path in written:
        remove_stale_temporaries(path)  # left by a run of this command killed while writing
    with atomic_group() as group:
        for method in args.method:
            group.save_npy(method_scores_path(args.output, method), scores[method])
        with contextlib.ExitStack() as files:
            targets = [(kept[o], files.enter_context(group.open(o.path, "wb"))) for o in outputs]
            write_entries(args.dataset_file_list, targets, n)
    size = sum(os.path.getsize(path) for path in written)
    print(
        f"scored {n} lines over {num_epochs} epochs ({', '.join(args.method)}"
        + (f"; window {args.window}" if args.window is not None and "dynunc" in args.method else "")
        + f") in {elapsed:.1f}s; wrote {len(written)} files ({size / 2**20:.0f} MiB, synced to disk) in "
        f"{time.perf_counter() - t1:.1f}s; scores -> {', '.join(method_scores_path(args.output, m) for m in args.method)}",
        file=sys.stderr,
    )
    rule = ", class-balanced" if args.class_balanced else ""
    rule += f", ccs {args.ccs}" if ccs is not None else ""
    for o in outputs:
        detail = "" if (o.method == "dynunc" and not rule) else f", {o.method}{rule}"
        ties = f"; {cuts[o].describe()} (--seed {args.seed})" if o in cuts and cuts[o].tied else ""
        print(f"kept {int(kept[o].sum())} of {n} lines (fraction {o.fraction}{detail}{ties}) -> {o.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
