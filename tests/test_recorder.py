"""dynunc/training/recorder.py: what produce mode records per sample, in which model
mode (hooks.py's forward on the eval view), and the history files it writes."""
import json
import os
from contextlib import nullcontext

import numpy as np
import pytest
import torch
from torch import nn

from dynunc.lists.index import open_index
from dynunc.history import HistoryError, history_dir, record_path, write_epoch
from dynunc.training.recorder import Recorder, RecorderError, has_batchnorm
from hooks import Hooks


class FixedLogits(nn.Module):
    """Returns the rows of a fixed logit table selected by the input (B, 1) of row ids."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.as_tensor(table, dtype=torch.float32)
        self.modes = []

    def forward(self, x):
        self.modes.append(self.training)
        return self.table[x.view(-1).long()]


def make_recorder(tmp_path, n, **kwargs):
    return Recorder(str(tmp_path), n, device=torch.device("cpu"), **kwargs)


def record(recorder, model, images, labels, indices, eval_mode_forward=None):
    """main.py's per-step call: the eval view through `model` (hooks.Hooks.observe)."""
    hooks = Hooks(None, torch.device("cpu"), nullcontext, recorder=recorder, record_model=model,
                  eval_mode_forward=eval_mode_forward)
    hooks.observe({"eval_images": images, "indices": indices}, labels)


def load_epoch(tmp_path, epoch):
    hdir = history_dir(str(tmp_path))
    return np.load(record_path(hdir, "prob", epoch)), np.load(record_path(hdir, "correct", epoch))


def test_record_and_write(tmp_path):
    logits = [[2.0, 1.0, 0.0], [0.0, 3.0, 0.0], [1.0, 1.0, 5.0]]
    model = FixedLogits(logits)
    recorder = make_recorder(tmp_path, 6)
    images = torch.tensor([[0], [1], [2]])
    labels = torch.tensor([0, 2, 1])
    indices = torch.tensor([4, 0, 2])
    record(recorder, model, images, labels, indices)
    recorder.end_epoch(0)

    prob, correct = load_epoch(tmp_path, 0)
    assert prob.dtype == np.float32 and prob.shape == (6,)
    assert correct.dtype == np.int8 and correct.shape == (6,)
    softmax = torch.softmax(torch.tensor(logits), dim=1).numpy()
    np.testing.assert_allclose(prob[4], softmax[0, 0], rtol=1e-6)
    np.testing.assert_allclose(prob[0], softmax[1, 2], rtol=1e-6)
    np.testing.assert_allclose(prob[2], softmax[2, 1], rtol=1e-6)
    assert correct[[4, 0, 2]].tolist() == [1, 0, 0]
    for i in (1, 3, 5):  # unseen
        assert np.isnan(prob[i])
        assert correct[i] == -1


def test_two_batches_accumulate_and_start_epoch_resets(tmp_path):
    model = FixedLogits([[5.0, 0.0], [0.0, 5.0]])
    recorder = make_recorder(tmp_path, 4)
    record(recorder, model, torch.tensor([[0]]), torch.tensor([0]), torch.tensor([3]))
    record(recorder, model, torch.tensor([[1]]), torch.tensor([1]), torch.tensor([1]))
    recorder.end_epoch(0)
    prob, correct = load_epoch(tmp_path, 0)
    assert np.isnan(prob[[0, 2]]).all()
    assert not np.isnan(prob[[1, 3]]).any()
    assert correct.tolist() == [-1, 1, -1, 1]

    record(recorder, model, torch.tensor([[1]]), torch.tensor([0]), torch.tensor([0]))
    recorder.end_epoch(1)
    prob, correct = load_epoch(tmp_path, 1)
    assert correct.tolist() == [0, -1, -1, -1]  # epoch 0's records do not leak into epoch 1
    assert np.isnan(prob[1:]).all()


def test_probability_zero_is_not_unseen(tmp_path):
    model = FixedLogits([[1000.0, -1000.0]])
    recorder = make_recorder(tmp_path, 3)
    record(recorder, model, torch.tensor([[0]]), torch.tensor([1]), torch.tensor([1]))
    recorder.end_epoch(0)
    prob, correct = load_epoch(tmp_path, 0)
    assert prob[1] == 0.0  # a real probability that underflows stays 0, seen
    assert correct[1] == 0
    assert np.isnan(prob[0]) and np.isnan(prob[2])


class BNNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 4)
        self.bn = nn.BatchNorm1d(4)
        self.out = nn.Linear(4, 2)
        self.modes = []

    def forward(self, x):
        self.modes.append(self.bn.training)
        return self.out(self.bn(self.fc(x)))


def test_batchnorm_model_runs_in_eval_and_is_restored(tmp_path):
    torch.manual_seed(0)
    model = BNNet()
    model.train()
    model(torch.randn(8, 3))  # non-trivial running stats
    model.modes.clear()
    stats = {k: v.clone() for k, v in model.bn.state_dict().items()}
    recorder = make_recorder(tmp_path, 5)
    images = torch.randn(5, 3) * 3 + 1
    labels = torch.tensor([0, 1, 1, 0, 1])
    record(recorder, model, images, labels, torch.arange(5))
    assert model.modes == [False]  # the forward used running statistics
    assert model.training and model.bn.training  # restored
    for k, v in model.bn.state_dict().items():
        assert torch.equal(v, stats[k]), k  # running stats and num_batches_tracked untouched
    model.eval()
    expected = torch.softmax(model(images), dim=1)[torch.arange(5), labels]
    torch.testing.assert_close(recorder.records[0, :5], expected)


def test_model_in_eval_stays_in_eval(tmp_path):
    model = BNNet().eval()
    recorder = make_recorder(tmp_path, 2)
    record(recorder, model, torch.randn(2, 3), torch.tensor([0, 1]), torch.tensor([0, 1]))
    assert not model.training


def test_model_without_batchnorm_stays_in_train_mode(tmp_path):
    model = FixedLogits([[1.0, 0.0]])
    model.train()
    assert not has_batchnorm(model)
    recorder = make_recorder(tmp_path, 1)
    record(recorder, model, torch.tensor([[0]]), torch.tensor([0]), torch.tensor([0]))
    assert model.modes == [True]  # drop-path etc. active, as in the paper's Swin/ConvNeXt
    assert model.training


def test_eval_mode_forward_override(tmp_path):
    model = FixedLogits([[1.0, 0.0]])
    recorder = make_recorder(tmp_path, 1)
    record(recorder, model, torch.tensor([[0]]), torch.tensor([0]), torch.tensor([0]), eval_mode_forward=True)
    assert model.modes == [False] and model.training
    bn = BNNet()
    recorder = make_recorder(tmp_path, 2)
    record(recorder, bn, torch.randn(2, 3), torch.tensor([0, 1]), torch.tensor([0, 1]), eval_mode_forward=False)
    assert bn.modes == [True]


def test_record_does_not_build_a_graph(tmp_path):
    model = nn.Linear(3, 2)
    recorder = make_recorder(tmp_path, 2)
    record(recorder, model, torch.randn(2, 3), torch.tensor([0, 1]), torch.tensor([0, 1]))
    assert not recorder.records.requires_grad
    assert model.weight.grad is None


def test_mode_restored_when_forward_raises(tmp_path):
    class Broken(BNNet):
        def forward(self, x):
            raise RuntimeError("boom")

    model = Broken().train()
    recorder = make_recorder(tmp_path, 1)
    with pytest.raises(RuntimeError, match="boom"):
        record(recorder, model, torch.randn(1, 3), torch.tensor([0]), torch.tensor([0]))
    assert model.training


def test_no_temporary_files_left(tmp_path):
    recorder = make_recorder(tmp_path, 4)
    for epoch in range(3):
        record(recorder, FixedLogits([[1.0, 0.0]]), torch.tensor([[0]]), torch.tensor([0]), torch.tensor([epoch]))
        recorder.end_epoch(epoch)
    names = sorted(os.listdir(history_dir(str(tmp_path))))
    assert names == sorted(f"{kind}_{e}.npy" for e in range(3) for kind in ("prob", "correct", "margin", "el2n"))


