"""dynunc/io.py: atomic file output (temporary file beside the target, then os.replace)."""
import os
import stat

import numpy as np
import pytest

from dynunc.io import atomic_open, atomic_save_npy, atomic_write_text


def test_atomic_open_writes_text(tmp_path):
    path = tmp_path / "a.txt"
    with atomic_open(path) as f:
        f.write("hello\n")
        assert not path.exists()  # nothing visible before the block ends
    assert path.read_text() == "hello\n"
    assert os.listdir(tmp_path) == ["a.txt"]


def test_atomic_open_replaces_existing(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"old content that is longer")
    with atomic_open(str(path), "wb") as f:
        f.write(b"new")
    assert path.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["a.bin"]


def test_atomic_open_creates_parent_folders(tmp_path):
    path = tmp_path / "x" / "y" / "z.txt"
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write("deep")
    assert path.read_text() == "deep"


@pytest.mark.parametrize("error", [ValueError, KeyboardInterrupt])
def test_atomic_open_error_keeps_old_file_and_no_temp(tmp_path, error):
    path = tmp_path / "keep.txt"
    path.write_text("old")
    with pytest.raises(error):
        with atomic_open(path) as f:
            f.write("half-written")
            raise error("crash")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["keep.txt"]


def test_atomic_open_error_without_old_file(tmp_path):
    path = tmp_path / "new.txt"
    with pytest.raises(RuntimeError):
        with atomic_open(path) as f:
            f.write("x")
            raise RuntimeError("crash")
    assert os.listdir(tmp_path) == []


def test_temp_file_is_beside_the_target(tmp_path):
    path = tmp_path / "sub" / "t.txt"
    with atomic_open(path) as f:
        names = os.listdir(tmp_path / "sub")
        assert len(names) == 1 and names[0] != "t.txt"  # same folder: os.replace is atomic
        assert names[0].startswith(".t.txt.") and names[0].endswith(".tmp")
        f.write("x")


def test_atomic_open_file_mode_like_open(tmp_path):
    old_umask = os.umask(0o022)  # a usual umask: open() gives 0644
    try:
        plain = tmp_path / "plain.txt"
        with open(plain, "w") as f:
            f.write("x")
        atomic = tmp_path / "atomic.txt"
        atomic_write_text(atomic, "x")
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(os.stat(atomic).st_mode) == stat.S_IMODE(os.stat(plain).st_mode)


def test_atomic_save_npy_round_trip(tmp_path):
    array = np.array([0.5, np.nan, 0.0, 1.0], dtype=np.float32)
    path = tmp_path / "prob_3.npy"
    atomic_save_npy(path, array)
    loaded = np.load(path, allow_pickle=False)
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, array)
    assert os.listdir(tmp_path) == ["prob_3.npy"]


def test_atomic_save_npy_keeps_the_name(tmp_path):
    path = tmp_path / "record"  # no '.npy' appended
    atomic_save_npy(str(path), np.arange(3, dtype=np.int8))
    assert os.listdir(tmp_path) == ["record"]
    assert np.load(path).tolist() == [0, 1, 2]


def test_atomic_save_npy_refuses_objects_and_keeps_old(tmp_path):
    path = tmp_path / "a.npy"
    atomic_save_npy(path, np.ones(2))
    with pytest.raises(ValueError):
        atomic_save_npy(path, np.array([{"a": 1}], dtype=object))
    assert np.load(path).tolist() == [1.0, 1.0]
    assert os.listdir(tmp_path) == ["a.npy"]


def test_atomic_write_text_utf8(tmp_path):
    path = tmp_path / "lines.txt"
    atomic_write_text(path, "/ñ/ü.jpg 0\n/c/d.jpg 1\n")
    assert path.read_bytes() == "/ñ/ü.jpg 0\n/c/d.jpg 1\n".encode("utf-8")
    atomic_write_text(path, "short\n")
    assert path.read_text(encoding="utf-8") == "short\n"
