"""Train an image classifier (optionally on a coreset) and report validation accuracy.

    torchrun --nproc_per_node=8 main.py --config configs/swin-tiny-1k.yaml \
        [--coreset CORESET] [--pretrain CKPT] --output OUT [--opts KEY VALUE ...]

`main_and_produce.py` is this same program with the prediction recorder switched on.
A problem in the config, a file list or the coreset stops every rank before anything is
written under OUTPUT: rank 0 says what and where in one line, and the exit code is 2.
"""
import argparse
import json
import logging
import os
import random
import sys
from functools import partial
from typing import Optional, Sequence

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from data.build import build_train_loader, build_val_loader, load_file_lists
from data.datasets import dataset_info
from dynunc.lists.file_list import FileListError
from data.val_labels import RealLabels, val_logit_columns
from dynunc.distributed import barrier, broadcast_buffers_, first_error
from dynunc.io import atomic_write_text
from dynunc.training import threshold
from dynunc.history import STOPPED_KEY
from dynunc.metrics_log import MetricsLog
from engine import build_step_context, evaluate, throughput, train_one_epoch
from hooks import Hooks, build_hooks, check_config
from models.build import build_model
from models.pretrained import adapt_pretrained_state
from utils.checkpoint import (checkpoint_path, checkpoint_state, load_pretrained, prune_checkpoints, resume,
                              save_checkpoint)
from utils.config import load_config
from utils.distributed import DistInfo, cleanup, init_distributed
from utils.logger import note_in_earlier_log, setup_logging, start_logging
from utils.output_lock import OutputInUseError, lock_output
from dynunc.paths import check_arguments
from utils import run_identity

logger = logging.getLogger("main")


def parse_args(argv: Optional[Sequence[str]] = None, produce: bool = False) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train and record per-sample predictions every epoch" if produce else "Train and evaluate"
    )
    parser.add_argument("--config", required=True, help="YAML config (overrides utils/config.py defaults)")
    parser.add_argument("--output", required=True, help="output folder (logs, checkpoints, history)")
    parser.add_argument("--coreset", help="train on this file list instead of DATA.TRAIN_FILE_LIST (DATA.FORMAT wds "
                        "or hf: on the samples whose keys it lists, one per line)")
    parser.add_argument("--pretrain", help="start from these weights (sets MODEL.PRETRAINED)")
    parser.add_argument("--resume", help="resume from this checkpoint (else TRAIN.AUTO_RESUME looks in --output)")
    parser.add_argument("--eval", action="store_true", help="only validate (sets EVAL_MODE)")
    parser.add_argument("--throughput", action="store_true", help="only measure speed (sets THROUGHPUT_MODE)")
    parser.add_argument("--opts", nargs="+", default=[], metavar="KEY VALUE", help="config overrides, applied last")
    return parser.parse_args(argv)


def setup_config(args: argparse.Namespace, produce: bool = False):
    """The run's config: file, --opts, then the command-line flags and the derived class
    count; every value checked (hooks.check_config; PRODUCE.EMBED_* in produce mode only)."""
    opts = list(args.opts)
    opts += ["OUTPUT", args.output]
    if args.pretrain:
        opts += ["MODEL.PRETRAINED", args.pretrain]
    if args.resume:
        opts += ["MODEL.RESUME", args.resume]
    if args.eval:
        opts += ["EVAL_MODE", "True"]
    if args.throughput:
        opts += ["THROUGHPUT_MODE", "True"]
    config = with_class_count(load_config(args.config, opts), args.config)
    problems = check_config(config, produce)
    if problems:
        raise ValueError(problems[0])
    for key, path in (("MODEL.PRETRAINED", config.MODEL.PRETRAINED), ("MODEL.RESUME", config.MODEL.RESUME)):
        if path and not os.path.isfile(path):
            raise FileNotFoundError(f"{key}: checkpoint not found: {path}")
    return config


def with_class_count(config, config_path: str):
    """`config` with MODEL.NUM_CLASSES 0 replaced by its dataset's class count (ValueError
    naming the file for a custom dataset); a count other than the dataset's is a warning."""
    info = dataset_info(config.DATA.DATASET)
    if config.MODEL.NUM_CLASSES == 0:
        if info is None:
            raise ValueError(f"{config_path}: DATA.DATASET is custom, so MODEL.NUM_CLASSES must be set")
        config.defrost()
        config.MODEL.NUM_CLASSES = info.num_classes
        config.freeze()
    elif info is not None and config.MODEL.NUM_CLASSES != info.num_classes:
        logging.getLogger("main").warning(
            f"MODEL.NUM_CLASSES {config.MODEL.NUM_CLASSES} differs from {info.name}'s {info.num_classes} classes")
    return config


