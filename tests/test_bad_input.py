"""Bad input to main.py / main_and_produce.py: a coreset, list or config problem is found
before anything is written under OUTPUT. Rank 0 says what and where in one line on
stderr, the other ranks stay quiet, and the exit code is 2; in one process and under
torchrun with 2 processes. A folder an earlier run left gets the line in its log."""
import os
import re
import subprocess
import sys
import time

import pytest

from conftest import ROOT, make_image_tree, run_main
from main import cli
from test_end_to_end import OPTS, torchrun
from utils.output_lock import LOCK_NAME, in_use

pytestmark = pytest.mark.usefixtures("restore_root_logging")
CONFIG = os.path.join(ROOT, "configs", "demo-mnist.yaml")
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_input")
    make_image_tree(str(root / "train"), num_classes=3, per_class=4, seed=0)
    make_image_tree(str(root / "val"), num_classes=3, per_class=2, seed=1)
    (root / "coreset_stranger.txt").write_text("/c00/img_000.jpg 0\n/c01/img_009.jpg 1\n")
    (root / "coreset_relabelled.txt").write_text("/c00/img_000.jpg 0\n/c01/img_001.jpg 2\n")
    (root / "malformed.txt").write_text("/c00/img_000.jpg 0\n/c00/img_001.jpg\n/c01/img_000.jpg 1\n")
    (root / "unknown_key.yaml").write_text(f"BASE: ['{CONFIG}']\nTRAIN:\n  EPOCHS: 1\n  TRAIN_SiZE: 3\n")
    (root / "not_yaml.yaml").write_text(f"BASE: ['{CONFIG}']\nTRAIN: [1,\n")
    (root / "wrong_type.yaml").write_text(f"BASE: ['{CONFIG}']\nSEED: 0\nTRAIN:\n  EPOCHS: many\n")
    opts = OPTS + ["DATA.DATA_PATH_TRAIN", str(root / "train"), "DATA.DATA_PATH_VAL", str(root / "val"),
                   "TRAIN.EPOCHS", "1"]
    return root, opts


# name: (config file, extra arguments, extra --opts, what the line says after "error: ")
CASES = {
    "coreset line not in the list": (
        None, ["--coreset", "{root}/coreset_stranger.txt"], [],
        "{root}/coreset_stranger.txt:2: '/c01/img_009.jpg' is not in the full list {root}/train/file_list.txt"),
    "coreset line with another label": (
        None, ["--coreset", "{root}/coreset_relabelled.txt"], [],
        "{root}/coreset_relabelled.txt:2: '/c01/img_001.jpg' has label 2, but the full list "
        "{root}/train/file_list.txt:6 gives it label 1"),
    "coreset file missing": (
        None, ["--coreset", "{root}/gone.txt"], [], "--coreset {root}/gone.txt: not found"),
    "malformed list line": (
        None, [], ["DATA.TRAIN_FILE_LIST", "{root}/malformed.txt"],
        "{root}/malformed.txt:2: expected '<relative path> <label>', got '/c00/img_001.jpg'"),
    "list file missing": (
        None, [], ["DATA.TRAIN_FILE_LIST", "missing.txt"], "file list not found: {root}/train/missing.txt"),
    "label out of range": (
        None, [], ["MODEL.NUM_CLASSES", "2"], "{root}/train/file_list.txt:9: label 2 is outside [0, 2)"),
    "unknown key in the config file": (
        "{root}/unknown_key.yaml", [], [], "{root}/unknown_key.yaml:4: unknown config key TRAIN.TRAIN_SiZE"),
    "config file not YAML": ("{root}/not_yaml.yaml", [], [], "{root}/not_yaml.yaml:3: not valid YAML: "),
    "config value of the wrong type": (
        "{root}/wrong_type.yaml", [], [], "{root}/wrong_type.yaml:4: TRAIN.EPOCHS expects int, got 'many'"),
    "config file missing": ("{root}/gone.yaml", [], [], "--config {root}/gone.yaml: not found"),
    "unknown --opts key": (None, [], ["TRAIN.EPOCHZ", "3"], "--opts: unknown config key TRAIN.EPOCHZ"),
    "negative KEEP_CHECKPOINTS": (
        None, [], ["TRAIN.KEEP_CHECKPOINTS", "-1"], "TRAIN.KEEP_CHECKPOINTS is -1: 0 keeps every checkpoint"),
    "PRODUCE.TRACK_DELTA below 1": (
        None, [], ["PRODUCE.TRACK_DELTA", "0"], "PRODUCE.TRACK_DELTA must be >= 1, got 0"),
    "STOP_WHEN_STABLE on an untracked fraction": (
        None, [], ["PRODUCE.STOP_WHEN_STABLE.ENABLE", "True", "PRODUCE.STOP_WHEN_STABLE.FRACTION", "0.3"],
        "PRODUCE.STOP_WHEN_STABLE.FRACTION 0.3 is not one of PRODUCE.TRACK_FRACTIONS [0.5, 0.75]"),
    "DYNAMIC_PRUNE.RATIO of 1": (
        None, [], ["TRAIN.DYNAMIC_PRUNE.RATIO", "1.0"], "TRAIN.DYNAMIC_PRUNE.RATIO must be in [0, 1), got 1.0"),
    "DYNAMIC_PRUNE.ANNEAL above 1": (
        None, [], ["TRAIN.DYNAMIC_PRUNE.ANNEAL", "1.5"], "TRAIN.DYNAMIC_PRUNE.ANNEAL must be in [0, 1], got 1.5"),
    "unknown DYNAMIC_PRUNE.SCORE": (
        None, [], ["TRAIN.DYNAMIC_PRUNE.ENABLE", "True", "TRAIN.DYNAMIC_PRUNE.SCORE", "entropy"],
        "TRAIN.DYNAMIC_PRUNE.SCORE: unknown score 'entropy'; known: loss, dynunc"),
    "unknown AMP_DTYPE (checked on the CPU too, before anything is written)": (
        None, [], ["AMP_DTYPE", "float8"], "AMP_DTYPE: unknown dtype 'float8'; known: float16, bfloat16"),
    "--resume file missing": (
        None, ["--resume", "{root}/gone.pth"], [], "--resume {root}/gone.pth: not found"),
    "MODEL.RESUME file missing": (
        None, [], ["MODEL.RESUME", "{root}/gone.pth"], "MODEL.RESUME: checkpoint not found: {root}/gone.pth"),
    # every path argument (dynunc/paths.py): a folder where a file is expected, a parent that is a file
    "--config a folder": ("{root}/train", [], [], "--config {root}/train: is a folder; a file is expected"),
    "--coreset a folder": (None, ["--coreset", "{root}/train"], [], "--coreset {root}/train: is a folder; a file"),
    "--pretrain a folder": (None, ["--pretrain", "{root}/train"], [], "--pretrain {root}/train: is a folder"),
    "--resume a folder": (None, ["--resume", "{root}/train"], [], "--resume {root}/train: is a folder"),
    "--pretrain missing": (None, ["--pretrain", "{root}/gone.pth"], [], "--pretrain {root}/gone.pth: not found"),
    "--coreset under a file": (
        None, ["--coreset", "{root}/coreset_stranger.txt/x.txt"], [],
        "--coreset {root}/coreset_stranger.txt/x.txt: not found: {root}/coreset_stranger.txt is a file, not a folder"),
    "list file a folder": (
        None, [], ["DATA.TRAIN_FILE_LIST", "{root}/val"], "{root}/val: is a folder; a file list is expected"),
}


