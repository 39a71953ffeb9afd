"""Produce mode's embeddings (PRODUCE.EMBED_DIM, PRODUCE.EMBED_EPOCHS): the input of the
model's classifier, randomly projected to D and stored float16 as history.py lays out
(``embed_{epoch}.npy``, ``val_embed_{epoch}.npy``; read them with history.load_embeddings).

- One model for every row: at the end of an embedding epoch (after its last update),
  an eval-view pass in eval mode (BatchNorm's running statistics, no drop-path) over
  every training sample, split across ranks; the validation rows come from the
  validation pass of the same epoch, which already runs with those weights. Taking the
  rows from the recorder's forwards during training instead would cost nothing extra,
  but each row would come from the weights of its own step: two identical images
  would not get the same embedding (measured: a cosine of 0.88 between exact copies in
  a demo run), which defeats deduplication and every distance-based method.
- Captured by a forward pre-hook on the classifier, armed only around those forwards
  (FeatureCapture), and given to the Recorder (recorder.py), which projects and stores
  them (EmbeddingStore).
- Projected by a fixed Gaussian matrix (C x D, entries N(0, 1/D)) drawn from its own
  seeded generator: recording draws nothing from the training's random streams. With
  EMBED_DIM -1 (FULL_WIDTH) not projected: the C features themselves, the ones the
  geometry methods' authors read.
- Each rank keeps its own rows (float16, host memory) and writes them as a part file;
  rank 0 merges the parts block by block into the final file (a temporary file, then
  os.replace) and removes them: no N x D all-reduce, bounded memory.
"""
import contextlib
import glob
import logging
import os
from typing import Callable, Iterable, Iterator, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from dynunc.history import EMBED_DTYPE, embed_path
from dynunc.distributed import barrier
from dynunc.io import atomic_open, atomic_save_npy, remove_stale_temporaries

logger = logging.getLogger(__name__)

# The projection's own seed: the same matrix for every run of a model width.
PROJECTION_SEED = 20230608
# PRODUCE.EMBED_DIM's value for the classifier input as it is (C values, no projection).
FULL_WIDTH = -1
# Rows held on the device before they move to host memory (one host sync per flush).
_FLUSH_ROWS = 1 << 16
# Rows per block when rank 0 merges the parts.
_MERGE_ROWS = 1 << 16


def resolve_epochs(key: str, epochs: Sequence[int], num_epochs: int) -> List[int]:
    """Config key `key`'s epochs resolved: [] is the last epoch, a negative value counts
    from the end (-1 is the last). ValueError naming the key for an epoch outside the run
    or one given twice."""
    resolved = []
    for e in epochs or [-1]:
        if isinstance(e, bool) or not isinstance(e, int):
            raise ValueError(f"{key}: {e!r} is not an epoch number")
        epoch = e + num_epochs if e < 0 else e
        if not 0 <= epoch < num_epochs:
            raise ValueError(f"{key}: epoch {e} is outside the run's {num_epochs} epochs "
                             f"(0..{num_epochs - 1}, or -{num_epochs}..-1 from the end)")
        if epoch in resolved:
            raise ValueError(f"{key}: epoch {epoch} is given twice in {list(epochs)}")
        resolved.append(epoch)
    return sorted(resolved)


def embed_epochs(epochs: Sequence[int], num_epochs: int) -> List[int]:
    """PRODUCE.EMBED_EPOCHS resolved (resolve_epochs)."""
    return resolve_epochs("PRODUCE.EMBED_EPOCHS", epochs, num_epochs)


def check_config(config) -> List[str]:
    """Problems in PRODUCE.EMBED_DIM and PRODUCE.EMBED_EPOCHS, each naming its key."""
    dim = config.PRODUCE.EMBED_DIM
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < FULL_WIDTH:
        return [f"PRODUCE.EMBED_DIM must be 0 (no embeddings), a positive width (a random projection) or "
                f"{FULL_WIDTH} (the classifier input, unprojected), got {dim!r}"]
    try:
        embed_epochs(config.PRODUCE.EMBED_EPOCHS, config.TRAIN.EPOCHS)
    except ValueError as e:
        return [str(e)]
    return []


def find_classifier(model: nn.Module) -> nn.Module:
    """The layer that turns pre-logits features into logits: timm's get_classifier(), or
    the model's own ``head.fc``, ``head`` or ``fc``."""
    getter = getattr(model, "get_classifier", None)
    candidates = [getter()] if callable(getter) else []
    head = getattr(model, "head", None)
    candidates += [getattr(head, "fc", None), head, getattr(model, "fc", None)]
    for module in candidates:
        if isinstance(module, nn.Module) and any(True for _ in module.parameters()):
            return module
    raise ValueError(f"{type(model).__name__}: no classifier found (get_classifier(), head.fc, head or fc) to take "
                     f"embeddings from; set PRODUCE.EMBED_DIM 0")


