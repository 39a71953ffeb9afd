"""dynunc/training/embeddings.py: the config keys, the classifier hook on every model type, the
fixed projection, the recorder's rows (the end-of-epoch pass, validation) against a plain
reference, and the per-rank parts merged into one file."""
import os

import numpy as np
import pytest
import torch
from torch import nn

from models.build import build_model
from dynunc.training import embeddings
from dynunc.training.embeddings import (EmbeddingStore, FeatureCapture, embed_epochs, embedding_pass, find_classifier,
                                       merge_parts, part_paths, projection)
from dynunc.history import embed_path, history_dir, load_embeddings, record_path
from dynunc.training.recorder import Recorder
from test_models import SMALL, small_config
from utils.config import load_config


def test_embed_epochs_resolve_the_last_and_negative_ones():
    assert embed_epochs([], 12) == [11]
    assert embed_epochs([-1, 0, 5], 12) == [0, 5, 11]
    with pytest.raises(ValueError, match=r"PRODUCE.EMBED_EPOCHS: epoch 12 is outside the run's 12 epochs"):
        embed_epochs([12], 12)
    with pytest.raises(ValueError, match=r"PRODUCE.EMBED_EPOCHS: epoch -13 is outside"):
        embed_epochs([-13], 12)
    with pytest.raises(ValueError, match=r"epoch 11 is given twice in \[11, -1\]"):
        embed_epochs([11, -1], 12)
    with pytest.raises(ValueError, match=r"PRODUCE.EMBED_EPOCHS: 1.5 is not an epoch number"):
        embed_epochs([1.5], 12)


def test_check_config_names_the_keys():
    ok = load_config(None, ["TRAIN.EPOCHS", "4"])
    assert ok.PRODUCE.EMBED_DIM == 128 and list(ok.PRODUCE.EMBED_EPOCHS) == []
    assert embeddings.check_config(ok) == []
    assert embeddings.check_config(load_config(None, ["PRODUCE.EMBED_DIM", "0"])) == []
    assert embeddings.check_config(load_config(None, ["PRODUCE.EMBED_DIM", "-1"])) == []  # unprojected
    assert embeddings.check_config(load_config(None, ["PRODUCE.EMBED_DIM", "-2"])) == [
        "PRODUCE.EMBED_DIM must be 0 (no embeddings), a positive width (a random projection) or -1 (the classifier "
        "input, unprojected), got -2"]
    problems = embeddings.check_config(load_config(None, ["TRAIN.EPOCHS", "4", "PRODUCE.EMBED_EPOCHS", "[4]"]))
    assert len(problems) == 1 and problems[0].startswith("PRODUCE.EMBED_EPOCHS: epoch 4 is outside")


@pytest.mark.parametrize("model_type", list(SMALL))
def test_the_hook_captures_the_pre_logits_features_of_every_model_type(model_type):
    torch.manual_seed(0)
    model = build_model(small_config(model_type)).eval()
    capture = FeatureCapture(model)
    store = EmbeddingStore("unused", 8, 0, 1)
    x = torch.randn(3, 3, 32, 32)
    indices = torch.tensor([2, 0, 1])
    with torch.no_grad():
        with capture.armed():
            logits = model(x)
        store.add(indices, capture.take())
        model(x)  # unarmed: nothing kept
        assert capture.captured is None
        reference = model.forward_head(model.forward_features(x), pre_logits=True).flatten(1)
    capture.close()
    assert logits.shape == (3, 7)
    idx, rows = store.store.sorted_rows(8)
    assert idx.tolist() == [0, 1, 2]
    expected = (reference @ projection(reference.shape[1], 8)).half().numpy()
    np.testing.assert_allclose(rows.astype(np.float32), expected[[1, 2, 0]].astype(np.float32), rtol=1e-2, atol=1e-3)
    assert find_classifier(model).out_features == 7


