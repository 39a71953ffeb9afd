"""dynunc/lists/file_list.py: parsing the paper's `/<class>/<file> <label>` lists and the errors
that name `path:line`."""
import os

import numpy as np
import pytest

from dynunc.lists.file_list import FileListError, read_coreset, read_file_list, read_lines


def write(path, text):
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return str(path)


def test_parse(tmp_path):
    path = write(tmp_path / "list.txt", "/c00/a.jpg 0\n/c01/b.jpg 1\nc02/c.jpg 2\n")
    fl = read_file_list(path)
    assert len(fl) == 3
    assert fl.files == ["/c00/a.jpg", "/c01/b.jpg", "c02/c.jpg"]
    assert fl.labels.dtype == np.int32  # stored as int32 in the index
    assert fl.labels.tolist() == [0, 1, 2]
    assert fl.line_numbers.tolist() == [1, 2, 3]
    assert fl.num_classes_seen == 3
    # root defaults to the list's folder; the leading '/' is not an absolute path
    assert fl.root == str(tmp_path)
    assert fl.full_path(0) == os.path.join(str(tmp_path), "c00", "a.jpg")
    assert fl.full_path(2) == os.path.join(str(tmp_path), "c02", "c.jpg")


def test_explicit_root(tmp_path):
    path = write(tmp_path / "list.txt", "/c00/a.jpg 0\n")
    fl = read_file_list(path, root="/data/train")
    assert fl.full_path(0) == "/data/train/c00/a.jpg"


def test_path_with_spaces_and_crlf(tmp_path):
    path = tmp_path / "list.txt"
    path.write_bytes(b"/c 0/a b.jpg 0\r\n/c1/x.jpg\t1\r\n")
    fl = read_file_list(str(path))
    assert fl.files == ["/c 0/a b.jpg", "/c1/x.jpg"]
    assert fl.labels.tolist() == [0, 1]


def test_blank_lines_skipped_line_numbers_kept(tmp_path):
    path = write(tmp_path / "list.txt", "\n/a.jpg 0\n\n   \n/b.jpg 1\n\n/c.jpg 0\n\n")
    fl = read_file_list(path)
    assert fl.files == ["/a.jpg", "/b.jpg", "/c.jpg"]
    assert fl.line_numbers.tolist() == [2, 5, 7]
    assert fl.where(1).startswith(f"{path}:5 ")


def test_blank_lines_before_an_error_do_not_shift_its_line(tmp_path):
    path = write(tmp_path / "list.txt", "/a.jpg 0\n\n\n/b.jpg x\n")
    with pytest.raises(FileListError, match=f"{path}:4:"):
        read_file_list(path)


def test_where_message(tmp_path):
    path = write(tmp_path / "list.txt", "/c00/a.jpg 0\n\n/c01/b.jpg 1\n")
    fl = read_file_list(path, root="/r")
    assert fl.where(1) == f"{path}:3 (/r/c01/b.jpg)"
    assert fl.where(0) == f"{path}:1 (/r/c00/a.jpg)"


def test_one_token_line(tmp_path):
    path = write(tmp_path / "list.txt", "/a.jpg 0\n/b.jpg\n")
    with pytest.raises(FileListError, match=f"{path}:2:"):
        read_file_list(path)


def test_non_integer_label(tmp_path):
    path = write(tmp_path / "list.txt", "/a.jpg 0\n/b.jpg 1\n/c.jpg 1.0\n")
    with pytest.raises(FileListError) as info:
        read_file_list(path)
    assert f"{path}:3" in str(info.value)
    assert "1.0" in str(info.value)


def test_negative_label(tmp_path):
    path = write(tmp_path / "list.txt", "/a.jpg -1\n")
    with pytest.raises(FileListError, match=f"{path}:1:"):
        read_file_list(path)


def test_label_too_large(tmp_path):
    path = write(tmp_path / "list.txt", "/a.jpg 0\n/b.jpg 2\n/c.jpg 3\n")
    fl = read_file_list(path, num_classes=4)
    assert fl.labels.tolist() == [0, 2, 3]
    with pytest.raises(FileListError) as info:
        read_file_list(path, num_classes=3)
    assert f"{path}:3" in str(info.value)
    assert "3" in str(info.value)


