"""data/file_list.py: parsing the paper's `/<class>/<file> <label>` lists and the errors
that name `path:line`."""
import os

import numpy as np
import pytest

from data.file_list import FileListError, read_file_list, read_lines


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