@pytest.mark.parametrize("model_type", list(SMALL))
def test_full_width_records_the_classifier_input_unprojected(model_type):
    """PRODUCE.EMBED_DIM -1: the pre-logits features themselves (float16), at the
    classifier's width, for every model type."""
    torch.manual_seed(0)
    model = build_model(small_config(model_type)).eval()
    width = embeddings.classifier_width(model)
    assert width == find_classifier(model).in_features
    capture, store = FeatureCapture(model), EmbeddingStore("unused", width, 0, 1, project=False)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        with capture.armed():
            model(x)
        store.add(torch.tensor([2, 0, 1]), capture.take())
        reference = model.forward_head(model.forward_features(x), pre_logits=True).flatten(1)
    capture.close()
    idx, rows = store.store.sorted_rows(width)
    assert idx.tolist() == [0, 1, 2] and rows.shape == (3, width)
    np.testing.assert_array_equal(rows, reference.half().numpy()[[1, 2, 0]])
    with pytest.raises(ValueError, match="stored unprojected at width"):
        store.add(torch.tensor([0]), torch.zeros(1, width + 1))


def test_full_width_through_the_recorder_and_the_merge(tmp_path):
    n = 7
    features = torch.randn(n, 5)
    model = TableModel(features)
    recorder = Recorder(str(tmp_path), n, embed_dim=embeddings.classifier_width(model), project=False,
                        device=torch.device("cpu"))
    capture = FeatureCapture(model)
    with torch.no_grad():
        recorder.update(torch.arange(n), model(torch.arange(n).view(-1, 1)), torch.zeros(n, dtype=torch.int64))
        embedding_pass(model, rest_loader(np.arange(n)), capture, recorder)
    recorder.end_epoch(0)
    capture.close()
    np.testing.assert_array_equal(load_embeddings(history_dir(str(tmp_path)), n), features.half().numpy())


def test_a_model_without_a_classifier_is_refused():
    with pytest.raises(ValueError, match="Sequential: no classifier found .* set PRODUCE.EMBED_DIM 0"):
        find_classifier(nn.Sequential(nn.ReLU()))


def test_projection_is_fixed_gaussian_and_leaves_the_training_rng_alone():
    state = torch.get_rng_state()
    numpy_state = np.random.get_state()[1].copy()
    p = projection(256, 64)
    assert torch.equal(torch.get_rng_state(), state) and np.array_equal(np.random.get_state()[1], numpy_state)
    assert p.shape == (256, 64) and p.dtype == torch.float32
    assert torch.equal(p, projection(256, 64)) and not torch.equal(p[:, :32], projection(256, 32))
    # entries N(0, 1/D): a squared norm of a row's projection is |x|^2 on average
    assert 0.8 < float((p ** 2).sum(dim=1).mean()) < 1.2


class TableModel(nn.Module):
    """Features = rows of a fixed table picked by the input (B, 1) of ids; logits = fc."""

    def __init__(self, features):
        super().__init__()
        self.features = torch.as_tensor(features, dtype=torch.float32)
        self.fc = nn.Linear(self.features.shape[1], 3)

    def forward(self, x):
        return self.fc(self.features[x.view(-1).long()])


def rest_loader(order, batch=2):
    order = torch.as_tensor(order)
    return [{"images": order[i:i + batch].view(-1, 1), "indices": order[i:i + batch]}
            for i in range(0, len(order), batch)]