def test_empty_list(tmp_path):
    path = write(tmp_path / "list.txt", "\n\n")
    with pytest.raises(FileListError, match="empty"):
        read_file_list(path)
    path = write(tmp_path / "zero.txt", "")
    with pytest.raises(FileListError, match="empty"):
        read_file_list(path)


def test_missing_list(tmp_path):
    path = str(tmp_path / "nope.txt")
    with pytest.raises(FileListError, match="nope.txt"):
        read_file_list(path)
    with pytest.raises(FileListError, match="nope.txt"):
        read_lines(path)


def test_file_list_error_is_a_value_error():
    assert issubclass(FileListError, ValueError)


def test_read_lines_keeps_text(tmp_path):
    path = write(tmp_path / "list.txt", "/a b.jpg 0\n\n/c.jpg 1\n")
    assert read_lines(path) == ["/a b.jpg 0", "/c.jpg 1"]


def test_image_tree_list(image_tree):
    train, _ = image_tree
    fl = read_file_list(str(train / "file_list.txt"), root=str(train), num_classes=3)
    assert len(fl) == 30
    assert np.bincount(fl.labels).tolist() == [10, 10, 10]
    assert all(os.path.isfile(fl.full_path(i)) for i in range(len(fl)))


# -----------------------------------------------------------------------------
# Lists as people write them (byte-order mark, CRLF, spaces, non-ASCII, no final newline)
# -----------------------------------------------------------------------------
def test_byte_order_mark_is_not_part_of_the_first_path(tmp_path):
    (tmp_path / "c00").mkdir()
    (tmp_path / "c00" / "a.jpg").write_bytes(b"x")
    path = tmp_path / "list.txt"
    path.write_bytes("\ufeff/c00/a.jpg 0\n/c00/a.jpg 0\n".encode("utf-8"))
    fl = read_file_list(str(path))
    assert fl.files == ["/c00/a.jpg", "/c00/a.jpg"]
    assert os.path.isfile(fl.full_path(0))
    assert fl.where(0) == f"{path}:1 ({tmp_path / 'c00' / 'a.jpg'})"


def test_windows_list_with_spaces_non_ascii_and_no_final_newline(tmp_path):
    path = tmp_path / "list.txt"
    text = "\ufeff/cl 0/a b.jpg 0\r\n\r\n  /café/ü ñ.JPEG\t1  \r\n/中文/图 片.png 2"
    path.write_bytes(text.encode("utf-8"))
    fl = read_file_list(str(path), root="/r", num_classes=3)
    assert fl.files == ["/cl 0/a b.jpg", "/café/ü ñ.JPEG", "/中文/图 片.png"]
    assert fl.labels.tolist() == [0, 1, 2]
    assert fl.line_numbers.tolist() == [1, 3, 4]
    assert fl.full_path(2) == "/r/中文/图 片.png"
    assert read_lines(str(path)) == ["/cl 0/a b.jpg 0", "  /café/ü ñ.JPEG\t1  ", "/中文/图 片.png 2"]


def test_read_lines_without_bom_and_terminators(tmp_path):
    path = tmp_path / "list.txt"
    path.write_bytes(b"\xef\xbb\xbf/a b.jpg 0\r\n\r\n/c.jpg 1\r\n/d.jpg 2")
    assert read_lines(str(path)) == ["/a b.jpg 0", "/c.jpg 1", "/d.jpg 2"]


def test_fingerprint_is_the_sha256_of_the_bytes(tmp_path):
    """The identity a history records: the sha256 of every byte (mark and CR included),
    computed when the index is built and read back from it."""
    import hashlib

    path = tmp_path / "list.txt"
    raw = b"\xef\xbb\xbf\r\n/a.jpg 0\r\n \r\n/b c.jpg 1\r/d.jpg 2"
    path.write_bytes(raw)
    t = path.stat().st_mtime - 60
    os.utime(path, (t, t))  # old enough to keep its index on disk
    expected = {"path": str(path), "entries": 3, "sha256": hashlib.sha256(raw).hexdigest()}
    built = read_file_list(str(path)).index
    assert built.location == str(path) + ".idx" and built.fingerprint() == expected
    reread = read_file_list(str(path)).index
    assert reread.header == built.header and reread.fingerprint() == expected


