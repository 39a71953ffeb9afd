"""get_coreset.py --dedup cannot silently eat the list: a threshold that removes most of
it, or leaves fewer lines than a fraction asks for (other than --fraction 1, the
deduplicated list itself), is refused with the numbers, exit code 2, nothing written."""
import os

import numpy as np
import pytest

import get_coreset
from conftest import make_image_tree, run_main, write_full_history
from dynunc.scoring.plan import check_dedup_left

N, EPOCHS = 60, 5


@pytest.fixture
def run(tmp_path):
    """60 images, 5 epochs, and embeddings in which lines 0..23 are exact copies of lines
    24..35 (two copies each): --dedup at any threshold removes 24 lines and leaves 36;
    with `collapsed`, every line is a copy of line 0."""
    data = tmp_path / "data"
    make_image_tree(str(data), num_classes=4, per_class=15)
    rng = np.random.default_rng(0)
    hdir = write_full_history(data / "file_list.txt", tmp_path / "run", rng.random(N), EPOCHS, rng)
    x = rng.normal(0, 1, (N, 16))
    x[0:12] = x[24:36]
    x[12:24] = x[24:36]
    np.save(f"{hdir}/embed_{EPOCHS - 1}.npy", x.astype(np.float16))
    return dict(tmp=tmp_path, hdir=hdir, list=data / "file_list.txt", x=x, out=tmp_path / "out")


def cli(run, *extra):
    return run_main(get_coreset.main, ["--input", run["tmp"] / "run", "--dataset_file_list", run["list"], "--window",
                                       "2", "--dedup-clusters", "2", "--output", run["out"] / "c_{fraction}.txt",
                                       *extra])


def assert_refused(run, extra, message):
    code, out, err = cli(run, *extra)
    assert code == 2, out + err
    assert f"get_coreset.py: error: {message}" in err, err
    assert err.count("\n") == 1 and "kept" not in out
    assert not run["out"].exists()  # no coreset, no scores, no groups file


def test_a_fraction_the_deduplicated_list_cannot_fill_is_refused(run):
    assert_refused(run, ["--fraction", "0.7", "--dedup", "0.99"],
                   "--dedup 0.99 leaves 36 of 60 lines, fewer than --fraction 0.7 asks for (int(60 * 0.7) = 42)")


def test_one_unfillable_fraction_refuses_the_whole_command(run):
    assert_refused(run, ["--fraction", "0.5", "0.7", "--dedup", "0.99"],
                   "--dedup 0.99 leaves 36 of 60 lines, fewer than --fraction 0.7")


def test_a_threshold_that_removes_most_of_the_list_is_refused(run):
    x = run["x"].copy()
    x[:] = x[0]
    np.save(f"{run['hdir']}/embed_{EPOCHS - 1}.npy", x.astype(np.float16))
    assert_refused(run, ["--fraction", "1", "--dedup", "0.99"],
                   "--dedup 0.99 would remove 59 of 60 lines (98.3%), more than --dedup-max-removed 0.5 of the list")


def test_fraction_1_writes_the_deduplicated_list_and_fillable_fractions_pass(run):
    code, out, err = cli(run, "--fraction", "1", "0.5", "--dedup", "0.99")
    assert code == 0, err
    assert len(open(run["out"] / "c_1.txt").read().splitlines()) == 36
    assert len(open(run["out"] / "c_0.5.txt").read().splitlines()) == 30


def test_the_share_removed_can_be_allowed_for_a_list_of_copies(run):
    code, _, err = cli(run, "--fraction", "0.5", "--dedup", "0.99", "--dedup-max-removed", "0.3")
    assert code == 2 and "would remove 24 of 60 lines (40.0%), more than --dedup-max-removed 0.3" in err
    assert_refused(run, ["--fraction", "0.5", "--dedup", "0.99", "--dedup-max-removed", "1.5"],
                   "--dedup-max-removed must be in [0, 1], got 1.5")


def test_check_dedup_left_bounds():
    check_dedup_left(0.9, 0.5, 100, 50, {"0.5": 50, "1": 100})  # exactly half removed, exactly filled: fine
    with pytest.raises(ValueError, match="would remove 51 of 100"):
        check_dedup_left(0.9, 0.5, 100, 49, {"1": 100})
    with pytest.raises(ValueError, match="leaves 60 of 100 lines, fewer than --fraction 0.61"):
        check_dedup_left(0.9, 0.5, 100, 60, {"0.61": 61})
    check_dedup_left(0.9, 0.5, 100, 60, {"1.0": 100})  # 1 however written