def test_recorder_writes_every_row_and_leaves_prob_as_without_embeddings(tmp_path):
    n, dim = 7, 4
    torch.manual_seed(1)
    features = torch.randn(n, 5)
    model = TableModel(features)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    seen = [torch.tensor([5, 1]), torch.tensor([3, 0])]  # the end-of-epoch pass embeds all 7
    outputs = {}
    for name, with_embed in (("plain", False), ("embed", True)):
        out = str(tmp_path / name)
        recorder = Recorder(out, n, embed_dim=dim if with_embed else 0, device=torch.device("cpu"))
        capture = FeatureCapture(model) if with_embed else None
        for ids in seen:
            recorder.update(ids, model(ids.view(-1, 1)).detach(), labels[ids])
        if with_embed:
            assert embedding_pass(model, rest_loader(np.arange(n)), capture, recorder) == n
        recorder.end_epoch(0)
        # a second epoch that is not an embedding epoch records none
        recorder.update(seen[0], model(seen[0].view(-1, 1)).detach(), labels[seen[0]])
        recorder.end_epoch(1)
        outputs[name] = out
        if capture is not None:
            capture.close()
    for epoch in (0, 1):
        for kind in ("prob", "correct", "margin", "el2n"):
            with open(record_path(history_dir(outputs["plain"]), kind, epoch), "rb") as a, \
                    open(record_path(history_dir(outputs["embed"]), kind, epoch), "rb") as b:
                assert a.read() == b.read()
    hdir = history_dir(outputs["embed"])
    got = load_embeddings(hdir, n)
    with torch.no_grad():
        expected = (features @ projection(5, dim)).half().numpy()
    np.testing.assert_array_equal(got, expected)
    assert not os.path.exists(embed_path(hdir, 1))
    assert sorted(os.listdir(hdir)) == sorted(
        [f"{k}_{e}.npy" for k in ("prob", "correct", "margin", "el2n") for e in (0, 1)] + ["embed_0.npy"])


def test_validation_rows_through_evaluate(tmp_path):
    from engine import evaluate

    n, dim = 5, 3
    features = torch.randn(n, 6)
    model = TableModel(features)
    capture = FeatureCapture(model)
    store = EmbeddingStore(str(tmp_path), dim, 0, 1)

    def capture_rows(indices):
        import contextlib

        @contextlib.contextmanager
        def armed():
            with capture.armed():
                yield
            store.add(indices, capture.take())

        return armed()

    loader = [{"images": torch.tensor([[4], [2]]), "labels": torch.tensor([0, 1]), "indices": torch.tensor([4, 2])},
              {"images": torch.tensor([[0], [1], [3]]), "labels": torch.tensor([2, 0, 1]),
               "indices": torch.tensor([0, 1, 3])}]
    metrics = evaluate(model, loader, torch.device("cpu"), capture=capture_rows)
    assert metrics["val_samples"] == 5
    store.finish(2, "val_embed", n)
    np.testing.assert_array_equal(load_embeddings(str(tmp_path), n, kind="val_embed"),
                                  (features @ projection(6, dim)).half().numpy())


def test_parts_of_several_ranks_merge_block_by_block(tmp_path, monkeypatch):
    monkeypatch.setattr(embeddings, "_MERGE_ROWS", 4)  # several blocks, each fed by several parts
    hdir, n, dim, world = str(tmp_path), 11, 3, 3
    rng = np.random.default_rng(0)
    values = rng.standard_normal((n, dim)).astype(np.float16)
    order = rng.permutation(n)
    shards = [order[:5], order[5:], np.zeros(0, np.int64)]  # the last rank saw nothing
    for rank in (1, 2, 0):  # rank 0 merges after the others wrote (the barrier)
        store = EmbeddingStore(hdir, dim, rank, world)
        shard = shards[rank]
        for chunk in np.array_split(shard, 2):
            store.store.add(torch.as_tensor(chunk), torch.as_tensor(values[chunk]))
        result = store.finish(4, "embed", n)
        assert (result is not None) == (rank == 0)
    np.testing.assert_array_equal(np.load(embed_path(hdir, 4), mmap_mode="r"), values)
    assert os.listdir(hdir) == ["embed_4.npy"]  # parts removed


def test_a_missing_row_is_an_error_and_no_file_is_written(tmp_path):
    hdir, dim = str(tmp_path), 2
    ipath, rpath = part_paths(hdir, 0, "embed", 0)
    np.save(ipath, np.array([0, 2], np.int64))
    np.save(rpath, np.ones((2, dim), np.float16))
    with pytest.raises(RuntimeError, match=r"embed_0.npy: no process recorded the embedding of sample 1"):
        merge_parts(hdir, 0, "embed", 3, dim, 1)
    assert not os.path.exists(embed_path(hdir, 0))
    assert not [name for name in os.listdir(hdir) if name.endswith(".tmp")]
