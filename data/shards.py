"""WebDataset shards: local tar files whose members sharing a key form a sample (as
timm's imagenet-1k-wds and imagenet-22k-wds are laid out): ``KEY.jpg`` (or .jpeg, .png,
.webp) is the image, ``KEY.cls`` its label (an integer in ASCII); other members
(``KEY.json``, ...) are carried along, unread. A key is the member's name up to the first
'.' of its last path component (webdataset's rule); keys must be unique over all shards.

Each shard is scanned once (its tar headers, in one pass) into an index: per sample its
key, label, the image's byte range and the sample's byte range (its members, headers
included). The index is kept beside the shard, ``<shard>.keys.npz`` (or in
``$XDG_CACHE_HOME/dynunc/shard_index/`` when the shard's folder is not writable) and used
again while the shard's size and modification time are the ones it records, as a file
list's index is (dynunc/lists/index.py). The loader then reads each image by its
offset (os.pread), in the epoch's order, through the same pipeline as a folder tree:
DALI's own webdataset reader reads shards in sequence and shuffles only within a buffer,
so it could not give the epoch order that makes a run on shards repeat the same run on
a folder tree (sample i at the same step), which is what this codebase's histories need.

A bad shard stops the run before anything is written, in one line naming the shard and
the key: a truncated tar, a sample without image or label, an unreadable label, a key
repeated (in one shard or across two), a pattern that matches no file.
"""
import contextlib
import fcntl
import glob
import logging
import mmap
import os
import re
import time
import zipfile
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from dynunc.lists.index import RACY_SECONDS, index_location
from dynunc.lists.keyed import DataFormatError, KeyedSamples, KeyTable
from dynunc.io import atomic_open

logger = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
LABEL_EXT = "cls"
INDEX_SUFFIX = ".keys.npz"
INDEX_VERSION = 3  # 2: int32 image sizes and labels; 3: the sample count in the identity
BLOCK = 512
_ZERO = bytes(BLOCK)
_KEY_EXT = re.compile(r"^((?:.*/|)[^.]+)\.([^/]*)$")  # key = up to the first '.' of the last component


# -----------------------------------------------------------------------------
# Patterns
# -----------------------------------------------------------------------------
def expand_braces(pattern: str) -> List[str]:
    """``shard-{000..099}.tar`` and ``{a,b}`` expansion (numeric ranges keep the width of
    their first bound), as webdataset and timm write shard patterns."""
    m = re.search(r"\{([^{}]*)\}", pattern)
    if m is None:
        return [pattern]
    head, body, tail = pattern[:m.start()], m.group(1), pattern[m.end():]
    rng = re.fullmatch(r"(-?\d+)\.\.(-?\d+)", body)
    if rng:
        a, b = rng.group(1), rng.group(2)
        width = len(a) if a.startswith("0") or len(a) == len(b) else 0
        step = 1 if int(b) >= int(a) else -1
        items = [str(v).zfill(width) for v in range(int(a), int(b) + step, step)]
    else:
        items = body.split(",")
    return [out for item in items for out in expand_braces(head + item + tail)]


def shard_paths(patterns: str, what: str = "DATA.TRAIN_SHARDS") -> List[str]:
    """The files of `patterns` (brace patterns, with glob wildcards too, separated by
    '::' or whitespace-free ';'), in order; DataFormatError if a pattern matches nothing."""
    if not patterns:
        raise DataFormatError(f"{what} is empty: give a brace pattern of tar files")
    paths: List[str] = []
    for pattern in re.split(r"::|;", patterns):
        for one in expand_braces(pattern):
            found = sorted(glob.glob(one)) if glob.has_magic(one) else ([one] if os.path.isfile(one) else [])
            if not found:
                raise DataFormatError(f"{what}: {one} matches no file" + (
                    f" (from the pattern {pattern})" if one != pattern else ""))
            paths.extend(found)
    return paths