class InputError(ValueError):
    """A problem in the config, a file list or the coreset, or an output folder that a
    live run holds, found at start-up before anything is written under OUTPUT.
    `primary`: whether this process is the one to say it."""

    def __init__(self, message: str, primary: bool = True):
        super().__init__(message)
        self.primary = primary


def read_inputs(args: argparse.Namespace, dist_info: DistInfo, produce: bool = False):
    """(config, file lists), read and checked on every rank; if any rank finds a problem,
    every rank raises InputError with the message of the lowest such rank."""
    config = data = error = bound = None
    try:
        check_arguments(args, in_files=("config", "coreset", "pretrain", "resume"), out_folders=("output",))
        config = setup_config(args, produce)
        data = load_file_lists(config, coreset=args.coreset)
        if config.EVAL_MODE and data.val is None:
            raise ValueError("EVAL_MODE needs DATA.DATA_PATH_VAL")
        if produce and threshold.relabel(config, data.train) is not None:
            config.defrost()  # AUM's threshold samples: their extra class is one more output
            config.MODEL.NUM_CLASSES += 1
            config.freeze()
        bound = run_identity.check(args, config, data, produce, dist_info.world_size, dist_info.is_primary)
    except (FileListError, ValueError, KeyError, OSError) as e:
        error = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    error = first_error(error)
    if error is not None:
        raise InputError(error, primary=dist_info.is_primary)
    if bound is not None:
        bound.record()  # OUTPUT/run.json: what this folder's run is (utils/run_identity.py)
    return config, data


def seed_everything(seed: int, epoch: int, rank: int) -> None:
    """Seed every generator from (SEED, epoch, rank) at the start of each epoch, so that a
    run resumed at epoch E draws exactly what an uninterrupted run draws at epoch E."""
    state = np.random.SeedSequence([seed, epoch, rank]).generate_state(2)
    random.seed(int(state[0]))
    np.random.seed(int(state[1]))
    torch.manual_seed(int(state[0]) << 32 | int(state[1]))


def main(args: argparse.Namespace, produce: bool = False) -> dict:
    dist_info: DistInfo = init_distributed()
    try:
        start_logging(dist_info.rank)  # held in memory until OUTPUT may be written
        config, data = read_inputs(args, dist_info, produce)
        try:
            output_lock = lock_output(config.OUTPUT, dist_info.rank)  # before anything is written into OUTPUT
        except OutputInUseError as e:
            raise InputError(str(e), primary=dist_info.is_primary) from None
        try:
            return run(config, data, dist_info, produce)
        finally:
            output_lock.release()
    finally:
        cleanup()


def run(config, data, dist_info: DistInfo, produce: bool) -> dict:
    device = dist_info.device
    setup_logging(config.OUTPUT, dist_info.rank)
    if dist_info.is_primary:
        atomic_write_text(os.path.join(config.OUTPUT, "config.yaml"), config.dump())
    logger.info(f"{'produce' if produce else 'train'} on {dist_info.world_size} process(es), device {device}")
    logger.info(f"train list {data.train.path}: {len(data.train)} images; "
                f"val: {len(data.val) if data.val is not None else 'none'}")

    seed_everything(config.SEED, 0, 0)  # the same initial weights on every rank and every run
    model = build_model(config).to(device)
    if hasattr(model, "flops"):
        logger.info(f"GFLOPs per image: {model.flops() / 1e9:.2f}")
    logger.info(f"parameters: {sum(p.numel() for p in model.parameters()):,}")
    if config.MODEL.PRETRAINED:
        load_pretrained(model, config.MODEL.PRETRAINED, adapt=partial(adapt_pretrained_state, config))

    ctx = build_step_context(config, model, device, len(data.train), dist_info.world_size)
    autocast = ctx.autocast
    start_epoch, resumed, checkpoint, where = resume(config, model, ctx)

    # Training runs through DDP when distributed; the recorder and validation use the
    # model without the DDP wrapper (no collectives there). With COMPILE_ENABLE the DDP
    # module itself is compiled, so that gradient all-reduces still overlap the backward.
    train_model = model
    if dist_info.world_size > 1:
        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    fwd_model = model
    if config.COMPILE_ENABLE:
        fwd_model = torch.compile(model)
        train_model = torch.compile(train_model) if train_model is not model else fwd_model

    val_loader = partial(build_val_loader, config, data.val, dist_info.rank, dist_info.world_size,
                         dist_info.device_id) if data.val is not None else None
    logit_columns = val_logit_columns(config, device)
    real = RealLabels(config.DATA.REAL_JSON_PATH, len(data.val), device, file_names=data.val.files) if (
        config.DATA.REAL_LABEL and data.val is not None) else None
    validate = partial(evaluate, fwd_model, device=device, autocast=autocast, logit_columns=logit_columns,
                       real_labels=real)

    if config.THROUGHPUT_MODE:
        seed_everything(config.SEED, start_epoch, dist_info.rank)
        batch = next(iter(build_train_loader(config, data.train, start_epoch, dist_info.rank,
                                             dist_info.world_size, dist_info.device_id)))
        return throughput(fwd_model, batch["images"], batch["labels"], ctx, device)
    if config.EVAL_MODE:
        metrics = validate(val_loader())
        logger.info(f"validation: {metrics}")
        if dist_info.is_primary:
            atomic_write_text(os.path.join(config.OUTPUT, "eval.json"), json.dumps(metrics, indent=1) + "\n")
        return metrics
    hooks = build_hooks(config, data, model, fwd_model, autocast, dist_info, produce, start_epoch, resumed,
                        checkpoint, where)
    try:
        return resumed if hooks.already_stopped else fit(config, data, train_model, model, ctx, hooks, dist_info,
                                                         start_epoch, val_loader, validate)
    finally:
        hooks.close()


