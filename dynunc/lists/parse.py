"""The file-list line format, read in one place: `read_blocks` cuts a list's bytes into
lines for every reader (this module's numpy parser, the coreset copy in list_lines.py,
and `iter_lines`, the line-by-line view that read_lines and data.prepare's check use).
Parsing is a block of lines at a time, with numpy instead of a Python loop.

A line is ``<relative path> <label>``: the label is the last whitespace-separated token,
the path everything before it (it may hold spaces). The rules are those of reading the
file as UTF-8 text with Python's universal newlines and applying ``parse_line`` to each
stripped line, so that the numpy reader and a plain Python reader agree line for line:

- a line ends at '\\n', '\\r\\n' or a lone '\\r'; the last line may lack its terminator;
- a UTF-8 byte-order mark at the start of the file is not part of the first line;
- lines that are empty after stripping whitespace are skipped but keep their number;
- lines made of ASCII only, whose whitespace is space/tab/CR and whose label has 1-8
  digits, are parsed with numpy; any other line (non-ASCII bytes, other whitespace, a
  malformed or unusual label) goes through ``parse_line`` itself, so its result and its
  error message are exactly those of the plain reader.

Each parsed entry also gets a 64-bit hash of its path bytes (used to look coreset lines
up in the full list without holding millions of Python strings).
"""
from dataclasses import dataclass
from typing import BinaryIO, Iterator, Optional, Tuple

import numpy as np
from numpy.lib.stride_tricks import as_strided

BLOCK_BYTES = 8 << 20  # bytes read at a time; memory per block is a small multiple of this
BOM = b"\xef\xbb\xbf"
MAX_LABEL = 2**31 - 1  # labels are stored as int32
_PAD = 8  # zero bytes after a block, so that 8-byte words can be read at any path offset
_FAST_DIGITS = 8  # a label read as one 8-byte word
_NL, _CR = 10, 13


class FileListError(ValueError):
    """A problem in a file list, naming the file and the line."""


def open_list_file(path: str):
    """`path` opened for reading bytes; FileListError naming it if it is missing (or under
    a file) or a folder."""
    try:
        return open(path, "rb")
    except (FileNotFoundError, NotADirectoryError):
        raise FileListError(f"file list not found: {path}") from None
    except IsADirectoryError:
        raise FileListError(f"{path}: is a folder; a file list is expected") from None


def parse_line(line: str, path: str, lineno: int) -> Tuple[str, int]:
    """Split one stripped line into (relative path, label); raise FileListError if malformed."""
    parts = line.rsplit(maxsplit=1)
    if len(parts) != 2:
        raise FileListError(f"{path}:{lineno}: expected '<relative path> <label>', got {line!r}")
    name, label = parts
    try:
        value = int(label)
    except ValueError:
        raise FileListError(f"{path}:{lineno}: label {label!r} is not an integer") from None
    return name, value


def label_error(path: str, lineno: int, label: int, num_classes: Optional[int]) -> Optional[FileListError]:
    """The error for a label outside [0, num_classes) (or negative, or too large to store)."""
    if label < 0 or (num_classes is not None and label >= num_classes):
        bound = f"[0, {num_classes})" if num_classes is not None else ">= 0"
        return FileListError(f"{path}:{lineno}: label {label} is outside {bound}")
    if label > MAX_LABEL:
        return FileListError(f"{path}:{lineno}: label {label} is too large (at most {MAX_LABEL})")
    return None


@dataclass
class ParsedBlock:
    """The entries of one block of lines (blank lines dropped), in file order."""

    data: bytes  # the block's bytes (complete lines), for names in messages
    base: int  # file offset of data[0]
    path_start: np.ndarray  # int64: file offset of each entry's path
    path_len: np.ndarray  # int64: its length in bytes
    labels: np.ndarray  # int64
    lines: np.ndarray  # int64, 1-based line numbers
    hashes: np.ndarray  # uint64, path_hash of each path
    num_lines: int  # lines in the block, blank ones included
    error: Optional[FileListError] = None  # the first bad line of the block; entries stop before it
    error_line: int = 0

    def name(self, j: int) -> str:
        start = int(self.path_start[j]) - self.base
        return self.data[start : start + int(self.path_len[j])].decode("utf-8")


