"""Samples known by keys: the training or validation set of a run read from WebDataset
shards (data/shards.py) or a Hugging Face dataset (data/hf_data.py) instead of a file list.

Each sample has a key (a shard member's key, or a dataset row's number), a label and
bytes that the pipeline decodes. The key table is N keys in the data's order, held as one
byte buffer ("key\\n" per sample, exactly the bytes of the ``sample_keys.txt`` a produce
run stores beside its history) with the start of each key and a 64-bit hash of each, so
that 13M keys cost tens of bytes each, not a Python string each. A run's order and its
history's rows are positions in this table.
"""
import hashlib
from typing import Callable, List, Optional, Sequence

import numpy as np

from dynunc.lists.parse import FileListError

__all__ = ["DataFormatError", "KeyTable", "KeyedSamples", "key_hashes"]


class DataFormatError(FileListError):
    """Bad shards or a bad dataset, found before training: names the shard and key (or the
    file and row)."""


def key_hashes(keys: Sequence[bytes]) -> np.ndarray:
    """A stable 64-bit hash of each key (blake2b), to find repeats and look keys up."""
    return np.fromiter((int.from_bytes(hashlib.blake2b(k, digest_size=8).digest(), "little") for k in keys),
                       dtype=np.uint64, count=len(keys))


class KeyTable:
    """N keys in order: `blob` holds b"key\\n" for each, `starts[i]` where key i begins
    (N + 1 values, the last = len(blob)), `hashes` a key_hashes value per key."""

    def __init__(self, blob: np.ndarray, starts: np.ndarray, hashes: np.ndarray):
        self.blob, self.starts, self.hashes = blob, starts, hashes
        self._sorted: Optional[np.ndarray] = None

    @classmethod
    def from_keys(cls, keys: Sequence[str]) -> "KeyTable":
        encoded = [k.encode("utf-8") for k in keys]
        lengths = np.fromiter((len(k) + 1 for k in encoded), dtype=np.int64, count=len(encoded))
        starts = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum(lengths, out=starts[1:])
        blob = np.frombuffer(b"".join(k + b"\n" for k in encoded), dtype=np.uint8)
        return cls(blob, starts, key_hashes(encoded))

    def __len__(self) -> int:
        return len(self.hashes)

    def key(self, i: int) -> str:
        return self.blob[self.starts[i]:self.starts[i + 1] - 1].tobytes().decode("utf-8")

    def text(self) -> bytes:
        """The bytes of sample_keys.txt: one key per line, in order."""
        return self.blob.tobytes()

    def keys(self) -> List[str]:
        return self.text().decode("utf-8").split("\n")[:-1]

    def fingerprint(self, path: str) -> dict:
        """What a history records for these samples (the shape of file_list.json's):
        sample_keys.txt's sha256 and the key count."""
        return {"path": path, "entries": len(self), "sha256": hashlib.sha256(self.blob).hexdigest()}

    def repeats(self) -> Optional[tuple]:
        """(i, j), i < j, two positions holding the same key, or None."""
        order = np.argsort(self.hashes, kind="stable")
        ordered = self.hashes[order]
        for at in np.flatnonzero(ordered[1:] == ordered[:-1]):
            i, j = sorted((int(order[at]), int(order[at + 1])))
            if self.key(i) == self.key(j):
                return i, j
        return None

    def find(self, keys: Sequence[str]) -> np.ndarray:
        """The position of each key, -1 where absent."""
        if self._sorted is None:
            self._sorted = np.argsort(self.hashes, kind="stable")
        wanted = key_hashes([k.encode("utf-8") for k in keys])
        ordered = self.hashes[self._sorted]
        at = np.searchsorted(ordered, wanted)
        found = np.full(len(keys), -1, dtype=np.int64)
        for n, (a, h) in enumerate(zip(at, wanted)):
            while a < len(ordered) and ordered[a] == h:
                if self.key(int(self._sorted[a])) == keys[n]:
                    found[n] = int(self._sorted[a])
                    break
                a += 1
        return found


class KeyedSamples:
    """What the loaders read (as data/file_list.FileList is for a folder tree): `labels`
    (int32, one per sample), `read(i)` (the encoded image, uint8), `where(i)` (shard and
    key, or file and row, for messages), `path` (the data, or the coreset file, for
    messages); `keys` the full key table and `rows` each sample's position in it."""

    def __init__(self, path: str, keys: KeyTable, labels: np.ndarray, read_row: Callable[[int], np.ndarray],
                 where_row: Callable[[int], str], rows: Optional[np.ndarray] = None, source: Optional[str] = None):
        self.path = path
        self.source = source or path  # the data itself (the shard pattern, the dataset)
        self.keys = keys
        self._labels_all = labels
        self._read_row, self._where_row = read_row, where_row
        self._rows = rows
        self.labels = labels if rows is None else labels[rows]

    def __len__(self) -> int:
        return len(self.keys) if self._rows is None else len(self._rows)

    @property
    def rows(self) -> np.ndarray:
        return np.arange(len(self.keys)) if self._rows is None else self._rows

    def row(self, i: int) -> int:
        return int(i) if self._rows is None else int(self._rows[i])

    def read(self, i: int) -> np.ndarray:
        return self._read_row(self.row(i))

    def where(self, i: int) -> str:
        return self._where_row(self.row(i))

    def key(self, i: int) -> str:
        return self.keys.key(self.row(i))

    @property
    def files(self) -> List[str]:
        """The keys, where a file list has its paths (names for messages and tables)."""
        return [self.key(i) for i in range(len(self))]

    @property
    def num_classes_seen(self) -> int:
        return int(self.labels.max()) + 1 if len(self.labels) else 0

    def check_labels(self, num_classes: Optional[int]) -> None:
        """DataFormatError naming the first sample whose label is outside [0, num_classes)."""
        labels = self._labels_all
        bad = (labels < 0) if num_classes is None else ((labels < 0) | (labels >= num_classes))
        if len(labels) and bad.any():
            i = int(np.argmax(bad))
            bound = f"[0, {num_classes})" if num_classes is not None else ">= 0"
            raise DataFormatError(f"{self._where_row(i)}: label {int(labels[i])} is outside {bound}")

    def subset(self, keys_path: str) -> "KeyedSamples":
        """The samples named in the file `keys_path` (one key per line, as get_coreset.py
        writes them), in the data's order; DataFormatError naming the line of a key not in
        the data, repeated, or of an empty file."""
        try:
            with open(keys_path, "r", encoding="utf-8", newline="\n") as f:
                lines = f.read().split("\n")
        except FileNotFoundError:
            raise DataFormatError(f"coreset not found: {keys_path}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise DataFormatError(f"{keys_path}: cannot be read: {e}") from None
        if lines and lines[-1] == "":
            lines.pop()
        lines = [line.rstrip("\r") for line in lines]
        if not lines:
            raise DataFormatError(f"{keys_path}: the coreset is empty")
        found = self.keys.find(lines)
        if (found < 0).any():
            n = int(np.argmax(found < 0))
            raise DataFormatError(f"{keys_path}:{n + 1}: key {lines[n]!r} is not in {self.source}")
        order = np.sort(found)
        if (order[1:] == order[:-1]).any():
            twice = int(order[np.flatnonzero(order[1:] == order[:-1])[0]])
            n = [i for i, r in enumerate(found) if r == twice][1]
            raise DataFormatError(f"{keys_path}:{n + 1}: key {lines[n]!r} is given twice")
        return KeyedSamples(keys_path, self.keys, self._labels_all, self._read_row, self._where_row,
                            rows=order, source=self.source)

