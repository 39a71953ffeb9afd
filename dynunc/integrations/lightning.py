"""PyTorch Lightning: `DynUncCallback`, the recorder as a callback.

    from dynunc.integrations.lightning import DynUncCallback

    class Module(LightningModule):
        def training_step(self, batch, batch_idx):
            x, y, idx = batch                      # the dataset gives each sample's index
            logits = self(x)
            loss = F.cross_entropy(logits, y)
            return {"loss": loss, "logits": logits}  # the callback reads "logits"

    trainer = Trainer(callbacks=[DynUncCallback("run", num_samples=len(train_set))])
    trainer.fit(Module(), loader)
    kept = dynunc.select("run", fraction=0.7)

It records the training forward's logits (augmented view, weights before the update)
after each training batch and ends the epoch (one all-reduce, rank 0 writes) at the end
of each training epoch, under any strategy Lightning runs (DDP included: it initialises
torch.distributed before fitting). A resumed fit starts recording at the resumed epoch.
`unpack(batch) -> (targets, indices)` reads other batch layouts (default: a tuple or
list (inputs, targets, indices), or a dict with "labels"/"targets" and "indices"/"index").
`outputs` may also hold "features" when the Recorder has embed_dim."""
from typing import Callable, Optional

try:
    from lightning.pytorch.callbacks import Callback
except ImportError:  # the pytorch-lightning package
    from pytorch_lightning.callbacks import Callback

from dynunc.training.recorder import Recorder, RecorderError


def default_unpack(batch):
    """(targets, indices) of a batch: (inputs, targets, indices), or a dict."""
    if isinstance(batch, dict):
        targets = batch.get("labels", batch.get("targets"))
        indices = batch.get("indices", batch.get("index"))
        if targets is None or indices is None:
            raise RecorderError(f"DynUncCallback: a dict batch needs 'labels' (or 'targets') and 'indices' (or "
                                f"'index'); it has {sorted(batch)}; pass unpack=")
        return targets, indices
    if isinstance(batch, (tuple, list)) and len(batch) >= 3:
        return batch[1], batch[2]
    raise RecorderError("DynUncCallback: the batch is not (inputs, targets, indices); give the dataset the index of "
                        "each sample, or pass unpack=")


class DynUncCallback(Callback):
    """The Recorder in a Lightning fit (module docstring); `recorder_kwargs` go to
    Recorder (embed_dim, keys, file_list). `metrics`: rank 0's stability metrics of the
    last epoch (with a tracker)."""

    def __init__(self, out_dir: str, num_samples: int, logits_key: str = "logits",
                 unpack: Optional[Callable] = None, **recorder_kwargs):
        self.out_dir, self.num_samples = out_dir, num_samples
        self.logits_key = logits_key
        self.unpack = unpack or default_unpack
        self.recorder_kwargs = recorder_kwargs
        self.recorder: Optional[Recorder] = None
        self.metrics = {}

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self.recorder is None:  # after the process group and a resumed checkpoint's epoch are set
            self.recorder = Recorder(self.out_dir, self.num_samples, start_epoch=trainer.current_epoch,
                                     device=pl_module.device, **self.recorder_kwargs)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not isinstance(outputs, dict) or self.logits_key not in outputs:
            raise RecorderError(f"DynUncCallback: training_step must return a dict with the batch's "
                                f"{self.logits_key!r} (and 'loss')")
        targets, indices = self.unpack(batch)
        self.recorder.update(indices, outputs[self.logits_key].detach(), targets, features=outputs.get("features"))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.metrics = self.recorder.end_epoch(trainer.current_epoch)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if self.recorder is not None:
            self.recorder.close()
            self.recorder = None