# Read by produce mode only (main.py ignores the PRODUCE.EMBED_* keys).
PRODUCE_CASES = {
    "PRODUCE.EMBED_DIM negative": (
        None, [], ["PRODUCE.EMBED_DIM", "-8"],
        "PRODUCE.EMBED_DIM must be 0 (no embeddings), a positive width (a random projection) or -1 (the classifier "
        "input, unprojected), got -8"),
    "PRODUCE.EMBED_EPOCHS outside the run": (
        None, [], ["PRODUCE.EMBED_EPOCHS", "[3]"], "PRODUCE.EMBED_EPOCHS: epoch 3 is outside the run's 1 epochs"),
    "PRODUCE.EMBED_EPOCHS twice": (
        None, [], ["PRODUCE.EMBED_EPOCHS", "[0, -1]"], "PRODUCE.EMBED_EPOCHS: epoch 0 is given twice in [0, -1]"),
}


def case_args(trees, name, out):
    root, opts = trees
    config, extra, extra_opts, expected = {**CASES, **PRODUCE_CASES}[name]
    fill = lambda text: text.format(root=root)  # noqa: E731
    args = ["--config", fill(config or CONFIG), "--output", out, *map(fill, extra), "--opts", *opts,
            *map(fill, extra_opts)]
    return args, fill(expected)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_in_one_process(trees, tmp_path, name):
    out = str(tmp_path / "out")
    args, expected = case_args(trees, name, out)
    code, stdout, stderr = run_main(cli, args)
    assert code == 2
    assert stderr.startswith("main.py: error: " + expected), stderr
    assert stderr.count("\n") == 1 and "Traceback" not in stdout + stderr
    assert not os.path.exists(out)


def test_an_output_that_is_a_file_is_refused_and_left_as_it_was(trees, tmp_path):
    out = tmp_path / "out"
    out.write_bytes(b"not a folder\n")
    root, opts = trees
    code, stdout, stderr = run_main(cli, ["--config", CONFIG, "--output", str(out), "--opts", *opts])
    assert code == 2 and stderr == (f"main.py: error: --output {out}: exists as a file; a folder is expected "
                                    f"(give another --output)\n")
    assert "Traceback" not in stdout and out.read_bytes() == b"not a folder\n"


def deny_writes_under(monkeypatch, folder):
    """os.access says `folder` and what is under it cannot be written (a test run as root
    passes every permission check, so chmod alone would not do)."""
    folder = os.path.abspath(str(folder))
    real = os.access

    def access(path, mode, *args, **kwargs):
        inside = os.path.abspath(str(path)) == folder or os.path.abspath(str(path)).startswith(folder + os.sep)
        return False if inside and mode & os.W_OK else real(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)


