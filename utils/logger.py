"""Logging for a run: a human log per rank, the console on rank 0, and one JSON line of
metrics per epoch (rank 0)."""
import logging
import os
import sys
from typing import List

from utils.output_lock import in_use

LOGGER_NAME = ""  # the root logger: library modules log through logging.getLogger(__name__)
LEVEL = logging.INFO


def log_path(output: str, rank: int) -> str:
    return os.path.join(output, f"log_rank{rank}.txt")


def _formatter(rank: int) -> logging.Formatter:
    return logging.Formatter(f"[%(asctime)s rank{rank}] %(name)s %(levelname)s: %(message)s", "%Y-%m-%d %H:%M:%S")


class _HeldRecords(logging.Handler):
    """Records logged before the output folder may be written, for its log file later."""

    def __init__(self):
        super().__init__()
        self.records: List[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def start_logging(rank: int) -> None:
    """Log to the console on rank 0 from now on, and hold every rank's records in memory
    until setup_logging names the folder of the log files (nothing is written there yet)."""
    root = logging.getLogger(LOGGER_NAME)
    root.setLevel(LEVEL)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    if rank == 0:
        console = logging.StreamHandler(sys.stdout)
        console.setFormatter(_formatter(rank))
        root.addHandler(console)
    root.addHandler(_HeldRecords())


def setup_logging(output: str, rank: int) -> logging.Logger:
    """Log to OUTPUT/log_rank{rank}.txt too; the records held since start_logging (called
    here if it was not) are written there first."""
    root = logging.getLogger(LOGGER_NAME)
    held = [h for h in root.handlers if isinstance(h, _HeldRecords)]
    if not held:
        start_logging(rank)
        held = [h for h in root.handlers if isinstance(h, _HeldRecords)]
    root.removeHandler(held[0])
    os.makedirs(output, exist_ok=True)
    file_handler = logging.FileHandler(log_path(output, rank), mode="a")
    file_handler.setFormatter(_formatter(rank))
    for record in held[0].records:
        file_handler.handle(record)
    root.addHandler(file_handler)
    return root


def note_in_earlier_log(output: str, rank: int, name: str, message: str) -> bool:
    """Append one ERROR line to the log an earlier run left in `output`, unless a live
    run holds the folder; creates nothing. Returns whether it was written."""
    path = log_path(output, rank)
    if not os.path.isfile(path) or in_use(output):
        return False
    record = logging.LogRecord(name, logging.ERROR, "", 0, message, None, None)
    with open(path, "a", encoding="utf-8") as f:
        f.write(_formatter(rank).format(record) + "\n")
    return True
