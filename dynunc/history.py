"""The prediction history that produce mode records and get_coreset.py scores.

Layout, under ``OUTPUT/pred_prob_history/``: ``{kind}_{epoch}.npy`` for each kind of
RECORD_KINDS (below), one value per line of the full training file list, taken on the
eval view; and ``file_list.json``, the training file list the run recorded on (path,
entries, sha256 of its bytes: `FileListIndex.fingerprint`), so that get_coreset.py can refuse a different list.

Embeddings (``PRODUCE.EMBED_DIM`` != 0), for the epochs of ``PRODUCE.EMBED_EPOCHS`` only:
``embed_{epoch}.npy``, float16, N x D, one row per line of the training list (the
model's pre-logits features on the eval view, randomly projected to D, or with
EMBED_DIM -1 as they are), and
``val_embed_{epoch}.npy``, one row per line of the validation list. Plain np.save
files, so np.load(mmap_mode="r") maps them; `load_embeddings` reads them checked.

Top-k class probabilities (``PRODUCE.TOPK.K`` > 0), for the epochs of ``PRODUCE.TOPK.EPOCHS``:
``topk_prob_{epoch}.npy`` and ``topk_class_{epoch}.npy``, N x k, with ``topk.json`` (see
the section below); what confident learning (cleanlab) reads.

An embeddings folder (embed.py: a pretrained model's features, no training) holds
``embed_0.npy`` and ``val_embed_0.npy`` in the same format, the list's identity
(``file_list.json``, and ``sample_keys.txt`` for samples named by keys) and
``embedder.json`` (the model, its weights' sha256, the view); get_coreset.py and
report.py read it with ``--embeddings`` in place of the history's own embeddings
(`find_embeddings_dir`, `check_embeddings_samples`).

The paper's code wrote ``prob_{epoch}.txt`` (np.savetxt, 0 = unseen); get_coreset.py
reads that too. Files are written atomically, and ``prob_{epoch}`` last, so an epoch
whose prob file exists is complete.
"""
import hashlib
import json
import os
import re
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from dynunc.io import atomic_save_npy, atomic_write_text

HISTORY_DIRNAME = "pred_prob_history"
_EPOCH_FILE = re.compile(r"^prob_(\d+)\.(npy|txt)$")
EMBED_KINDS = ("embed", "val_embed")  # training-list rows, validation-list rows
EMBED_DTYPE = np.float16
# Keys of the coreset stability tracker (dynunc.training.stability) in a run's metrics.jsonl.
OVERLAP_KEY = "stability_overlap_{fraction}"
SPEARMAN_KEY = "stability_spearman"
VS_EPOCH_KEY = "stability_vs_epoch"  # the earlier epoch each comparison is made with
STOPPED_KEY = "stopped_when_stable"  # in the metrics record (and checkpoint) of the epoch the run stopped after
EMBED_CONFIG_KEYS = "PRODUCE.EMBED_DIM and PRODUCE.EMBED_EPOCHS"


def history_dir(output: str) -> str:
    return os.path.join(output, HISTORY_DIRNAME)


def stopped_epoch(hdir: str) -> Optional[int]:
    """The epoch after which the produce run of history `hdir` stopped when stable (its
    metrics.jsonl, beside the history, says so), or None."""
    path = os.path.join(os.path.dirname(os.path.abspath(hdir)), "metrics.jsonl")
    try:
        with open(path, encoding="utf-8") as f:
            records = [json.loads(line) for line in f if line.strip()]
    except (OSError, ValueError):
        return None
    stops = [r.get("epoch") for r in records if isinstance(r, dict) and r.get(STOPPED_KEY)]
    return int(stops[-1]) if stops and stops[-1] is not None else None


EMBEDDER_NAME = "embedder.json"  # an embeddings folder's description (embed.py)


def embedder_path(edir: str) -> str:
    return os.path.join(edir, EMBEDDER_NAME)


