"""dynunc/lists/lines.py and dynunc.lists.file_list.read_lines against Python's text mode
(universal newlines, str.strip()) on random lists with blank lines, CRLF and lone CR line ends, Unicode whitespace, a
missing final newline, and blocks so small that lines and CRLF pairs straddle them."""
import io
import os
import random

import numpy as np
import pytest

from dynunc.lists.file_list import read_lines
from dynunc.lists.index import open_index
from dynunc.lists.lines import write_entries

PIECES = ["a 0", "", "  ", "\t", "b/c d 1", " x 2 ", "\u00a0", "\u00e9t\u00e9 3", "\u2003 \u00a0", "\x1c",
          "\x85", "z 9", "\u3000y 4", "\x0b\x0c", "n 5\u00a0", "\u00e9 \u00e9 7\t"]


def text_mode_lines(path):
    """The reference: the non-blank lines as Python's text mode reads them."""
    with open(path, "r", encoding="utf-8-sig") as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def random_text(rng):
    lines = [rng.choice(PIECES) for _ in range(rng.randint(0, 25))] + ["last 8"]
    text = "".join(line + rng.choice(["\n", "\r\n", "\r"]) for line in lines)
    text = text.rstrip("\r\n") if rng.random() < 0.5 else text
    return "\ufeff" + text if rng.random() < 0.3 else text  # a byte-order mark, as some editors save


@pytest.mark.parametrize("seed", range(4))
def test_matches_read_lines(tmp_path, seed):
    rng = random.Random(seed)
    path = tmp_path / "list.txt"
    for _ in range(40):
        text = random_text(rng)
        path.write_bytes(text.encode("utf-8"))
        expected = text_mode_lines(path)
        assert read_lines(str(path)) == expected, text
        index = open_index(str(path))
        n = index.count
        assert n == len(expected), text
        for block_bytes in (1, 2, 3, 7, 64, 1 << 20):
            subsets = [sorted(rng.sample(range(n), rng.randint(0, n))) for _ in range(2)] + [list(range(n))]
            outputs = []
            for kept in subsets:
                mask = np.zeros(n, dtype=bool)
                mask[kept] = True
                outputs.append((mask, io.BytesIO()))
            write_entries(index, outputs, block_bytes)
            for kept, (_, out) in zip(subsets, outputs):
                assert out.getvalue() == "".join(expected[i] + "\n" for i in kept).encode("utf-8"), (text, block_bytes)


def test_refusals(tmp_path):
    path = tmp_path / "list.txt"
    path.write_bytes(b"a 0\n\nb 1\r\nc 2\nd 3")
    index = open_index(str(path))
    for wrong in (3, 5):
        with pytest.raises(ValueError, match=rf"keep must be 4 booleans, got bool of shape \({wrong},\)"):
            write_entries(index, [(np.zeros(wrong, dtype=bool), io.BytesIO())])
    path.write_bytes(b"a 0\n\nb 1\r\nc 2\nd 4")  # same size, another label
    os.utime(path, ns=(0, index.header.list_mtime_ns + 1))
    with pytest.raises(ValueError, match="list.txt: changed while scoring"):
        write_entries(index, [(np.ones(4, dtype=bool), io.BytesIO())])