def classifier_width(model: nn.Module) -> Optional[int]:
    """The number of values the classifier reads (its in_features), None if it does not say."""
    width = getattr(find_classifier(model), "in_features", None)
    return width if isinstance(width, int) and width > 0 else None


def projection(in_features: int, dim: int) -> torch.Tensor:
    """The fixed (in_features, dim) float32 projection, entries N(0, 1/dim)."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([PROJECTION_SEED, in_features, dim])))
    matrix = rng.standard_normal((in_features, dim), dtype=np.float32) / np.float32(np.sqrt(dim))
    return torch.from_numpy(matrix.astype(np.float32, copy=False))


class RowStore:
    """One rank's (index, embedding) rows of one file, float16 in host memory."""

    def __init__(self):
        self.pending: List[torch.Tensor] = []  # on the device
        self.pending_indices: List[torch.Tensor] = []
        self.pending_rows = 0
        self.rows: List[np.ndarray] = []
        self.indices: List[np.ndarray] = []

    def add(self, indices: torch.Tensor, rows: torch.Tensor) -> None:
        self.pending.append(rows)
        self.pending_indices.append(indices)
        self.pending_rows += len(rows)
        if self.pending_rows >= _FLUSH_ROWS:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.rows.append(torch.cat(self.pending).cpu().numpy())
            self.indices.append(torch.cat(self.pending_indices).cpu().numpy().astype(np.int64, copy=False))
        self.pending, self.pending_indices, self.pending_rows = [], [], 0

    def sorted_rows(self, dim: int):
        """(indices ascending, their rows): a sample held twice keeps its last row."""
        self.flush()
        indices = np.concatenate(self.indices) if self.indices else np.zeros(0, np.int64)
        rows = np.concatenate(self.rows) if self.rows else np.zeros((0, dim), EMBED_DTYPE)
        self.rows, self.indices = [], []
        unique, last = np.unique(indices[::-1], return_index=True)  # first in reverse = last held
        return unique, rows[::-1][last]


def part_paths(hdir: str, epoch: int, kind: str, rank: int):
    """Rank `rank`'s part of ``{kind}_{epoch}.npy``: (indices file, rows file)."""
    stem = os.path.join(hdir, f".{kind}_{epoch}.part{rank}")
    return f"{stem}.indices.npy", f"{stem}.rows.npy"


def remove_parts(hdir: str, epoch: str = "*", kind: str = "*") -> None:
    """Remove the part files of ``{kind}_{epoch}.npy`` (default: of every embedding file,
    what a killed run left)."""
    for path in glob.glob(os.path.join(glob.escape(hdir), f".{kind}_{epoch}.part*.npy")):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


class _PartRows:
    """A part file's rows read block by block through the file (not mapped: the merge's
    resident memory stays one block, whatever N is)."""

    def __init__(self, path: str):
        self.file = open(path, "rb")
        version = np.lib.format.read_magic(self.file)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(self.file)
        self.offset, self.dtype, self.row = self.file.tell(), dtype, shape[1:]

    def read(self, lo: int, hi: int) -> np.ndarray:
        row_bytes = self.dtype.itemsize * int(np.prod(self.row))
        self.file.seek(self.offset + lo * row_bytes)
        return np.fromfile(self.file, dtype=self.dtype, count=(hi - lo) * int(np.prod(self.row))).reshape(
            (hi - lo, *self.row))


def merge_parts(hdir: str, epoch: int, kind: str, num_samples: int, dim: int, world_size: int) -> str:
    """Rank 0: the parts of ``{kind}_{epoch}.npy`` (each rank's sorted rows) merged into
    that file, block by block (bounded memory), atomically; the parts are then removed.
    RuntimeError naming the first row no rank holds (the file is then not written)."""
    path = embed_path(hdir, epoch, kind)
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(EMBED_DTYPE)), "fortran_order": False,
              "shape": (num_samples, dim)}
    with contextlib.ExitStack() as stack:
        parts = []
        for rank in range(world_size):
            ipath, rpath = part_paths(hdir, epoch, kind, rank)
            rows = _PartRows(rpath)
            stack.callback(rows.file.close)
            parts.append((np.load(ipath, mmap_mode="r"), rows))
        with atomic_open(path, "wb") as f:
            np.lib.format.write_array_header_1_0(f, header)
            for start in range(0, num_samples, _MERGE_ROWS):
                stop = min(num_samples, start + _MERGE_ROWS)
                block = np.zeros((stop - start, dim), EMBED_DTYPE)
                filled = np.zeros(stop - start, bool)
                for indices, rows in parts:
                    lo, hi = (int(i) for i in np.searchsorted(indices, [start, stop]))
                    block[indices[lo:hi] - start] = rows.read(lo, hi)
                    filled[indices[lo:hi] - start] = True
                if not filled.all():
                    raise RuntimeError(f"{path}: no process recorded the embedding of sample "
                                       f"{start + int(np.flatnonzero(~filled)[0])}")
                f.write(block.tobytes())
    remove_parts(hdir, epoch, kind)
    return path