def test_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "list.txt"
    path.write_bytes(b"/a.jpg 0\n/b\xff.jpg 1\n")
    for reader in (read_file_list, read_lines):
        with pytest.raises(FileListError, match=f"{path}:2: the line is not valid UTF-8"):
            reader(str(path))


# -----------------------------------------------------------------------------
# The numpy reader against a line-by-line Python reader
# -----------------------------------------------------------------------------
def reference_read(path, num_classes=None):
    """The plain reader: text mode, one stripped line at a time, parse_line on each
    (what dynunc/lists/file_list.py did before the index), with the byte-order mark dropped."""
    from dynunc.lists.file_list import parse_line

    files, labels, lines = [], [], []
    with open(path, "r", encoding="utf-8-sig") as f:
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
            lines.append(lineno)
    if not files:
        raise FileListError(f"{path}: the file list is empty")
    return files, labels, lines


NAMES = ["/c00/a.jpg", "b", "/d e/f g.jpg", "/é/ü.JPEG", "/中文/图.png", "x\u00a0y", "p\u3000q/r", "/t\tu.jpg",
         "/.hidden/..x", "/v\x0cw", "/n01440764/n01440764_10026.JPEG", "/" + "long" * 40 + ".jpg", "\ufeffz"]
LABELS = ["0", "7", "12", "21841", "123456789", "007", "+3", "1_0", "\u0663", "0000000000004"]
BAD_LABELS = ["x", "1.0", "-1", "", "99"]  # "" gives a one-token line; 99 is out of range with num_classes
LEADS = ["", "", " ", "\t", "\x0c "]
GAPS = [" ", " ", "\t", "  \t ", "\u00a0", "\x1f"]
TRAILS = ["", "", " ", "\t ", "\x1e", "\u2003"]
ENDS = ["\n", "\n", "\r\n", "\r"]
BLANKS = ["", "   ", "\t", "\x0b", "\u00a0"]


def random_list(rng, n, bad_line=None):
    """Text of a file list with n entries, blank lines between some; with bad_line, the
    entry of that number gets a malformed or out-of-range label."""
    out = ["\ufeff"] if rng.random() < 0.5 else []
    for i in range(n):
        while rng.random() < 0.2:
            out.append(BLANKS[rng.integers(len(BLANKS))] + ENDS[rng.integers(len(ENDS))])
        label = BAD_LABELS[rng.integers(len(BAD_LABELS))] if i == bad_line else LABELS[rng.integers(len(LABELS))]
        gap = GAPS[rng.integers(len(GAPS))] if label else ""
        out.append(LEADS[rng.integers(len(LEADS))] + NAMES[rng.integers(len(NAMES))] + gap + label
                   + TRAILS[rng.integers(len(TRAILS))] + ENDS[rng.integers(len(ENDS))])
    if rng.random() < 0.5:
        out[-1] = out[-1].rstrip("\r\n")  # no newline after the last line
    return "".join(out)


def test_labels_read_a_word_at_a_time():
    """parse_labels against int(): 1-8 ASCII digits are read, anything else is left to parse_line."""
    from dynunc.lists.parse import _PAD, byte_words, parse_labels

    rng = np.random.default_rng(0)
    texts = ["0", "9", "00000000", "99999999", "12345678", "123456789", "", "+1", "1_0", "٣"]
    for length in range(1, 11):
        for _ in range(30):
            digits = list(rng.choice(list("0123456789"), length))
            if rng.random() < 0.4:  # a byte next to the digits' range
                digits[rng.integers(length)] = rng.choice(list("/:a ~\x00\x7f\xff\xe0"))
            texts.append("".join(digits))
    raw = [t.encode("latin-1") if all(ord(c) < 256 for c in t) else t.encode("utf-8") for t in texts]
    data = b"".join(raw)
    starts = np.cumsum([0] + [len(r) for r in raw[:-1]])
    value, ok = parse_labels(byte_words(np.frombuffer(data + bytes(_PAD), dtype=np.uint8)), starts,
                             np.array([len(r) for r in raw]))
    for text, r, v, good in zip(texts, raw, value, ok):
        expect = 1 <= len(r) <= 8 and all(48 <= b <= 57 for b in r)
        assert bool(good) == expect, text
        if expect:
            assert int(v) == int(text), text


