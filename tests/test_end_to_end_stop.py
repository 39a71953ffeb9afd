"""Coreset stability and PRODUCE.STOP_WHEN_STABLE for real: torchrun, 2 CPU processes, the
tiny tree of test_end_to_end.py. The run stops when stable, keeping a complete history
and a checkpoint; a rerun of the same command sees the stop and exits 0 without training;
a resume with the rule switched off trains on, its tracking rebuilt from the history."""
import os

import numpy as np

import get_coreset
from conftest import ROOT, run_main  # noqa: F401
from dynunc.history import SPEARMAN_KEY, STOPPED_KEY, VS_EPOCH_KEY
from dynunc.training.stability import overlap_key, spearman
from test_end_to_end import data, metrics, run, torchrun  # noqa: F401

EPOCHS = 8
# Window 2: a score from epoch 2 on (the window ending at the last epoch is not used),
# comparisons from epoch 3. At 0.75, 24 of 33 kept: two such sets share at least 15
# lines (overlap >= 0.625), so OVERLAP 0.6 holds at every comparison and the run stops
# after epoch 4, the second in a row.
STOP_OPTS = ["TRAIN.EPOCHS", str(EPOCHS), "PRODUCE.TRACK_WINDOW", "2", "PRODUCE.TRACK_FRACTIONS", "[0.5, 0.75]",
             "PRODUCE.STOP_WHEN_STABLE.ENABLE", "True", "PRODUCE.STOP_WHEN_STABLE.OVERLAP", "0.6",
             "PRODUCE.STOP_WHEN_STABLE.PATIENCE", "2", "PRODUCE.STOP_WHEN_STABLE.FRACTION", "0.75"]


def produce(out, opts, *extra):
    return run(torchrun("main_and_produce.py", "--config", "configs/demo-mnist.yaml", "--output", out, "--opts",
                        *opts, *STOP_OPTS, *extra))


def recorded_epochs(out):
    return sorted(int(name[5:-4]) for name in os.listdir(os.path.join(out, "pred_prob_history"))
                  if name.startswith("prob_"))


def coreset(tmp, out, train_list, stop):
    """get_coreset's dynunc scores and kept rows (by fraction) from epochs 0..stop-1."""
    dest = tmp / f"upto{stop}_{{fraction}}.txt"
    code, _, err = run_main(get_coreset.main, ["--input", out, "--dataset_file_list", train_list, "--window", "2",
                                               "--epochs", f"0:{stop}", "--fraction", "0.5", "0.75",
                                               "--output", dest])
    assert code == 0, err
    lines = open(train_list).read().splitlines()
    kept = {}
    for f in ("0.5", "0.75"):
        kept[f] = {lines.index(line) for line in open(str(dest).replace("{fraction}", f)).read().splitlines()}
    return np.load(str(dest).replace("{fraction}", "all") + ".scores.npy"), kept


def assert_tracked_as_get_coreset(tmp, out, train_list, records):
    for record in records:
        epoch = record["epoch"]
        if epoch < 3:
            assert VS_EPOCH_KEY not in record, record
            continue
        assert record[VS_EPOCH_KEY] == epoch - 1
        scores, kept = coreset(tmp, out, train_list, epoch + 1)
        before, kept_before = coreset(tmp, out, train_list, epoch)
        for f in ("0.5", "0.75"):
            assert record[overlap_key(float(f))] == len(kept[f] & kept_before[f]) / len(kept[f])
        assert abs(record[SPEARMAN_KEY] - spearman(scores, before)) < 1e-9


def test_stop_when_stable_then_rerun_then_train_on(data, tmp_path):
    root, opts = data
    out = str(root / "stop")
    train_list = str(root / "train" / "file_list.txt")
    first = produce(out, opts)
    assert "stopping after epoch 4: 3 of 8 epochs saved" in first.stdout + first.stderr
    assert recorded_epochs(out) == [0, 1, 2, 3, 4]  # complete: every epoch trained so far
    # PRODUCE.EMBED_EPOCHS [1, -1] is epochs 1 and 7: stopped before 7, the stop epoch's embeddings are recorded
    embedded = {n for n in os.listdir(os.path.join(out, "pred_prob_history")) if n.startswith(("embed_", "val_embed_"))}
    assert embedded == {"embed_1.npy", "val_embed_1.npy", "embed_4.npy", "val_embed_4.npy"}
    assert "ckpt_epoch_4.pth" in os.listdir(os.path.join(out, "ckpts"))
    records = metrics(out)
    assert [r["epoch"] for r in records] == [0, 1, 2, 3, 4]
    assert records[-1][STOPPED_KEY] is True and not any(STOPPED_KEY in r for r in records[:-1])
    assert all(r[overlap_key(0.75)] >= 0.6 for r in records[3:])
    assert_tracked_as_get_coreset(tmp_path, out, train_list, records)
    with open(os.path.join(out, "metrics.jsonl"), "rb") as f:
        stopped_metrics = f.read()

    # The same command again (auto-resume): it sees the stop, trains nothing, exits 0.
    again = produce(out, opts)
    assert "this produce run stopped when stable after epoch 4 (of 8)" in again.stdout + again.stderr
    assert recorded_epochs(out) == [0, 1, 2, 3, 4]
    with open(os.path.join(out, "metrics.jsonl"), "rb") as f:
        assert f.read() == stopped_metrics

    # Switched off, the resumed run trains on; the tracker is rebuilt from epochs 0..4.
    produce(out, opts, "PRODUCE.STOP_WHEN_STABLE.ENABLE", "False")
    assert recorded_epochs(out) == list(range(EPOCHS))
    records = metrics(out)
    assert [r["epoch"] for r in records] == list(range(EPOCHS))
    assert_tracked_as_get_coreset(tmp_path, out, train_list, records[5:])
