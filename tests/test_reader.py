"""data/reader.py: the epoch order (a pure function of seed, epoch, rank, world size),
the train/eval shards, and the batch reader behind DALI's external_source."""
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import ROOT
from dynunc.lists.file_list import read_file_list
from data.reader import (BatchReader, DataError, epoch_permutation, eval_shard, find_undecodable, pipeline_seed,
                         read_image_bytes, train_shard)


# -----------------------------------------------------------------------------
# Orders and shards
# -----------------------------------------------------------------------------
def test_epoch_permutation_is_a_permutation():
    perm = epoch_permutation(101, seed=0, epoch=0)
    assert sorted(perm.tolist()) == list(range(101))


def test_epoch_permutation_deterministic_and_distinct():
    a = epoch_permutation(500, seed=3, epoch=4)
    assert np.array_equal(a, epoch_permutation(500, seed=3, epoch=4))
    assert not np.array_equal(a, epoch_permutation(500, seed=3, epoch=5))
    assert not np.array_equal(a, epoch_permutation(500, seed=4, epoch=4))
    # (seed, epoch) is not collapsed into seed + epoch (the paper's 42 + epoch)
    assert not np.array_equal(epoch_permutation(500, 1, 2), epoch_permutation(500, 2, 1))


def test_epoch_permutation_ignores_global_random_state():
    np.random.seed(1)
    a = epoch_permutation(200, 0, 7)
    np.random.seed(2)
    np.random.rand(10)
    assert np.array_equal(a, epoch_permutation(200, 0, 7))