@pytest.mark.parametrize("case", ["under a file", "unwritable parent", "unwritable folder"])
def test_an_output_that_cannot_be_written_is_refused_before_any_work(trees, tmp_path, monkeypatch, case):
    root, opts = trees
    (tmp_path / "a_file").write_text("x\n")
    locked = tmp_path / "locked"
    locked.mkdir()
    out, expected = {
        "under a file": (tmp_path / "a_file" / "out", f"cannot be created: {tmp_path / 'a_file'} is a file, not a folder"),
        "unwritable parent": (locked / "out", f"cannot be created: the folder {locked} is not writable"),
        "unwritable folder": (locked, "is not writable"),
    }[case]
    deny_writes_under(monkeypatch, locked)
    before = folder_state(tmp_path)
    code, stdout, stderr = run_main(cli, ["--config", CONFIG, "--output", out, "--opts", *opts])
    assert code == 2 and stderr == f"main.py: error: --output {out}: {expected}\n", stderr
    assert "Traceback" not in stdout and folder_state(tmp_path) == before


def test_produce_refuses_too(trees, tmp_path):
    out = str(tmp_path / "out")
    args, expected = case_args(trees, "coreset line not in the list", out)
    code, _, stderr = run_main(lambda argv: cli(argv, produce=True), args)
    assert code == 2 and stderr == f"main_and_produce.py: error: {expected}\n"
    assert not os.path.exists(out)


@pytest.mark.parametrize("name", list(PRODUCE_CASES))
def test_bad_produce_input(trees, tmp_path, name):
    out = str(tmp_path / "out")
    args, expected = case_args(trees, name, out)
    code, stdout, stderr = run_main(lambda argv: cli(argv, produce=True), args)
    assert code == 2 and stderr.startswith(f"main_and_produce.py: error: {expected}"), stderr
    assert stderr.count("\n") == 1 and "Traceback" not in stdout and not os.path.exists(out)


def folder_state(out):
    return {os.path.relpath(os.path.join(d, n), out): os.stat(os.path.join(d, n)).st_mtime_ns
            for d, _, names in os.walk(out) for n in names}


def test_an_earlier_runs_folder_gets_the_line_in_its_log_and_nothing_else(trees, tmp_path):
    """A resume with a bad coreset: the error goes to the log the earlier run left there
    (appended), and no other file in the folder is created or touched."""
    root, opts = trees
    out = str(tmp_path / "out")
    assert run_main(cli, ["--config", CONFIG, "--output", out, "--opts", *opts])[0] == 0
    log = os.path.join(out, "log_rank0.txt")
    with open(log) as f:
        before_log = f.read()
    before = folder_state(out)
    args, expected = case_args(trees, "coreset line not in the list", out)
    code, _, stderr = run_main(cli, args)
    assert code == 2 and stderr == f"main.py: error: {expected}\n"
    with open(log) as f:
        after_log = f.read()
    assert after_log.startswith(before_log)
    added = after_log[len(before_log):]
    assert added.count("\n") == 1 and added.endswith(f"main ERROR: refused to start: {expected}\n"), added
    after = folder_state(out)
    del before["log_rank0.txt"], after["log_rank0.txt"]
    assert after == before


def test_a_live_runs_log_is_left_alone(trees, tmp_path):
    """The folder of a run that is still going: the refusal is on stderr only."""
    _, opts = trees
    out = tmp_path / "live"
    out.mkdir()
    (out / "log_rank0.txt").write_text("the live run's log\n")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         f"fd = os.open({str(out / LOCK_NAME)!r}, os.O_RDWR | os.O_CREAT)\n"
         "fcntl.lockf(fd, fcntl.LOCK_EX)\nprint('locked', flush=True)\ntime.sleep(120)\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        assert in_use(str(out))
        args, expected = case_args(trees, "coreset line not in the list", str(out))
        code, _, stderr = run_main(cli, args)
        assert code == 2 and stderr == f"main.py: error: {expected}\n"
        assert (out / "log_rank0.txt").read_text() == "the live run's log\n"
    finally:
        holder.kill()
        holder.wait()
    deadline = time.time() + 30
    while in_use(str(out)) and time.time() < deadline:
        time.sleep(0.05)
    assert not in_use(str(out))  # a dead holder's lock is gone: the file alone is not "in use"


@pytest.mark.parametrize("name", ["coreset line not in the list", "unknown key in the config file"])
def test_bad_input_under_torchrun_is_said_once_by_rank_0(trees, tmp_path, name):
    out = str(tmp_path / "out")
    args, expected = case_args(trees, name, out)
    proc = subprocess.run(torchrun("main.py", *args), cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert text.count(expected) == 1, text
    assert proc.stderr.count(f"main.py: error: {expected}\n") == 1
    assert "exitcode  : 2" in proc.stderr  # torchrun's own report of the failed worker
    # no traceback through our code (torchrun's own, from the venv, is its report; the venv may
    # live inside the repository, as make's .venv does)
    assert re.search(rf'File "{re.escape(ROOT)}/(?!\.venv/)', text) is None, text
    assert not os.path.exists(out)