def _read_object(path: str, keys: Sequence[str], writer: str) -> Optional[dict]:
    """The JSON object in `path` (None if there is no such file); HistoryError naming the
    file if it cannot be read or lacks one of `keys`."""
    try:
        with open(path, "r", encoding="utf-8") as f:
            value = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise HistoryError(f"{path}: cannot be read: {e}") from None
    if not isinstance(value, dict) or not all(k in value for k in keys):
        raise HistoryError(f"{path}: expected an object with keys {', '.join(keys)} (written by {writer})")
    return value


def read_embedder(edir: str) -> Optional[dict]:
    """embed.py's description of the embeddings in `edir` (None: a produce run's own).
    HistoryError naming the file if it cannot be read."""
    return _read_object(embedder_path(edir), ("model",), "embed.py")


def embedder_summary(edir: str) -> Optional[str]:
    """embed.py's embeddings in `edir` in words (its model, weights and view); None for a
    produce run's own."""
    described = read_embedder(edir)
    if described is None:
        return None
    dim = described.get("embed_dim", -1)
    width = "the pooled features" if dim == -1 else f"a random projection of the pooled features to {dim}"
    return (f"embed.py: {width} of {described['model']} ({described.get('weights', '?')}) at "
            f"{described.get('img_size', '?')} px")


def describe_embeddings(edir: str) -> str:
    """What the embedding files of `edir` hold, for the commands' messages."""
    return embedder_summary(edir) or ("as recorded: PRODUCE.EMBED_DIM's random projection of the classifier input, "
                                      "or the input itself with PRODUCE.EMBED_DIM -1")


def find_embeddings_dir(path: str) -> str:
    """The folder of `path`'s embedding files: ``path/pred_prob_history`` if it holds some
    (another produce run's), else `path` (embed.py's output folder). HistoryError if
    neither holds an ``embed_{epoch}.npy``."""
    for candidate in (history_dir(path), path):
        if list_embed_epochs(candidate):
            return candidate
    raise HistoryError(f"--embeddings {path}: no embed_<epoch>.npy in {path!r} or in {history_dir(path)!r} "
                       f"(embed.py writes them; a produce run does when {EMBED_CONFIG_KEYS} ask for them)")


def check_embeddings_samples(edir: str, hdir: str, fingerprint: Optional[dict]) -> bool:
    """HistoryError unless the embeddings folder `edir` was made on the samples of the
    history `hdir`: its file_list.json must agree with `fingerprint` (the list's, when one
    is given) or else with the history's own (entries and sha256). An embeddings folder
    without one is refused (nothing to check its rows against). False when neither the
    list nor the history has a fingerprint (only the row count can be checked)."""
    recorded = read_fingerprint(edir)
    if recorded is None:
        raise HistoryError(f"{fingerprint_path(edir)} is missing: cannot check that the embeddings in {edir} are of "
                           f"the samples of {hdir} (embed.py and produce runs write it)")
    expected, source = fingerprint, "the file list"
    if expected is None:
        expected, source = read_fingerprint(hdir), fingerprint_path(hdir)
    if expected is None:
        return False
    if recorded["sha256"] != expected["sha256"] or int(recorded["entries"]) != int(expected["entries"]):
        raise HistoryError(
            f"the embeddings in {edir} are of {recorded['path']} ({recorded['entries']} entries, sha256 "
            f"{str(recorded['sha256'])[:16]}...), not of {source} of {hdir} ({expected['entries']} entries, sha256 "
            f"{str(expected['sha256'])[:16]}...): embed the list the history was recorded on")
    return True


def why_no_embeddings(hdir: str) -> str:
    """Why a history holds no embeddings: a run stopped when stable before its
    PRODUCE.EMBED_EPOCHS, or embeddings not asked for."""
    stopped = stopped_epoch(hdir)
    if stopped is not None:
        return (f"the produce run stopped when stable after epoch {stopped}, before the epochs PRODUCE.EMBED_EPOCHS "
                f"asks for (produce runs of this version record them at the stop epoch)")
    return f"a produce run records them when {EMBED_CONFIG_KEYS} ask for them (PRODUCE.EMBED_DIM > 0, the default, or -1 for the classifier input unprojected)"


