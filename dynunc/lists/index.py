"""The index of a file list: its parsed entries as flat arrays in one file, memory-mapped.

A list of ImageNet-21K's 13M lines held as Python strings costs gigabytes and many
seconds per process (docs/benchmarks.md, "Figures behind code choices"). Instead the list is parsed once (numpy, a block at a time) into an index file
written beside it, ``<list>.idx``; every process of every run then maps that file: the
pages are shared through the page cache by all ranks of a node, and a process only pays
for the pages it touches. Paths are not copied: the index holds each path's byte offset
and length in the list, which is mapped too.

Layout (little-endian): a 4096-byte header, then six arrays of `capacity` entries
(capacity >= count: the list's line count, blank lines included):

    path_start int64   row_hash uint64   sorted_key uint64   path_len int32   label int32   line int32

`sorted_key` is ``(row_hash >> row_bits << row_bits) | row``, sorted: the lookup table
for coreset lines. The header records the list's size and mtime (ns), the entry count,
the largest label, the number of duplicate rows (see `Header.duplicates`), a CRC-32 of
each array and of itself, and the sha256 of the list's bytes: the list's one identity
(`FileListIndex.fingerprint`, what a prediction history records), computed in the pass
that bounds the line count, so that no caller reads the list again to hash it.

Coreset lines usually come in list order (get_coreset.py keeps the list's order): a
`SequenceFinder` then finds each line near the row after the previous line's, in a small
window of `row_hash` (cache-resident, read in row order), and only the lines not found
there go through the global table (`FileListIndex.find`), whose pages are touched at random.

The index is never trusted blindly: a header that does not match the list (size, mtime),
a wrong file size or a CRC mismatch makes it stale or corrupt, and it is rebuilt (written
to a temporary file, then renamed over the old one, under a lock on the list so that the
ranks of a node build it once). A list modified less than RACY_SECONDS before the build
started could change again within the same mtime tick: its index is used by this process
but not kept. When the list's folder is not writable the index goes to
``$XDG_CACHE_HOME/dynunc/file_list_index/`` (default ``~/.cache``), else to an unnamed
temporary file.
"""
import fcntl
import hashlib
import logging
import mmap
import os
import struct
import tempfile
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, List, Optional, Tuple

import numpy as np

from dynunc.lists.parse import BLOCK_BYTES, FileListError, iter_blocks, open_list_file

logger = logging.getLogger(__name__)

MAGIC = b"DUFLIDX\0"
VERSION = 3  # 2: Header.duplicates; 3: Header.sha256
HEADER_BYTES = 4096
RACY_SECONDS = 2.0
INDEX_SUFFIX = ".idx"
# (name, dtype); int64 arrays first keeps every array 8-byte aligned.
SECTIONS: Tuple[Tuple[str, str], ...] = (
    ("path_start", "<i8"), ("row_hash", "<u8"), ("sorted_key", "<u8"),
    ("path_len", "<i4"), ("label", "<i4"), ("line", "<i4"),
)
LOOKUP_SECTIONS = ("row_hash", "sorted_key")
_HEAD = struct.Struct("<8sIIQqqQQqQ" + "I" * len(SECTIONS) + "32s")  # + the header's own CRC-32
BYTES_PER_ENTRY = sum(np.dtype(t).itemsize for _, t in SECTIONS)
MAX_ENTRIES = 2**31 - 1  # rows and line numbers are int32


@dataclass(frozen=True)
class Header:
    version: int
    row_bits: int
    list_size: int
    list_mtime_ns: int
    built_ns: int
    count: int
    capacity: int
    max_label: int  # so that a label bound is checked without reading the labels
    # Rows whose (path hash, path length) equals an earlier row's: a path listed twice.
    # Lookups give the first such row; the windowed lookup, which cannot tell, is off.
    duplicates: int
    crcs: Tuple[int, ...]
    sha256: bytes  # of the list's bytes, as read when the index was built

    def pack(self) -> bytes:
        body = _HEAD.pack(MAGIC, self.version, self.row_bits, self.list_size, self.list_mtime_ns, self.built_ns,
                          self.count, self.capacity, self.max_label, self.duplicates, *self.crcs, self.sha256)
        return body + struct.pack("<I", zlib.crc32(body))

    @classmethod
    def unpack(cls, raw: bytes) -> "Header":
        """The header in `raw`; ValueError saying what is wrong with it."""
        if len(raw) < _HEAD.size + 4:
            raise ValueError("shorter than a header")
        body, (crc,) = raw[: _HEAD.size], struct.unpack("<I", raw[_HEAD.size : _HEAD.size + 4])
        fields = _HEAD.unpack(body)
        if fields[0] != MAGIC:
            raise ValueError("not a file-list index")
        if fields[1] != VERSION:  # first: another version's header may have another size
            raise ValueError(f"index version {fields[1]}, this code writes {VERSION}")
        if zlib.crc32(body) != crc:
            raise ValueError("header checksum mismatch")
        return cls(*fields[1:10], crcs=tuple(fields[10:-1]), sha256=fields[-1])

    def offset(self, name: str) -> int:
        at = HEADER_BYTES
        for other, dtype in SECTIONS:
            if other == name:
                return at
            at += self.capacity * np.dtype(dtype).itemsize
        raise KeyError(name)

    @property
    def file_size(self) -> int:
        return HEADER_BYTES + self.capacity * BYTES_PER_ENTRY


