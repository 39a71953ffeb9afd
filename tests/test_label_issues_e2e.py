"""PRODUCE.TOPK for real: torchrun with 2 processes (gloo, CPU), the tiny image tree of
test_end_to_end.py. The top-k records agree with the other records of the same forward,
leave the history as it was without them, and feed get_coreset.py --label-issues."""
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, make_image_tree
from dynunc.history import load_topk, read_topk_meta
from dynunc.scoring.label_issues import read_tsv

EPOCHS = 3
OPTS = [
    "MODEL.TYPE", "resnet", "MODEL.NAME", "resnet_tiny", "MODEL.NUM_CLASSES", "3", "DATA.DATASET", "custom",
    "DATA.IMG_SIZE", "32", "DATA.BATCH_SIZE_TRAIN", "4", "DATA.BATCH_SIZE_VAL", "4", "DATA.NUM_WORKERS", "1",
    "DATA.NUM_THREADS", "1", "TRAIN.EPOCHS", str(EPOCHS), "TRAIN.WARMUP_EPOCHS", "1", "TRAIN.BASE_LR", "0.05",
    "TRAIN.OPTIMIZER.NAME", "sgd", "AUG.MIXUP", "0.0", "AUG.CUTMIX", "0.0", "MODEL.DROP_PATH_RATE", "0.0",
    "PRINT_FREQ", "2", "SEED", "7", "PRODUCE.EMBED_DIM", "0",
]


def run(cmd):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{cmd}\nSTDOUT:\n{proc.stdout[-4000:]}\nSTDERR:\n{proc.stderr[-4000:]}"
    return proc


def produce(out, opts):
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         os.path.join(ROOT, "main_and_produce.py"), "--config", "configs/demo-mnist.yaml", "--output", out,
         "--opts", *opts])
    return os.path.join(out, "pred_prob_history")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("topk")
    make_image_tree(str(root / "train"), num_classes=3, per_class=11, seed=0)
    make_image_tree(str(root / "val"), num_classes=3, per_class=5, seed=1)
    opts = OPTS + ["DATA.DATA_PATH_TRAIN", str(root / "train"), "DATA.DATA_PATH_VAL", str(root / "val")]
    with_topk = produce(str(root / "topk"), opts + ["PRODUCE.TOPK.K", "2", "PRODUCE.TOPK.EPOCHS", "[0,-1]"])
    without = produce(str(root / "plain"), opts)
    return root, with_topk, without


def test_topk_records_agree_with_the_other_records(runs):
    root, hdir, plain = runs
    labels = np.array([int(line.split()[1]) for line in open(root / "train" / "file_list.txt")])
    n = len(labels)
    assert read_topk_meta(hdir) == (2, 3)
    assert sorted(f for f in os.listdir(hdir) if f.startswith("topk_")) == [
        "topk_class_0.npy", "topk_class_2.npy", "topk_prob_0.npy", "topk_prob_2.npy"]
    for epoch in (0, EPOCHS - 1):
        probs, classes = load_topk(hdir, epoch, n)
        prob = np.load(os.path.join(hdir, f"prob_{epoch}.npy"))
        correct = np.load(os.path.join(hdir, f"correct_{epoch}.npy"))
        seen = ~np.isnan(prob)
        assert (seen == (classes[:, 0] >= 0)).all() and 0 < (~seen).sum() < n  # the drop-last remainder
        s = np.flatnonzero(seen)
        assert (classes[s, 0] != classes[s, 1]).all() and (probs[s, 0] >= probs[s, 1]).all()
        np.testing.assert_array_equal(correct[s] == 1, classes[s, 0] == labels[s])
        for i in s:  # where the label is among the top 2, its probability is the recorded p(label)
            hit = np.flatnonzero(classes[i] == labels[i])
            if len(hit):
                assert float(probs[i, hit[0]]) == pytest.approx(float(prob[i]), abs=1e-3)
            else:
                assert prob[i] <= float(probs[i, 1]) + 1e-3
    for name in os.listdir(plain):  # recording top-k changes no other file
        if name.endswith(".npy"):
            with open(os.path.join(plain, name), "rb") as a, open(os.path.join(hdir, name), "rb") as b:
                assert a.read() == b.read(), name


def test_label_issues_from_the_recorded_run(runs, tmp_path):
    root, hdir, _ = runs
    out = tmp_path / "issues.tsv"
    proc = run([sys.executable, "get_coreset.py", "--input", os.path.dirname(hdir), "--dataset_file_list",
                str(root / "train" / "file_list.txt"), "--label-issues", str(out), "--label-score", "cleanlab"])
    assert "labels suspected wrong" in proc.stdout and "cleanlab" in proc.stdout
    with open(out) as f:
        assert f.readline().rstrip("\n").split("\t") == ["index", "line", "path", "label", "score", "suggested"]
    t = read_tsv(str(out))
    assert ((t["suggested"] != t["label"]) & (t["suggested"] < 3)).all()


def test_threshold_samples_run(runs, tmp_path):
    """PRODUCE.THRESHOLD_SAMPLES 1: N // (C + 1) images trained under an extra class (the
    model gets C + 1 outputs), recorded beside the history; --label-issues judges the
    others at the 99th percentile of their mean margins; a coreset from the run is refused."""
    from dynunc.history import read_threshold
    from dynunc.training.threshold import threshold_indices

    root, _, _ = runs
    opts = OPTS + ["DATA.DATA_PATH_TRAIN", str(root / "train"), "DATA.DATA_PATH_VAL", str(root / "val")]
    hdir = produce(str(tmp_path / "aum"), opts + ["PRODUCE.THRESHOLD_SAMPLES", "1", "PRODUCE.TOPK.K", "3"])
    extra, rows = read_threshold(hdir, 33)
    assert extra == 3 and (rows == threshold_indices(33, 3, 1)).all() and len(rows) == 33 // 4
    assert read_topk_meta(hdir) == (3, 4)  # the model has a fourth output
    listed = str(root / "train" / "file_list.txt")
    out = tmp_path / "issues.tsv"
    proc = run([sys.executable, "get_coreset.py", "--input", os.path.dirname(hdir), "--dataset_file_list", listed,
                "--label-issues", str(out)])
    assert "the 99th percentile of the" in proc.stdout
    t = read_tsv(str(out))
    assert not set(t["index"]) & set(rows) and (t["suggested"] < 3).all()
    proc = subprocess.run([sys.executable, "get_coreset.py", "--input", os.path.dirname(hdir), "--dataset_file_list",
                           listed, "--fraction", "0.5", "--window", "2", "--output", str(tmp_path / "c.txt")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "is for label errors only" in proc.stderr and not (tmp_path / "c.txt").exists()