def test_resume_from_deletes_newer_epochs_only(tmp_path):
    hdir = history_dir(str(tmp_path))
    for epoch in range(5):
        write_epoch(hdir, epoch, np.full(3, 0.5, dtype=np.float32), np.ones(3, dtype=np.int8))
    write_epoch(hdir, 4, np.full(3, 0.5, dtype=np.float32), np.ones(3, dtype=np.int8),
                margin=np.zeros(3, dtype=np.float32), el2n=np.zeros(3, dtype=np.float32))
    # a paper-format text file of a newer epoch goes too
    np.savetxt(os.path.join(hdir, "prob_6.txt"), np.full(3, 0.5))
    with open(os.path.join(hdir, "notes.txt"), "w") as f:
        f.write("keep me")
    make_recorder(tmp_path, 3, start_epoch=2)
    assert sorted(os.listdir(hdir)) == ["correct_0.npy", "correct_1.npy", "notes.txt", "prob_0.npy", "prob_1.npy"]


def test_resume_from_zero_and_from_the_future(tmp_path):
    hdir = history_dir(str(tmp_path))
    for epoch in range(2):
        write_epoch(hdir, epoch, np.zeros(2, dtype=np.float32), np.zeros(2, dtype=np.int8))
    with pytest.raises(RecorderError, match="epoch 2 is missing, but start_epoch 5 resumes after it"):
        make_recorder(tmp_path, 2, start_epoch=5)
    assert len(os.listdir(hdir)) == 4  # refused before anything is removed
    make_recorder(tmp_path, 2, start_epoch=2)
    assert len(os.listdir(hdir)) == 4
    make_recorder(tmp_path, 2)
    assert os.listdir(hdir) == []


def test_resume_from_without_history(tmp_path):
    with pytest.raises(RecorderError, match="epoch 0 is missing, but start_epoch 3"):
        make_recorder(tmp_path, 2, start_epoch=3)
    assert not os.path.exists(history_dir(str(tmp_path)))


def test_margin_and_el2n_worked_out(tmp_path):
    # logits, label -> margin = logit[label] - max(other logits); el2n = ||softmax - onehot||
    logits = [[2.0, 1.0, 0.0], [0.0, 3.0, 0.0], [1.0, 1.0, 5.0], [4.0, 4.0, -1.0]]
    labels = torch.tensor([0, 2, 1, 1])
    recorder = make_recorder(tmp_path, 5)
    record(recorder, FixedLogits(logits), torch.tensor([[0], [1], [2], [3]]), labels, torch.tensor([3, 0, 1, 4]))
    recorder.end_epoch(0)
    hdir = history_dir(str(tmp_path))
    margin = np.load(record_path(hdir, "margin", 0))
    el2n = np.load(record_path(hdir, "el2n", 0))
    assert margin.dtype == np.float32 and el2n.dtype == np.float32
    np.testing.assert_allclose(margin[[3, 0, 1, 4]], [2.0 - 1.0, 0.0 - 3.0, 1.0 - 5.0, 4.0 - 4.0], rtol=0, atol=1e-6)
    sm = torch.softmax(torch.tensor(logits, dtype=torch.float64), dim=1).numpy()
    expected = [np.linalg.norm(sm[r] - np.eye(3)[int(labels[r])]) for r in range(4)]
    np.testing.assert_allclose(el2n[[3, 0, 1, 4]], expected, rtol=1e-6)
    assert np.isnan(margin[2]) and np.isnan(el2n[2])  # unseen


def test_negative_margins_survive_the_max_gather(tmp_path):
    """With the old -1 fill a margin below -1 would have read as unseen."""
    recorder = make_recorder(tmp_path, 2)
    record(recorder, FixedLogits([[-50.0, 50.0]]), torch.tensor([[0]]), torch.tensor([0]), torch.tensor([1]))
    recorder.end_epoch(0)
    hdir = history_dir(str(tmp_path))
    assert np.load(record_path(hdir, "margin", 0))[1] == -100.0
    assert np.load(record_path(hdir, "prob", 0))[1] < 1e-40 and np.load(record_path(hdir, "correct", 0))[1] == 0
    np.testing.assert_allclose(np.load(record_path(hdir, "el2n", 0))[1], np.sqrt(2.0), rtol=1e-6)
    assert np.isnan(np.load(record_path(hdir, "margin", 0))[0])