def fit(config, data, train_model, model, ctx, hooks: Hooks, dist_info, start_epoch, val_loader, validate) -> dict:
    metrics_log = MetricsLog(config.OUTPUT)
    best = 0.0  # best top-1 so far, for the log (rank 0 holds the metrics of earlier epochs)
    if dist_info.is_primary:
        earlier = metrics_log.truncate_from(start_epoch)
        best = max([r["acc1"] for r in earlier if "acc1" in r], default=0.0)
        hooks.replay(earlier)
    barrier()
    record = {}
    for epoch in range(start_epoch, config.TRAIN.EPOCHS):
        seed_everything(config.SEED, epoch, dist_info.rank)
        order = hooks.start_epoch(epoch, ctx.scheduler, len(data.train), dist_info.world_size)
        loader = build_train_loader(config, data.train, epoch, dist_info.rank, dist_info.world_size,
                                    dist_info.device_id, eval_view=hooks.recorder is not None, epoch_order=order)
        stats = train_one_epoch(train_model, loader, ctx, epoch, dist_info.device, config.PRINT_FREQ, hooks=hooks)
        hooks.after_training()
        broadcast_buffers_(model)  # DDP syncs buffers only at training forwards
        val_metrics = validate(val_loader(), capture=hooks.val_capture(epoch)) if val_loader is not None else {}
        # The history of the epoch (embeddings, then the records, prob last) and its stability.
        record = {"epoch": epoch, **stats, **hooks.end_epoch(epoch, dist_info.world_size, dist_info.rank),
                  **val_metrics, **hooks.extras}
        if val_loader is not None:
            best = max(best, record["acc1"])
            record["best_acc1"] = best
            logger.info(f"epoch {epoch}: top-1 {record['acc1']:.2f}% top-5 {record['acc5']:.2f}% "
                        f"(best {best:.2f}%) on {record['val_samples']} images")
        stopped = hooks.stop(record)
        if stopped:
            record[STOPPED_KEY] = True
            hooks.embed_at_stop(epoch, dist_info.world_size, dist_info.rank,
                                None if val_loader is None else lambda capture: validate(val_loader(), capture=capture))
            saved = config.TRAIN.EPOCHS - epoch - 1
            rule = hooks.stop_rule
            logger.info(f"coreset stable: kept-set overlap at {rule.fraction:g} >= {rule.overlap} for "
                        f"{rule.patience} consecutive epochs; stopping after epoch {epoch}: {saved} of "
                        f"{config.TRAIN.EPOCHS} epochs saved ({saved / config.TRAIN.EPOCHS:.0%}); the history of "
                        f"epochs 0..{epoch} and a checkpoint are kept")
        last = epoch + 1 == config.TRAIN.EPOCHS or stopped
        if dist_info.is_primary:
            # History and metrics first, checkpoint last: a run killed in between redoes the
            # epoch, and resuming drops its records before writing them again.
            metrics_log.append(record)
            if (epoch + 1) % config.SAVE_FREQ == 0 or last:
                state = checkpoint_state(config, epoch, model, ctx, record, hooks)
                save_checkpoint(checkpoint_path(config.OUTPUT, epoch), state)
                if config.TRAIN.KEEP_CHECKPOINTS:  # older ones go only once the new one loads
                    prune_checkpoints(config.OUTPUT, config.TRAIN.KEEP_CHECKPOINTS)
        barrier()
        if stopped:
            break
    return record


def cli(argv: Optional[Sequence[str]] = None, produce: bool = False) -> int:
    """The command: 0 when the run ends; 2 on bad input, said by rank 0 in one line on
    stderr (and in the log an earlier run left in OUTPUT, if any), with nothing written."""
    args = parse_args(argv, produce=produce)
    try:
        main(args, produce=produce)
    except InputError as e:
        if e.primary:
            print(f"{'main_and_produce.py' if produce else 'main.py'}: error: {e}", file=sys.stderr)
            note_in_earlier_log(args.output, 0, logger.name, f"refused to start: {e}")
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
