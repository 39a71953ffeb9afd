"""Copy chosen entries of a large file list to coresets, in one read of the list.

ImageNet-21K's list has ~13M lines (~550 MB): as Python strings it would take seconds
and ~1.3 GB. The entries are known from the list's index (dynunc/lists/index.py:
their line numbers), so the copy only cuts the list's bytes into lines
(dynunc/lists/parse.py: `read_blocks`, `line_ends`) and keeps the chosen ones with
numpy. A line is copied as written (leading and trailing whitespace kept), without its
terminator and the byte-order mark, and ends with b"\\n": what `read_lines(path)[i] +
"\\n"` written in text mode gives.
"""
import os
from typing import BinaryIO, Optional, Sequence, Tuple

import numpy as np

from dynunc.lists.index import FileListIndex
from dynunc.lists.parse import line_ends, read_blocks

_NL, _CR = 10, 13


def write_entries(index: FileListIndex, outputs: Sequence[Tuple[np.ndarray, BinaryIO]],
                  block_bytes: Optional[int] = None) -> None:
    """For each (keep, out) of `outputs` (`keep`: one bool per entry of the indexed list),
    write the entries where `keep` is True to the binary stream `out`, in the list's
    order. One pass over the list serves every output. ValueError if the list is no
    longer the one indexed."""
    n = index.count
    for keep, _ in outputs:
        if keep.shape != (n,) or keep.dtype != bool:
            raise ValueError(f"keep must be {n} booleans, got {keep.dtype} of shape {keep.shape}")
    path = index.list_path
    changed = ValueError(f"{path}: changed while scoring (it is no longer the list indexed at the start); run again")
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        if (st.st_size, st.st_mtime_ns) != (index.header.list_size, index.header.list_mtime_ns):
            raise changed
        line0, row = 0, 0  # lines before the block, entries before the block
        for data, _ in read_blocks(f, block_bytes):
            buf = np.frombuffer(data, dtype=np.uint8)
            crs = np.flatnonzero(buf == _CR) if b"\r" in data else np.empty(0, dtype=np.int64)
            ends = line_ends(buf, np.flatnonzero(buf == _NL), crs)
            stop = int(np.searchsorted(index.lines, line0 + len(ends), side="right"))
            line_of_entry = index.lines[row:stop] - line0 - 1  # the block's entries, as its line numbers
            _write_block(buf, data, ends, crs, line_of_entry, [(keep[row:stop], out) for keep, out in outputs])
            line0 += len(ends)
            row = stop
        if row != n or os.fstat(f.fileno()).st_mtime_ns != st.st_mtime_ns:
            raise changed


def _write_block(buf: np.ndarray, data: bytes, ends: np.ndarray, crs: np.ndarray, line_of_entry: np.ndarray,
                 outputs: Sequence[Tuple[np.ndarray, BinaryIO]]) -> None:
    """Write the chosen entries of one block of whole lines (terminators at `ends`)."""
    lengths = np.diff(ends, prepend=-1)  # each line with its terminator
    plain = len(crs) == 0  # every terminator is b"\n" already
    if not plain:
        text = buf.copy()
        text[ends] = _NL  # a lone '\r' ends its line as '\n'
        dropped = np.zeros(len(buf), dtype=bool)
        dropped[crs] = True  # the '\r' of '\r\n' (lone ones became '\n')
        dropped[ends] = False
    for keep, out in outputs:
        chosen = np.zeros(len(ends), dtype=bool)
        chosen[line_of_entry[keep]] = True
        if plain and chosen.all():
            out.write(data)
        elif chosen.any():
            mask = np.repeat(chosen, lengths)
            out.write(buf[mask].tobytes() if plain else text[mask & ~dropped].tobytes())
