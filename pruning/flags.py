"""The flag checks that get_coreset.py and report.py share, with the same messages:
method names, fractions, the dynunc window, and opening the history of a list."""
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from data.file_list_index import FileListIndex
from pruning.dynamic_uncertainty import check_fraction, max_window
from pruning.history import check_fingerprint, contiguous_epoch_files, find_history_dir, fingerprint_path
from pruning.scores import METHODS


def check_not_repeated(flag: str, values: Sequence[str]) -> None:
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f"{flag}: {repeated[0]!r} is given twice")


def check_methods(methods: Sequence[str]) -> None:
    """ValueError naming --method for an unknown or repeated method."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"--method: unknown method {unknown[0]!r}; known: {', '.join(METHODS)}")
    check_not_repeated("--method", methods)


def check_window(window: Optional[int], required: bool) -> None:
    """--window: present when dynunc is asked for, and >= 2 when given."""
    if required and window is None:
        raise ValueError("--window is required by method dynunc")
    if window is not None and window < 2:
        raise ValueError(f"--window must be >= 2, got {window}")


def check_window_fits(window: int, include_last: bool, num_epochs: int, hdir: str) -> None:
    if window > max_window(num_epochs, include_last):
        raise ValueError(
            f"--window {window} is too large for {num_epochs} epochs in {hdir}: at most "
            f"{max_window(num_epochs, include_last)}"
            + ("" if include_last else " (the window ending at the last epoch is not used)")
        )


def fraction_keeps(fractions: Sequence[str], num_samples: int) -> Dict[str, int]:
    """{fraction as written: lines kept}; ValueError naming --fraction if one is not a
    number, out of range, keeps nothing, or is given twice."""
    check_not_repeated("--fraction", fractions)
    keeps = {}
    for fraction in fractions:
        try:
            value = float(fraction)
        except ValueError:
            raise ValueError(f"--fraction: {fraction!r} is not a number") from None
        keeps[fraction] = check_fraction(num_samples, value)
    return keeps


def open_history(input_dir: str, index: FileListIndex) -> Tuple[str, List[str]]:
    """(history folder, its prob file per epoch) of the run in `input_dir`, after checking
    that the indexed list is the one it was recorded on (a warning if the run kept no
    fingerprint; HistoryError naming both files if the list differs)."""
    hdir = find_history_dir(input_dir)
    list_path = index.list_path
    if not check_fingerprint(hdir, list_path, index.fingerprint()):
        print(f"warning: {fingerprint_path(hdir)} does not exist (a history from an older run or the paper's "
              f"code): cannot check that {list_path} is the list it was recorded on", file=sys.stderr)
    return hdir, contiguous_epoch_files(hdir)
