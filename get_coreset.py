"""Select a coreset from a produce run's prediction history by dynamic uncertainty.

    python get_coreset.py --input OUTPUT --dataset_file_list LIST --fraction 0.75 \
        --window 10 --output CORESET

`--input` is the produce run's output folder (history in OUTPUT/pred_prob_history/) or
the history folder itself. Epoch files are prob_{epoch}.npy (NaN = unseen) or the
paper's prob_{epoch}.txt (0 = unseen); epochs must run 0..K-1 without a gap.

By default the scores are exactly the paper's (REFERENCE.md section 2): K-J windows,
the window that ends at the last epoch is NOT used (`--include-last-window` adds it).
The int(N * fraction) highest scores are kept, ties going to the lower line index.

Writes, atomically: CORESET (the kept lines of LIST in LIST's order) and
CORESET.scores.npy (float64, the score of every line of LIST). On any error nothing is
written and the exit code is 2.
"""
import argparse
import os
import sys
import time
from typing import Iterator, List, Optional, Sequence

import numpy as np

from data.file_list import FileListError
from data.list_lines import count_entries, write_entries
from utils.dynamic_uncertainty import check_fraction, dynamic_uncertainty_scores, max_window, select_coreset
from utils.history import HistoryError, contiguous_epoch_files, find_history_dir, load_epoch_prob
from utils.io import atomic_open, atomic_save_npy


def scores_path(output: str) -> str:
    return output + ".scores.npy"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="get_coreset.py",
        description="Keep the samples with the highest dynamic uncertainty.",
    )
    p.add_argument("--input", required=True, help="produce run's output folder, or its pred_prob_history folder")
    p.add_argument("--dataset_file_list", required=True, help="the training file list the history was recorded on")
    p.add_argument("--fraction", required=True, type=float, help="fraction of lines to keep, in (0, 1]")
    p.add_argument("--window", required=True, type=int, help="window length J (>= 2, <= number of epochs - 1)")
    p.add_argument("--output", required=True, help="coreset file to write; scores go to OUTPUT.scores.npy")
    p.add_argument(
        "--include-last-window",
        action="store_true",
        help="also score the window ending at the last epoch (the paper's code does not; "
        "then window may be up to the number of epochs)",
    )
    return p


def _iter_probs(paths: Sequence[str], num_samples: int) -> Iterator[np.ndarray]:
    for path in paths:
        yield load_epoch_prob(path, expected_len=num_samples, mmap=True)


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (HistoryError, FileListError, ValueError) as e:
        parser.error(str(e))  # exits with code 2
    return 2  # unreachable


def run(args: argparse.Namespace) -> int:
    # Cheap checks first; nothing is written until every check has passed and the
    # scores are computed.
    if args.window < 2:
        raise ValueError(f"--window must be >= 2, got {args.window}")
    listed = os.path.realpath(args.dataset_file_list)
    for written in (args.output, scores_path(args.output)):
        if os.path.realpath(written) == listed:
            raise ValueError(f"{written!r} would overwrite --dataset_file_list {args.dataset_file_list!r}")
    # The list's lines are streamed into the coreset after scoring (never all held).
    n = count_entries(args.dataset_file_list)
    if n == 0:
        raise ValueError(f"{args.dataset_file_list}: the file list is empty")
    keep = check_fraction(n, args.fraction)
    hdir = find_history_dir(args.input)
    paths = contiguous_epoch_files(hdir)
    if args.window > max_window(len(paths), args.include_last_window):
        raise ValueError(
            f"--window {args.window} is too large for {len(paths)} epochs in {hdir}: at most "
            f"{max_window(len(paths), args.include_last_window)}"
            + ("" if args.include_last_window else " (the window ending at the last epoch is not used)")
        )

    t0 = time.perf_counter()
    scores = dynamic_uncertainty_scores(_iter_probs(paths, n), n, args.window, args.include_last_window)
    kept = select_coreset(scores, args.fraction, keep=keep)
    elapsed = time.perf_counter() - t0
    # The coreset is committed last: a refusal while copying the lines (the list
    # changed) or while saving the scores leaves neither file written.
    with atomic_open(args.output, "wb") as f:
        write_entries(args.dataset_file_list, kept, n, f)
        atomic_save_npy(scores_path(args.output), scores)
    print(
        f"scored {n} lines over {len(paths)} epochs (window {args.window}) in {elapsed:.1f}s; "
        f"scores -> {scores_path(args.output)}",
        file=sys.stderr,
    )
    print(f"kept {len(kept)} of {n} lines (fraction {args.fraction}) -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