@dataclass(frozen=True)
class RecordKind:
    """One quantity recorded per sample and epoch, as ``{name}_{epoch}.npy``."""

    name: str
    dtype: type  # as stored
    unseen: float  # what is stored for a sample not seen that epoch (drop-last remainder)
    what: str
    seen_range: Optional[Tuple[int, int]] = None  # integer kinds: the values a seen sample may hold


# Every kind recorded, in the recorder's row order; prob is written last (it marks an
# epoch complete). A new kind is one row here (and its computation in recorder.py).
RECORD_KINDS: Dict[str, RecordKind] = {kind.name: kind for kind in (
    RecordKind("prob", np.float32, np.nan, "softmax probability of the true label"),
    RecordKind("correct", np.int8, -1, "1 if the top-1 prediction is the true label, else 0", seen_range=(0, 1)),
    RecordKind("margin", np.float32, np.nan, "the true label's logit minus the largest other (AUM's margin)"),
    RecordKind("el2n", np.float32, np.nan, "L2 norm of softmax minus the one-hot label (EL2N)"),
)}
EXTRA_RECORDS = tuple(kind for kind in RECORD_KINDS if kind != "prob")
FILE_LIST_NAME = "file_list.json"


def record_path(hdir: str, kind: str, epoch: int) -> str:
    """``{kind}_{epoch}.npy`` in `hdir`, for a kind of RECORD_KINDS."""
    return os.path.join(hdir, f"{kind}_{epoch}.npy")


def list_epoch_files(hdir: str) -> Dict[int, str]:
    """{epoch: path} of the probability files in `hdir` (.npy preferred over .txt)."""
    found: Dict[int, str] = {}
    if not os.path.isdir(hdir):
        return found
    for name in os.listdir(hdir):
        m = _EPOCH_FILE.match(name)
        if not m:
            continue
        epoch = int(m.group(1))
        if epoch not in found or m.group(2) == "npy":
            found[epoch] = os.path.join(hdir, name)
    return dict(sorted(found.items()))


def embed_path(hdir: str, epoch: int, kind: str = "embed") -> str:
    """``{kind}_{epoch}.npy`` in `hdir`, for a kind of EMBED_KINDS."""
    if kind not in EMBED_KINDS:
        raise ValueError(f"unknown embedding kind {kind!r}; known: {', '.join(EMBED_KINDS)}")
    return os.path.join(hdir, f"{kind}_{epoch}.npy")


def list_embed_epochs(hdir: str, kind: str = "embed") -> List[int]:
    """The epochs, ascending, whose ``{kind}_{epoch}.npy`` is in `hdir` (none if `hdir`
    does not exist)."""
    if kind not in EMBED_KINDS:
        raise ValueError(f"unknown embedding kind {kind!r}; known: {', '.join(EMBED_KINDS)}")
    pattern = re.compile(rf"^{kind}_(\d+)\.npy$")
    if not os.path.isdir(hdir):
        return []
    return sorted(int(m.group(1)) for m in map(pattern.match, os.listdir(hdir)) if m)


def write_epoch(hdir: str, epoch: int, prob: np.ndarray, correct: np.ndarray, **others: Optional[np.ndarray]) -> None:
    """Write one epoch's records (the other kinds of RECORD_KINDS by name; None: not
    recorded) atomically, each in its kind's dtype, prob last: prob marks completion."""
    unknown = [kind for kind in others if kind not in EXTRA_RECORDS]
    if unknown:
        raise ValueError(f"unknown record kind {unknown[0]!r}; known: {', '.join(RECORD_KINDS)}")
    records = {"correct": correct, **others, "prob": prob}
    for kind, values in records.items():
        if values is not None:
            atomic_save_npy(record_path(hdir, kind, epoch), np.asarray(values, dtype=RECORD_KINDS[kind].dtype))


