"""The three commands for real: torchrun with 2 processes (gloo, CPU), DALI CPU pipelines,
a tiny image tree. Produce -> get_coreset -> main on the coreset, and a killed run that
auto-resumes to the same history as an uninterrupted one."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, make_image_tree
from data.reader import train_shard

# Tiny but complete: 2 ranks x batch 4; 3 classes x 11 images = 33 samples -> 16 per rank,
# 4 batches each, 1 sample in the drop-last remainder every epoch.
EPOCHS = 4
OPTS = [
    "MODEL.TYPE", "resnet", "MODEL.NAME", "resnet_tiny", "MODEL.NUM_CLASSES", "3", "DATA.DATASET", "custom",
    "DATA.IMG_SIZE", "32", "DATA.BATCH_SIZE_TRAIN", "4", "DATA.BATCH_SIZE_VAL", "4", "DATA.NUM_WORKERS", "1",
    "DATA.NUM_THREADS", "1", "TRAIN.EPOCHS", str(EPOCHS), "TRAIN.WARMUP_EPOCHS", "1", "TRAIN.BASE_LR", "0.05",
    "TRAIN.OPTIMIZER.NAME", "sgd", "AUG.MIXUP", "0.0", "AUG.CUTMIX", "0.0", "AUG.AUTO_AUGMENT", "True",
    "MODEL.DROP_PATH_RATE", "0.0", "PRINT_FREQ", "2", "SEED", "7",
]


def torchrun(script, *args, nproc=2):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            os.path.join(ROOT, script), *args]


def run(cmd, **kwargs):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, **kwargs)
    assert proc.returncode == 0, f"{cmd}\nSTDOUT:\n{proc.stdout[-4000:]}\nSTDERR:\n{proc.stderr[-4000:]}"
    return proc


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    make_image_tree(str(root / "train"), num_classes=3, per_class=11, seed=0)
    make_image_tree(str(root / "val"), num_classes=3, per_class=5, seed=1)
    opts = OPTS + ["DATA.DATA_PATH_TRAIN", str(root / "train"), "DATA.DATA_PATH_VAL", str(root / "val")]
    return root, opts


def metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def history(out, epoch, kind="prob"):
    return np.load(os.path.join(out, "pred_prob_history", f"{kind}_{epoch}.npy"))


@pytest.fixture(scope="module")
def produced(data):
    root, opts = data
    out = str(root / "produce")
    run(torchrun("main_and_produce.py", "--config", "configs/demo-mnist.yaml", "--output", out, "--opts", *opts))
    return out


def test_every_sample_recorded_once_per_epoch_except_remainder(data, produced):
    root, _ = data
    n = 33
    for epoch in range(EPOCHS):
        prob, correct = history(produced, epoch), history(produced, epoch, "correct")
        assert prob.dtype == np.float32 and prob.shape == (n,)
        assert correct.dtype == np.int8 and correct.shape == (n,)
        # The samples the two ranks trained on, by the sharding rule itself.
        seen = np.concatenate([train_shard(n, 7, epoch, r, 2, 4) for r in range(2)])
        assert len(seen) == len(set(seen.tolist())) == 32
        expected = np.zeros(n, dtype=bool)
        expected[seen] = True
        np.testing.assert_array_equal(~np.isnan(prob), expected)
        np.testing.assert_array_equal(correct >= 0, expected)
        assert np.all((prob[expected] >= 0) & (prob[expected] <= 1))
        # margin and EL2N: recorded exactly where prob is, from the same forward.
        margin, el2n = history(produced, epoch, "margin"), history(produced, epoch, "el2n")
        assert margin.dtype == el2n.dtype == np.float32 and margin.shape == el2n.shape == (n,)
        np.testing.assert_array_equal(~np.isnan(margin), expected)
        np.testing.assert_array_equal(~np.isnan(el2n), expected)
        m, e, p, c = margin[expected], el2n[expected], prob[expected], correct[expected]
        assert np.all(c[m > 0] == 1) and np.all(c[m < 0] == 0)  # the true logit wins iff the margin is > 0
        # 1 - p <= ||softmax - onehot|| <= sqrt(2) (1 - p)
        assert np.all(e >= (1 - p) - 1e-5) and np.all(e <= np.sqrt(2) * (1 - p) + 1e-5)
    # The list the history was recorded on, for get_coreset's check.
    with open(os.path.join(produced, "pred_prob_history", "file_list.json")) as f:
        recorded = json.load(f)
    import hashlib

    with open(root / "train" / "file_list.txt", "rb") as f:
        assert recorded == {"path": str(root / "train" / "file_list.txt"), "entries": n,
                            "sha256": hashlib.sha256(f.read()).hexdigest()}
    # The resolved config and the metrics are beside the history.
    assert os.path.exists(os.path.join(produced, "config.yaml"))
    records = metrics(produced)
    assert [r["epoch"] for r in records] == list(range(EPOCHS))
    assert all(r["val_samples"] == 15 for r in records)


def test_coreset_then_train_on_it(data, produced):
    root, opts = data
    coreset = str(root / "coreset.txt")
    proc = run([sys.executable, "get_coreset.py", "--input", produced, "--dataset_file_list",
                str(root / "train" / "file_list.txt"), "--fraction", "0.5", "--window", "2", "--output", coreset])
    assert "kept 16 of 33" in proc.stdout
    with open(coreset) as f:
        kept = f.read().splitlines()
    with open(root / "train" / "file_list.txt") as f:
        full = f.read().splitlines()
    assert len(kept) == 16 and kept == [line for line in full if line in set(kept)]
    out = str(root / "on_coreset")
    run(torchrun("main.py", "--config", "configs/demo-mnist.yaml", "--coreset", coreset, "--output", out,
                 "--opts", *opts, "TRAIN.EPOCHS", "2"))
    records = metrics(out)
    assert len(records) == 2 and records[-1]["val_samples"] == 15
    assert not os.path.exists(os.path.join(out, "pred_prob_history"))
    # The checkpoint loads with weights_only=True and validates in EVAL_MODE.
    import torch

    ckpt = torch.load(os.path.join(out, "ckpts", "ckpt_epoch_1.pth"), weights_only=True)
    assert ckpt["epoch"] == 1 and "MODEL:" in ckpt["config"]


def test_killed_run_resumes_to_the_same_history(data, produced):
    root, opts = data
    out = str(root / "killed")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = torchrun("main_and_produce.py", "--config", "configs/demo-mnist.yaml", "--output", out, "--opts", *opts)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    marker = os.path.join(out, "pred_prob_history", "prob_1.npy")
    deadline = time.time() + 300
    while not os.path.exists(marker) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole torchrun tree, mid-training
    proc.wait()
    assert not os.path.exists(os.path.join(out, "pred_prob_history", f"prob_{EPOCHS - 1}.npy")), \
        "the run finished before it could be killed"
    run(cmd)  # TRAIN.AUTO_RESUME is on by default
    for epoch in range(EPOCHS):
        np.testing.assert_allclose(history(out, epoch), history(produced, epoch), atol=1e-6, equal_nan=True)
        np.testing.assert_array_equal(history(out, epoch, "correct"), history(produced, epoch, "correct"))
    leftovers = [n for n in os.listdir(os.path.join(out, "pred_prob_history")) if n.endswith(".tmp")]
    assert not leftovers
    # One metrics line per epoch, and the best top-1 carried across the restart.
    resumed, straight = metrics(out), metrics(produced)
    assert [r["epoch"] for r in resumed] == list(range(EPOCHS))
    assert [r["best_acc1"] for r in resumed] == [r["best_acc1"] for r in straight]


def test_unknown_config_key_is_an_error_naming_it(data, tmp_path):
    _, opts = data
    bad = tmp_path / "bad.yaml"
    bad.write_text("BASE: ['" + os.path.join(ROOT, "configs", "demo-mnist.yaml") + "']\nTRAIN:\n  TRAIN_SiZE: 3\n")
    proc = subprocess.run([sys.executable, "main.py", "--config", str(bad), "--output", str(tmp_path / "o"),
                           "--opts", *opts], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "TRAIN.TRAIN_SiZE" in proc.stderr and str(bad) in proc.stderr
    proc = subprocess.run([sys.executable, "main.py", "--config", "configs/demo-mnist.yaml", "--output",
                           str(tmp_path / "o"), "--bogus-flag"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "--bogus-flag" in proc.stderr


def test_compiled_model_under_ddp_records_the_same_history(data, produced):
    """COMPILE_ENABLE with DDP and the recorder: the same history as eager, up to the
    rounding differences of compiled kernels."""
    root, opts = data
    out = str(root / "compiled")
    run(torchrun("main_and_produce.py", "--config", "configs/demo-mnist.yaml", "--output", out, "--opts", *opts,
                 "COMPILE_ENABLE", "True"))
    for epoch in range(EPOCHS):
        np.testing.assert_allclose(history(out, epoch), history(produced, epoch), atol=1e-3, equal_nan=True)