# -----------------------------------------------------------------------------
# One shard
# -----------------------------------------------------------------------------
def _octal(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # base-256 (GNU), for sizes beyond 8 GiB
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _pax_path(data: bytes) -> Optional[bytes]:
    path = None
    while data:
        length = int(data.split(b" ", 1)[0])
        record, data = data[:length], data[length:]
        key, _, value = record.split(b" ", 1)[1].partition(b"=")
        if key == b"path":
            path = value[:-1]  # the record ends in '\n'
    return path


def scan_shard(path: str) -> Dict[str, np.ndarray]:
    """The samples of one tar file, in order: the index's arrays. DataFormatError naming
    the shard and the key for a truncated tar, a sample without image or label, a label
    that is not an integer, or a key whose members are not consecutive."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise DataFormatError(f"{path}: empty file (not a tar)")
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        return _scan(path, mm, size)
    finally:
        mm.close()


def _scan(path: str, mm: mmap.mmap, size: int) -> Dict[str, np.ndarray]:
    keys: List[bytes] = []
    img_off, img_len, labels, starts, ends = [], [], [], [], []
    seen = set()
    current: Optional[bytes] = None
    members: Dict[str, Tuple[int, int]] = {}  # ext -> (data offset, size) of the current key
    sample_start = 0

    def finish(end: int) -> None:
        if current is None:
            return
        key = current.decode("utf-8", "replace")
        image = next((members[e] for e in IMAGE_EXTS if e in members), None)
        if image is None:
            raise DataFormatError(f"{path}: sample {key!r} has no image member ({'|'.join(IMAGE_EXTS)}); "
                                  f"members: {', '.join(sorted(members)) or 'none'}")
        if LABEL_EXT not in members:
            raise DataFormatError(f"{path}: sample {key!r} has no label member ({key}.{LABEL_EXT})")
        at, n = members[LABEL_EXT]
        text = mm[at:at + n].strip()
        try:
            label = int(text)
        except ValueError:
            raise DataFormatError(f"{path}: sample {key!r}: label {text[:40]!r} is not an integer") from None
        if not 0 <= label < 2**31:
            raise DataFormatError(f"{path}: key {key!r}: label {label} is outside [0, 2**31)")
        if image[1] >= 2**31:
            raise DataFormatError(f"{path}: key {key!r}: an image of {image[1]} bytes (at most 2 GiB)")
        keys.append(current)
        img_off.append(image[0])
        img_len.append(image[1])
        labels.append(label)
        starts.append(sample_start)
        ends.append(end)

    pos = 0
    header_start = 0  # where the current member's headers begin (pax / long-name headers first)
    long_name: Optional[bytes] = None
    last = "(none yet)"
    while True:
        if pos + BLOCK > size:
            raise DataFormatError(f"{path}: truncated tar: ends at byte {size} without the end-of-archive "
                                  f"marker (after key {last!r})")
        header = mm[pos:pos + BLOCK]
        if header == _ZERO:
            break
        stored = _octal(header[148:156])
        if stored != sum(header[:148]) + 256 + sum(header[156:]):
            raise DataFormatError(f"{path}: not a tar file, or damaged at byte {pos} (header checksum; after key "
                                  f"{last!r})")
        length = _octal(header[124:136])
        kind = header[156:157]
        data_at = pos + BLOCK
        name = long_name
        if name is None:
            name = header[:100].split(b"\0", 1)[0]
            if header[257:262] == b"ustar":
                prefix = header[345:500].split(b"\0", 1)[0]
                if prefix:
                    name = prefix + b"/" + name
        if data_at + length > size:
            raise DataFormatError(f"{path}: truncated tar: member {name.decode('utf-8', 'replace')!r} needs "
                                  f"{length} bytes at byte {data_at}, the file ends at byte {size}")
        following = data_at + -(-length // BLOCK) * BLOCK
        if kind == b"x":
            long_name = _pax_path(mm[data_at:data_at + length])
        elif kind == b"L":
            long_name = mm[data_at:data_at + length].split(b"\0", 1)[0]
        elif kind == b"g":
            pass  # global pax header
        else:
            long_name = None
            m = _KEY_EXT.match(name.decode("utf-8", "surrogateescape"))
            if kind in (b"0", b"\0", b"7") and m is not None:
                key, ext = m.group(1).encode("utf-8", "surrogateescape"), m.group(2).lower()
                if key != current:
                    finish(header_start)
                    if key in seen:
                        raise DataFormatError(f"{path}: key {key.decode('utf-8', 'replace')!r} appears twice "
                                              f"(its members are not consecutive, or it is repeated)")
                    seen.add(key)
                    current, members, sample_start = key, {}, header_start
                    last = key.decode("utf-8", "replace")
                members.setdefault(ext, (data_at, length))
        pos = following
        if kind not in (b"x", b"L"):
            header_start = pos
    finish(header_start)
    if not keys:
        raise DataFormatError(f"{path}: holds no sample (no member named KEY.EXT)")
    for k in keys:
        if b"\n" in k or b"\r" in k or b"\t" in k:
            raise DataFormatError(f"{path}: key {k!r} holds a line break or a tab")
    table = KeyTable.from_keys([k.decode("utf-8", "surrogateescape") for k in keys])
    return {"key_blob": table.blob, "key_starts": table.starts, "key_hash": table.hashes,
            "image_offset": np.array(img_off, np.int64), "image_size": np.array(img_len, np.int32),
            "label": np.array(labels, np.int32), "sample_start": np.array(starts, np.int64),
            "sample_end": np.array(ends, np.int64)}


# -----------------------------------------------------------------------------
# The cached index of a shard
# -----------------------------------------------------------------------------
def shard_index_path(shard: str) -> Optional[str]:
    return index_location(shard, suffix=INDEX_SUFFIX, cache_name="shard_index")


class _Index:
    """One shard's index: its sample count, and its arrays read one at a time (from the
    cached file, so that a process never holds every shard's copy of every array at once)."""

    def __init__(self, count: int, location: Optional[str] = None, arrays: Optional[Dict[str, np.ndarray]] = None):
        self.count, self.location, self.arrays = count, location, arrays

    def field(self, name: str) -> np.ndarray:
        if self.arrays is not None:
            return self.arrays.pop(name)
        try:
            with np.load(self.location, allow_pickle=False) as z:
                return z[name]  # zipfile checks the array's CRC-32 as it reads it
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
            raise _DamagedIndex(self.location) from None


class _DamagedIndex(Exception):
    """A cached index that fails its checks while it is read: ShardSet removes it and rebuilds."""


def _load_cached(location: str, st: os.stat_result) -> Optional[_Index]:
    """The cached index at `location` if it describes the shard (index version, shard size
    and mtime); None otherwise. Its arrays' CRC-32s are checked as they are read."""
    try:
        with np.load(location, allow_pickle=False) as z:
            ident = z["identity"].tolist()
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile):
        return None
    if ident[:3] != [INDEX_VERSION, st.st_size, st.st_mtime_ns]:
        return None
    return _Index(int(ident[3]), location=location)