@pytest.mark.parametrize("block_bytes", [3, 16, 97, 1 << 20])
@pytest.mark.parametrize("seed", range(6))
def test_same_entries_as_the_line_by_line_reader(tmp_path, monkeypatch, block_bytes, seed):
    import dynunc.lists.parse

    monkeypatch.setattr(dynunc.lists.parse, "BLOCK_BYTES", block_bytes)
    rng = np.random.default_rng(seed)
    path = str(tmp_path / "list.txt")
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(random_list(rng, 200))
    files, labels, lines = reference_read(path, num_classes=10**9)
    fl = read_file_list(path, num_classes=10**9)
    assert list(fl.files) == files
    assert fl.labels.tolist() == labels
    assert fl.line_numbers.tolist() == lines
    assert [fl.name(i) for i in range(len(fl))] == files


@pytest.mark.parametrize("block_bytes", [5, 1 << 20])
@pytest.mark.parametrize("seed", range(12))
def test_same_error_as_the_line_by_line_reader(tmp_path, monkeypatch, block_bytes, seed):
    import dynunc.lists.parse

    monkeypatch.setattr(dynunc.lists.parse, "BLOCK_BYTES", block_bytes)
    rng = np.random.default_rng(100 + seed)
    path = str(tmp_path / "list.txt")
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write(random_list(rng, 60, bad_line=int(rng.integers(60))))
    with pytest.raises(FileListError) as expected:
        reference_read(path, num_classes=50)
    with pytest.raises(FileListError) as got:
        read_file_list(path, num_classes=50)
    assert str(got.value) == str(expected.value)


# -----------------------------------------------------------------------------
# The index file beside the list
# -----------------------------------------------------------------------------
def aged_list(tmp_path, text, name="list.txt", age=60):
    """A list whose mtime is `age` seconds ago (an index is kept only for a list that
    has not just changed)."""
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    t = path.stat().st_mtime - age
    os.utime(path, (t, t))
    return str(path)


def count_builds(monkeypatch):
    import dynunc.lists.index as fli

    calls = []
    real = fli._write_index

    def counting(*args, **kwargs):
        calls.append(args[2])
        return real(*args, **kwargs)

    monkeypatch.setattr(fli, "_write_index", counting)
    return calls


def test_index_is_written_once_and_reused(tmp_path, monkeypatch):
    builds = count_builds(monkeypatch)
    path = aged_list(tmp_path, "/a.jpg 0\n/b.jpg 1\n")
    assert read_file_list(path).files == ["/a.jpg", "/b.jpg"]
    assert os.path.isfile(path + ".idx") and len(builds) == 1
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    fl = read_file_list(path)
    assert len(builds) == 1 and fl.index.location == path + ".idx"
    assert fl.files == ["/a.jpg", "/b.jpg"] and fl.labels.tolist() == [0, 1]


def test_label_bound_checked_against_an_index_built_without_it(tmp_path, monkeypatch):
    builds = count_builds(monkeypatch)
    path = aged_list(tmp_path, "/a.jpg 0\n\n/b.jpg 2\n/c.jpg 3\n/d.jpg 3\n")
    assert read_file_list(path).num_classes_seen == 4
    assert read_file_list(path, num_classes=4).labels.tolist() == [0, 2, 3, 3]
    with pytest.raises(FileListError) as info:
        read_file_list(path, num_classes=3)
    assert str(info.value) == f"{path}:4: label 3 is outside [0, 3)"
    assert len(builds) == 1


def test_list_just_written_is_not_indexed_on_disk(tmp_path, monkeypatch):
    builds = count_builds(monkeypatch)
    path = write(tmp_path / "list.txt", "/a.jpg 0\n")
    assert read_file_list(path).index.location == "(temporary)"
    assert os.listdir(tmp_path) == ["list.txt"]
    read_file_list(path)
    assert len(builds) == 2


def test_stale_index_is_rebuilt(tmp_path, monkeypatch):
    builds = count_builds(monkeypatch)
    path = aged_list(tmp_path, "/a.jpg 0\n/b.jpg 1\n")
    read_file_list(path)
    path = aged_list(tmp_path, "/a.jpg 0\n/b.jpg 1\n/c.jpg 2\n", age=30)  # edited later
    fl = read_file_list(path)
    assert fl.files == ["/a.jpg", "/b.jpg", "/c.jpg"] and len(builds) == 2
    path = aged_list(tmp_path, "/x.jpg 5\n/y.jpg 6\n/z.jpg 7\n", age=30)  # same size, another mtime
    os.utime(path, ns=(os.stat(path).st_mtime_ns + 1,) * 2)
    assert read_file_list(path).files == ["/x.jpg", "/y.jpg", "/z.jpg"] and len(builds) == 3