@pytest.mark.parametrize("n,world,batch", [(103, 3, 4), (64, 2, 8), (33, 2, 4), (10, 1, 3)])
def test_train_shard_partition(n, world, batch):
    seed, epoch = 5, 2
    per_rank = n // world
    used = (per_rank // batch) * batch
    shards = [train_shard(n, seed, epoch, r, world, batch) for r in range(world)]
    for s in shards:
        assert len(s) == used
        assert len(s) % batch == 0
    flat = np.concatenate(shards)
    assert len(np.unique(flat)) == len(flat)  # disjoint, no repeats
    remainder = np.setdiff1d(np.arange(n), flat)
    assert len(flat) + len(remainder) == n
    assert np.array_equal(np.sort(np.concatenate([flat, remainder])), np.arange(n))
    # each rank's slice of the common permutation, in permutation order
    perm = epoch_permutation(n, seed, epoch)
    for r, s in enumerate(shards):
        assert np.array_equal(s, perm[r * per_rank: r * per_rank + used])


def test_train_shard_changes_with_epoch_and_seed():
    a = train_shard(100, 0, 0, 0, 2, 5)
    assert not np.array_equal(a, train_shard(100, 0, 1, 0, 2, 5))
    assert not np.array_equal(a, train_shard(100, 1, 0, 0, 2, 5))
    assert np.array_equal(a, train_shard(100, 0, 0, 0, 2, 5))


def test_train_shard_same_in_another_process():
    """What rank 1 trains on, computed by a fresh interpreter (as another rank would)."""
    here = train_shard(77, 11, 3, 1, 3, 4)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from data.reader import train_shard; "
            "print(','.join(map(str, train_shard(77, 11, 3, 1, 3, 4))))")
    env = dict(os.environ, PYTHONHASHSEED="123")
    out = subprocess.run([sys.executable, "-c", code, ROOT], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert [int(x) for x in out.stdout.strip().split(",")] == here.tolist()


def test_train_shard_less_than_one_batch():
    with pytest.raises(ValueError, match="BATCH_SIZE_TRAIN"):
        train_shard(10, 0, 0, 0, 4, 4)  # 2 per rank < 4
    with pytest.raises(ValueError):
        train_shard(3, 0, 0, 0, 1, 4)
    assert len(train_shard(16, 0, 0, 3, 4, 4)) == 4  # exactly one batch is fine


@pytest.mark.parametrize("n,world", [(10, 1), (10, 3), (7, 2), (2, 4)])
def test_eval_shard_covers_each_index_once(n, world):
    shards = [eval_shard(n, r, world) for r in range(world)]
    flat = np.concatenate(shards)
    assert sorted(flat.tolist()) == list(range(n))
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1


def test_pipeline_seed():
    seeds = {pipeline_seed(s, e, r) for s in range(3) for e in range(5) for r in range(4)}
    assert len(seeds) == 3 * 5 * 4
    assert pipeline_seed(1, 2, 3) == pipeline_seed(1, 2, 3)
    assert all(0 <= s < 2**31 for s in seeds)
    assert all(isinstance(s, int) for s in seeds)


# -----------------------------------------------------------------------------
# BatchReader
# -----------------------------------------------------------------------------
@pytest.fixture
def byte_files(tmp_path):
    """10 files whose bytes encode their index; labels i % 3."""
    lines = []
    for i in range(10):
        (tmp_path / f"f{i}.bin").write_bytes(bytes([i]) * (i + 1))
        lines.append(f"/f{i}.bin {i % 3}")
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    return read_file_list(str(tmp_path / "list.txt"))


def call(reader, iteration):
    return reader(SimpleNamespace(iteration=iteration))


def test_batch_reader_batches(byte_files):
    order = np.array([7, 2, 9, 0, 5, 1, 3])
    reader = BatchReader(byte_files, order, batch_size=3, threads=2, lookahead=1)
    assert reader.num_batches == 3
    try:
        seen = []
        for it in range(3):
            images, labels, indices = call(reader, it)
            expected = order[it * 3: (it + 1) * 3]
            assert [int(i) for i in indices] == expected.tolist()
            assert [int(x) for x in labels] == [int(i) % 3 for i in expected]
            for img, i in zip(images, expected):
                assert img.dtype == np.uint8
                assert img.tolist() == [int(i)] * (int(i) + 1)
            assert all(np.asarray(x).dtype == np.int64 for x in labels + indices)
            seen.extend(int(i) for i in indices)
        assert seen == order.tolist()
        assert len(indices) == 1  # the last batch is partial
        with pytest.raises(StopIteration):
            call(reader, 3)
    finally:
        reader.close()


def test_batch_reader_out_of_order_iterations(byte_files):
    reader = BatchReader(byte_files, np.arange(10), batch_size=4, threads=1, lookahead=0)
    try:
        _, _, idx2 = call(reader, 2)
        _, _, idx0 = call(reader, 0)
        assert [int(i) for i in idx2] == [8, 9]
        assert [int(i) for i in idx0] == [0, 1, 2, 3]
    finally:
        reader.close()


def test_batch_reader_missing_file_names_file_and_line(byte_files, tmp_path):
    os.remove(tmp_path / "f4.bin")
    reader = BatchReader(byte_files, np.arange(10), batch_size=5, threads=2)
    try:
        with pytest.raises(DataError) as info:
            call(reader, 0)
        message = str(info.value)
        assert f"{byte_files.path}:5" in message
        assert "f4.bin" in message
    finally:
        reader.close()


def test_read_image_bytes_empty_file(byte_files, tmp_path):
    (tmp_path / "f2.bin").write_bytes(b"")
    with pytest.raises(DataError) as info:
        read_image_bytes(byte_files, 2)
    assert f"{byte_files.path}:3" in str(info.value)
    assert "f2.bin" in str(info.value)


def test_read_image_bytes_directory(byte_files, tmp_path):
    os.remove(tmp_path / "f1.bin")
    os.mkdir(tmp_path / "f1.bin")
    with pytest.raises(DataError, match="f1.bin"):
        read_image_bytes(byte_files, 1)


def test_data_error_is_a_runtime_error():
    assert issubclass(DataError, RuntimeError)


def test_find_undecodable(tmp_path):
    from conftest import make_image_tree

    make_image_tree(str(tmp_path), num_classes=2, per_class=2)
    fl = read_file_list(str(tmp_path / "file_list.txt"))
    with open(fl.full_path(2), "r+b") as f:
        f.truncate(40)
    assert find_undecodable(fl, [0, 1, 3]) == []
    bad = find_undecodable(fl, [0, 1, 2, 3])
    assert len(bad) == 1
    assert f"{fl.path}:3" in bad[0]
