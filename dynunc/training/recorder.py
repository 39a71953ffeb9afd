"""The recorder a training loop calls (docs/semantics.md §1): per sample and epoch, each
kind of history.py's RECORD_KINDS (the softmax probability of its true label, whether
the top-1 prediction is right, the margin, true logit minus the largest other (AUM),
and EL2N, ||softmax - one-hot||_2), and in the epochs that get features, its embedding
(randomly projected to `embed_dim`, dynunc/training/embeddings.py).

    rec = Recorder(out_dir, num_samples=N)          # optional: embed_dim, keys or file_list
    for epoch in range(E):
        for images, targets, indices in loader:
            logits = model(images)
            rec.update(indices, logits, targets)    # optional features=...
            ...
        rec.end_epoch(epoch)

It writes exactly what main_and_produce.py writes (it is what main_and_produce.py
calls): ``out_dir/pred_prob_history/{kind}_{epoch}.npy`` and, with features,
``embed_{epoch}.npy``; the samples are named by the training file list's fingerprint
(`file_list`), by ``sample_keys.txt`` (`keys`) or by their index (neither).

Cost: `update` keeps this rank's records of the epoch on the logits' device and never
synchronises with the host. `end_epoch` runs one all-reduce (MAX over a -inf "unseen"
fill acts as a gather: a sample is seen by at most one rank per epoch), which also
carries every rank's usage checks, so that all ranks raise together or none does; rank
0 then writes the epoch atomically, prob last. An epoch with embeddings adds a barrier
and rank 0's merge of the ranks' part files.

Bad use raises RecorderError before anything of the epoch is written: an index outside
[0, N) or repeated within an epoch on one rank, a target outside the logits' classes,
logits, targets, indices or features whose shapes disagree, end_epoch twice or out of
order, ranks that disagree on N, an existing history of another N."""
import hashlib
import logging
import os
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from dynunc.distributed import all_reduce_, is_distributed
from dynunc.history import (RECORD_KINDS, SAMPLE_KEYS_NAME, HistoryError, check_sample_keys, contiguous_epoch_files,
                            fingerprint_path, history_dir, list_epoch_files, load_epoch_prob, read_fingerprint,
                            remove_epochs_from, sample_keys_path, write_epoch, write_fingerprint)
from dynunc.io import atomic_open
from dynunc.training.embeddings import EmbeddingStore, remove_parts
from dynunc.training.stability import StabilityTracker, describe
from dynunc.training.topk import TopKRecorder

logger = logging.getLogger(__name__)

# Every recorded quantity is > -inf for a seen sample (margin may be negative), so -inf
# marks "unseen" and MAX over the ranks gathers.
_UNSEEN = float("-inf")
# Rows of the records tensor: one per kind, prob first (it tells which samples were seen).
ROWS = tuple(RECORD_KINDS)
# Columns after the N samples' (float32, MAX-reduced with them): a trash column that
# out-of-range indices write to, then the usage checks. Each check holds 1 + the rank
# that failed it (0: none did); the epoch is held as +epoch and -epoch (max and -min).
# Two more columns say whether any rank has embed and val_embed rows this epoch.
_TRASH, _EPOCH, _NEG_EPOCH, _ORDER, _RANGE, _REPEAT, _TARGET, _EMBED, _VAL_EMBED = range(9)
_CHECKS = {_ORDER: "end_epoch out of order", _RANGE: "a sample index outside [0, N)",
           _REPEAT: "a sample index repeated within the epoch", _TARGET: "a target outside the logits' classes"}
_COLUMNS = 9


class RecorderError(ValueError):
    """A Recorder used wrongly (see the module docstring); nothing of the epoch is written."""