def read_blocks(f: BinaryIO, block_bytes: Optional[int] = None) -> Iterator[Tuple[bytes, int]]:
    """(data, base): the open binary file `f` in blocks of whole lines, `data` starting
    at file offset `base`. A UTF-8 byte-order mark at the start is left out; the last line
    gets a b"\\n" (past the end of the file) if it has no terminator. The one place where
    a list's bytes are cut into lines."""
    block_bytes = block_bytes or BLOCK_BYTES
    base, carry = 0, b""
    head = f.read(len(BOM))
    if head == BOM:
        base = len(BOM)
    else:
        carry = head
    while True:
        chunk = f.read(block_bytes)
        data = carry + chunk
        if not chunk:
            if data:
                yield (data if data[-1] in (_NL, _CR) else data + b"\n"), base
            return
        # The last terminator; a '\r' at the very end may be the first half of '\r\n'.
        cut = max(data.rfind(b"\n"), data.rfind(b"\r", 0, len(data) - 1)) + 1
        if cut == 0:
            carry = data
            continue
        yield data[:cut], base
        base += cut
        carry = data[cut:]


def iter_lines(f: BinaryIO, path: str, errors: str = "strict") -> Iterator[Tuple[int, str]]:
    """(line number, text) of each line of the open binary file `f` (named `path` in
    messages), blank ones included: without its terminator and the byte-order mark,
    decoded as UTF-8 with `errors` (a str.decode handler; "strict": FileListError naming
    the line). The line-by-line view of `read_blocks`, for tools that look at every
    line's text (bytes.splitlines ends lines at exactly '\\n', '\\r\\n' and '\\r')."""
    lineno = 0
    for data, _ in read_blocks(f):
        for raw in data.splitlines():
            lineno += 1
            try:
                text = raw.decode("utf-8", errors)
            except UnicodeDecodeError as e:
                raise FileListError(f"{path}:{lineno}: {_not_utf8(e)}") from None
            yield lineno, text


def _not_utf8(e: UnicodeDecodeError) -> str:
    return f"the line is not valid UTF-8 ({e.reason} at byte {e.start})"


def iter_blocks(f: BinaryIO, path: str, num_classes: Optional[int] = None,
                block_bytes: Optional[int] = None) -> Iterator[ParsedBlock]:
    """Parse the open binary file `f` (named `path` in messages) block by block.

    Stops after the first block holding an error (its `error` is set): that error is the
    first one in file order, as a line-by-line reader would raise it.
    """
    line0 = 0
    for data, base in read_blocks(f, block_bytes):
        block = parse_block(data, base, line0, path, num_classes)
        yield block
        if block.error is not None:
            return
        line0 += block.num_lines


def line_ends(buf: np.ndarray, newlines: np.ndarray, crs: np.ndarray) -> np.ndarray:
    """The terminator of each line of `buf` (whole lines), given the positions of its
    '\\n' and '\\r' bytes: each '\\n', and each '\\r' not followed by '\\n' (a '\\r'
    ending the block is lone too)."""
    if len(crs):
        lone = crs[buf[np.minimum(crs + 1, len(buf) - 1)] != _NL]
        if len(lone):
            return np.union1d(newlines, lone)
    return newlines


