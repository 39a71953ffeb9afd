"""Checkpoints: plain data only (tensors, numbers, the config as YAML text), so that
torch.load(weights_only=True) reads them; written atomically by rank 0; resumed from the
highest complete epoch number, never by file time."""
import logging
import os
import re
from typing import Dict, Optional, Tuple

import torch
from torch import nn

from utils.io import atomic_open, named_write_error

logger = logging.getLogger(__name__)

_CKPT = re.compile(r"^ckpt_epoch_(\d+)\.pth$")


def checkpoint_dir(output: str) -> str:
    return os.path.join(output, "ckpts")


def checkpoint_path(output: str, epoch: int) -> str:
    return os.path.join(checkpoint_dir(output), f"ckpt_epoch_{epoch}.pth")


class _WriteErrorKeeper:
    """A file wrapper that keeps the OSError of a failing write: torch.save turns it
    into a RuntimeError that says neither the cause nor the file."""

    def __init__(self, f):
        self.f = f
        self.error: Optional[OSError] = None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def save_checkpoint(path: str, state: Dict) -> None:
    """Write atomically; a write error (disk full, ...) raises OSError naming `path`, and
    the previous file at `path`, if any, stays as it was."""
    keeper = None
    try:
        with atomic_open(path, "wb") as f:
            keeper = _WriteErrorKeeper(f)
            torch.save(state, keeper)
    except RuntimeError as e:
        if keeper is None or keeper.error is None:
            raise
        raise named_write_error(keeper.error, path) from e


def load_checkpoint(path: str) -> Dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint not found: {path}") from None
    except Exception as e:  # a truncated or foreign file: say which one
        raise RuntimeError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from e


def latest_checkpoint(output: str) -> Optional[Tuple[str, Dict]]:
    """(path, contents) of the checkpoint with the highest epoch number that loads;
    unreadable ones are skipped with a warning (atomic writes make them unlikely, but a
    disk can still fail)."""
    folder = checkpoint_dir(output)
    if not os.path.isdir(folder):
        return None
    epochs = sorted((int(m.group(1)), name) for name in os.listdir(folder) if (m := _CKPT.match(name)))
    for _, name in reversed(epochs):
        path = os.path.join(folder, name)
        try:
            return path, load_checkpoint(path)
        except RuntimeError as e:
            logger.warning(f"skipping unreadable checkpoint: {e}")
    return None


def model_state(checkpoint: Dict) -> Dict[str, torch.Tensor]:
    """The model weights in a checkpoint of ours, or in a bare/foreign state dict."""
    for key in ("model", "state_dict", "model_ema"):
        if key in checkpoint and isinstance(checkpoint[key], dict):
            return checkpoint[key]
    return checkpoint


def load_pretrained(model: nn.Module, path: str, adapt=None) -> None:
    """Load weights to start from. `adapt(state, model) -> state` may rewrite the state
    first (a class-count change, a window-size change); tensors whose shape still differs
    from the model's are dropped and re-initialised, and each one is logged."""
    state = dict(model_state(load_checkpoint(path)))
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    if adapt is not None:
        state = adapt(state, model)
    own = model.state_dict()
    for key in list(state):
        if key in own and state[key].shape != own[key].shape:
            logger.warning(f"--pretrain {path}: {key} has shape {tuple(state[key].shape)}, the model "
                           f"{tuple(own[key].shape)}: re-initialised")
            del state[key]
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing:
        logger.warning(f"--pretrain {path}: not in the checkpoint, left as initialised: {missing}")
    if unexpected:
        logger.warning(f"--pretrain {path}: ignored keys: {unexpected}")
    logger.info(f"loaded pretrained weights from {path}")
