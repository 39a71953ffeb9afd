"""Count and copy the entries of a large file list fast, without a Python string per line.

An entry is what ``data.file_list.read_lines`` returns: a line (text mode, universal
newlines: ``\\r\\n`` and a lone ``\\r`` end a line) whose ``str.strip()`` is not empty.
ImageNet-21K's list has ~13M lines (~550 MB): iterating it as Python strings takes
seconds and, held as a list, ~1.3 GB. Here the bytes are read in blocks: line breaks
are counted by bytes.count, blank lines found by a regular expression, kept lines cut
out with numpy. Only a line holding nothing but whitespace and non-ASCII bytes is
decoded, to ask str.strip() whether it is blank (Unicode whitespace), so the results
equal read_lines' on any UTF-8 file (a byte-order mark at the start of the file is not
part of the first line, as with read_lines).
"""
import re
from typing import BinaryIO, Iterator, List, Sequence, Tuple

import numpy as np

from data.file_list_parse import BLOCK_BYTES, BOM, FileListError
# A line break followed by a line of only whitespace, ASCII (what str.isspace() calls
# whitespace: \t \n \v \f \r, \x1c-\x1f, space), or also non-ASCII bytes (candidates:
# decoded, then asked str.strip()).
_WS = rb"\t\x0b\x0c\r\x1c-\x1f "
_BLANK_ASCII = re.compile(rb"\n(?=[" + _WS + rb"]*\n)")
_BLANK_CANDIDATE = re.compile(rb"\n(?=[" + _WS + rb"\x80-\xff]*\n)")


def _blocks(path: str, block_bytes: int) -> Iterator[bytes]:
    """Whole lines of `path`, in blocks, with universal newlines turned into b"\\n"; the
    last line gets a b"\\n" if it had none. FileListError if it is not UTF-8."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise FileListError(f"file list not found: {path}") from None
    with f:
        carry = b""
        offset = 0  # bytes of the file before `carry`, for messages
        head = f.read(len(BOM))
        if head == BOM:
            offset = len(BOM)
        else:
            carry = head
        while True:
            chunk = f.read(block_bytes)
            data = carry + chunk
            if not chunk:
                if data and not data.endswith((b"\n", b"\r")):
                    data += b"\n"
                if data:
                    yield _newlines(_checked(data, path, offset))
                return
            # A block ends after its last \n; a trailing \r waits (it may precede \n).
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                carry = data
                continue
            block, carry = data[:cut], data[cut:]
            yield _newlines(_checked(block, path, offset))
            offset += cut


def _newlines(block: bytes) -> bytes:
    """Universal newlines, as text mode reads them: \r\n and a lone \r become \n."""
    return block.replace(b"\r\n", b"\n").replace(b"\r", b"\n") if b"\r" in block else block


def _checked(block: bytes, path: str, offset: int) -> bytes:
    """`block` (starting at byte `offset` of `path`), or FileListError if it is not UTF-8."""
    if not block.isascii():
        try:
            block.decode("utf-8")
        except UnicodeDecodeError as e:
            raise FileListError(f"{path}: not UTF-8 text (byte {offset + e.start})") from None
    return block


def _blank_starts(block: bytes) -> List[int]:
    """Where the blank lines of `block` (whole lines, each ending with \n) start."""
    if block.isascii():
        return [m.start() for m in _BLANK_ASCII.finditer(b"\n" + block)]
    starts = []
    for m in _BLANK_CANDIDATE.finditer(b"\n" + block):
        start = m.start()
        if not block[start: block.index(b"\n", start)].decode("utf-8").strip():
            starts.append(start)
    return starts


def count_entries(path: str, block_bytes: int = BLOCK_BYTES) -> int:
    """The number of entries (non-blank lines) of the file list `path`."""
    return sum(block.count(b"\n") - len(_blank_starts(block)) for block in _blocks(path, block_bytes))


def write_entries(path: str, outputs: Sequence[Tuple[np.ndarray, BinaryIO]], num_entries: int,
                  block_bytes: int = BLOCK_BYTES) -> None:
    """For each (keep, out) of `outputs` (`keep`: one bool per entry of `path`), write the
    entries where `keep` is True to the binary stream `out`, in the file's order, each
    ending with b"\\n" (what writing read_lines(path)[i] + "\\n" in text mode gives). One
    pass over the list serves every output. ValueError if the file no longer has
    `num_entries` entries."""
    for keep, _ in outputs:
        if keep.shape != (num_entries,) or keep.dtype != bool:
            raise ValueError(f"keep must be {num_entries} booleans, got {keep.dtype} of shape {keep.shape}")
    seen = 0
    for block in _blocks(path, block_bytes):
        data = np.frombuffer(block, dtype=np.uint8)
        ends = np.flatnonzero(data == 10) + 1  # one past each line's \n
        is_entry = np.ones(len(ends), dtype=bool)
        is_entry[np.searchsorted(ends, _blank_starts(block), side="right")] = False
        index = seen + np.cumsum(is_entry) - 1  # entry index of each line (if an entry)
        count = int(np.count_nonzero(is_entry))
        if count == 0 or seen + count > num_entries:
            seen += count
            continue  # nothing to write, or keep counting for the message
        lengths = np.diff(ends, prepend=0)
        line_index = np.clip(index, 0, num_entries - 1)
        for keep, out in outputs:
            chosen = is_entry & keep[line_index]
            if chosen.all():
                out.write(block)
            elif chosen.any():
                out.write(data[np.repeat(chosen, lengths)].tobytes())
        seen += count
    if seen != num_entries:
        raise ValueError(f"{path}: changed while scoring ({num_entries} lines, now {seen})")