def remove_epochs_from(hdir: str, first_epoch: int) -> List[int]:
    """Delete the records of epochs >= first_epoch (a restart from an older checkpoint
    rewrites them), embeddings and top-k records included. Returns the epochs removed (of the prob files)."""
    removed = []
    for kind in EMBED_KINDS:
        for epoch in list_embed_epochs(hdir, kind):
            if epoch >= first_epoch:
                os.remove(embed_path(hdir, epoch, kind))
    for epoch in list_topk_epochs(hdir):
        if epoch >= first_epoch:
            for kind in TOPK_KINDS:
                if os.path.exists(topk_path(hdir, epoch, kind)):
                    os.remove(topk_path(hdir, epoch, kind))
    for epoch, path in list_epoch_files(hdir).items():
        if epoch >= first_epoch:
            # prob first: an epoch without its completion mark is no longer listed.
            for p in (path, *(record_path(hdir, kind, epoch) for kind in EXTRA_RECORDS)):
                if os.path.exists(p):
                    os.remove(p)
            removed.append(epoch)
    return removed


class HistoryError(ValueError):
    """A problem with a prediction history, naming the folder or file."""


# -----------------------------------------------------------------------------
# Which file list a history belongs to
# -----------------------------------------------------------------------------
def fingerprint_path(hdir: str) -> str:
    return os.path.join(hdir, FILE_LIST_NAME)


def read_fingerprint(hdir: str) -> Optional[dict]:
    """The recorded fingerprint of `hdir`, or None if it has none (runs from before it
    was recorded, the paper's text history). HistoryError if it is unreadable."""
    return _read_object(fingerprint_path(hdir), ("path", "entries", "sha256"), "a produce run or embed.py")


def write_fingerprint(hdir: str, fingerprint: dict) -> None:
    atomic_write_text(fingerprint_path(hdir), json.dumps(fingerprint, indent=1) + "\n")


def check_fingerprint(hdir: str, list_path: str, fingerprint: dict) -> bool:
    """Compare `list_path`'s fingerprint with the one recorded in `hdir`. HistoryError,
    naming both files, if they differ; False if `hdir` records none (nothing to check),
    True if they agree."""
    recorded = read_fingerprint(hdir)
    if recorded is None:
        return False
    if recorded["sha256"] != fingerprint["sha256"] or int(recorded["entries"]) != fingerprint["entries"]:
        raise HistoryError(
            f"{list_path} ({fingerprint['entries']} entries, sha256 {fingerprint['sha256'][:16]}...) is not the "
            f"file list the history was recorded on: {fingerprint_path(hdir)} records {recorded['path']} "
            f"({recorded['entries']} entries, sha256 {str(recorded['sha256'])[:16]}...)"
        )
    return True


# -----------------------------------------------------------------------------
# Samples named by keys (a history recorded without a file list)
# -----------------------------------------------------------------------------
SAMPLE_KEYS_NAME = "sample_keys.txt"


def sample_keys_path(hdir: str) -> str:
    return os.path.join(hdir, SAMPLE_KEYS_NAME)


def check_sample_keys(keys: Sequence[str], where: str = "sample keys") -> List[str]:
    """`keys` as a list of str, or HistoryError naming the first key that is empty, holds a
    line break or a tab, or repeats an earlier one (with both positions)."""
    keys = [str(k) for k in keys]
    first: Dict[str, int] = {}
    for i, key in enumerate(keys):
        if not key or any(c in key for c in "\n\r\t"):
            raise HistoryError(f"{where}: key {i} ({key!r}) is empty or holds a line break or a tab")
        if key in first:
            raise HistoryError(f"{where}: key {i} ({key!r}) repeats key {first[key]}")
        first[key] = i
    return keys


