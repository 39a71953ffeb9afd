"""File lists in the paper's format: one line per image, ``/<class_dir>/<file> <label>``.

Paths are relative to the data root (a leading '/' is allowed and ignored when joining).
A coreset file is a subset of the lines of a file list, in the same format.
"""
import os
from array import array
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Tuple

import numpy as np


class FileListError(ValueError):
    """A problem in a file list, naming the file and the line."""


@dataclass
class FileList:
    path: str  # the list file itself, for messages
    root: str  # folder the relative paths are joined to
    files: List[str]  # relative paths as written
    labels: np.ndarray  # int64, one per line
    line_numbers: np.ndarray  # 1-based line number of each entry in `path`

    def __len__(self) -> int:
        return len(self.files)

    def full_path(self, i: int) -> str:
        return os.path.join(self.root, self.files[i].lstrip("/"))

    def where(self, i: int) -> str:
        """'<list>:<line> (<image>)' for error messages."""
        return f"{self.path}:{int(self.line_numbers[i])} ({self.full_path(i)})"

    @property
    def num_classes_seen(self) -> int:
        return int(self.labels.max()) + 1 if len(self.labels) else 0


def parse_line(line: str, path: str, lineno: int):
    """Split one line into (relative path, label); raise FileListError if malformed."""
    parts = line.rsplit(maxsplit=1)
    if len(parts) != 2:
        raise FileListError(f"{path}:{lineno}: expected '<relative path> <label>', got {line!r}")
    name, label = parts
    try:
        value = int(label)
    except ValueError:
        raise FileListError(f"{path}:{lineno}: label {label!r} is not an integer") from None
    return name, value


def read_file_list(path: str, root: Optional[str] = None, num_classes: Optional[int] = None) -> FileList:
    """Read and validate a file list. Blank lines are skipped (and not counted as entries).

    `root` defaults to the list's folder. With `num_classes`, a label outside
    [0, num_classes) is an error naming the line.
    """
    if root is None:
        root = os.path.dirname(os.path.abspath(path))
    files, labels, linenos = [], [], []
    try:
        f = open(path, "r", encoding="utf-8")
    except FileNotFoundError:
        raise FileListError(f"file list not found: {path}") from None
    with f:
        for lineno, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            name, label = parse_line(line, path, lineno)
            if label < 0 or (num_classes is not None and label >= num_classes):
                bound = f"[0, {num_classes})" if num_classes is not None else ">= 0"
                raise FileListError(f"{path}:{lineno}: label {label} is outside {bound}")
            files.append(name)
            labels.append(label)
            linenos.append(lineno)
    if not files:
        raise FileListError(f"{path}: the file list is empty")
    return FileList(path, root, files, np.asarray(labels, dtype=np.int64), np.asarray(linenos, dtype=np.int64))


def read_lines(path: str) -> List[str]:
    """The non-blank lines of a file list, as written (without the newline)."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            return [line.rstrip("\n") for line in f if line.strip()]
    except FileNotFoundError:
        raise FileListError(f"file list not found: {path}") from None


def count_lines(path: str) -> int:
    """The number of entries read_lines(path) returns (non-blank lines), without keeping them."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            return sum(1 for line in f if line.strip())
    except FileNotFoundError:
        raise FileListError(f"file list not found: {path}") from None


def read_labels(path: str) -> Tuple[np.ndarray, Dict[int, str]]:
    """The labels of a file list (int64, one per entry) and, per label, the class folder
    of its first entry (the path's first component, '' if none), streaming the file: no
    per-line Python object is kept (ImageNet-21K: 13M lines). FileListError naming the
    line if one is malformed or has a negative label, or if the list is empty."""
    labels = array("q")
    class_dirs: Dict[int, str] = {}
    try:
        f = open(path, "r", encoding="utf-8")
    except FileNotFoundError:
        raise FileListError(f"file list not found: {path}") from None
    with f:
        for lineno, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            name, label = parse_line(line, path, lineno)
            if label < 0:
                raise FileListError(f"{path}:{lineno}: label {label} is outside >= 0")
            if label not in class_dirs:
                class_dirs[label] = name.lstrip("/").split("/")[0] if "/" in name.lstrip("/") else ""
            labels.append(label)
    if not labels:
        raise FileListError(f"{path}: the file list is empty")
    return np.frombuffer(labels, dtype=np.int64).copy(), class_dirs


def read_entries(path: str, indices: Iterable[int]) -> Dict[int, str]:
    """{entry index: relative path} for the given entries (0-based, non-blank lines),
    streaming the file. FileListError if an index is past the end or its line is malformed."""
    wanted = set(int(i) for i in indices)
    found: Dict[int, str] = {}
    if not wanted:
        return found
    last = max(wanted)
    index = -1
    try:
        f = open(path, "r", encoding="utf-8")
    except FileNotFoundError:
        raise FileListError(f"file list not found: {path}") from None
    with f:
        for lineno, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            index += 1
            if index in wanted:
                found[index] = parse_line(line, path, lineno)[0]
            if index == last:
                break
    if last not in found:
        raise FileListError(f"{path}: has {index + 1} entries, entry {last} was asked for")
    return found