def corrupt_label_section(index_path):
    import dynunc.lists.index as fli

    with open(index_path, "r+b") as f:
        header = fli.Header.unpack(f.read(fli.HEADER_BYTES))
        f.seek(header.offset("label"))
        f.write(np.int32(7).tobytes())


@pytest.mark.parametrize("damage", ["label", "truncate", "header", "garbage", "empty", "extra"])
def test_corrupt_index_is_rebuilt_never_used(tmp_path, monkeypatch, damage):
    builds = count_builds(monkeypatch)
    path = aged_list(tmp_path, "/a.jpg 0\n/b.jpg 1\n")
    read_file_list(path)
    index = path + ".idx"
    if damage == "label":
        corrupt_label_section(index)
    elif damage == "truncate":
        os.truncate(index, os.path.getsize(index) - 4)
    elif damage == "header":
        with open(index, "r+b") as f:
            f.seek(20)
            f.write(b"\xff")
    elif damage == "garbage":
        with open(index, "wb") as f:
            f.write(os.urandom(5000))
    elif damage == "empty":
        open(index, "wb").close()
    elif damage == "extra":
        with open(index, "ab") as f:
            f.write(b"\0" * 8)
    fl = read_file_list(path)
    assert fl.labels.tolist() == [0, 1] and fl.files == ["/a.jpg", "/b.jpg"]
    assert len(builds) == 2
    read_file_list(path)
    assert len(builds) == 2  # the rebuilt index is valid


def test_lookup_arrays_are_checked_for_coresets(tmp_path, monkeypatch):
    import dynunc.lists.index as fli

    builds = count_builds(monkeypatch)
    path = aged_list(tmp_path, "/a.jpg 0\n/b.jpg 1\n")
    read_file_list(path)
    with open(path + ".idx", "r+b") as f:
        header = fli.Header.unpack(f.read(fli.HEADER_BYTES))
        f.seek(header.offset("sorted_key"))
        f.write(b"\xff" * 8)
    read_file_list(path)
    assert len(builds) == 1  # the plain list does not use the lookup arrays
    core = write(tmp_path / "core.txt", "/b.jpg 1\n")
    assert read_coreset(core, path).rows.tolist() == [1]
    assert len(builds) == 2


def test_index_goes_to_the_cache_when_the_folder_is_read_only(tmp_path, monkeypatch):
    import dynunc.lists.index as fli

    folder = tmp_path / "ro"
    folder.mkdir()
    path = aged_list(folder, "/a.jpg 0\n")
    real_access = os.access
    monkeypatch.setattr(fli.os, "access", lambda p, mode: False if p == str(folder) else real_access(p, mode))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    fl = read_file_list(path)
    assert fl.index.location.startswith(str(tmp_path / "cache" / "dynunc" / "file_list_index") + os.sep)
    assert fl.index.location.endswith("-list.txt.idx") and os.path.isfile(fl.index.location)
    assert os.listdir(folder) == ["list.txt"]


def test_index_header_round_trip():
    import dynunc.lists.index as fli

    header = fli.Header(fli.VERSION, 3, 100, 123456789, 987654321, 5, 9, 21841, 2, tuple(range(len(fli.SECTIONS))),
                        bytes(range(32)))
    assert fli.Header.unpack(header.pack()) == header
    with pytest.raises(ValueError, match="checksum"):
        fli.Header.unpack(header.pack()[:-1] + b"\0")


# -----------------------------------------------------------------------------
# Coresets: lines of the full list
# -----------------------------------------------------------------------------
FULL = "/c00/a.jpg 0\n/c00/b c.jpg 0\n\n/c01/é.jpg 1\n/c01/d.jpg 1\n/c02/e.jpg 2\n"