def shard_index(shard: str) -> _Index:
    """The index of `shard`: the cached one if it still describes the file (same size and
    modification time), else a new scan, cached (atomically; under a lock on the shard, so
    that the ranks of a node scan it once)."""
    try:
        f = open(shard, "rb")
    except OSError as e:
        raise DataFormatError(f"{shard}: cannot be read: {e.strerror}") from None
    with f:
        st = os.fstat(f.fileno())
        location = shard_index_path(shard)
        if location is not None:
            cached = _load_cached(location, st)
            if cached is not None:
                return cached
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        except OSError:
            pass
        if location is not None:
            cached = _load_cached(location, st)  # built by another rank meanwhile
            if cached is not None:
                return cached
        arrays = scan_shard(shard)
        now = os.stat(shard)
        if (now.st_size, now.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
            raise DataFormatError(f"{shard}: changed while it was indexed; try again")
        racy = st.st_mtime_ns > time.time_ns() - int(RACY_SECONDS * 1e9)
        count = len(arrays["label"])
        if location is not None and not racy:
            identity = np.array([INDEX_VERSION, st.st_size, st.st_mtime_ns, count], np.int64)
            try:
                with atomic_open(location, "wb") as out:
                    np.savez(out, identity=identity, **arrays)
                return _Index(count, location=location)  # read back array by array, as a cached one
            except OSError:
                pass  # kept for this process only
        return _Index(count, arrays=arrays)


# -----------------------------------------------------------------------------
# All shards of a split
# -----------------------------------------------------------------------------
class ShardSet:
    """The shards of a pattern and their samples in order (shard order, then member order)."""

    def __init__(self, pattern: str, what: str = "DATA.TRAIN_SHARDS", byte_ranges: bool = False):
        """`byte_ranges`: also hold each sample's byte range (for `sample_bytes`: data/prune.py)."""
        self.pattern = pattern
        self.paths = shard_paths(pattern, what)
        for _ in range(len(self.paths) + 1):
            try:
                self._build(byte_ranges)
                break
            except _DamagedIndex as e:  # rebuilt by the next pass (not kept by a concurrent rank)
                logger.warning(f"{e.args[0]}: damaged shard index; rebuilding it")
                with contextlib.suppress(FileNotFoundError):
                    os.remove(e.args[0])
        else:
            raise DataFormatError(f"{pattern}: the shard indexes keep failing their checks while read")
        self._fds: Dict[int, int] = {}

    def _build(self, byte_ranges: bool) -> None:
        indexes = [shard_index(p) for p in self.paths]
        counts = [ix.count for ix in indexes]
        self.shard_of = np.repeat(np.arange(len(self.paths), dtype=np.int32 if len(self.paths) < 2**31 else np.int64),
                                  counts)
        # One array at a time, shard by shard: the peak is the table plus one shard's array
        # (13M keys: docs/benchmarks.md, "Data formats").
        starts = np.empty(len(self.shard_of) + 1, dtype=np.int64)
        at, offset, blob_sizes = 0, 0, []
        for ix, n in zip(indexes, counts):
            part = ix.field("key_starts")
            starts[at:at + n] = part[:-1] + offset
            at += n
            blob_sizes.append(int(part[-1]))
            offset += blob_sizes[-1]
        starts[-1] = offset
        gather = (lambda name: self._gather(indexes, name, counts))
        self.keys = KeyTable(self._gather(indexes, "key_blob", blob_sizes), starts, gather("key_hash"))
        self.image_offset, self.image_size, self.labels = gather("image_offset"), gather("image_size"), gather("label")
        if byte_ranges:
            self.sample_start, self.sample_end = gather("sample_start"), gather("sample_end")
        twice = self.keys.repeats()
        if twice is not None:
            i, j = twice
            a, b = self.paths[self.shard_of[i]], self.paths[self.shard_of[j]]
            raise DataFormatError(f"{a} and {b}: both hold key {self.keys.key(i)!r} (keys must be unique)"
                                  if a != b else f"{a}: key {self.keys.key(i)!r} appears twice")

    @staticmethod
    def _gather(indexes: List[_Index], name: str, sizes: Sequence[int]) -> np.ndarray:
        """Array `name` of every shard, concatenated, read shard by shard into one array."""
        out, at = None, 0
        for ix, n in zip(indexes, sizes):
            part = ix.field(name)
            if out is None:
                out = np.empty(sum(sizes), dtype=part.dtype)
            out[at:at + n] = part
            at += n
        return out

    def __len__(self) -> int:
        return len(self.labels)

    def where(self, row: int) -> str:
        return f"{self.paths[self.shard_of[row]]}: key {self.keys.key(row)!r}"

    def _fd(self, shard: int) -> int:
        fd = self._fds.get(shard)
        if fd is None:
            fd = self._fds.setdefault(shard, os.open(self.paths[shard], os.O_RDONLY))
        return fd

    def read(self, row: int) -> np.ndarray:
        n = int(self.image_size[row])
        data = os.pread(self._fd(int(self.shard_of[row])), n, int(self.image_offset[row]))
        if len(data) != n:
            raise DataFormatError(f"{self.where(row)}: the shard is shorter than its index (changed since?)")
        return np.frombuffer(data, dtype=np.uint8)

    def sample_bytes(self, row: int) -> bytes:
        """The sample's members as stored (headers and padding included)."""
        start, end = int(self.sample_start[row]), int(self.sample_end[row])
        return os.pread(self._fd(int(self.shard_of[row])), end - start, start)

    def samples(self, num_classes: Optional[int]) -> KeyedSamples:
        samples = KeyedSamples(self.pattern, self.keys, self.labels, self.read, self.where)
        samples.check_labels(num_classes)
        return samples


def open_shards(pattern: str, num_classes: Optional[int], what: str = "DATA.TRAIN_SHARDS") -> KeyedSamples:
    return ShardSet(pattern, what).samples(num_classes)


# -----------------------------------------------------------------------------
# Writing shards
# -----------------------------------------------------------------------------
def _tar_header(name: str, size: int) -> bytes:
    """A ustar header for a regular file (mode 0644, owner 0, mtime 0)."""
    raw = name.encode("utf-8")
    if len(raw) > 100:
        raise ValueError(f"member name longer than 100 bytes: {name!r}")
    h = bytearray(BLOCK)
    h[0:len(raw)] = raw
    h[100:108] = b"0000644\0"
    h[108:116] = b"0000000\0"
    h[116:124] = b"0000000\0"
    h[124:136] = f"{size:011o}\0".encode()
    h[136:148] = b"00000000000\0"
    h[148:156] = b" " * 8
    h[156:157] = b"0"
    h[257:263] = b"ustar\0"
    h[263:265] = b"00"
    h[148:156] = f"{sum(h):06o}\0 ".encode()
    return bytes(h)


def tar_member(name: str, data: bytes) -> bytes:
    return _tar_header(name, len(data)) + data + bytes(-len(data) % BLOCK)


def end_of_archive() -> bytes:
    return bytes(2 * BLOCK)


def write_shards(samples: Sequence[Tuple[str, Sequence[Tuple[str, bytes]]]], pattern: str, per_shard: int) -> List[str]:
    """Write (key, [(ext, bytes), ...]) samples in order as tar shards of `per_shard`
    samples, named by `pattern` % shard number (e.g. 'out/train-%05d.tar'); each shard
    atomically. Returns the shard paths."""
    paths = []
    for s in range(0, len(samples), per_shard):
        path = pattern % (s // per_shard)
        with atomic_open(path, "wb") as out:
            for key, members in samples[s:s + per_shard]:
                for ext, data in members:
                    out.write(tar_member(f"{key}.{ext}", data))
            out.write(end_of_archive())
        paths.append(path)
    return paths


def sample_members(key: str, image: bytes, image_ext: str, label: int) -> Tuple[str, List[Tuple[str, bytes]]]:
    return key, [(image_ext, image), (LABEL_EXT, str(int(label)).encode())]

