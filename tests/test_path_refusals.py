"""Every path argument of get_coreset.py and report.py (main.py's: tests/test_bad_input.py):
a folder where a file is expected and the reverse, a parent that is a file, a folder
that cannot be written, a missing input. Each is refused before any work, in one line
naming the flag and the path, exit code 2, and nothing is written (no OUTPUT.scores.npy,
no report folder)."""
import os

import numpy as np
import pytest

import get_coreset
from dynunc.lists.index import open_index
from dynunc.history import write_fingerprint
from conftest import run_main
from dynunc.report import page as report
from test_bad_input import deny_writes_under
from test_get_coreset import random_history, write_list, write_npy_history
from dynunc import paths


@pytest.fixture
def s(tmp_path):
    p, unseen = random_history(11, 60, 8)
    write_npy_history(str(tmp_path / "run" / "pred_prob_history"), p, unseen)
    write_list(str(tmp_path / "train.txt"), 60)
    write_fingerprint(str(tmp_path / "run" / "pred_prob_history"), open_index(str(tmp_path / "train.txt")).fingerprint())
    (tmp_path / "a_file").write_text("x\n")
    (tmp_path / "a_folder").mkdir()
    (tmp_path / "locked").mkdir()
    np.save(tmp_path / "flipped.npy", np.array([1, 2], dtype=np.int64))
    return tmp_path


def state(root):
    return {os.path.relpath(os.path.join(d, n), root): os.stat(os.path.join(d, n)).st_mtime_ns
            for d, _, names in os.walk(root) for n in names}


# (flag, value, the line after "error: ") per case; {t} is the test's folder
COMMON = {
    "--input missing": ("--input", "{t}/gone", "--input {t}/gone: not found"),
    "--input a file": ("--input", "{t}/a_file", "--input {t}/a_file: is a file; a folder is expected"),
    "--dataset_file_list missing": ("--dataset_file_list", "{t}/gone.txt", "--dataset_file_list {t}/gone.txt: not found"),
    "--dataset_file_list a folder": (
        "--dataset_file_list", "{t}/a_folder", "--dataset_file_list {t}/a_folder: is a folder; a file is expected"),
    "--dataset_file_list under a file": (
        "--dataset_file_list", "{t}/a_file/train.txt",
        "--dataset_file_list {t}/a_file/train.txt: not found: {t}/a_file is a file, not a folder"),
    "--embeddings missing": ("--embeddings", "{t}/gone", "--embeddings {t}/gone: not found"),
    "--embeddings a file": ("--embeddings", "{t}/a_file", "--embeddings {t}/a_file: is a file; a folder is expected"),
    "--embeddings without embeddings": (
        "--embeddings", "{t}/a_folder", "--embeddings {t}/a_folder: no embed_<epoch>.npy in '{t}/a_folder'"),
}
CORESET = {
    **COMMON,
    "--output a folder": ("--output", "{t}/a_folder", "--output {t}/a_folder: is a folder; a file is expected"),
    "--output under a file": (
        "--output", "{t}/a_file/core.txt", "--output {t}/a_file/core.txt: cannot be created: {t}/a_file is a file"),
    "--output under a file, deeper": (
        "--output", "{t}/a_file/x/core.txt", "--output {t}/a_file/x/core.txt: cannot be created: {t}/a_file is a file"),
    "--output in an unwritable folder": (
        "--output", "{t}/locked/core.txt",
        "--output {t}/locked/core.txt: cannot be created: the folder {t}/locked is not writable"),
    "--output replacing a file in an unwritable folder": (
        "--output", "{t}/locked/old.txt", "--output {t}/locked/old.txt: cannot be replaced: the folder {t}/locked is not"),
}
REPORT = {
    **COMMON,
    "--output a file": ("--output", "{t}/a_file", "--output {t}/a_file: exists as a file; a folder is expected"),
    "--output under a file": (
        "--output", "{t}/a_file/report", "--output {t}/a_file/report: cannot be created: {t}/a_file is a file"),
    "--output unwritable": ("--output", "{t}/locked", "--output {t}/locked: is not writable"),
    "--output in an unwritable folder": (
        "--output", "{t}/locked/report", "--output {t}/locked/report: cannot be created: the folder {t}/locked is"),
    "--flipped a folder": ("--flipped", "{t}/a_folder", "--flipped {t}/a_folder: is a folder; a file is expected"),
    "--flipped missing": ("--flipped", "{t}/gone.npy", "--flipped {t}/gone.npy: not found"),
    "--data_root a file": ("--data_root", "{t}/a_file", "--data_root {t}/a_file: is a file; a folder is expected"),
    "--val_file_list a folder": (
        "--val_file_list", "{t}/a_folder", "--val_file_list {t}/a_folder: is a folder; a file is expected"),
}


def command_line(t, defaults, flag, value):
    args = dict(defaults)
    args[flag] = value.format(t=t)
    return [str(x) for k, v in args.items() for x in (k, v)]


def assert_refused(main, prog, t, args, expected, monkeypatch):
    if "locked" in " ".join(args):
        (t / "locked" / "old.txt").write_text("old\n")
        deny_writes_under(monkeypatch, t / "locked")
    before = state(t)
    code, out, err = run_main(main, args)
    assert code == 2, out + err
    assert err.startswith(f"{prog}: error: {expected.format(t=t)}"), err
    assert err.count("\n") == 1 and "Traceback" not in out + err
    assert state(t) == before  # nothing written: no OUTPUT.scores.npy, no report folder, no list index


@pytest.mark.parametrize("case", list(CORESET))
def test_get_coreset_path_refusals(s, case, monkeypatch):
    flag, value, expected = CORESET[case]
    defaults = {"--input": s / "run", "--dataset_file_list": s / "train.txt", "--fraction": "0.5", "--window": "3",
                "--output": s / "core.txt"}
    assert_refused(get_coreset.main, "get_coreset.py", s, command_line(s, defaults, flag, value), expected,
                   monkeypatch)


@pytest.mark.parametrize("case", list(REPORT))
def test_report_path_refusals(s, case, monkeypatch):
    flag, value, expected = REPORT[case]
    defaults = {"--input": s / "run", "--dataset_file_list": s / "train.txt", "--window": "3", "--output": s / "report"}
    assert_refused(report.main, "report.py", s, command_line(s, defaults, flag, value), expected, monkeypatch)


def test_get_coreset_into_an_existing_folder_writes_no_scores(s):
    """The defect as found: --output an existing folder used to write FOLDER.scores.npy, then fail."""
    code, _, err = run_main(get_coreset.main, ["--input", s / "run", "--dataset_file_list", s / "train.txt",
                                               "--fraction", "0.5", "--window", "3", "--output", s / "a_folder"])
    assert code == 2 and not (s / "a_folder.scores.npy").exists(), err


def test_an_output_whose_missing_parents_can_be_made_is_accepted(s):
    paths.check_output_file("--output", str(s / "new" / "deeper" / "core.txt"))
    paths.check_output_folder("--output", str(s / "new" / "report"))
    assert not (s / "new").exists()  # checking creates nothing


@pytest.mark.skipif(os.geteuid() == 0, reason="root passes every permission check")
def test_a_real_unwritable_folder(s):
    os.chmod(s / "locked", 0o500)
    try:
        with pytest.raises(paths.PathError, match="is not writable"):
            paths.check_output_file("--output", str(s / "locked" / "core.txt"))
    finally:
        os.chmod(s / "locked", 0o700)