def test_coreset_maps_to_full_list_rows(tmp_path):
    full = write(tmp_path / "train.txt", FULL)
    core = tmp_path / "core.txt"
    core.write_bytes("\ufeff/c02/e.jpg 2\r\n\r\n/c00/b c.jpg 0\r\n  /c01/é.jpg\t1".encode("utf-8"))
    fl = read_coreset(str(core), full, root="/data", num_classes=3)
    assert fl.rows.tolist() == [4, 1, 2]
    assert fl.files == ["/c02/e.jpg", "/c00/b c.jpg", "/c01/é.jpg"]
    assert fl.labels.tolist() == [2, 0, 1]
    assert fl.line_numbers.tolist() == [1, 3, 4]
    assert fl.where(1) == f"{core}:3 (/data/c00/b c.jpg)"
    assert fl.path == str(core) and len(fl) == 3


def test_coreset_line_not_in_full_list_is_refused(tmp_path):
    full = write(tmp_path / "train.txt", FULL)
    core = write(tmp_path / "core.txt", "/c00/a.jpg 0\n\n/c00/zz.jpg 0\n/c01/d.jpg 1\n")
    with pytest.raises(FileListError) as info:
        read_coreset(core, full)
    assert str(info.value) == f"{core}:3: '/c00/zz.jpg' is not in the full list {full}"
    core = write(tmp_path / "core2.txt", "/c00/a.jpg 0\n/c01/d.jpg 2\n")
    with pytest.raises(FileListError) as info:
        read_coreset(core, full)
    assert str(info.value) == f"{core}:2: '/c01/d.jpg' has label 2, but the full list {full}:5 gives it label 1"


def test_coreset_errors_name_the_coreset_line(tmp_path):
    full = write(tmp_path / "train.txt", FULL)
    core = write(tmp_path / "core.txt", "/c00/a.jpg 0\n/c01/d.jpg\n")
    with pytest.raises(FileListError, match=f"{core}:2: expected"):
        read_coreset(core, full)
    core = write(tmp_path / "core.txt", "/c00/a.jpg 0\n/c02/e.jpg 2\n")
    with pytest.raises(FileListError, match=f"{core}:2: label 2 is outside \\[0, 2\\)"):
        read_coreset(core, full, num_classes=2)
    with pytest.raises(FileListError, match="empty"):
        read_coreset(write(tmp_path / "blank.txt", "\n \n"), full)
    with pytest.raises(FileListError, match="file list not found"):
        read_coreset(str(tmp_path / "nope.txt"), full)
    with pytest.raises(FileListError, match="file list not found"):
        read_coreset(core, str(tmp_path / "nope.txt"))