def _run_bounds(ws: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """For each whitespace position, the start and (exclusive) end of its run of
    consecutive whitespace."""
    if len(ws) == 0:
        return ws, ws
    first = np.empty(len(ws), dtype=bool)
    first[0] = True
    np.not_equal(ws[1:], ws[:-1] + 1, out=first[1:])
    run = np.cumsum(first) - 1
    starts = ws[first]
    last = np.empty(len(ws), dtype=bool)
    last[-1] = True
    last[:-1] = first[1:]
    ends = ws[last] + 1
    return starts[run], ends[run]


def parse_block(data: bytes, base: int, line0: int, path: str, num_classes: Optional[int]) -> ParsedBlock:
    """Parse complete lines (`data` ends with a terminator); line0 lines come before them."""
    padded = np.frombuffer(data + bytes(_PAD), dtype=np.uint8)
    buf = padded[: len(data)]
    # Bytes below '!' (controls and space) are few, about two a line: classify them alone.
    low = np.flatnonzero(buf <= 0x20)
    low_byte = buf[low]
    cr = low[low_byte == _CR]
    terms = line_ends(buf, low[low_byte == _NL], cr)
    num_lines = len(terms)
    starts = np.empty(num_lines, dtype=np.int64)
    starts[0] = 0
    starts[1:] = terms[:-1] + 1
    line_no = line0 + 1 + np.arange(num_lines, dtype=np.int64)

    # Lines the numpy path does not handle: non-ASCII bytes, or whitespace other than
    # space / tab / CR / LF (str.split and str.strip know more of it).
    odd_at = low[(low_byte == 0x0B) | (low_byte == 0x0C) | ((low_byte >= 0x1C) & (low_byte <= 0x1F))]
    words = padded[: len(padded) // 8 * 8].view(np.uint64)
    if (words & np.uint64(0x8080808080808080)).any():
        odd_at = np.union1d(odd_at, np.flatnonzero(buf >= 0x80))
    slow = np.zeros(num_lines, dtype=bool)
    if len(odd_at):
        slow[np.searchsorted(terms, odd_at)] = True

    ws = low[(low_byte == 0x20) | (low_byte == 0x09) | (low_byte == _NL) | (low_byte == _CR)]
    sep = ws[0::2]
    if (len(cr) == 0 and len(odd_at) == 0 and len(ws) == 2 * num_lines and np.array_equal(ws[1::2], terms)
            and (sep > starts).all() and (terms - sep >= 2).all()):
        # The usual block: every line is '<path> <label>\n' with one space or tab.
        content_start, content_end, path_end = starts, terms, sep
        blank = one_token = np.zeros(num_lines, dtype=bool)
    else:
        run_start, run_end = _run_bounds(ws)
        # Content = the line without leading and trailing whitespace.
        content_end = np.maximum(run_start[np.searchsorted(ws, terms)], starts)
        k = np.minimum(np.searchsorted(ws, starts), len(ws) - 1)
        content_start = np.where(ws[k] == starts, run_end[k], starts)
        blank = content_start >= content_end
        # The label: after the last whitespace inside the content.
        k2 = np.searchsorted(ws, content_end) - 1
        sep = ws[np.maximum(k2, 0)]
        one_token = ~blank & ((k2 < 0) | (sep < content_start))
        path_end = np.maximum(run_start[np.maximum(k2, 0)], content_start)
    label_start = sep + 1
    label_len = np.where(blank | one_token, 0, content_end - label_start)

    value, digits_ok = parse_labels(byte_words(padded), label_start, label_len)

    python = slow | (~blank & (one_token | ~digits_ok))
    valid = ~blank & ~python
    p_start = content_start.copy()
    p_len = path_end - content_start

    error, error_line = None, 0
    for j in np.flatnonzero(python):
        lineno = int(line_no[j])
        raw = data[starts[j] : terms[j]]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            error, error_line = FileListError(f"{path}:{lineno}: {_not_utf8(e)}"), lineno
            break
        stripped = text.strip()
        if not stripped:
            continue
        try:
            name, label = parse_line(stripped, path, lineno)
        except FileListError as e:
            error, error_line = e, lineno
            break
        lead = len(text) - len(text.lstrip())
        p_start[j] = starts[j] + len(text[:lead].encode("utf-8"))
        p_len[j] = len(name.encode("utf-8"))
        value[j] = label
        valid[j] = True

    entries = slice(None) if valid.all() else np.flatnonzero(valid)
    if error is not None:
        entries = np.flatnonzero(valid & (line_no < error_line))
    labels = value[entries]
    bad = labels < 0
    bad |= labels > MAX_LABEL if num_classes is None else labels >= num_classes
    if bad.any():
        j = np.flatnonzero(valid)[np.argmax(bad)] if isinstance(entries, slice) else entries[np.argmax(bad)]
        error_line = int(line_no[j])
        error = label_error(path, error_line, int(value[j]), num_classes)
        entries = np.flatnonzero(valid & (line_no < error_line))
        labels = value[entries]

    p_start, p_len = p_start[entries], p_len[entries]
    return ParsedBlock(
        data=data, base=base, path_start=p_start + base, path_len=p_len, labels=labels, lines=line_no[entries],
        hashes=path_hash(padded, p_start, p_len), num_lines=num_lines, error=error, error_line=error_line,
    )


def byte_words(padded: np.ndarray) -> np.ndarray:
    """words[i] = the 8 bytes at padded[i:i+8] as a little-endian uint64 (a view; padded:
    uint8 with _PAD bytes after the data, so that i may be any offset in the data or its end)."""
    words = as_strided(padded, shape=(len(padded) - _PAD + 1, 8), strides=(padded.strides[0], padded.strides[0]))
    return words.view("<u8")[:, 0]


_LOW_BYTES = np.array([(1 << (8 * k)) - 1 for k in range(8)] + [2**64 - 1], dtype=np.uint64)  # [k]: k low bytes
_ZERO_DIGITS = np.uint64(0x3030303030303030)
_SIXES = np.uint64(0x0606060606060606)
_HIGH_NIBBLES = np.uint64(0xF0F0F0F0F0F0F0F0)


def parse_labels(words: np.ndarray, start: np.ndarray, length: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(value, ok): the labels of `length` bytes at `start`, ok where they are 1 to
    _FAST_DIGITS ASCII digits. All digits of a label at once, in one 64-bit word."""
    ok = (length >= 1) & (length <= _FAST_DIGITS)
    length = np.clip(length, 0, 8)
    d = (words[start] ^ _ZERO_DIGITS) & _LOW_BYTES[length]  # a digit's byte becomes its value 0-9
    ok &= ((d | (d + _SIXES)) & _HIGH_NIBBLES) == 0
    # The first digit is the lowest byte: shift the digits up so that zeros lead, then
    # combine pairs of bytes, pairs of pairs and pairs of those (each lane below 2**32).
    d <<= (8 * (8 - length)).astype(np.uint64)
    d = (d * np.uint64(10) + (d >> np.uint64(8))) & np.uint64(0x00FF00FF00FF00FF)
    d = (d * np.uint64(100) + (d >> np.uint64(16))) & np.uint64(0x0000FFFF0000FFFF)
    d = (d * np.uint64(10000) + (d >> np.uint64(32))) & np.uint64(0xFFFFFFFF)
    return np.where(ok, d, 0).astype(np.int64), ok


_MUL = np.uint64(0x9E3779B97F4A7C15)
_FMIX1 = np.uint64(0xFF51AFD7ED558CCD)
_FMIX2 = np.uint64(0xC4CEB9FE1A85EC53)
_SEED = np.uint64(0x243F6A8885A308D3)


def path_hash(padded: np.ndarray, start: np.ndarray, length: np.ndarray) -> np.ndarray:
    """64-bit hash of the byte strings padded[start:start+length] (padded: uint8 with at
    least 8 bytes after the last string). Depends only on the bytes, not on where they are."""
    words = byte_words(padded)
    h = np.full(len(start), _SEED, dtype=np.uint64)
    with np.errstate(over="ignore"):
        whole = int(length.min()) // 8 if len(length) else 0  # words that every string has in full
        for offset in range(0, 8 * whole, 8):
            x = (h ^ words[start + offset]) * _MUL
            h = x ^ (x >> np.uint64(29))
        offset = 8 * whole
        todo = np.flatnonzero(length > offset)
        while len(todo):
            w = words[start[todo] + offset] & _LOW_BYTES[np.minimum(length[todo] - offset, 8)]  # the string's bytes
            x = (h[todo] ^ w) * _MUL
            h[todo] = x ^ (x >> np.uint64(29))
            offset += 8
            todo = todo[length[todo] > offset]
        h ^= length.astype(np.uint64)
        h ^= h >> np.uint64(33)
        h *= _FMIX1
        h ^= h >> np.uint64(33)
        h *= _FMIX2
        h ^= h >> np.uint64(33)
    return h
