"""The public API, `from dynunc import Recorder, select`: what a plain loop writes is what
main_and_produce.py writes (byte for byte, same model, data order and seed), bad use is
one RecorderError with nothing of the epoch written, two ranks agree or fail together,
samples named by keys, and select() is get_coreset.py's selection."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from conftest import ROOT, make_image_tree, run_main
from dynunc import Recorder, RecorderError, select
from dynunc.history import history_dir, list_epoch_files, read_sample_keys, record_path

CPU = torch.device("cpu")


def logits_for(labels, right=True):
    """(B, 3) logits whose top-1 is the label (or not)."""
    logits = torch.zeros(len(labels), 3)
    logits[torch.arange(len(labels)), torch.as_tensor(labels) if right else (torch.as_tensor(labels) + 1) % 3] = 4.0
    return logits


def files(out):
    hdir = history_dir(str(out))
    return sorted(os.listdir(hdir)) if os.path.isdir(hdir) else []


@pytest.mark.parametrize("bad, message", [
    (lambda r: r.update(torch.tensor([0, 5]), logits_for([0, 1]), torch.tensor([0, 1])),
     r"epoch 1: sample index 5 is outside \[0, 4\)"),
    (lambda r: r.update(torch.tensor([-1]), logits_for([0]), torch.tensor([0])),
     r"sample index -1 is outside \[0, 4\)"),
    (lambda r: (r.update(torch.tensor([1, 2]), logits_for([0, 1]), torch.tensor([0, 1])),
                r.update(torch.tensor([2]), logits_for([1]), torch.tensor([1]))),
     r"sample index 2 was given 2 times on rank 0"),
    (lambda r: r.update(torch.tensor([1, 1]), logits_for([0, 0]), torch.tensor([0, 0])),
     r"sample index 1 was given 2 times"),
    (lambda r: r.update(torch.tensor([1]), logits_for([0]), torch.tensor([3])),
     r"target 3 is outside the logits' 3 classes"),
])
def test_bad_values_raise_at_end_epoch_and_nothing_of_the_epoch_is_written(tmp_path, bad, message):
    rec = Recorder(str(tmp_path), 4, device=CPU)
    rec.update(torch.tensor([0, 3]), logits_for([0, 1]), torch.tensor([0, 1]))
    rec.end_epoch(0)
    written = files(tmp_path)
    bad(rec)  # no error yet: checked without a host sync per step
    with pytest.raises(RecorderError, match=message):
        rec.end_epoch(1)
    assert files(tmp_path) == written and 1 not in list_epoch_files(history_dir(str(tmp_path)))


@pytest.mark.parametrize("call, message", [
    (lambda r: r.update(torch.tensor([0, 1]), logits_for([0]), torch.tensor([0])),
     r"update: expected indices \(B,\), logits \(B, C\), targets \(B,\) with one B; got indices \(2,\), logits "
     r"\(1, 3\), targets \(1,\)"),
    (lambda r: r.update(torch.tensor([0]), torch.zeros(1, 3, 2), torch.tensor([0])), r"logits \(1, 3, 2\)"),
    (lambda r: r.update(torch.tensor([0]), logits_for([0]), torch.tensor([[0.0, 1.0, 0.0]])), r"targets \(1, 3\)"),
    (lambda r: r.update(torch.tensor([0]), logits_for([0]), torch.tensor([0.0])), r"must be integer tensors"),
    (lambda r: r.update(torch.tensor([0]), logits_for([0]), torch.tensor([0]), features=torch.zeros(1, 5)),
     r"features given, but this Recorder has embed_dim 0"),
])
def test_shapes_that_disagree_raise_at_once(tmp_path, call, message):
    rec = Recorder(str(tmp_path), 4, device=CPU)
    with pytest.raises(RecorderError, match=message):
        call(rec)


def test_end_epoch_twice_or_out_of_order(tmp_path):
    rec = Recorder(str(tmp_path), 2, device=CPU)
    rec.update(torch.tensor([0]), logits_for([0]), torch.tensor([0]))
    rec.end_epoch(0)
    written = files(tmp_path)
    with pytest.raises(RecorderError, match=r"end_epoch\(0\): the next epoch to end is 1 \(end_epoch was already "
                                            r"called for it\)"):
        rec.end_epoch(0)
    rec = Recorder(str(tmp_path), 2, device=CPU, start_epoch=1)
    with pytest.raises(RecorderError, match=r"end_epoch\(3\): the next epoch to end is 1 \(epochs are skipped\)"):
        rec.end_epoch(3)
    assert files(tmp_path) == written


def test_a_history_of_another_n_is_refused_before_anything_changes(tmp_path):
    rec = Recorder(str(tmp_path), 3, device=CPU)
    for epoch in range(2):
        rec.update(torch.tensor([0, 2]), logits_for([0, 1]), torch.tensor([0, 1]))
        rec.end_epoch(epoch)
    written = files(tmp_path)
    with pytest.raises(RecorderError, match=r"prob_0.npy holds 3 samples, this Recorder has num_samples 4: a history "
                                            r"from another N"):
        Recorder(str(tmp_path), 4, device=CPU, start_epoch=2)
    assert files(tmp_path) == written
    with pytest.raises(RecorderError, match="num_samples must be a positive int"):
        Recorder(str(tmp_path), 0, device=CPU)
    with pytest.raises(RecorderError, match="keys: 2 keys for num_samples 3"):
        Recorder(str(tmp_path), 3, keys=["a", "b"], device=CPU)


def test_keys_name_the_samples_and_get_coreset_writes_them_without_a_list(tmp_path):
    import get_coreset

    keys = [f"shard-{i // 4:02d}/sample-{i:03d}" for i in range(10)]
    rec = Recorder(str(tmp_path / "run"), 10, keys=keys, device=CPU)
    rng = np.random.default_rng(0)
    for epoch in range(5):
        rec.update(torch.arange(10), torch.as_tensor(rng.standard_normal((10, 3)), dtype=torch.float32),
                   torch.as_tensor(rng.integers(0, 3, 10)))
        rec.end_epoch(epoch)
    assert read_sample_keys(history_dir(str(tmp_path / "run"))) == keys
    kept = select(str(tmp_path / "run"), method="dynunc", fraction=0.4, window=2)
    assert kept.dtype == np.int64 and len(kept) == 4 and np.all(np.diff(kept) > 0)
    code, out, err = run_main(get_coreset.main, ["--input", tmp_path / "run", "--fraction", "0.4", "--window", "2",
                                                 "--output", tmp_path / "kept.txt"])
    assert code == 0, err
    assert (tmp_path / "kept.txt").read_text() == "".join(f"{keys[i]}\n" for i in kept)
    # the same history named by index: the kept indices, one per line
    code, _, err = run_main(get_coreset.main, ["--input", tmp_path / "run", "--fraction", "0.4", "--window", "2",
                                               "--method", "random", "--output", tmp_path / "random.txt"])
    assert code == 0, err
    os.remove(os.path.join(history_dir(str(tmp_path / "run")), "sample_keys.txt"))
    code, _, err = run_main(get_coreset.main, ["--input", tmp_path / "run", "--fraction", "0.4", "--window", "2",
                                               "--output", tmp_path / "idx.txt"])
    assert code == 0, err
    assert (tmp_path / "idx.txt").read_text() == "".join(f"{i}\n" for i in kept)
    # a rule that needs the labels is refused in one line, nothing written
    code, _, err = run_main(get_coreset.main, ["--input", tmp_path / "run", "--fraction", "0.4", "--class-balanced",
                                               "--output", tmp_path / "cb.txt"])
    assert code == 2 and "--class-balanced needs --dataset_file_list" in err and not (tmp_path / "cb.txt").exists()


def test_select_is_get_coreset(tmp_path):
    import get_coreset

    n = 30
    lines = [f"/c{i % 3}/img_{i:03d}.jpg {i % 3}" for i in range(n)]
    (tmp_path / "list.txt").write_text("".join(f"{line}\n" for line in lines))
    rec = Recorder(str(tmp_path / "run"), n, file_list=str(tmp_path / "list.txt"), device=CPU)
    rng = np.random.default_rng(1)
    for epoch in range(6):
        order = torch.as_tensor(rng.permutation(n)[:27])  # 3 unseen each epoch
        rec.update(order, torch.as_tensor(rng.standard_normal((27, 3)), dtype=torch.float32), order % 3)
        rec.end_epoch(epoch)
    for method, kwargs, flags in (("dynunc", {"window": 3}, ["--window", "3"]), ("forgetting", {}, []),
                                  ("el2n", {"epochs": range(1, 4)}, ["--epochs", "1:4"])):
        for fraction in (0.3, 0.5):
            kept = select(str(tmp_path / "run"), method=method, fraction=fraction, seed=2, **kwargs)
            code, _, err = run_main(get_coreset.main, ["--input", tmp_path / "run", "--dataset_file_list",
                                                       tmp_path / "list.txt", "--method", method, "--fraction",
                                                       str(fraction), "--seed", "2", *flags, "--output",
                                                       tmp_path / "c.txt"])
            assert code == 0, err
            assert [lines[i] for i in kept] == (tmp_path / "c.txt").read_text().splitlines(), (method, fraction)
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        select(str(tmp_path / "run"), method="nope")
    with pytest.raises(TypeError, match="unknown parameter 'windw'"):
        select(str(tmp_path / "run"), windw=3)
    with pytest.raises(ValueError, match="--window"):
        select(str(tmp_path / "run"), window="three")


TWO_RANKS = textwrap.dedent("""
    import os, sys, torch, torch.distributed as dist
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    from dynunc import Recorder, RecorderError
    out, case = sys.argv[1], sys.argv[2]
    try:
        n = 6 + (rank if case == "n" else 0)
        rec = Recorder(out, n, device=torch.device("cpu"))
        mine = torch.tensor([0, 2, 4]) + rank  # rank 0 the even samples, rank 1 the odd ones
        if case == "repeat" and rank == 1:
            mine = torch.tensor([1, 3, 3])
        logits = torch.nn.functional.one_hot(mine % 3, 3).float() * 3
        rec.update(mine, logits, mine % 3)
        rec.end_epoch(0)
        print("ok")
    except RecorderError as e:
        print("error:", e)
    dist.destroy_process_group()