def write_sample_keys(hdir: str, keys: Sequence[str]) -> dict:
    """Write `keys` (one per sample, index order) as ``sample_keys.txt`` in `hdir`, atomically,
    and return its fingerprint (path, entries, sha256 of the file's bytes), the shape
    write_fingerprint records for a file list."""
    text = "".join(f"{k}\n" for k in check_sample_keys(keys, sample_keys_path(hdir)))
    atomic_write_text(sample_keys_path(hdir), text)
    return {"path": SAMPLE_KEYS_NAME, "entries": len(keys),
            "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}


def read_sample_keys(hdir: str, num_samples: Optional[int] = None) -> Optional[List[str]]:
    """The keys recorded in `hdir` (None if it records none); HistoryError if the file does not
    hold `num_samples` keys or a key repeats."""
    path = sample_keys_path(hdir)
    try:
        with open(path, "r", encoding="utf-8", newline="\n") as f:
            keys = f.read().split("\n")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as e:
        raise HistoryError(f"{path}: cannot be read: {e}") from None
    if keys and keys[-1] == "":
        keys.pop()
    if num_samples is not None and len(keys) != num_samples:
        raise HistoryError(f"{path}: {len(keys)} keys, but the history has {num_samples} samples")
    return check_sample_keys(keys, path)


# -----------------------------------------------------------------------------
# Reading (get_coreset.py)
# -----------------------------------------------------------------------------


def find_history_dir(path: str) -> str:
    """The history folder for `path`: ``path/pred_prob_history`` if it exists (a produce
    run's output folder), else `path` itself if it holds epoch files. HistoryError if
    neither has any."""
    for candidate in (history_dir(path), path):
        if list_epoch_files(candidate):
            return candidate
    raise HistoryError(
        f"no prediction history in {path!r}: expected prob_<epoch>.npy or prob_<epoch>.txt "
        f"files in {history_dir(path)!r} or in {path!r} itself"
    )


def contiguous_epoch_files(hdir: str) -> List[str]:
    """The epoch files of `hdir` in epoch order 0..K-1. HistoryError if there are none or
    if an epoch number is missing (a missing epoch would silently shift every window)."""
    files = list_epoch_files(hdir)
    if not files:
        raise HistoryError(f"no prediction history in {hdir!r}")
    expected = range(max(files) + 1)
    missing = [e for e in expected if e not in files]
    if missing:
        shown = ", ".join(str(e) for e in missing[:10]) + (", ..." if len(missing) > 10 else "")
        raise HistoryError(
            f"{hdir}: epoch {missing[0]} is missing (epochs must run 0..{max(files)} without a gap; "
            f"{len(missing)} missing: {shown})"
        )
    return [files[e] for e in expected]


def load_epoch_prob(path: str, expected_len: Optional[int] = None, mmap: bool = False) -> np.ndarray:
    return load_epoch_record(path, "prob", expected_len, mmap)


def load_epoch_record(path: str, kind: str, expected_len: Optional[int] = None, mmap: bool = False) -> np.ndarray:
    """One epoch's record of a kind of RECORD_KINDS, 1-D, as stored: the kind's dtype and
    its unseen marker (a stored 0.0 probability is a real one). With `mmap`, a read-only
    memory map (no copy out of the page cache; history files are replaced atomically,
    never rewritten in place, so the map stays valid). The paper's ``prob_{epoch}.txt``
    (np.savetxt, one value per line) is read as float64, its 0 (unseen there) as NaN.
    HistoryError, naming the file, if it is missing, cannot be read, has the wrong
    dtype, shape or length, or holds values outside the kind's range or +-inf.
    """
    if kind not in RECORD_KINDS:
        raise ValueError(f"unknown record kind {kind!r}")
    record = RECORD_KINDS[kind]
    try:
        if path.endswith(".txt"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "empty input file"
                values = np.loadtxt(path, dtype=np.float64, ndmin=1, comments=None)
            values[values == 0] = np.nan
        else:
            values = np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except FileNotFoundError:
        raise HistoryError(f"{path}: is missing") from None
    except (OSError, ValueError, EOFError) as e:
        what = "probability" if kind == "prob" else kind
        raise HistoryError(f"{path}: cannot be read as a {what} history file: {e}") from None
    if values.ndim != 1:
        raise HistoryError(f"{path}: expected one value per sample (1-D), found shape {values.shape}")
    if expected_len is not None and len(values) != expected_len:
        raise HistoryError(f"{path}: has {len(values)} values but the file list has {expected_len} lines")
    if record.seen_range is not None:
        lowest, highest = min(record.unseen, record.seen_range[0]), max(record.unseen, record.seen_range[1])
        if values.dtype != record.dtype:
            raise HistoryError(f"{path}: expected {np.dtype(record.dtype)} values, found dtype {values.dtype}")
        if len(values) and (values.min() < lowest or values.max() > highest):  # two passes, no temporary
            i = int(np.flatnonzero((values < lowest) | (values > highest))[0])
            *others, last = range(lowest, highest + 1)
            raise HistoryError(f"{path}: value {int(values[i])} at index {i} is not {str(others)[1:-1]} or {last}")
        return values
    if values.dtype.kind != "f":
        raise HistoryError(f"{path}: expected floating-point values, found dtype {values.dtype}")
    if np.isinf(values).any():
        raise HistoryError(f"{path}: holds infinite values (first at index {int(np.flatnonzero(np.isinf(values))[0])})")
    return values


def record_loader(hdir: str, prob_paths: Sequence[str], num_samples: int,
                  mmap: bool = False) -> Callable[[int, str], np.ndarray]:
    """`load(epoch, kind)` for score_history: one epoch's record, checked (length
    `num_samples`, dtype, range), HistoryError naming the file otherwise. `prob_paths`:
    contiguous_epoch_files(hdir), so that the paper's .txt history is read too. `mmap`:
    map .npy files instead of reading them (see load_epoch_prob)."""

    def load(epoch: int, kind: str) -> np.ndarray:
        path = prob_paths[epoch] if kind == "prob" else record_path(hdir, kind, epoch)
        return load_epoch_record(path, kind, expected_len=num_samples, mmap=mmap)

    return load


# (real path, inode, modification time, size) of the embedding files found finite in this
# process: get_coreset.py and report.py read one file for dedup, the methods and the
# projection, and scan it once.
_FINITE_FILES = set()


def load_embeddings(hdir: str, num_samples: int, epoch: Optional[int] = None, kind: str = "embed",
                    chunk_bytes: int = 64 << 20) -> np.ndarray:
    """The recorded embeddings of `epoch` (None: the latest recorded), a read-only float16
    memory map of shape (num_samples, D): kind "embed" has one row per line of the
    training list, "val_embed" one per line of the validation list. HistoryError, naming
    the file, if there is none (and the config keys that record them), if it cannot be
    read, is not a float16 N x D array, has a row count other than `num_samples`, or
    holds a NaN or infinite value (the first bad row is named; checked `chunk_bytes` at a
    time, so memory stays bounded)."""
    if epoch is None:
        epochs = list_embed_epochs(hdir, kind)
        if not epochs:
            raise HistoryError(
                f"{os.path.join(hdir, kind + '_<epoch>.npy')} is missing: {hdir} holds no "
                f"{kind} files; {why_no_embeddings(hdir)}")
        epoch = epochs[-1]
    path = embed_path(hdir, epoch, kind)
    try:
        values = np.load(path, allow_pickle=False, mmap_mode="r")
    except FileNotFoundError:
        recorded = list_embed_epochs(hdir, kind)
        raise HistoryError(
            f"{path} is missing: {kind} files are recorded for the epochs in PRODUCE.EMBED_EPOCHS when "
            f"PRODUCE.EMBED_DIM is not 0; {hdir} has them for "
            f"{'epochs ' + ', '.join(map(str, recorded)) if recorded else 'no epoch'}") from None
    except (OSError, ValueError, EOFError) as e:
        raise HistoryError(f"{path}: cannot be read as an embedding file: {e}") from None
    if values.ndim != 2 or values.shape[1] == 0:
        raise HistoryError(f"{path}: expected one row of D > 0 values per sample (N x D), found shape {values.shape}")
    if values.dtype != EMBED_DTYPE:
        raise HistoryError(f"{path}: expected {np.dtype(EMBED_DTYPE)} values, found dtype {values.dtype}")
    if values.shape[0] != num_samples:
        list_name = "validation" if kind == "val_embed" else "training"
        raise HistoryError(f"{path}: has {values.shape[0]} rows but the {list_name} file list has {num_samples} lines")
    stat = os.stat(path)
    checked = (os.path.realpath(path), stat.st_ino, stat.st_mtime_ns, stat.st_size)
    if checked in _FINITE_FILES:
        return values
    rows = max(1, chunk_bytes // (values.shape[1] * values.itemsize))
    for start in range(0, values.shape[0], rows):
        finite = np.isfinite(values[start:start + rows]).all(axis=1)
        if not finite.all():
            bad = start + int(np.flatnonzero(~finite)[0])
            what = "NaN" if np.isnan(values[bad]).any() else "infinite"
            raise HistoryError(f"{path}: row {bad} holds a {what} value (the first row that is not finite)")
    _FINITE_FILES.add(checked)
    return values



# -----------------------------------------------------------------------------
# Top-k class probabilities (PRODUCE.TOPK), for the epochs that ask for them
# -----------------------------------------------------------------------------
# ``topk_prob_{epoch}.npy`` (float16, N x k: the k largest softmax probabilities of each
# sample, descending, on the eval view as the other records) and ``topk_class_{epoch}.npy``
# (int16 where the classes fit, else int32, N x k: their classes), both -1 in every
# column of a sample not seen that epoch; ``topk.json`` records k and the class count.
# Written before prob_{epoch}, which marks the epoch complete.
TOPK_KINDS = ("topk_prob", "topk_class")
TOPK_META_NAME = "topk.json"
TOPK_PROB_DTYPE = np.float16


def topk_class_dtype(num_classes: int) -> type:
    return np.int16 if num_classes <= np.iinfo(np.int16).max else np.int32


def topk_path(hdir: str, epoch, kind: str = "topk_prob") -> str:
    if kind not in TOPK_KINDS:
        raise ValueError(f"unknown top-k kind {kind!r}; known: {', '.join(TOPK_KINDS)}")
    return os.path.join(hdir, f"{kind}_{epoch}.npy")


def list_topk_epochs(hdir: str) -> List[int]:
    """The epochs, ascending, with a ``topk_prob_{epoch}.npy`` in `hdir`."""
    pattern = re.compile(r"^topk_prob_(\d+)\.npy$")
    if not os.path.isdir(hdir):
        return []
    return sorted(int(m.group(1)) for m in map(pattern.match, os.listdir(hdir)) if m)


def write_topk_meta(hdir: str, k: int, num_classes: int) -> None:
    atomic_write_text(os.path.join(hdir, TOPK_META_NAME), json.dumps({"k": k, "num_classes": num_classes}) + "\n")


def read_topk_meta(hdir: str) -> Optional[Tuple[int, int]]:
    """(k, number of classes) of the run's top-k records, None if it recorded none;
    HistoryError if the file is unreadable or k is not in 1..classes."""
    path = os.path.join(hdir, TOPK_META_NAME)
    try:
        with open(path, "r", encoding="utf-8") as f:
            meta = json.load(f)
        k, num_classes = int(meta["k"]), int(meta["num_classes"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise HistoryError(f"{path}: cannot be read as {{\"k\": K, \"num_classes\": C}}: {e}") from None
    if not 1 <= k <= num_classes:
        raise HistoryError(f"{path}: k {k} must lie in 1..{num_classes} (the number of classes)")
    return k, num_classes


def write_topk(hdir: str, epoch: int, probs: np.ndarray, classes: np.ndarray, num_classes: int) -> None:
    atomic_save_npy(topk_path(hdir, epoch, "topk_class"), np.asarray(classes, dtype=topk_class_dtype(num_classes)))
    atomic_save_npy(topk_path(hdir, epoch, "topk_prob"), np.asarray(probs, dtype=TOPK_PROB_DTYPE))


def load_topk(hdir: str, epoch: int, num_samples: int) -> Tuple[np.ndarray, np.ndarray]:
    """(probabilities float16 N x k, classes N x k) of `epoch`, checked: both present, N x k
    with k of topk.json, classes in 0..C-1 (or all -1 for an unseen sample), probabilities
    in [0, 1] (-1 where unseen). HistoryError naming the file otherwise."""
    meta = read_topk_meta(hdir)
    if meta is None:
        raise HistoryError(f"{os.path.join(hdir, TOPK_META_NAME)} is missing: the run recorded no top-k class "
                           "probabilities (PRODUCE.TOPK.K > 0 records them)")
    k, num_classes = meta
    arrays = []
    for kind in TOPK_KINDS:
        path = topk_path(hdir, epoch, kind)
        try:
            values = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            held = list_topk_epochs(hdir)
            raise HistoryError(f"{path} is missing: {hdir} holds top-k records for "
                               f"{'epochs ' + ', '.join(map(str, held)) if held else 'no epoch'}") from None
        except (OSError, ValueError, EOFError) as e:
            raise HistoryError(f"{path}: cannot be read as a top-k file: {e}") from None
        if values.shape != (num_samples, k):
            raise HistoryError(f"{path}: expected shape ({num_samples}, {k}) (N lines x k of topk.json), "
                               f"found {values.shape}")
        arrays.append(values)
    probs, classes = arrays
    if probs.dtype.kind != "f" or classes.dtype.kind not in "iu":
        raise HistoryError(f"{topk_path(hdir, epoch)}: expected float probabilities and integer classes, found "
                           f"{probs.dtype} and {classes.dtype}")
    unseen = classes[:, 0] < 0
    bad = np.flatnonzero(((classes < 0) != unseen[:, None]).any(axis=1) | (classes >= num_classes).any(axis=1))
    if len(bad):
        raise HistoryError(f"{topk_path(hdir, epoch, 'topk_class')}: row {int(bad[0])} holds a class outside "
                           f"0..{num_classes - 1} (or -1 in some columns only)")
    seen_probs = probs[~unseen]
    if not np.isfinite(seen_probs).all() or (seen_probs < 0).any() or (seen_probs > 1.001).any():
        row = int(np.flatnonzero(~unseen)[np.flatnonzero(~(np.isfinite(seen_probs) & (seen_probs >= 0)
                                                           & (seen_probs <= 1.001)).any(axis=1))[0]])
        raise HistoryError(f"{topk_path(hdir, epoch)}: row {row} holds a probability outside [0, 1]")
    return probs, classes


# -----------------------------------------------------------------------------
# AUM's threshold samples (PRODUCE.THRESHOLD_SAMPLES)
# -----------------------------------------------------------------------------
# A run with threshold samples trained N // (C + 1) images under an extra class C (Pleiss
# et al. 2020): ``threshold.json`` ({"extra_class": C, "set": 1 or 2}) and
# ``threshold_samples.npy`` (their indices, int64 ascending). Their records are about class C.
THRESHOLD_META_NAME, THRESHOLD_SAMPLES_NAME = "threshold.json", "threshold_samples.npy"


def write_threshold(hdir: str, extra_class: int, which: int, indices: np.ndarray) -> None:
    os.makedirs(hdir, exist_ok=True)
    atomic_save_npy(os.path.join(hdir, THRESHOLD_SAMPLES_NAME), np.asarray(indices, dtype=np.int64))
    atomic_write_text(os.path.join(hdir, THRESHOLD_META_NAME),
                      json.dumps({"extra_class": int(extra_class), "set": int(which)}) + "\n")


def read_threshold(hdir: str, num_samples: int) -> Optional[Tuple[int, np.ndarray]]:
    """(extra class, threshold sample indices) of a run with threshold samples, None for a
    run without; HistoryError naming the file if threshold.json is unreadable or its
    threshold_samples.npy is missing or not distinct ascending indices in 0..N-1."""
    meta_path = os.path.join(hdir, THRESHOLD_META_NAME)
    try:
        with open(meta_path, "r", encoding="utf-8") as f:
            extra_class = int(json.load(f)["extra_class"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise HistoryError(f"{meta_path}: cannot be read as {{\"extra_class\": C, ...}}: {e}") from None
    path = os.path.join(hdir, THRESHOLD_SAMPLES_NAME)
    try:
        indices = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise HistoryError(f"{path} is missing: {meta_path} says the run trained threshold samples under class "
                           f"{extra_class}, and without their indices the run cannot be scored") from None
    except (OSError, ValueError, EOFError) as e:
        raise HistoryError(f"{path}: cannot be read: {e}") from None
    if (indices.ndim != 1 or indices.dtype.kind not in "iu" or not len(indices)
            or (len(indices) > 1 and (np.diff(indices) <= 0).any()) or indices[0] < 0 or indices[-1] >= num_samples):
        raise HistoryError(f"{path}: expected distinct ascending indices in 0..{num_samples - 1}")
    return extra_class, indices.astype(np.int64)