def test_coreset_of_a_large_list_with_similar_names(tmp_path, monkeypatch):
    import dynunc.lists.parse

    monkeypatch.setattr(dynunc.lists.parse, "BLOCK_BYTES", 4096)
    names = [f"/n{c:08d}/n{c:08d}_{i}.JPEG" for c in range(50) for i in range(200)]
    full = write(tmp_path / "train.txt", "".join(f"{n} {k // 200}\n" for k, n in enumerate(names)))
    rng = np.random.default_rng(0)
    pick = rng.choice(len(names), 3000, replace=False)
    core = write(tmp_path / "core.txt", "".join(f"{names[k]} {k // 200}\n" for k in pick))
    fl = read_coreset(core, full, num_classes=50)
    assert fl.rows.tolist() == pick.tolist()
    assert fl.labels.tolist() == (pick // 200).tolist()
    with open(core, "a") as f:
        f.write("/n00000001/n00000001_200.JPEG 1\n")  # one past the class's last image
    with pytest.raises(FileListError, match=f"{core}:3001: '/n00000001/n00000001_200.JPEG' is not in the full list"):
        read_coreset(core, full, num_classes=50)



# Coresets in list order are found in windows of rows (SequenceFinder), others through
# the global table: both must give what a plain dictionary of the full list gives.
def many_names(classes=40, per_class=50):
    return [f"/n{c:08d}/n{c:08d}_{i}.JPEG" for c in range(classes) for i in range(per_class)]


def coreset_text(names, picks, label_of):
    return "".join(f"{names[k]} {label_of(k)}\n" for k in picks)


@pytest.fixture
def small_windows(monkeypatch):
    """Small parse blocks and finder chunks, so that a coreset spans many of each."""
    import dynunc.lists.index as fli
    import dynunc.lists.parse

    monkeypatch.setattr(dynunc.lists.parse, "BLOCK_BYTES", 1000)
    monkeypatch.setattr(fli, "BLOCK_BYTES", 64)  # the index's reads: 8 rows of hashes at a time
    monkeypatch.setattr(fli.SequenceFinder, "CHUNK", 7)
    monkeypatch.setattr(fli.SequenceFinder, "PROBE", 3)


@pytest.mark.parametrize("order", ["in_order", "shuffled", "mostly_in_order", "reversed", "gaps", "dense"])
def test_coreset_rows_whatever_the_order(tmp_path, monkeypatch, small_windows, order):
    import dynunc.lists.index as fli

    looked_up = []  # lines that went through the global table
    global_find = fli.FileListIndex.find
    monkeypatch.setattr(fli.FileListIndex, "find", lambda self, h, n: looked_up.append(len(h)) or global_find(self, h, n))
    names = many_names()
    full = aged_list(tmp_path, "".join(f"{n} {k // 50}\n" for k, n in enumerate(names)), name="train.txt")
    rng = np.random.default_rng(1)
    picks = np.flatnonzero(rng.random(len(names)) < 0.3)
    if order == "shuffled":
        picks = rng.permutation(picks)
    elif order == "mostly_in_order":  # a few lines moved far away
        for a, b in rng.integers(0, len(picks), (5, 2)):
            picks[[a, b]] = picks[[b, a]]
    elif order == "reversed":
        picks = picks[::-1]
    elif order == "gaps":  # whole classes left out, then a dense stretch
        picks = np.concatenate([np.arange(0, 50), np.arange(900, 1000, 7), np.arange(1500, 2000)])
    elif order == "dense":
        picks = np.arange(len(names))
    core = write(tmp_path / "core.txt", coreset_text(names, picks, lambda k: k // 50))
    fl = read_coreset(core, full, root="/data", num_classes=40)
    assert fl.rows.tolist() == picks.tolist()
    assert fl.labels.tolist() == (picks // 50).tolist() and fl.labels.dtype == np.int32
    assert fl.line_numbers.tolist() == list(range(1, len(picks) + 1))
    assert fl.files[:3] == [names[k] for k in picks[:3]]
    # Ordered lines are found in windows; a gap longer than a window, or a line moved,
    # sends a few lines (a probe: 3 here; a chunk: 7) to the global table.
    most = {"in_order": 0, "dense": 0, "gaps": 5 * 7, "mostly_in_order": 10 * 7}.get(order, len(picks))
    assert sum(looked_up) <= most


@pytest.mark.parametrize("where", [0, 1, 150, -1])
def test_coreset_line_absent_in_an_ordered_coreset(tmp_path, small_windows, where):
    names = many_names()
    full = aged_list(tmp_path, "".join(f"{n} {k // 50}\n" for k, n in enumerate(names)), name="train.txt")
    lines = [f"{n} {k // 50}\n" for k, n in enumerate(names) if k % 3]
    at = where % len(lines)
    lines.insert(at, "/n00000002/n00000002_50.JPEG 2\n")  # one past the class's last image
    core = write(tmp_path / "core.txt", "".join(lines))
    with pytest.raises(FileListError) as info:
        read_coreset(core, full)
    assert str(info.value) == f"{core}:{at + 1}: '/n00000002/n00000002_50.JPEG' is not in the full list {full}"
    lines[at] = f"{names[5]} 1\n"  # in the list, with another label
    core = write(tmp_path / "core.txt", "".join(lines))
    with pytest.raises(FileListError) as info:
        read_coreset(core, full)
    assert str(info.value) == (f"{core}:{at + 1}: '{names[5]}' has label 1, but the full list {full}:6 "
                               f"gives it label 0")


def test_coreset_of_a_list_with_duplicate_paths(tmp_path, small_windows):
    """A path listed twice maps to its first row, as the global table has always given."""
    names = many_names(classes=4)
    listed = names[:120] + [names[10]] + names[120:] + [names[150]]  # rows 120 and 201 repeat 10 and 150
    labels = [k // 50 for k in range(120)] + [3] + [k // 50 for k in range(120, 200)] + [3]
    full = aged_list(tmp_path, "".join(f"{n} {c}\n" for n, c in zip(listed, labels)), name="train.txt")
    picks = [3, 10, 11, 150, 151, 199]
    core = write(tmp_path / "core.txt", coreset_text(names, picks, lambda k: k // 50))
    fl = read_coreset(core, full)
    assert fl.index.header.duplicates == 2
    assert fl.rows.tolist() == [3, 10, 11, 151, 152, 200]  # names[150] is row 151 (after the repeat at 120)
    core = write(tmp_path / "core.txt", f"{names[3]} 0\n{names[10]} 3\n")  # the repeat's label
    with pytest.raises(FileListError) as info:
        read_coreset(core, full)
    assert str(info.value) == f"{core}:2: '{names[10]}' has label 3, but the full list {full}:11 gives it label 0"
    assert read_file_list(write(tmp_path / "plain.txt", "/a.jpg 0\n/b.jpg 0\n")).index.header.duplicates == 0


def test_find_in_window_never_gives_a_wrong_row(tmp_path):
    """Rows whose hashes share many bits, or are equal (with other lengths), go through
    several rounds of tables; a line is found at its row, or not at all."""
    names = many_names(classes=4)
    full = aged_list(tmp_path, "".join(f"{n} 0\n" for n in names), name="train.txt")
    index = read_file_list(full).index
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, len(names), dtype=np.uint64)
    hashes[100:140] = hashes[100] ^ np.arange(40, dtype=np.uint64)  # alike but in the lowest bits
    hashes[150:152] = hashes[150]  # equal: told apart by length only
    lengths = np.array(index.path_len)
    lengths[151] += 1
    index.row_hash, index.path_len = hashes, lengths
    queries = np.arange(90, 160)
    rows = index.find_in_window(hashes[queries], lengths[queries], 80, 180)
    found = rows >= 0
    assert (rows[found] == queries[found]).all()
    assert found[:60].all() and found[:60].sum() + found[60:].sum() >= 68
    assert (index.find_in_window(hashes[:5], lengths[:5], 80, 180) == -1).all()  # outside the window
    assert (index.find_in_window(hashes[90:95], lengths[90:95] + 1, 80, 180) == -1).all()  # other lengths


def test_released_rows_read_the_same(tmp_path):
    full = aged_list(tmp_path, "".join(f"{n} {k % 7}\n" for k, n in enumerate(many_names())), name="train.txt")
    index = read_file_list(full).index
    before = [np.array(getattr(index, a)) for a in ("row_hash", "path_len", "labels", "lines", "path_start")]
    index.release_rows(3, index.count)
    after = [np.array(getattr(index, a)) for a in ("row_hash", "path_len", "labels", "lines", "path_start")]
    assert all((a == b).all() for a, b in zip(before, after))
    index.release_rows(5, 5)  # nothing


def test_index_of_another_version_is_rebuilt(tmp_path, monkeypatch, caplog):
    import dynunc.lists.index as fli

    builds = count_builds(monkeypatch)
    path = aged_list(tmp_path, "/a.jpg 0\n/b.jpg 1\n")
    read_file_list(path)
    with open(path + ".idx", "r+b") as f:
        f.seek(8)
        f.write(np.uint32(fli.VERSION - 1).tobytes())
    assert read_file_list(path).files == ["/a.jpg", "/b.jpg"] and len(builds) == 2
    assert f"index version {fli.VERSION - 1}, this code writes {fli.VERSION}" in caplog.text


BUILDER = """
import logging, sys
records = []
class Keep(logging.Handler):
    def emit(self, record):
        records.append(record.getMessage())
logging.getLogger("dynunc.lists.index").addHandler(Keep())
logging.getLogger("dynunc.lists.index").setLevel(logging.INFO)
from dynunc.lists.file_list import read_file_list
print("ready", flush=True)
sys.stdin.readline()  # start together
fl = read_file_list(sys.argv[1])
print(len(fl), fl.labels.sum(), sum(" indexed " in r for r in records))
"""


def test_concurrent_processes_build_the_index_once(tmp_path):
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    n = 200000
    path = aged_list(tmp_path, "".join(f"/c/{i}.jpg {i % 7}\n" for i in range(n)))
    procs = [subprocess.Popen([sys.executable, "-c", BUILDER, path], cwd=root, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in outs]
    results = [out.split() for out, _ in outs]
    assert all(r[:2] == [str(n), str(sum(i % 7 for i in range(n)))] for r in results)
    assert sum(int(r[2]) for r in results) == 1  # one process built it, the others waited and mapped it
    assert sorted(os.listdir(tmp_path)) == ["list.txt", "list.txt.idx"]