""")


@pytest.mark.parametrize("case", ["ok", "n", "repeat"])
def test_two_ranks_gather_once_and_fail_together(tmp_path, case):
    script = tmp_path / "two.py"
    script.write_text(TWO_RANKS)
    out = tmp_path / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "--tee", "3", str(script), str(out), case], capture_output=True, text=True, timeout=300,
                          env=env, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = sorted(line.split("]:", 1)[1].strip() for line in proc.stdout.splitlines() if "]:" in line)
    if case == "ok":
        assert said == ["ok", "ok"]
        prob = np.load(record_path(history_dir(str(out)), "prob", 0))
        assert not np.isnan(prob).any()  # both ranks' samples, gathered
    elif case == "n":
        assert said == ["error: the ranks disagree on the number of samples N: rank 0: 6, rank 1: 7"] * 2
        assert files(out) == []
    else:
        assert said == ["error: end_epoch(0): rank 1 found a sample index repeated within the epoch; nothing of epoch "
                        "0 is written (that rank's error says more)",
                        "error: epoch 0: sample index 3 was given 2 times on rank 1; each sample is recorded once per "
                        "epoch (a sampler that repeats samples, or indices that are positions in the batch rather "
                        "than in the dataset?)"]
        assert files(out) == []


# ---------------------------------------------------------------------------------------------
# The plain loop and main_and_produce.py write the same bytes
# ---------------------------------------------------------------------------------------------
OPTS = ["MODEL.NUM_CLASSES", "3", "DATA.BATCH_SIZE_TRAIN", "4", "DATA.BATCH_SIZE_VAL", "4", "DATA.NUM_WORKERS", "1",
        "TRAIN.EPOCHS", "3", "PRINT_FREQ", "2", "SEED", "5", "PRODUCE.EMBED_DIM", "0", "DATA.DATA_PATH_VAL", ""]


def plain_loop(config, out):
    """A user's loop over the research layout's model, data and optimizer (the same
    builders main.py uses), with the recorder's four added lines."""
    from contextlib import nullcontext

    from data.build import build_train_loader, load_file_lists
    from engine import build_step_context
    from main import seed_everything
    from models.build import build_model

    data = load_file_lists(config)
    seed_everything(config.SEED, 0, 0)
    model = build_model(config)
    ctx = build_step_context(config, model, CPU, len(data.train), 1)
    rec = Recorder(out, num_samples=len(data.train), file_list=data.train.path)  # added
    for epoch in range(config.TRAIN.EPOCHS):
        seed_everything(config.SEED, epoch, 0)
        ctx.optimizer.zero_grad(set_to_none=True)
        for batch in build_train_loader(config, data.train, epoch, 0, 1, None, eval_view=True):
            model.eval()  # added: the un-augmented view, BatchNorm's running statistics
            with torch.no_grad(), nullcontext():  # added
                rec.update(batch["indices"], model(batch["eval_images"]), batch["labels"])  # added
            model.train()
            loss = ctx.criterion(model(batch["images"]), batch["labels"])
            loss.backward()
            ctx.optimizer.step()
            ctx.optimizer.zero_grad(set_to_none=True)
            ctx.scheduler.step()
        rec.end_epoch(epoch)  # added


