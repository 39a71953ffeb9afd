"""Checkpoints: plain data only (tensors, numbers, the config as YAML text), so that
torch.load(weights_only=True) reads them; written atomically by rank 0; resumed from the
highest complete epoch number, never by file time; with TRAIN.KEEP_CHECKPOINTS, the
newest that load are kept and older ones deleted (prune_checkpoints)."""
import logging
import os
import re
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from dynunc.io import atomic_open, named_write_error

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


def load_checkpoint(path: str, mmap: bool = False) -> Dict:
    """The checkpoint's contents on the CPU. With `mmap`, tensors are mapped from the file,
    not read: the same test that it loads (torch.load checks no checksum of tensor data
    either way) for the cost of reading its pickle and zip directory."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint not found: {path}") from None
    except Exception as e:  # a truncated or foreign file: say which one
        raise RuntimeError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from e


def _newest_first(output: str) -> List[str]:
    """The paths of OUTPUT/ckpts/ckpt_epoch_{E}.pth, highest epoch number first."""
    folder = checkpoint_dir(output)
    if not os.path.isdir(folder):
        return []
    epochs = sorted((int(m.group(1)), name) for name in os.listdir(folder) if (m := _CKPT.match(name)))
    return [os.path.join(folder, name) for _, name in reversed(epochs)]


def latest_checkpoint(output: str) -> Optional[Tuple[str, Dict]]:
    """(path, contents) of the checkpoint with the highest epoch number that loads;
    unreadable ones are skipped with a warning (atomic writes make them unlikely, but a
    disk can still fail)."""
    for path in _newest_first(output):
        try:
            return path, load_checkpoint(path)
        except RuntimeError as e:
            logger.warning(f"skipping unreadable checkpoint: {e}")
    return None


def prune_checkpoints(output: str, keep: int) -> List[str]:
    """Delete the checkpoints older than the `keep` newest that load; returns the paths
    deleted, oldest first.

    Called after a new checkpoint is written: it is one of the files checked, so if it
    does not load, an older one is kept in its place. The folder is synced first, so that
    the new file's name is on disk before any older file leaves it. Unreadable files newer
    than the kept ones are left as they are (auto-resume skips them with a warning); a
    process killed in the middle leaves older files that the next call deletes.
    """
    if keep < 1:
        raise ValueError(f"TRAIN.KEEP_CHECKPOINTS: keep at least 1 checkpoint to prune, got {keep}")
    paths = _newest_first(output)
    if len(paths) <= keep:
        return []
    _sync_folder(checkpoint_dir(output))
    loadable = 0
    for i, path in enumerate(paths):
        try:
            load_checkpoint(path, mmap=True)
        except RuntimeError as e:
            logger.warning(f"not counted among the {keep} kept: {e}")
            continue
        loadable += 1
        if loadable == keep:
            older = paths[i + 1:][::-1]
            for old in older:
                _delete(old)
            if older:
                logger.info(f"deleted {len(older)} older checkpoint(s), kept the newest {keep} that load")
            return older
    return []


def _sync_folder(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _delete(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass  # deleted meanwhile: the result is the same


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


def checkpoint_state(config, epoch: int, model: nn.Module, ctx, metrics: dict, hooks) -> dict:
    return {
        "model": model.state_dict(),
        "optimizer": ctx.optimizer.state_dict(),
        "lr_scheduler": ctx.scheduler.state_dict(),
        "scaler": ctx.scaler.state_dict() if ctx.scaler is not None else {},
        "epoch": epoch,
        "config": config.dump(),
        "metrics": metrics,
        **hooks.state_dict(),
    }


def resume(config, model: nn.Module, ctx) -> Tuple[int, dict, Optional[dict], str]:
    """Restore from MODEL.RESUME or the newest complete checkpoint in OUTPUT; returns the
    first epoch still to run, the metrics record the checkpoint holds ({} if none), and
    the checkpoint with its path (for the hooks' state; None, "" if none)."""
    if config.MODEL.RESUME:
        found = (config.MODEL.RESUME, load_checkpoint(config.MODEL.RESUME))
    elif config.TRAIN.AUTO_RESUME:
        found = latest_checkpoint(config.OUTPUT)
    else:
        found = None
    if found is None:
        return config.TRAIN.START_EPOCH, {}, None, ""
    path, state = found
    model.load_state_dict(state["model"])
    if not config.EVAL_MODE:
        ctx.optimizer.load_state_dict(state["optimizer"])
        ctx.scheduler.load_state_dict(state["lr_scheduler"])
        if ctx.scaler is not None and state.get("scaler"):
            ctx.scaler.load_state_dict(state["scaler"])
    logger.info(f"resumed from {path} (epoch {state['epoch']})")
    return int(state["epoch"]) + 1, dict(state.get("metrics") or {}), None if config.EVAL_MODE else state, path