def test_confident_el2n_does_not_cancel(tmp_path):
    recorder = make_recorder(tmp_path, 1)
    record(recorder, FixedLogits([[12.0, 0.0]]), torch.tensor([[0]]), torch.tensor([0]), torch.tensor([0]))
    recorder.end_epoch(0)
    q = 1.0 / (1.0 + np.exp(12.0))  # p of the wrong class, ~6e-6
    np.testing.assert_allclose(np.load(record_path(history_dir(str(tmp_path)), "el2n", 0))[0], np.sqrt(2) * q,
                               rtol=1e-4)


def write_list(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def test_file_list_fingerprint_written_at_start(tmp_path):
    flist = write_list(tmp_path / "train.txt", ["/a/1.jpg 0", "/b/2.jpg 1"])
    Recorder(str(tmp_path / "out"), 2, file_list=flist, device=torch.device("cpu"))
    with open(os.path.join(history_dir(str(tmp_path / "out")), "file_list.json")) as f:
        recorded = json.load(f)
    import hashlib

    assert recorded == {"path": flist, "entries": 2,
                        "sha256": hashlib.sha256((tmp_path / "train.txt").read_bytes()).hexdigest()}
    assert recorded == open_index(flist).fingerprint()


def test_resume_on_a_different_list_is_refused(tmp_path):
    flist = write_list(tmp_path / "train.txt", ["/a/1.jpg 0", "/b/2.jpg 1"])
    out = str(tmp_path / "out")
    Recorder(out, 2, file_list=flist, device=torch.device("cpu"))
    write_epoch(history_dir(out), 0, np.full(2, 0.5, dtype=np.float32), np.ones(2, dtype=np.int8))
    write_list(tmp_path / "train.txt", ["/b/2.jpg 1", "/a/1.jpg 0"])  # same N, other order
    with pytest.raises(RecorderError, match="train.txt is not the file list the kept epochs"):
        Recorder(out, 2, file_list=flist, start_epoch=1, device=torch.device("cpu"))
    # starting over (epoch 0) drops the old epochs and records the new list
    Recorder(out, 2, file_list=flist, device=torch.device("cpu"))
    recorded = json.loads((tmp_path / "out" / "pred_prob_history" / "file_list.json").read_text())
    assert recorded == open_index(flist).fingerprint()


def test_every_record_kind_is_written_and_read_as_its_table_row(tmp_path):
    """RECORD_KINDS drives the recorder, write_epoch and load_epoch_record: each kind's
    file has the row's dtype and unseen marker, and a bad kind is refused by name."""
    from dynunc.history import RECORD_KINDS, load_epoch_record

    recorder = make_recorder(tmp_path, 3)
    record(recorder, FixedLogits([[1.0, 0.0]]), torch.tensor([[0]]), torch.tensor([1]), torch.tensor([2]))
    recorder.end_epoch(0)
    hdir = history_dir(str(tmp_path))
    assert sorted(os.listdir(hdir)) == sorted(f"{kind}_0.npy" for kind in RECORD_KINDS)
    for kind, row in RECORD_KINDS.items():
        values = load_epoch_record(record_path(hdir, kind, 0), kind, expected_len=3)
        assert values.dtype == row.dtype, kind
        np.testing.assert_array_equal(values[:2], [row.unseen, row.unseen], err_msg=kind)  # NaN equals NaN here
        assert not np.isnan(values[2]) and values[2] != row.unseen, kind
    with pytest.raises(ValueError, match="unknown record kind 'logits'"):
        write_epoch(hdir, 1, np.zeros(3), np.zeros(3), logits=np.zeros(3))
    np.save(record_path(hdir, "correct", 0), np.array([0, 2, 1], dtype=np.int8))
    with pytest.raises(HistoryError, match="value 2 at index 1 is not -1, 0 or 1"):
        load_epoch_record(record_path(hdir, "correct", 0), "correct")