def test_plain_loop_writes_the_bytes_main_and_produce_writes(tmp_path):
    from utils.config import load_config

    make_image_tree(str(tmp_path / "train"), num_classes=3, per_class=6, seed=3)
    opts = OPTS + ["DATA.DATA_PATH_TRAIN", str(tmp_path / "train")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "main_and_produce.py", "--config", "configs/demo-mnist.yaml", "--output",
                           str(tmp_path / "main"), "--opts", *opts], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = load_config(os.path.join(ROOT, "configs", "demo-mnist.yaml"), opts)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as main_and_produce.py under OMP_NUM_THREADS=1: the same summation order
    try:
        plain_loop(config, str(tmp_path / "plain"))
    finally:
        torch.set_num_threads(threads)
    main_files, plain_files = files(tmp_path / "main"), files(tmp_path / "plain")
    assert main_files == plain_files and len(main_files) == 3 * 4 + 1  # 4 kinds x 3 epochs + file_list.json
    for name in main_files:
        a = (tmp_path / "main" / "pred_prob_history" / name).read_bytes()
        assert a == (tmp_path / "plain" / "pred_prob_history" / name).read_bytes(), name


def test_dynamic_pruning_from_a_plain_loop_is_the_training_loops(tmp_path):
    """The sampler plus per-sample weights and observe() give what main.py's
    weighted_loss gives (same losses, same scores, same plans), and the sampler yields
    the epoch's kept samples, this rank's share."""
    from torch import nn

    from dynunc.training.online_pruning import DynamicPruner

    n, epochs = 60, 6
    torch.manual_seed(0)
    x, y = torch.randn(n, 5), torch.randint(0, 3, (n,))
    model = nn.Linear(5, 3)
    criterion = nn.CrossEntropyLoss()
    for score in ("loss", "dynunc"):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        plain = DynamicPruner.for_loop(n, epochs, ratio=0.5, anneal=0.2, score=score, window=2, seed=3)
        inside = DynamicPruner.for_loop(n, epochs, ratio=0.5, anneal=0.2, score=score, window=2, seed=3)
        sampler, other_rank = plain.sampler(0, 2), plain.sampler(1, 2)
        dropped = []
        for epoch in range(epochs):
            sampler.set_epoch(epoch)
            other_rank.plan = sampler.plan
            plan = inside.plan(epoch)
            assert np.array_equal(sampler.plan.order, plan.order)
            mine, theirs = list(sampler), list(other_rank)
            assert len(mine) == len(theirs) == len(plan.order) // 2 and not set(mine) & set(theirs)
            dropped.append(plan.dropped)
            for start in range(0, len(mine), 8):
                idx = torch.tensor(mine[start:start + 8] + theirs[start:start + 8])
                logits = model(x[idx])
                losses = nn.functional.cross_entropy(logits, y[idx], reduction="none")
                plain.observe(idx, losses=losses, logits=logits, labels=y[idx])
                weights = plain.weights(idx)
                assert set(weights.tolist()) <= {1.0, float(np.float32(plan.scale))}
                loss = (losses * weights).mean()
                assert torch.equal(loss.detach(), inside.weighted_loss(criterion, logits.detach(), y[idx], y[idx], idx))
                optimizer.zero_grad()
                loss.backward()  # the scores move from epoch to epoch
                optimizer.step()
            plain.end_epoch()
            inside.end_epoch()
        for name, array in plain.score.arrays().items():
            assert np.array_equal(array, inside.score.arrays()[name]), (score, name)
        assert dropped[0] == 0 and max(dropped) > 0 and dropped[-1] == 0  # epoch 0 and the anneal train on all
    with pytest.raises(ValueError, match=r"ratio must be in \[0, 1\), got 1"):
        DynamicPruner.for_loop(n, epochs, ratio=1)


def test_features_through_update_make_the_embedding_file(tmp_path):
    from dynunc.history import embed_path, load_embeddings
    from dynunc.training.embeddings import projection

    n, dim = 6, 4
    features = torch.randn(n, 10)
    rec = Recorder(str(tmp_path), n, embed_dim=dim, device=CPU)
    for idx in (torch.tensor([4, 1, 0]), torch.tensor([2, 5, 3])):
        rec.update(idx, logits_for(idx % 3), idx % 3, features=features[idx])
    rec.end_epoch(0)
    hdir = history_dir(str(tmp_path))
    np.testing.assert_array_equal(load_embeddings(hdir, n), (features @ projection(10, dim)).half().numpy())
    # an epoch with features for only some samples is refused, nothing of it written
    rec.update(torch.tensor([0, 1]), logits_for([0, 1]), torch.tensor([0, 1]), features=features[:2])
    rec.update(torch.tensor([2]), logits_for([2]), torch.tensor([2]))
    with pytest.raises(RecorderError, match=r"epoch 1: features were given for 2 of 6 samples \(none for sample 2\)"):
        rec.end_epoch(1)
    assert not os.path.exists(embed_path(hdir, 1)) and 1 not in list_epoch_files(hdir)