def batch_records(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(len(ROWS), B) float32: each kind of ROWS per sample."""
    logits = logits.float()
    labels = labels.view(-1, 1)
    softmax = torch.softmax(logits, dim=-1)
    prob = softmax.gather(1, labels).view(-1)
    correct = (logits.argmax(dim=-1) == labels.view(-1)).float()
    other_max = logits.scatter(1, labels, float("-inf")).amax(dim=-1)
    margin = logits.gather(1, labels).view(-1) - other_max
    # ||softmax - onehot||^2 = (1 - p_y)^2 + sum_{j != y} p_j^2, with 1 - p_y taken as the
    # sum of the other probabilities: no cancellation for confident samples.
    others = softmax.scatter(1, labels, 0.0)
    el2n = torch.stack([others.sum(dim=-1), torch.linalg.vector_norm(others, dim=-1)]).norm(dim=0)
    values = {"prob": prob, "correct": correct, "margin": margin, "el2n": el2n}
    return torch.stack([values[kind] for kind in ROWS])


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def _rank_world():
    return (dist.get_rank(), dist.get_world_size()) if is_distributed() else (0, 1)


def _default_device() -> torch.device:
    if torch.cuda.is_available() and (not is_distributed() or dist.get_backend() == "nccl"):
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _agree(value, what: str):
    """Every rank's `value` (one all_gather_object); RecorderError on every rank if any
    rank's is a str (its error: the lowest rank's is raised) or if they differ."""
    values = [value]
    if is_distributed():
        values = [None] * dist.get_world_size()
        dist.all_gather_object(values, value)
    errors = [(r, v) for r, v in enumerate(values) if isinstance(v, str)]
    if errors:
        raise RecorderError(errors[0][1] if len(values) == 1 else f"rank {errors[0][0]}: {errors[0][1]}")
    if len(set(values)) > 1:
        each = ", ".join(f"rank {r}: {v}" for r, v in enumerate(values))
        raise RecorderError(f"the ranks disagree on {what}: {each}")
    return values[0]


def keys_identity(keys) -> Tuple[bytes, dict]:
    """sample_keys.txt's bytes and fingerprint for `keys`: a key table's bytes as they are
    (dynunc/lists/keyed.py checked its keys when it was built, and holds no Python string per
    key: 13M keys as strings would cost ~1.8 GB), or a sequence of str checked here."""
    if hasattr(keys, "text"):
        text = keys.text()
    else:
        text = "".join(k + "\n" for k in check_sample_keys(keys, "keys")).encode("utf-8")
    return text, {"path": SAMPLE_KEYS_NAME, "entries": len(keys), "sha256": hashlib.sha256(text).hexdigest()}


class Recorder:
    """Per-sample records of a training loop, written as the history that get_coreset.py,
    `dynunc.select`, the report, dedup and stop-when-stable read (module docstring).

    `out_dir`: the run's folder (the history goes to out_dir/pred_prob_history).
    `num_samples`: N, the samples the loader's indices run over (0..N-1).
    `embed_dim`: D > 0 to accept `features` and write embed_{epoch}.npy (float16 N x D)
    for each epoch that gets them (every sample's, by `update` or `update_features`).
    `project`: True (default) to store a fixed seeded random projection of the features to
    D; False to store the features as they are (their width must then be D).
    `keys` (one str per sample, written as sample_keys.txt) or `file_list` (the
    training list's path, its fingerprint written as file_list.json) name the samples;
    neither: their index does. `start_epoch`: the first epoch this run records (a
    resumed run's; the history's epochs from there on are removed, the earlier ones
    kept, checked to be of N samples). `device`: where the records live (default: the
    current CUDA device under CUDA, else the CPU). `tracker`: rank 0's coreset
    stability tracker (dynunc/training/stability.py), fed each written epoch. `topk`:
    PRODUCE.TOPK's top-k class-probability recorder (dynunc/training/topk.py), fed each batch."""

    def __init__(self, out_dir: str, num_samples: int, *, embed_dim: int = 0, keys: Optional[Sequence[str]] = None,
                 file_list: Optional[str] = None, start_epoch: int = 0, device: Optional[torch.device] = None,
                 tracker: Optional[StabilityTracker] = None, val_samples: int = 0, project: bool = True,
                 topk: Optional[TopKRecorder] = None):
        self.rank, self.world_size = _rank_world()
        self.is_primary = self.rank == 0
        self.dir = history_dir(out_dir)
        self._fingerprint = None
        problem = self._check_arguments(num_samples, embed_dim, keys, file_list, start_epoch)
        if problem is None and self.is_primary:
            problem = self._check_history(num_samples, keys, file_list, start_epoch)
        self.num_samples = _agree(problem or int(num_samples), "the number of samples N")
        self.device = torch.device(device) if device is not None else _default_device()
        self.embed_dim = int(embed_dim)
        self.val_samples = int(val_samples)
        self.next_epoch = int(start_epoch)
        self.tracker = tracker if self.is_primary else None
        self.topk = topk  # PRODUCE.TOPK's class probabilities (dynunc/training/topk.py), or None
        rows = len(ROWS) + (1 if self.embed_dim else 0)  # + "has an embedding row" in embedding epochs
        self.records = torch.full((rows, self.num_samples + _COLUMNS), _UNSEEN, dtype=torch.float32,
                                  device=self.device)
        self.counts = torch.zeros(self.num_samples + 1, dtype=torch.int32, device=self.device)
        self.index_range = torch.zeros(2, dtype=torch.int64, device=self.device)  # -min, max of the epoch's indices
        self.target_range = torch.zeros(2, dtype=torch.int64, device=self.device)  # -min, max - classes + 1 of targets
        self.classes = 0  # the logits' width of the latest batch
        self.embeddings = {kind: EmbeddingStore(self.dir, self.embed_dim, self.rank, self.world_size, project)
                           for kind in ("embed", "val_embed")} if self.embed_dim else {}
        if self.is_primary:
            self._prepare_history(keys, file_list, start_epoch)
        self._start_epoch()

    # ------------------------------------------------------------------ set-up checks
    def _check_arguments(self, num_samples, embed_dim, keys, file_list, start_epoch) -> Optional[str]:
        if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
            return f"num_samples must be a positive int, got {num_samples!r}"
        if isinstance(embed_dim, bool) or not isinstance(embed_dim, (int, np.integer)) or embed_dim < 0:
            return f"embed_dim must be 0 (no embeddings) or a positive width, got {embed_dim!r}"
        if isinstance(start_epoch, bool) or not isinstance(start_epoch, (int, np.integer)) or start_epoch < 0:
            return f"start_epoch must be an int >= 0, got {start_epoch!r}"
        if keys is not None and file_list is not None:
            return "give keys or file_list, not both: they are two ways of naming the samples"
        if keys is not None and len(keys) != num_samples:
            return f"keys: {len(keys)} keys for num_samples {num_samples}"
        return None

    def _check_history(self, n: int, keys, file_list, start_epoch: int) -> Optional[str]:
        """Rank 0: the problem with recording N samples into the existing history, if any."""
        try:
            kept = {e: p for e, p in list_epoch_files(self.dir).items() if e < start_epoch}
            for epoch, path in kept.items():
                found = len(load_epoch_prob(path, mmap=True))
                if found != n:
                    return (f"{path} holds {found} samples, this Recorder has num_samples {n}: a history from "
                            f"another N; use another out_dir or start_epoch 0")
            gap = [e for e in range(start_epoch) if e not in kept]
            if gap:
                return f"{self.dir}: epoch {gap[0]} is missing, but start_epoch {start_epoch} resumes after it"
            recorded = read_fingerprint(self.dir)
            if recorded is not None and kept and int(recorded["entries"]) != n:
                return f"{fingerprint_path(self.dir)} records {recorded['entries']} samples, not {n}"
            if keys is not None:
                self._keys_text, self._fingerprint = keys_identity(keys)
                if recorded is not None and kept and recorded["sha256"] != self._fingerprint["sha256"]:
                    return (f"{sample_keys_path(self.dir)}: the kept epochs were recorded with other sample keys "
                            f"than this Recorder's; use the same keys or another out_dir")
            elif kept and os.path.exists(sample_keys_path(self.dir)):
                return (f"{sample_keys_path(self.dir)}: the kept epochs name their samples by keys; give this "
                        f"Recorder the same keys or use another out_dir")
            if file_list is not None:
                from dynunc.lists.index import open_index  # only when the samples are named by a list

                self._fingerprint = open_index(file_list).fingerprint()
                if recorded is not None and kept and recorded["sha256"] != self._fingerprint["sha256"]:
                    return (f"{file_list} is not the file list the kept epochs of {self.dir} were recorded on "
                            f"({fingerprint_path(self.dir)} records {recorded['path']}); use the same list or a "
                            f"new output folder")
        except (HistoryError, OSError, ValueError) as e:
            return str(e)
        return None

    def _prepare_history(self, keys, file_list, start_epoch: int) -> None:
        removed = remove_epochs_from(self.dir, start_epoch)
        remove_parts(self.dir)  # a killed run's part files of embeddings
        if removed:
            logger.info(f"history of epochs {removed} is newer than epoch {start_epoch}: it will be rewritten")
        if self.tracker is not None and start_epoch > 0:
            # The tracker's state is the history's: rebuilt from the epochs kept.
            self.tracker.replay(load_epoch_prob(p, self.num_samples) for p in contiguous_epoch_files(self.dir))
        os.makedirs(self.dir, exist_ok=True)
        keys_path = sample_keys_path(self.dir)
        if keys is not None:
            if read_fingerprint(self.dir) != self._fingerprint or not os.path.exists(keys_path):
                with atomic_open(keys_path, "wb") as f:
                    f.write(self._keys_text)
        elif os.path.exists(keys_path) and not list_epoch_files(self.dir):
            os.remove(keys_path)  # an earlier run's keys: this history's samples are named otherwise
        if self._fingerprint is not None:
            write_fingerprint(self.dir, self._fingerprint)

    def _start_epoch(self) -> None:
        self.records.fill_(_UNSEEN)
        self.counts.zero_()
        self.index_range.zero_()
        self.target_range.fill_(-(1 << 62))
        if self.topk is not None:
            self.topk.start(self.next_epoch)

    # ------------------------------------------------------------------ per step
    @torch.no_grad()
    def update(self, indices: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor,
               features: Optional[torch.Tensor] = None) -> None:
        """Record one batch: `indices` (B,) the samples' indices in 0..N-1, `logits`
        (B, C), `targets` (B,) their integer labels, `features` (B, ...) optional,
        embedded when the recorder has embed_dim. Checks shapes at once (RecorderError);
        index and target values are checked at end_epoch, without a host sync here."""
        indices, targets = torch.as_tensor(indices), torch.as_tensor(targets)
        if logits.dim() != 2 or indices.dim() != 1 or targets.dim() != 1 or not (
                len(indices) == len(logits) == len(targets)):
            raise RecorderError(f"update: expected indices (B,), logits (B, C), targets (B,) with one B; got indices "
                                f"{tuple(indices.shape)}, logits {tuple(logits.shape)}, targets {tuple(targets.shape)}")
        if indices.dtype.is_floating_point or targets.dtype.is_floating_point or indices.dtype == torch.bool:
            raise RecorderError(f"update: indices and targets must be integer tensors (class labels, not soft or "
                                f"one-hot targets); got {indices.dtype} and {targets.dtype}")
        if len(indices) == 0:
            return
        device = self.records.device
        indices = indices.to(device, torch.int64, non_blocking=True)
        targets = targets.to(device, torch.int64, non_blocking=True)
        valid = (indices >= 0) & (indices < self.num_samples)
        safe = torch.where(valid, indices, self.num_samples)  # the trash column
        classes = self.classes = logits.shape[1]
        self.index_range = torch.maximum(self.index_range, torch.stack([-indices.min(), indices.max()]))
        self.target_range = torch.maximum(self.target_range, torch.stack([-targets.min(), targets.max() - classes + 1]))
        values = batch_records(logits.to(device, non_blocking=True), targets.clamp(0, classes - 1))
        self.records[:len(ROWS)].index_copy_(1, safe, values)
        if self.topk is not None:
            self.topk.record(logits.to(device, non_blocking=True), safe)
        self.counts.index_add_(0, safe, torch.ones_like(safe, dtype=torch.int32))
        if features is not None:
            self.update_features(indices, features)

    @torch.no_grad()
    def update_features(self, indices: torch.Tensor, features: torch.Tensor, kind: str = "embed") -> None:
        """Embeddings only (no records): `features` (B, ...) of samples `indices`, for
        ``{kind}_{epoch}.npy`` ("embed": the training samples; "val_embed": the
        validation samples, 0..val_samples-1). The last row given for a sample counts."""
        if not self.embed_dim:
            raise RecorderError("features given, but this Recorder has embed_dim 0: pass embed_dim=D to record "
                                "embeddings")
        if kind not in self.embeddings:
            raise RecorderError(f"unknown embedding kind {kind!r}; known: {', '.join(self.embeddings)}")
        indices = torch.as_tensor(indices)
        if features.dim() < 2 or indices.dim() != 1 or len(features) != len(indices):
            raise RecorderError(f"features: expected (B, ...) for indices (B,); got features {tuple(features.shape)}, "
                                f"indices {tuple(indices.shape)}")
        indices = indices.to(self.records.device, torch.int64, non_blocking=True)
        if kind == "embed":
            safe = torch.where((indices >= 0) & (indices < self.num_samples), indices, self.num_samples)
            self.records[len(ROWS)].index_fill_(0, safe, 1.0)
        self.embeddings[kind].add(indices, features.to(self.records.device, non_blocking=True))

    # ------------------------------------------------------------------ per epoch
    def _local_checks(self, epoch: int) -> None:
        """This rank's usage checks of the epoch, into the check columns (device ops)."""
        n, mark = self.num_samples, float(self.rank + 1)
        meta = self.records[0, n + 1:]
        meta.fill_(0.0)
        meta[_EPOCH - 1], meta[_NEG_EPOCH - 1] = float(epoch), float(-epoch)
        if epoch != self.next_epoch:
            meta[_ORDER - 1] = mark
        meta[_RANGE - 1] = torch.where((self.index_range[0] > 0) | (self.index_range[1] >= n), mark, 0.0)
        meta[_REPEAT - 1] = torch.where(self.counts[:n].max() > 1, mark, 0.0)
        meta[_TARGET - 1] = torch.where((self.target_range[0] > 0) | (self.target_range[1] > 0), mark, 0.0)
        if self.embed_dim:
            meta[_EMBED - 1] = float(self.embeddings["embed"].rows > 0)
            meta[_VAL_EMBED - 1] = float(self.embeddings["val_embed"].rows > 0)

    def _raise_if_misused(self, epoch: int, meta: np.ndarray) -> None:
        if meta[_EPOCH - 1] != -meta[_NEG_EPOCH - 1]:
            raise RecorderError(f"end_epoch: the ranks disagree on the epoch (from {int(-meta[_NEG_EPOCH - 1])} to "
                                f"{int(meta[_EPOCH - 1])}); every rank calls end_epoch with the same epoch")
        for column, what in _CHECKS.items():
            rank = int(meta[column - 1]) - 1
            if rank < 0:
                continue
            if rank != self.rank:
                raise RecorderError(f"end_epoch({epoch}): rank {rank} found {what}; nothing of epoch {epoch} "
                                    f"is written (that rank's error says more)")
            raise RecorderError(self._detail(column, epoch))

    def _detail(self, column: int, epoch: int) -> str:
        n = self.num_samples
        if column == _ORDER:
            done = "end_epoch was already called for it" if epoch < self.next_epoch else "epochs are skipped"
            return (f"end_epoch({epoch}): the next epoch to end is {self.next_epoch} ({done}); epochs run "
                    f"0, 1, 2, ... from start_epoch")
        if column == _RANGE:
            low, high = -int(self.index_range[0]), int(self.index_range[1])
            bad = low if low < 0 else high
            return f"epoch {epoch}: sample index {bad} is outside [0, {n}) (num_samples {n})"
        if column == _REPEAT:
            i = int(self.counts[:n].argmax())
            return (f"epoch {epoch}: sample index {i} was given {int(self.counts[i])} times on rank {self.rank}; "
                    f"each sample is recorded once per epoch (a sampler that repeats samples, or indices that are "
                    f"positions in the batch rather than in the dataset?)")
        low, high = -int(self.target_range[0]), int(self.target_range[1]) + self.classes - 1
        return (f"epoch {epoch}: target {low if low < 0 else high} is outside the logits' {self.classes} classes "
                f"(0..{self.classes - 1})")

    def end_epoch(self, epoch: int) -> Dict[str, float]:
        """Gather the epoch across ranks (one all-reduce), check every rank's use, and on
        rank 0 write it (history.py; embeddings first, prob last). Returns rank 0's
        coreset stability metrics of the epoch ({} elsewhere or without a tracker)."""
        self._local_checks(epoch)
        all_reduce_(self.records, op=torch.distributed.ReduceOp.MAX)
        n = self.num_samples
        meta = self.records[0, n + 1:].cpu().numpy()
        self._raise_if_misused(epoch, meta)
        seen = self.records[ROWS.index("prob"), :n] > _UNSEEN
        if self.embed_dim and meta[_EMBED - 1] > 0:
            has_row = self.records[len(ROWS), :n] > _UNSEEN
            if not bool(has_row.all()):
                missing = int((~has_row).nonzero()[0])
                raise RecorderError(f"epoch {epoch}: features were given for {int(has_row.sum())} of {n} samples "
                                    f"(none for sample {missing}); an embedding epoch needs every sample's (a loader "
                                    f"that drops the last batch leaves some out)")
        for kind, column in (("embed", _EMBED), ("val_embed", _VAL_EMBED)):
            if self.embed_dim and meta[column - 1] > 0:  # every rank: finishing holds a barrier
                self.embeddings[kind].finish(epoch, kind, n if kind == "embed" else self.val_samples)
        if self.topk is not None:
            self.topk.finish(epoch)  # collective; rank 0 writes before prob, which marks the epoch complete
        if self.is_primary:
            records = self.records[:len(ROWS), :n].cpu()
            seen = seen.cpu()
            written = {kind: torch.where(seen, row, float(RECORD_KINDS[kind].unseen)).numpy().astype(
                RECORD_KINDS[kind].dtype, copy=False) for kind, row in zip(ROWS, records)}
            write_epoch(self.dir, epoch, **written)
            logger.info(f"recorded epoch {epoch}: {int(seen.sum())} of {n} samples seen -> {self.dir}")
        self.next_epoch = epoch + 1
        self._start_epoch()
        if not self.is_primary or self.tracker is None:
            return {}
        # The array just written: the tracked coreset is get_coreset's on these files.
        metrics = self.tracker.push(epoch, written["prob"])
        if metrics:
            logger.info(f"coreset stability after epoch {epoch} (dynunc, window {self.tracker.window}) "
                        f"{describe(metrics, list(self.tracker.keeps))}")
        return metrics

    def end_embeddings(self, epoch: int) -> None:
        """Write the features given since the last end_epoch as the embeddings of `epoch`,
        an epoch already ended (its records are written and stay as they are): a run that
        stops when stable before its embedding epochs records its stop epoch's this way.
        Every rank calls it (one all-reduce); RecorderError if a training sample has no row."""
        if not self.embed_dim or epoch >= self.next_epoch:
            raise RecorderError(f"end_embeddings({epoch}): needs embed_dim > 0 and an epoch already ended (the next "
                                f"epoch to end is {self.next_epoch})")
        n = self.num_samples
        given = torch.tensor([float(self.embeddings[kind].rows > 0) for kind in ("embed", "val_embed")],
                             device=self.records.device)
        all_reduce_(given, op=torch.distributed.ReduceOp.MAX)
        all_reduce_(self.records[len(ROWS)], op=torch.distributed.ReduceOp.MAX)
        given = given.cpu().tolist()
        if given[0] > 0:
            has_row = self.records[len(ROWS), :n] > _UNSEEN
            if not bool(has_row.all()):
                raise RecorderError(f"end_embeddings({epoch}): features were given for {int(has_row.sum())} of {n} "
                                    f"samples; the embeddings of an epoch need every sample's")
            self.embeddings["embed"].finish(epoch, "embed", n)
        if given[1] > 0:
            self.embeddings["val_embed"].finish(epoch, "val_embed", self.val_samples)
        self._start_epoch()

    def close(self) -> None:
        if self.tracker is not None:
            self.tracker.close()

