"""sample_keys.txt: a history's samples named by keys instead of a file list."""
import os

import pytest

from dynunc.history import HistoryError, read_sample_keys, sample_keys_path, write_sample_keys


def test_round_trip_and_fingerprint(tmp_path):
    keys = ["shard-000/0001", "shard-000/0002", "row 7"]
    fingerprint = write_sample_keys(str(tmp_path), keys)
    assert read_sample_keys(str(tmp_path), 3) == keys
    assert fingerprint["entries"] == 3 and len(fingerprint["sha256"]) == 64
    assert open(sample_keys_path(str(tmp_path)), "rb").read() == b"shard-000/0001\nshard-000/0002\nrow 7\n"
    assert read_sample_keys(str(tmp_path / "nothing")) is None


@pytest.mark.parametrize("keys, message", [(["a", "b", "a"], "key 2 ('a') repeats key 0"),
                                           (["a", ""], "key 1 ('') is empty"),
                                           (["a", "b\tc"], "key 1")])
def test_bad_keys_are_refused_and_nothing_written(tmp_path, keys, message):
    with pytest.raises(HistoryError, match=message.replace("(", r"\(").replace(")", r"\)")):
        write_sample_keys(str(tmp_path), keys)
    assert not os.path.exists(sample_keys_path(str(tmp_path)))


def test_count_must_match_the_history(tmp_path):
    write_sample_keys(str(tmp_path), ["a", "b"])
    with pytest.raises(HistoryError, match="2 keys, but the history has 3 samples"):
        read_sample_keys(str(tmp_path), 3)