class FeatureCapture:
    """The input of `model`'s classifier (find_classifier) in the forwards run inside
    `armed()`: a forward pre-hook, inert outside it.

        with capture.armed():
            model(images)
        features = capture.take()"""

    def __init__(self, model: nn.Module):
        self.armed_now = False
        self.captured: Optional[torch.Tensor] = None
        self.hook = find_classifier(model).register_forward_pre_hook(self._hook)

    def close(self) -> None:
        self.hook.remove()

    def _hook(self, module: nn.Module, inputs) -> None:
        if self.armed_now:
            self.captured = inputs[0].detach()

    @contextlib.contextmanager
    def armed(self) -> Iterator["FeatureCapture"]:
        self.armed_now, self.captured = True, None
        try:
            yield self
        finally:
            self.armed_now = False

    def take(self) -> torch.Tensor:
        """The classifier input of the last armed forward (RuntimeError if none ran)."""
        features, self.captured = self.captured, None
        if features is None:
            raise RuntimeError("the classifier did not run in this forward: no embedding to record")
        return features


class EmbeddingStore:
    """One rank's embedding rows of one kind (embed, val_embed) in the current epoch:
    features projected to `dim` (the fixed matrix of `projection`), float16, in host
    memory; `finish` writes them as history.py lays out (module docstring)."""

    def __init__(self, hdir: str, dim: int, rank: int, world_size: int, project: bool = True):
        self.dir, self.dim = hdir, dim
        self.project = project  # False: the features are stored as they are (their width must be `dim`)
        self.rank, self.world_size = rank, world_size
        self.projection: Optional[torch.Tensor] = None
        self.store = RowStore()
        self.rows = 0  # rows given this epoch (a sample given twice counts twice)

    def add(self, indices: torch.Tensor, features: torch.Tensor) -> None:
        features = features.flatten(1).float()
        if not self.project:
            if features.shape[1] != self.dim:
                raise ValueError(f"features of width {features.shape[1]}, but the embeddings are stored unprojected "
                                 f"at width {self.dim}")
            self.store.add(indices, features.to(torch.float16))
            self.rows += len(indices)
            return
        if self.projection is None or self.projection.shape[0] != features.shape[1] or (
                self.projection.device != features.device):
            self.projection = projection(features.shape[1], self.dim).to(features.device)
        self.store.add(indices, (features @ self.projection).to(torch.float16))
        self.rows += len(indices)

    def finish(self, epoch: int, kind: str, num_samples: int) -> Optional[str]:
        """Write this rank's part of ``{kind}_{epoch}.npy``; after a barrier rank 0 merges
        the parts into the file (returned on rank 0; None elsewhere). Every rank calls it."""
        store, self.store, self.rows = self.store, RowStore(), 0
        indices, rows = store.sorted_rows(self.dim)
        ipath, rpath = part_paths(self.dir, epoch, kind, self.rank)
        os.makedirs(self.dir, exist_ok=True)
        atomic_save_npy(rpath, rows)
        atomic_save_npy(ipath, indices)
        barrier()
        if self.rank != 0:
            return None
        remove_stale_temporaries(embed_path(self.dir, epoch, kind))  # what a killed merge left
        path = merge_parts(self.dir, epoch, kind, num_samples, self.dim, self.world_size)
        what = "the classifier input, unprojected" if not self.project else "a random projection of the classifier input"
        logger.info(f"recorded {kind} of epoch {epoch}: {num_samples} x {self.dim} float16 ({what}) -> {path}")
        return path


@torch.no_grad()
def embedding_pass(model: nn.Module, batches: Iterable[dict], capture: FeatureCapture, recorder,
                   autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                   device: Optional[torch.device] = None, kind: str = "embed") -> int:
    """One forward of `model` in eval mode over `batches` (dicts with ``images`` and
    ``indices``), each batch's classifier input given to ``recorder.update_features``:
    the end-of-epoch pass that gives every row the same weights. Returns the rows given."""
    was_training = model.training
    model.eval()
    count = 0
    try:
        for batch in batches:
            images = batch["images"].to(device, non_blocking=True) if device is not None else batch["images"]
            with capture.armed(), autocast():
                model(images)
            recorder.update_features(batch["indices"], capture.take(), kind)
            count += len(batch["indices"])
    finally:
        model.train(was_training)
    return count
