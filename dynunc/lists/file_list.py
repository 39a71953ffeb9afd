"""File lists in the paper's format: one line per image, ``/<class_dir>/<file> <label>``.

Paths are relative to the data root (a leading '/' is allowed and ignored when joining).
The label is the last whitespace-separated token; the path is everything before it (it
may hold spaces). Lines may end in '\\n' or '\\r\\n', the file may start with a UTF-8
byte-order mark, and the last line may lack its newline (dynunc/lists/parse.py).

A file list is parsed once into a memory-mapped index (dynunc/lists/index.py), so
that a 13M-line list costs each process a fraction of a second of CPU and tens of MB,
not gigabytes of Python strings (docs/benchmarks.md, "Figures behind code choices"). A coreset file is a subset of the lines of a file list, in the same
format; it is read against that full list, and each of its entries maps to its row there.
"""
import os
from collections.abc import Sequence
from typing import Iterator, List, Optional

import numpy as np

from dynunc.lists.index import FileListIndex, SequenceFinder, line_bound, open_index
from dynunc.lists.parse import FileListError, iter_blocks, iter_lines, label_error, open_list_file, parse_line

__all__ = ["FileList", "FileListError", "parse_line", "read_coreset", "read_file_list", "read_lines"]


class FileList:
    """The entries of a file list (or of a coreset of one), backed by the full list's index.

    `labels` (int32) and `line_numbers` are arrays, one per entry; `files` is a read-only
    sequence of the relative paths as written; `rows` the entries' rows in the full list.
    """

    def __init__(self, path: str, root: str, index: FileListIndex, rows: Optional[np.ndarray] = None,
                 line_numbers: Optional[np.ndarray] = None, labels: Optional[np.ndarray] = None):
        self.path = path  # the list (or coreset) file itself, for messages
        self.root = root  # folder the relative paths are joined to
        self.index = index  # the full list's index
        self._rows = rows  # None: every row of the index, in order
        if rows is None:
            self.labels = index.labels
            self.line_numbers = index.lines
        else:
            # The caller's labels are the rows' labels (a coreset's, checked against them).
            self.labels = index.labels[rows] if labels is None else labels
            self.line_numbers = line_numbers

    def __len__(self) -> int:
        return self.index.count if self._rows is None else len(self._rows)

    @property
    def rows(self) -> np.ndarray:
        """For each entry, its row (0-based entry number) in the full list."""
        return np.arange(self.index.count) if self._rows is None else self._rows

    @property
    def files(self) -> "PathSequence":
        return PathSequence(self)

    def name(self, i: int) -> str:
        """The relative path of entry `i`, as written."""
        return self.index.name(int(i) if self._rows is None else int(self._rows[i]))

    def full_path(self, i: int) -> str:
        return os.path.join(self.root, self.name(i).lstrip("/"))

    def where(self, i: int) -> str:
        """'<list>:<line> (<image>)' for error messages."""
        return f"{self.path}:{int(self.line_numbers[i])} ({self.full_path(i)})"

    @property
    def num_classes_seen(self) -> int:
        return int(self.labels.max()) + 1 if len(self.labels) else 0


class PathSequence(Sequence):
    """The relative paths of a FileList, decoded one at a time; equal to any sequence of
    the same strings."""

    def __init__(self, file_list: FileList):
        self._list = file_list

    def __len__(self) -> int:
        return len(self._list)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self._list.name(j) for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        return self._list.name(i)

    def __iter__(self) -> Iterator[str]:
        return (self._list.name(i) for i in range(len(self)))

    def __eq__(self, other) -> bool:
        if isinstance(other, Sequence) and not isinstance(other, (str, bytes)):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    def __repr__(self) -> str:
        return f"PathSequence({self._list.path!r}, {len(self)} paths)"


def _check_labels(index: FileListIndex, path: str, num_classes: Optional[int]) -> None:
    """FileListError naming the first line whose label is outside [0, num_classes)."""
    if num_classes is None or index.header.max_label < num_classes:
        return  # negative labels never reach an index
    i = int(np.argmax(index.labels >= num_classes))
    raise label_error(path, int(index.lines[i]), int(index.labels[i]), num_classes)


def read_file_list(path: str, root: Optional[str] = None, num_classes: Optional[int] = None) -> FileList:
    """Read and validate a file list. Blank lines are skipped (and not counted as entries).

    `root` defaults to the list's folder. With `num_classes`, a label outside
    [0, num_classes) is an error naming the line.
    """
    if root is None:
        root = os.path.dirname(os.path.abspath(path))
    index = open_index(path, num_classes)
    _check_labels(index, path, num_classes)
    return FileList(path, root, index)


def read_coreset(path: str, full_list: str, root: Optional[str] = None,
                 num_classes: Optional[int] = None) -> FileList:
    """Read a coreset: lines of the file list `full_list`, each mapped to its row there.

    A coreset line whose path is not in the full list, or is there with another label, is
    an error naming the coreset line and the full list. Messages and `where` name the
    coreset's lines; `root` defaults to the full list's folder. A line is looked up by a
    64-bit hash of its path bytes and their length (the index's table), so a path absent
    from the full list passes only if it collides with one there (odds ~N / 2**64 a line).
    Lines in the full list's order (as get_coreset writes them) are found fastest.
    """
    if root is None:
        root = os.path.dirname(os.path.abspath(full_list))
    index = open_index(full_list, lookup=True)  # the coreset's own labels are checked below
    f = open_list_file(path)
    with f:
        bound = line_bound(f)
        f.seek(0)
        rows = np.empty(bound, dtype=np.int32)  # an index holds fewer than 2**31 entries
        lines = np.empty(bound, dtype=np.int32)
        labels = np.empty(bound, dtype=np.int32)
        finder = SequenceFinder(index, bound)
        count = 0
        for block in iter_blocks(f, path, num_classes):
            found = finder.find(block.hashes, block.path_len)
            labels_there = index.labels[np.maximum(found, 0)]
            bad = np.flatnonzero((found < 0) | (labels_there != block.labels))
            if len(bad):
                j = int(bad[0])
                name, lineno = block.name(j), int(block.lines[j])
                if found[j] < 0:
                    raise FileListError(f"{path}:{lineno}: {name!r} is not in the full list {full_list}")
                there = int(found[j])
                raise FileListError(
                    f"{path}:{lineno}: {name!r} has label {int(block.labels[j])}, but the full list "
                    f"{full_list}:{int(index.lines[there])} gives it label {int(labels_there[j])}"
                )
            if block.error is not None:
                raise block.error
            m = len(found)
            if count + m > bound:
                raise FileListError(f"{path}: the coreset changed while it was read")
            rows[count : count + m] = found
            lines[count : count + m] = block.lines
            labels[count : count + m] = block.labels
            count += m
            finder.release()
    if count == 0:
        raise FileListError(f"{path}: the file list is empty")
    # The untouched tails cost no memory.
    return FileList(path, root, index, rows[:count], lines[:count], labels[:count])


def read_lines(path: str) -> List[str]:
    """The non-blank lines of a file list, as written: without the line terminator
    ('\\n', '\\r\\n' or '\\r') and without a UTF-8 byte-order mark."""
    f = open_list_file(path)
    with f:
        return [line for _, line in iter_lines(f, path) if line.strip()]

