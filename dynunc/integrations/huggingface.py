"""Hugging Face Trainer: `DynUncTrainerCallback`, the recorder as a TrainerCallback.

    from dynunc.integrations.huggingface import DynUncTrainerCallback

    train_set = ...  # each example also holds "sample_index": its index, 0..N-1
    args = TrainingArguments(..., remove_unused_columns=False)   # keep sample_index in the batch
    trainer = Trainer(model, args, train_dataset=train_set,
                      callbacks=[DynUncTrainerCallback("run", num_samples=len(train_set))])
    trainer.train()
    kept = dynunc.select("run", fraction=0.7)

A Trainer callback sees neither the batch nor the outputs, so the callback hooks the
model itself when training begins: a forward pre-hook takes the ``sample_index`` keyword
out of the batch before the model sees it, and a forward hook records the training
forward's logits (``outputs.logits``) against its ``labels``; forwards in eval mode
(evaluation, prediction) are not recorded. Each epoch's end is the recorder's
(one all-reduce under DDP, rank 0 writes). The hooks are removed when training ends."""
from typing import Optional

import torch
from transformers import TrainerCallback

from dynunc.training.recorder import Recorder, RecorderError


def _logits(output):
    logits = output.get("logits") if isinstance(output, dict) else getattr(output, "logits", None)
    if logits is None:
        raise RecorderError("DynUncTrainerCallback: the model's output has no 'logits'")
    return logits


class DynUncTrainerCallback(TrainerCallback):
    """The Recorder in a Trainer run (module docstring); `recorder_kwargs` go to Recorder."""

    def __init__(self, out_dir: str, num_samples: int, index_key: str = "sample_index", **recorder_kwargs):
        self.out_dir, self.num_samples, self.index_key = out_dir, num_samples, index_key
        self.recorder_kwargs = recorder_kwargs
        self.recorder: Optional[Recorder] = None
        self.handles = []
        self.pending = None  # the indices of the forward in progress
        self.epoch = 0
        self.metrics = {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if args.remove_unused_columns:
            raise RecorderError(f"DynUncTrainerCallback: set TrainingArguments(remove_unused_columns=False), else "
                                f"the Trainer drops {self.index_key!r} from the batches")
        self.epoch = int(state.epoch or 0)  # a resumed run starts at its epoch
        self.recorder = Recorder(self.out_dir, self.num_samples, start_epoch=self.epoch,
                                 device=next(model.parameters()).device, **self.recorder_kwargs)
        self.handles = [model.register_forward_pre_hook(self._take_indices, with_kwargs=True),
                        model.register_forward_hook(self._record, with_kwargs=True)]

    def _take_indices(self, module, args, kwargs):
        if self.index_key in kwargs:
            kwargs = dict(kwargs)
            self.pending = kwargs.pop(self.index_key)
            return args, kwargs
        return None

    @torch.no_grad()
    def _record(self, module, args, kwargs, output):
        indices, self.pending = self.pending, None
        if not module.training:
            return None
        if indices is None or kwargs.get("labels") is None:
            raise RecorderError(f"DynUncTrainerCallback: a training batch without {self.index_key!r} or 'labels'")
        self.recorder.update(indices, _logits(output).detach(), kwargs["labels"])
        return None

    def on_epoch_end(self, args, state, control, **kwargs):
        self.metrics = self.recorder.end_epoch(self.epoch)
        self.epoch += 1

    def on_train_end(self, args, state, control, **kwargs):
        for handle in self.handles:
            handle.remove()
        self.handles = []
        if self.recorder is not None:
            self.recorder.close()
