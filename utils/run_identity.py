"""A run folder belongs to one run: OUTPUT/run.json records what defines the run, and a
later command on the same folder goes on (auto-resume) only when it asks for the same run.

What defines a run (`identity`): the command (main.py or main_and_produce.py), the number
of processes (the global batch), every config key except those in MAY_CHANGE, and the
identity of the lists it trains and validates on, by content (entries and the sha256 of
the file's bytes), not by path: the training list, the coreset (--coreset) and the
validation list. A plain run (main.py) does not read PRODUCE.*, so those keys do not
define it.

`check` compares the identity of the command with the folder's record (read only, on
every rank) and raises ValueError with one line naming the first key that differs, its
old and new value, how many others differ, and the two ways on (a new --output, or
--resume CKPT to continue deliberately, which rebinds the folder to the new command).
`RunIdentity.record` then writes run.json atomically (rank 0). A folder held by a live
run is neither compared nor written: the output lock refuses the command next. A folder
made before run.json existed is compared by its config.yaml (the lists' identity is
unknown there).
Evaluation and throughput runs (--eval, --throughput) neither check nor record.
"""
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import yaml

from dynunc.io import atomic_write_text
from utils.output_lock import in_use

logger = logging.getLogger(__name__)

RECORD_NAME = "run.json"
VERSION = 1

# Config keys that may change when a run is resumed (README, "Resuming"): they change how
# the run is carried out, logged or checkpointed, not what it computes. The lists' paths
# are here because the lists are compared by content.
MAY_CHANGE = (
    "BASE", "OUTPUT", "EVAL_MODE", "THROUGHPUT_MODE", "PRINT_FREQ", "SAVE_FREQ",
    "MODEL.RESUME", "MODEL.MODEL_CONFIG_PATH",
    "TRAIN.AUTO_RESUME", "TRAIN.KEEP_CHECKPOINTS", "TRAIN.USE_CHECKPOINT",
    "DATA.NUM_WORKERS", "DATA.NUM_THREADS", "DATA.PREFETCH", "DATA.DECODE_DEVICE", "DATA.BATCH_SIZE_VAL",
    "DATA.DATA_PATH_TRAIN", "DATA.DATA_PATH_VAL", "DATA.TRAIN_FILE_LIST", "DATA.VAL_FILE_LIST",
    "COMPILE_ENABLE", "ACCELERATION.FUSED_WINDOW_PROCESS", "ACCELERATION.FUSED_LAYERNORM",
    # when a produce run stops, not what its epochs compute: switched off, a stopped run trains on
    "PRODUCE.STOP_WHEN_STABLE.ENABLE", "PRODUCE.STOP_WHEN_STABLE.OVERLAP", "PRODUCE.STOP_WHEN_STABLE.PATIENCE",
    "PRODUCE.STOP_WHEN_STABLE.FRACTION",
)
# Keys whose values are paths: compared as absolute paths.
PATH_KEYS = ("MODEL.PRETRAINED",)


def record_path(output: str) -> str:
    return os.path.join(output, RECORD_NAME)


def flatten(node, prefix: str = "") -> Dict[str, object]:
    """{dotted key: value} of a (nested) mapping; tuples become lists, as JSON has them."""
    flat: Dict[str, object] = {}
    for key, value in node.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


def defining_config(config, produce: bool) -> Dict[str, object]:
    """The config keys that define a run, with their values (JSON-ready)."""
    flat = flatten(yaml.safe_load(config.dump()) if not isinstance(config, dict) else config)
    keys = {}
    for key, value in sorted(flat.items()):
        if key in MAY_CHANGE or (not produce and key.startswith("PRODUCE.")):
            continue
        if key in PATH_KEYS and value:
            value = os.path.abspath(value)
        keys[key] = value
    return keys


def file_identity(path: str, entries: int) -> Dict[str, object]:
    """A list file's identity: entries and the sha256 of its bytes (its path for people only)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return {"path": os.path.abspath(path), "entries": int(entries), "sha256": digest.hexdigest()}


def list_identity(samples) -> Dict[str, object]:
    """The full list's identity from its index (hashed when the index was built); for
    shards or a dataset (DATA.FORMAT wds, hf), the whole key table's, in order."""
    if hasattr(samples, "index"):
        found = samples.index.fingerprint()
    else:
        found = samples.keys.fingerprint(samples.source)
    return {"path": found["path"], "entries": int(found["entries"]), "sha256": found["sha256"]}


