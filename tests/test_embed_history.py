"""dynunc/history.py's embedding files: layout, listing, removal on restart, and the
checked loader (missing file, row count, dtype/shape, NaN and infinite rows)."""
import os

import numpy as np
import pytest

from dynunc.history import (HistoryError, embed_path, list_embed_epochs, load_embeddings, record_path,
                             remove_epochs_from, write_epoch)


def save(hdir, epoch, array, kind="embed"):
    os.makedirs(hdir, exist_ok=True)
    np.save(embed_path(str(hdir), epoch, kind), array)


def test_layout_and_listing(tmp_path):
    hdir = str(tmp_path)
    assert embed_path(hdir, 7) == os.path.join(hdir, "embed_7.npy")
    assert embed_path(hdir, 7, "val_embed") == os.path.join(hdir, "val_embed_7.npy")
    with pytest.raises(ValueError, match="unknown embedding kind"):
        embed_path(hdir, 7, "prob")
    assert list_embed_epochs(str(tmp_path / "absent")) == []
    for epoch in (10, 2):
        save(hdir, epoch, np.zeros((3, 4), np.float16))
    save(hdir, 5, np.zeros((2, 4), np.float16), kind="val_embed")
    open(os.path.join(hdir, "embed_x.npy"), "wb").close()
    assert list_embed_epochs(hdir) == [2, 10]
    assert list_embed_epochs(hdir, "val_embed") == [5]


def test_load_latest_or_given_epoch_as_memory_map(tmp_path):
    hdir = str(tmp_path)
    rng = np.random.default_rng(0)
    first, last = (rng.standard_normal((5, 3)).astype(np.float16) for _ in range(2))
    save(hdir, 1, first)
    save(hdir, 9, last)
    got = load_embeddings(hdir, 5)
    assert isinstance(got, np.memmap) and got.dtype == np.float16
    np.testing.assert_array_equal(got, last)
    np.testing.assert_array_equal(load_embeddings(hdir, 5, epoch=1), first)
    val = rng.standard_normal((2, 3)).astype(np.float16)
    save(hdir, 9, val, kind="val_embed")
    np.testing.assert_array_equal(load_embeddings(hdir, 2, kind="val_embed"), val)


def test_missing_embeddings_name_the_file_and_the_config_keys(tmp_path):
    hdir = str(tmp_path)
    with pytest.raises(HistoryError) as e:
        load_embeddings(hdir, 5)
    assert os.path.join(hdir, "embed_<epoch>.npy") in str(e.value)
    assert "PRODUCE.EMBED_DIM" in str(e.value) and "PRODUCE.EMBED_EPOCHS" in str(e.value)
    save(hdir, 3, np.zeros((5, 2), np.float16))
    with pytest.raises(HistoryError) as e:
        load_embeddings(hdir, 5, epoch=4)
    assert embed_path(hdir, 4) in str(e.value) and "epochs 3" in str(e.value)
    assert "PRODUCE.EMBED_EPOCHS" in str(e.value)
    with pytest.raises(HistoryError, match="val_embed_<epoch>.npy is missing"):
        load_embeddings(hdir, 5, kind="val_embed")


def test_row_count_shape_and_dtype_are_checked(tmp_path):
    hdir = str(tmp_path)
    save(hdir, 0, np.zeros((4, 2), np.float16))
    with pytest.raises(HistoryError) as e:
        load_embeddings(hdir, 6)
    assert str(e.value) == f"{embed_path(hdir, 0)}: has 4 rows but the training file list has 6 lines"
    save(hdir, 0, np.zeros((4, 2), np.float16), kind="val_embed")
    with pytest.raises(HistoryError, match="has 4 rows but the validation file list has 5 lines"):
        load_embeddings(hdir, 5, kind="val_embed")
    save(hdir, 1, np.zeros(4, np.float16))
    with pytest.raises(HistoryError, match=r"embed_1.npy: expected one row .* found shape \(4,\)"):
        load_embeddings(hdir, 4)
    save(hdir, 1, np.zeros((4, 2), np.float32))
    with pytest.raises(HistoryError, match="embed_1.npy: expected float16 values, found dtype float32"):
        load_embeddings(hdir, 4)
    with open(embed_path(hdir, 1), "wb") as f:
        f.write(b"not an array")
    with pytest.raises(HistoryError, match="embed_1.npy: cannot be read as an embedding file"):
        load_embeddings(hdir, 4)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_first_non_finite_row_is_named_across_chunks(tmp_path, bad):
    hdir = str(tmp_path)
    values = np.ones((50, 4), np.float16)
    values[37, 2] = bad
    values[45, 0] = bad
    save(hdir, 0, values)
    what = "NaN" if np.isnan(bad) else "infinite"
    for chunk_bytes in (1, 8 * 3, 1 << 20):  # one row, three rows, everything at once
        with pytest.raises(HistoryError) as e:
            load_embeddings(hdir, 50, chunk_bytes=chunk_bytes)
        assert str(e.value) == f"{embed_path(hdir, 0)}: row 37 holds a {what} value (the first row that is not finite)"


def test_restart_removes_the_embeddings_of_rewritten_epochs(tmp_path):
    hdir = str(tmp_path)
    for epoch in range(3):
        write_epoch(hdir, epoch, np.zeros(2, np.float32), np.zeros(2, np.int8))
        save(hdir, epoch, np.zeros((2, 2), np.float16))
        save(hdir, epoch, np.zeros((1, 2), np.float16), kind="val_embed")
    save(hdir, 3, np.zeros((2, 2), np.float16))  # written before a crash, its prob never was
    assert remove_epochs_from(hdir, 1) == [1, 2]
    assert list_embed_epochs(hdir) == [0] and list_embed_epochs(hdir, "val_embed") == [0]
    assert os.path.exists(record_path(hdir, "prob", 0))


def test_an_unchanged_file_is_scanned_once_a_rewritten_one_again(tmp_path, monkeypatch):
    """get_coreset.py and report.py load one embedding file for several uses: the finite
    check reads it once; a file written again (another inode, time or size) is checked
    again, and a NaN in it is still refused."""
    import dynunc.history as history

    hdir = str(tmp_path)
    save(hdir, 0, np.ones((6, 4), np.float16))
    scans = []
    real_isfinite = np.isfinite
    monkeypatch.setattr(history.np, "isfinite", lambda x: scans.append(len(x)) or real_isfinite(x))
    load_embeddings(hdir, 6)
    load_embeddings(hdir, 6, epoch=0)
    assert scans == [6]
    bad = np.ones((6, 4), np.float16)
    bad[4, 1] = np.nan
    first = os.stat(embed_path(hdir, 0)).st_mtime_ns
    os.remove(embed_path(hdir, 0))
    save(hdir, 0, bad)
    os.utime(embed_path(hdir, 0), ns=(first + 10**9, first + 10**9))  # written later, even if the inode is reused
    with pytest.raises(HistoryError, match="row 4 holds a NaN value"):
        load_embeddings(hdir, 6)