def row_bits_for(count: int) -> int:
    return max(1, (count - 1).bit_length())


class FileListIndex:
    """A valid index, mapped: read-only arrays over the file, and the list itself mapped
    for the path bytes."""

    def __init__(self, list_path: str, header: Header, index_map: mmap.mmap, list_map: mmap.mmap, location: str):
        self.list_path = list_path
        self.header = header
        self.location = location  # the index file, or "(temporary)"
        self.count = header.count
        self.row_bits = header.row_bits
        self._list_map = list_map
        self._index_map = index_map
        arrays = {
            name: np.frombuffer(index_map, dtype=dtype, count=header.count, offset=header.offset(name))
            for name, dtype in SECTIONS
        }
        self.path_start = arrays["path_start"]
        self.path_len = arrays["path_len"]
        self.labels = arrays["label"]
        self.lines = arrays["line"]
        self.row_hash = arrays["row_hash"]
        self.sorted_key = arrays["sorted_key"]

    def fingerprint(self) -> dict:
        """The list's identity as a prediction history records it (file_list.json): its
        absolute path, its number of entries and the sha256 of its bytes."""
        return {"path": os.path.abspath(self.list_path), "entries": int(self.count), "sha256": self.header.sha256.hex()}

    def name(self, row: int) -> str:
        """The relative path of entry `row`, as written in the list."""
        start = int(self.path_start[row])
        return self._list_map[start : start + int(self.path_len[row])].decode("utf-8")

    def find(self, hashes: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """The row of each (path hash, path length) in the list, -1 where absent."""
        bits = np.uint64(self.row_bits)
        row_mask = np.uint64((1 << self.row_bits) - 1)
        prefix = (hashes >> bits) << bits
        order = np.argsort(prefix)  # sorted queries search faster (memory locality)
        pos = np.empty(len(prefix), dtype=np.int64)
        pos[order] = np.searchsorted(self.sorted_key, prefix[order])
        rows = np.full(len(hashes), -1, dtype=np.int64)
        todo = np.arange(len(hashes))
        while len(todo):  # candidates share the hash's top bits; usually one step
            todo = todo[pos[todo] < self.count]
            key = self.sorted_key[pos[todo]]
            same_prefix = (key >> bits) == (hashes[todo] >> bits)
            todo, key = todo[same_prefix], key[same_prefix]
            cand = (key & row_mask).astype(np.int64)
            hit = (self.row_hash[cand] == hashes[todo]) & (self.path_len[cand] == lengths[todo])
            rows[todo[hit]] = cand[hit]
            todo = todo[~hit]
            pos[todo] += 1
        return rows

    def find_in_window(self, hashes: np.ndarray, lengths: np.ndarray, start: int, stop: int) -> np.ndarray:
        """The row in [start, stop) of each (path hash, path length), -1 where none is found
        there: the caller looks those up with `find`.

        For a list without duplicates, where a row found is the only one (`find` gives the
        same). The window's rows go into a table addressed by some bits of their hash, a
        power of two at least twice their number; rows that lose their slot to another go
        into the next round's table, addressed by other bits, until every row has had a
        slot (or the bits run out: two rows of one hash, told apart by their lengths,
        leave a line unfound). A line is checked against its slot's row in each round.
        """
        window = self.row_hash[start:stop]
        bits = max(10, (2 * (stop - start) - 1).bit_length())
        low = np.uint64(64 - bits)
        rows = np.full(len(hashes), -1, dtype=np.int64)
        todo, queries = np.arange(len(hashes)), hashes  # the lines not found yet
        live, live_hash = np.arange(stop - start, dtype=np.int32), window  # the rows not in a table yet
        for shift in [*range(0, 64 - bits, 7), 64 - bits]:  # the last round takes the lowest bits
            up = np.uint64(shift)
            slot = (live_hash << up) >> low
            table = np.full(1 << bits, -1, dtype=np.int32)
            table[slot] = live  # one of the rows sharing a slot keeps it
            lost = table[slot] != live
            live, live_hash = live[lost], live_hash[lost]
            cand = table[(queries << up) >> low]
            same = window[cand] == queries  # (cand -1, an empty slot, fails below)
            same &= cand >= 0
            rows[todo[same]] = cand[same]
            todo, queries = todo[~same], queries[~same]
            if not (len(todo) and len(live)):
                break
        found = np.flatnonzero(rows >= 0)
        rows[found] += start
        rows[found[self.path_len[rows[found]] != lengths[found]]] = -1
        return rows

    def release_rows(self, start: int, stop: int) -> None:
        """Drop this process's mapping of the pages of rows [start, stop) in the arrays in
        row order: they leave its RSS, stay in the page cache, and come back if read
        again. Keeps the pages of a long sequential pass from piling up in every process."""
        if stop <= start:
            return
        for name, dtype in SECTIONS:
            if name == "sorted_key":
                continue
            size = np.dtype(dtype).itemsize
            a = self.header.offset(name) + start * size
            a -= a % mmap.PAGESIZE
            b = self.header.offset(name) + stop * size
            self._index_map.madvise(mmap.MADV_DONTNEED, a, b - a)


class SequenceFinder:
    """The rows of coreset lines in the full list, read a block at a time.

    Lines that come in list order (a coreset written by get_coreset.py) are found in a
    window of rows after the previous line's row, a chunk of lines at a time; a window
    is sized by the list rows seen per coreset line so far and moved on while it keeps
    finding most of the lines. Each chunk starts with a probe of a few lines: if they
    are not near the previous line, they are found in the global table (`find`), and if
    they are in order there the windows go on from them (a stretch of the list the
    coreset left out), else the chunk's lines join those for `find`. Lines not found in
    a window (out of order, shuffled, absent from the list) all go through `find`, once
    a block. A list with duplicate paths takes `find` for every line (it gives the first
    row of a duplicated path). Results equal `find`'s in every case.
    """

    CHUNK = 1 << 15  # lines matched against one window
    PROBE = 512  # lines tried first in each chunk
    SLACK = 1.25  # window rows per expected row
    MAX_WINDOW = 1 << 20  # rows

    def __init__(self, index: FileListIndex, expected_lines: int):
        self.index = index
        self.cursor = 0  # the row after the last line found in order
        self.ratio = max(1.0, index.count / max(1, expected_lines))  # list rows per coreset line here
        self._windows: List[Tuple[int, int]] = []  # rows [a, b) whose pages windows mapped since `release`

    def find(self, hashes: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        index = self.index
        if index.header.duplicates:
            return index.find(hashes, lengths)
        rows = np.full(len(hashes), -1, dtype=np.int64)
        elsewhere = []  # lines for the global table
        for a in range(0, len(hashes), self.CHUNK):
            chunk = np.arange(a, min(a + self.CHUNK, len(hashes)))
            probe, rest = chunk[: self.PROBE], chunk[self.PROBE :]
            left = self._match(probe, hashes, lengths, rows)
            if 4 * (len(probe) - len(left)) < len(probe):  # not near the previous line
                rows[left] = index.find(hashes[left], lengths[left])
                found = rows[probe][rows[probe] >= 0]
                if len(found) == 0 or (np.diff(found) <= 0).any():
                    elsewhere.append(rest)
                    continue
                self.cursor = int(found[-1]) + 1
            else:
                elsewhere.append(left)
            elsewhere.append(self._match(rest, hashes, lengths, rows))
        left = np.concatenate(elsewhere) if elsewhere else np.empty(0, dtype=np.int64)
        if len(left):
            rows[left] = index.find(hashes[left], lengths[left])
            found = rows[rows >= 0]
            if len(found):
                self.cursor = int(found[-1]) + 1
        return rows

    def _match(self, todo: np.ndarray, hashes: np.ndarray, lengths: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Find lines `todo` in windows from the cursor on, into `rows`; the lines not found."""
        start = self.cursor
        while len(todo) and start < self.index.count:
            span = min(self.MAX_WINDOW, int(len(todo) * self.ratio * self.SLACK) + 64)
            stop = min(self.index.count, start + span)
            found = self.index.find_in_window(hashes[todo], lengths[todo], start, stop)
            self._note_window(start, stop)
            hit = found >= 0
            rows[todo[hit]] = found[hit]
            todo, hits = todo[~hit], int(hit.sum())
            if 4 * hits < len(hit):
                break  # most lines are elsewhere: out of order, or absent
            last = int(found[hit].max())
            self.ratio = max(1.0, (last + 1 - start) / hits)
            self.cursor = last + 1
            start = stop
        return todo

    def _note_window(self, start: int, stop: int) -> None:
        last = self._windows[-1] if self._windows else None
        if last is not None and last[0] <= start <= last[1]:  # in list order: one growing range
            self._windows[-1] = (last[0], max(last[1], stop))
        else:
            self._windows.append((start, stop))

    def release(self) -> None:
        """Drop the pages the windows mapped since the last call (`release_rows`)."""
        for start, stop in self._windows:
            self.index.release_rows(start, stop)
        self._windows = []


def index_location(list_path: str, suffix: str = INDEX_SUFFIX, cache_name: str = "file_list_index") -> Optional[str]:
    """Where the index of `list_path` lives: beside it, else in the user's cache folder;
    None if neither folder is writable. (data/shards.py keeps shard indexes the same way.)"""
    folder = os.path.dirname(os.path.abspath(list_path))
    if os.access(folder, os.W_OK):
        return os.path.abspath(list_path) + suffix
    cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    cache = os.path.join(cache_home, "dynunc", cache_name)
    try:
        os.makedirs(cache, exist_ok=True)
    except OSError:
        return None
    if not os.access(cache, os.W_OK):
        return None
    key = hashlib.sha256(os.path.realpath(list_path).encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return os.path.join(cache, f"{key}-{os.path.basename(list_path)}{suffix}")


_DTYPES = dict(SECTIONS)
_IO_BYTES = 1 << 28  # pread/pwrite at most this much per call (Linux caps one call near 2 GiB)


def _pwrite_all(fd: int, array: np.ndarray, offset: int) -> None:
    view = memoryview(np.ascontiguousarray(array)).cast("B")
    for a in range(0, len(view), _IO_BYTES):
        piece = view[a : a + _IO_BYTES]
        done = 0
        while done < len(piece):
            done += os.pwrite(fd, piece[done:], offset + a + done)


def _pread_all(fd: int, size: int, offset: int) -> bytes:
    out = bytearray()
    while len(out) < size:
        piece = os.pread(fd, min(_IO_BYTES, size - len(out)), offset + len(out))
        if not piece:
            raise OSError(f"short read at offset {offset + len(out)} of a file-list index")
        out += piece
    return bytes(out)


def _crc_of(fd: int, offset: int, size: int) -> int:
    crc, done = 0, 0
    while done < size:
        piece = os.pread(fd, min(BLOCK_BYTES, size - done), offset + done)
        if not piece:
            raise ValueError("truncated")
        crc = zlib.crc32(piece, crc)
        done += len(piece)
    return crc


def _validate(fd: int, st: os.stat_result, lookup: bool) -> Header:
    """The header of the index open at `fd` if it is valid for a list with stat `st`;
    ValueError saying why not. Checks the arrays' CRCs (the lookup ones only if asked)."""
    header = Header.unpack(os.pread(fd, HEADER_BYTES, 0))
    if header.list_size != st.st_size or header.list_mtime_ns != st.st_mtime_ns:
        raise ValueError("stale: the list changed since the index was built")
    if not 0 < header.count <= header.capacity or header.row_bits != row_bits_for(header.count):
        raise ValueError("inconsistent entry count")
    if os.fstat(fd).st_size != header.file_size:
        raise ValueError(f"{os.fstat(fd).st_size} bytes, the header implies {header.file_size}")
    for (name, dtype), crc in zip(SECTIONS, header.crcs):
        if name in LOOKUP_SECTIONS and not lookup:
            continue
        if _crc_of(fd, header.offset(name), header.count * np.dtype(dtype).itemsize) != crc:
            raise ValueError(f"checksum mismatch in {name}")
    return header


def _map(fd: int) -> mmap.mmap:
    return mmap.mmap(fd, 0, access=mmap.ACCESS_READ)


def _open_valid(index_path: str, list_path: str, list_fd: int, st: os.stat_result, lookup: bool,
                quiet: bool = False) -> Optional[FileListIndex]:
    """The index at `index_path` if it exists and is valid, else None (logging why, unless quiet)."""
    try:
        fd = os.open(index_path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except OSError as e:
        if not quiet:
            logger.warning(f"{index_path}: cannot open the file-list index ({e}); rebuilding it")
        return None
    try:
        header = _validate(fd, st, lookup)
        return FileListIndex(list_path, header, _map(fd), _map(list_fd), index_path)
    except (ValueError, OSError, struct.error) as e:
        if not quiet:
            logger.warning(f"{index_path}: file-list index not used ({e}); rebuilding it")
        return None
    finally:
        os.close(fd)


def line_bound(f, digest=None) -> int:
    """An upper bound on the number of lines of the binary file `f` (terminators + 1),
    read from where it is to its end; the bytes read also go to `digest` if given."""
    count, tail = 1, b""
    while True:
        chunk = f.read(BLOCK_BYTES)
        if not chunk:
            return count
        if digest is not None:
            digest.update(chunk)
        count += chunk.count(b"\n")
        if b"\r" in chunk:  # lone '\r' ends a line too; '\r\n' is one terminator
            count += chunk.count(b"\r") - (tail + chunk).count(b"\r\n")
        tail = chunk[-1:]


def _count_duplicates(keys: np.ndarray, row_bits: int, fd: int, layout: Header) -> int:
    """Rows whose (path hash, path length) equals an earlier row's, from the sorted lookup
    keys and the row arrays already written to `fd`: equal hashes have equal key prefixes,
    and only the few rows sharing a prefix with a neighbour need their hash compared."""
    step = BLOCK_BYTES // 8
    bits = np.uint64(row_bits)
    shared = []  # positions in `keys` of rows whose prefix equals the next row's
    for a in range(0, len(keys) - 1, step):
        piece = keys[a : a + step + 1] >> bits
        shared.append(a + np.flatnonzero(piece[1:] == piece[:-1]))
    at = np.concatenate(shared) if shared else np.empty(0, dtype=np.int64)
    if len(at) == 0:
        return 0
    rows = np.sort((keys[np.union1d(at, at + 1)] & np.uint64((1 << row_bits) - 1)).astype(np.int64))
    hashes, lengths = np.empty(len(rows), dtype=np.uint64), np.empty(len(rows), dtype=np.int64)
    for a in range(0, len(keys), step):  # read in order: a mapping would touch far more pages than rows
        i, j = np.searchsorted(rows, [a, a + step])
        if i == j:
            continue
        b = min(a + step, len(keys))
        hashes[i:j] = np.frombuffer(_pread_all(fd, (b - a) * 8, layout.offset("row_hash") + a * 8), "<u8")[rows[i:j] - a]
        lengths[i:j] = np.frombuffer(_pread_all(fd, (b - a) * 4, layout.offset("path_len") + a * 4), "<i4")[rows[i:j] - a]
    order = np.lexsort((lengths, hashes))
    hashes, lengths = hashes[order], lengths[order]
    return int(np.count_nonzero((hashes[1:] == hashes[:-1]) & (lengths[1:] == lengths[:-1])))


def _write_index(fd: int, f, list_path: str, st: os.stat_result, num_classes: Optional[int], built_ns: int) -> Header:
    """Parse the list open as `f` and write its index to the empty file `fd`."""
    digest = hashlib.sha256()
    capacity = line_bound(f, digest)
    f.seek(0)
    probe = Header(VERSION, 1, st.st_size, st.st_mtime_ns, built_ns, 0, capacity, 0, 0, (0,) * len(SECTIONS),
                   digest.digest())
    os.ftruncate(fd, probe.file_size)
    crcs = {name: 0 for name, _ in SECTIONS}
    count, max_label = 0, 0
    for block in iter_blocks(f, list_path, num_classes):
        if block.error is not None:
            raise block.error
        m = len(block.lines)
        if count + m > capacity or (m and block.lines[-1] > MAX_ENTRIES):
            raise FileListError(f"{list_path}: the list changed while it was read, or has over {MAX_ENTRIES} lines")
        for name, values in (("path_start", block.path_start), ("row_hash", block.hashes),
                             ("path_len", block.path_len), ("label", block.labels), ("line", block.lines)):
            data = np.ascontiguousarray(values, dtype=_DTYPES[name])
            _pwrite_all(fd, data, probe.offset(name) + count * data.itemsize)
            crcs[name] = zlib.crc32(data, crcs[name])
        count += m
        if m:
            max_label = max(max_label, int(block.labels.max()))
    if count == 0:
        raise FileListError(f"{list_path}: the file list is empty")
    now = os.stat(list_path)
    if (now.st_size, now.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
        raise FileListError(f"{list_path}: the list changed while it was read; try again")

    # The lookup table, built a piece at a time: one uint64 per entry in memory.
    row_bits = row_bits_for(count)
    keys = np.empty(count, dtype=np.uint64)
    step = BLOCK_BYTES // 8
    for a in range(0, count, step):
        b = min(a + step, count)
        piece = np.frombuffer(_pread_all(fd, (b - a) * 8, probe.offset("row_hash") + a * 8), dtype="<u8")
        keys[a:b] = (piece >> np.uint64(row_bits)) << np.uint64(row_bits)
        keys[a:b] |= np.arange(a, b, dtype=np.uint64)
    keys.sort()
    _pwrite_all(fd, keys, probe.offset("sorted_key"))
    crcs["sorted_key"] = zlib.crc32(keys)
    duplicates = _count_duplicates(keys, row_bits, fd, probe)
    del keys
    header = Header(VERSION, row_bits, st.st_size, st.st_mtime_ns, built_ns, count, capacity, max_label,
                    duplicates, tuple(crcs[name] for name, _ in SECTIONS), probe.sha256)
    os.pwrite(fd, header.pack(), 0)
    return header


@contextmanager
def _build_lock(list_fd: int) -> Iterator[None]:
    """An exclusive flock on the list while its index is built (other ranks wait, then
    find the index built). Without lock support, builds may race; each is atomic."""
    try:
        fcntl.flock(list_fd, fcntl.LOCK_EX)
    except OSError:
        yield
        return
    try:
        yield
    finally:
        fcntl.flock(list_fd, fcntl.LOCK_UN)


def _build(list_path: str, list_file, st: os.stat_result, num_classes: Optional[int],
           index_path: Optional[str]) -> FileListIndex:
    """Build the index into `index_path` (atomically), or into an unnamed temporary file
    when `index_path` is None or cannot be written."""
    built_ns = time.time_ns()
    tmp = None
    if index_path is not None:
        try:
            fd, tmp = tempfile.mkstemp(prefix=os.path.basename(index_path) + ".", suffix=".tmp",
                                       dir=os.path.dirname(index_path))
        except OSError as e:
            logger.warning(f"{index_path}: cannot write the file-list index there ({e}); using a temporary one")
            index_path = None
    if index_path is None:
        fd, unnamed = tempfile.mkstemp(prefix="file_list_index.", suffix=".tmp")
        os.unlink(unnamed)  # gone with the last mapping
    try:
        t0 = time.perf_counter()
        with open(list_file.fileno(), "rb", closefd=False) as f:
            f.seek(0)
            header = _write_index(fd, f, list_path, st, num_classes, built_ns)
        if tmp is not None:
            os.fchmod(fd, st.st_mode & 0o666)  # readable by whoever can read the list
            os.fsync(fd)
            os.replace(tmp, index_path)
            tmp = None
        location = index_path or "(temporary)"
        logger.info(f"{list_path}: indexed {header.count} entries in {time.perf_counter() - t0:.1f} s -> {location}")
        return FileListIndex(list_path, header, _map(fd), _map(list_file.fileno()), location)
    finally:
        os.close(fd)
        if tmp is not None:
            os.unlink(tmp)


def open_index(list_path: str, num_classes: Optional[int] = None, lookup: bool = False) -> FileListIndex:
    """The index of the list at `list_path`: the valid one on disk, or a new one.

    `num_classes` only matters when the list is parsed now: the first bad line is then
    reported as a line-by-line reader would (format and label errors in line order).
    With `lookup`, the coreset lookup arrays are checked too.
    """
    list_file = open_list_file(list_path)
    with list_file:
        st = os.fstat(list_file.fileno())
        if st.st_size == 0:
            raise FileListError(f"{list_path}: the file list is empty")
        location = index_location(list_path)
        if location is None or st.st_mtime_ns > time.time_ns() - int(RACY_SECONDS * 1e9):
            # Nowhere to keep it, or a list that may change again within its mtime tick:
            # this process parses it for itself (no lock: each gets its own).
            return _build(list_path, list_file, st, num_classes, None)
        index = _open_valid(location, list_path, list_file.fileno(), st, lookup)
        if index is not None:
            return index
        with _build_lock(list_file.fileno()):
            index = _open_valid(location, list_path, list_file.fileno(), st, lookup, quiet=True)  # built meanwhile?
            if index is not None:
                return index
            return _build(list_path, list_file, st, num_classes, location)