@dataclass
class RunIdentity:
    output: str
    values: Dict[str, object]  # what run.json records
    primary: bool

    def record(self) -> None:
        """Write OUTPUT/run.json (rank 0), unless a live run holds the folder."""
        if not self.primary or in_use(self.output):
            return
        path = record_path(self.output)
        text = json.dumps(self.values, indent=1, sort_keys=True) + "\n"
        try:
            with open(path, encoding="utf-8") as f:
                if f.read() == text:
                    return  # the same run: the folder stays as it was
        except OSError:
            pass
        os.makedirs(self.output, exist_ok=True)
        atomic_write_text(path, text)


def identity(args, config, data, produce: bool, world_size: int) -> Dict[str, object]:
    return {
        "version": VERSION,
        "command": "main_and_produce.py" if produce else "main.py",
        "processes": int(world_size),
        "config": defining_config(config, produce),
        "train_list": list_identity(data.train),
        "coreset": file_identity(args.coreset, len(data.train)) if args.coreset else None,
        "val_list": list_identity(data.val) if data.val is not None else None,
    }


def _short(value) -> str:
    if isinstance(value, dict) and "sha256" in value:
        return f"{value['path']} ({value['entries']} entries, sha256 {str(value['sha256'])[:12]})"
    if value is None:
        return "none"
    return json.dumps(value)


def differences(old: Dict[str, object], new: Dict[str, object]) -> List[Tuple[str, object, object]]:
    """(key, old value, new value) for each part that differs: the command, the lists (by
    entries and sha256), the config keys, then the number of processes."""
    found = []
    for key in ("command", "coreset", "train_list", "val_list"):
        if key not in old:
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            same = (a.get("entries"), a.get("sha256")) == (b.get("entries"), b.get("sha256"))
        else:
            same = a == b
        if not same:
            found.append((key.replace("_", " ") if key != "coreset" else "--coreset", a, b))
    old_config, new_config = old.get("config", {}), new.get("config", {})
    for key in sorted(set(old_config) | set(new_config)):
        if key in MAY_CHANGE:
            continue
        a, b = old_config.get(key, "(unset)"), new_config.get(key, "(unset)")
        if a != b:
            found.append((key, a, b))
    if "processes" in old and old["processes"] != new.get("processes"):  # last: the least likely slip
        found.append(("processes", old["processes"], new.get("processes")))
    return found


def _latest_checkpoint_name(output: str) -> Optional[str]:
    from utils.checkpoint import _newest_first

    try:
        newest = _newest_first(output)
    except OSError:
        return None
    return newest[0] if newest else None


def _recorded(output: str, produce: bool) -> Optional[Dict[str, object]]:
    """The folder's record: run.json, else (a folder from before it) the config part of
    its config.yaml, else None."""
    path = record_path(output)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot be read ({e}); give a new --output, or remove the file if the folder "
                         f"holds the run you ask for") from None
    try:
        with open(os.path.join(output, "config.yaml"), encoding="utf-8") as f:
            config = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(config, dict):
        return None
    logger.warning(f"{output} has no {RECORD_NAME} (a run of an earlier version): only its config.yaml is compared")
    return {"config": defining_config(config, produce)}


def check(args, config, data, produce: bool, world_size: int, primary: bool) -> Optional[RunIdentity]:
    """The identity of this command, checked against the folder's record (ValueError on a
    mismatch, unless --resume asks to continue deliberately); None for --eval and
    --throughput, which neither check nor record."""
    if config.EVAL_MODE or config.THROUGHPUT_MODE:
        return None
    new = identity(args, config, data, produce, world_size)
    output = config.OUTPUT
    if os.path.isdir(output) and in_use(output):
        return RunIdentity(output, new, primary)  # a live run's folder: the output lock refuses it next
    old = _recorded(output, produce) if os.path.isdir(output) else None
    if old is not None:
        found = differences(old, new)
        if found and args.resume:
            logger.warning(f"--resume {args.resume}: continuing into {output} with "
                           + "; ".join(f"{k} {_short(a)} -> {_short(b)}" for k, a, b in found))
        elif found:
            key, a, b = found[0]
            more = f" (and {len(found) - 1} more difference{'s' if len(found) > 2 else ''})" if len(found) > 1 else ""
            ckpt = _latest_checkpoint_name(output)
            resume = f"--resume {ckpt}" if ckpt else "--resume CKPT"
            raise ValueError(f"{output} holds another run: {key} was {_short(a)}, now {_short(b)}{more}; give a new "
                             f"--output, or {resume} to continue that run deliberately with these settings")
    return RunIdentity(output, new, primary)
