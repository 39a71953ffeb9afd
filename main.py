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
from contextlib import nullcontext
from functools import partial
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from data.build import build_train_loader, build_val_loader, load_file_lists
from data.datasets import dataset_info
from data.file_list import FileListError
from data.val_labels import RealLabels, val_logit_columns
from engine import StepContext, evaluate, throughput, train_one_epoch
from models.build import build_model
from models.pretrained import adapt_pretrained_state
from dynunc.training import embeddings, threshold, topk
from dynunc.training.online_pruning import DynamicPruner, plan_images, plan_pruned_epoch
from dynunc.training.online_pruning import check_config as check_prune_config
from dynunc.training.produce_run import make_embedder, make_topk, make_tracker, record_threshold, stop_now
from dynunc.training.recorder import PredictionRecorder
from dynunc.training.stability import STOPPED_KEY, StabilityTracker, StopWhenStable, check_config
from utils.checkpoint import (checkpoint_path, latest_checkpoint, load_checkpoint, load_pretrained, prune_checkpoints,
                              save_checkpoint)
from utils.config import load_config
from utils.distributed import DistInfo, barrier, broadcast_buffers_, cleanup, first_error, init_distributed
from utils.io import atomic_write_text
from utils.logger import MetricsLog, note_in_earlier_log, setup_logging, start_logging
from utils.lr_scheduler import LRScheduler
from utils.optimizer import build_optimizer
from utils.output_lock import OutputInUseError, lock_output

logger = logging.getLogger("main")


def parse_args(argv: Optional[Sequence[str]] = None, produce: bool = False) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Train and record per-sample predictions every epoch" if produce else "Train and evaluate"
    )
    parser.add_argument("--config", required=True, help="YAML config (overrides utils/config.py defaults)")
    parser.add_argument("--output", required=True, help="output folder (logs, checkpoints, history)")
    parser.add_argument("--coreset", help="train on this file list instead of DATA.TRAIN_FILE_LIST")
    parser.add_argument("--pretrain", help="start from these weights (sets MODEL.PRETRAINED)")
    parser.add_argument("--resume", help="resume from this checkpoint (else TRAIN.AUTO_RESUME looks in --output)")
    parser.add_argument("--eval", action="store_true", help="only validate (sets EVAL_MODE)")
    parser.add_argument("--throughput", action="store_true", help="only measure speed (sets THROUGHPUT_MODE)")
    parser.add_argument("--opts", nargs="+", default=[], metavar="KEY VALUE", help="config overrides, applied last")
    return parser.parse_args(argv)


def setup_config(args: argparse.Namespace, produce: bool = False):
    """The run's config: file, --opts, then the command-line flags and the derived class
    count. PRODUCE.EMBED_* are checked in produce mode only (main.py does not read them)."""
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
    config = load_config(args.config, opts)
    info = dataset_info(config.DATA.DATASET)
    if config.MODEL.NUM_CLASSES == 0:
        if info is None:
            raise ValueError(f"{args.config}: DATA.DATASET is custom, so MODEL.NUM_CLASSES must be set")
        config.defrost()
        config.MODEL.NUM_CLASSES = info.num_classes
        config.freeze()
    elif info is not None and config.MODEL.NUM_CLASSES != info.num_classes:
        logging.getLogger("main").warning(
            f"MODEL.NUM_CLASSES {config.MODEL.NUM_CLASSES} differs from {info.name}'s {info.num_classes} classes")
    if config.TRAIN.KEEP_CHECKPOINTS < 0:
        raise ValueError(f"TRAIN.KEEP_CHECKPOINTS is {config.TRAIN.KEEP_CHECKPOINTS}: 0 keeps every checkpoint, "
                         f"N > 0 the newest N")
    problems = (check_config(config.PRODUCE) + check_prune_config(config.TRAIN.DYNAMIC_PRUNE)
                + (embeddings.check_config(config) + topk.check_config(config) + threshold.check_config(config)
                   if produce else []))
    if problems:
        raise ValueError(problems[0])
    for key, path in (("MODEL.PRETRAINED", config.MODEL.PRETRAINED), ("MODEL.RESUME", config.MODEL.RESUME)):
        if path and not os.path.isfile(path):
            raise FileNotFoundError(f"{key}: checkpoint not found: {path}")
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
    config = data = error = None
    try:
        config = setup_config(args, produce)
        if os.path.exists(config.OUTPUT) and not os.path.isdir(config.OUTPUT):
            raise ValueError(f"{config.OUTPUT}: the output folder exists as a file; give another --output")
        data = load_file_lists(config, coreset=args.coreset)
        if produce and threshold.relabel(config, data.train) is not None:
            config.defrost()  # AUM's threshold samples: their extra class is one more output
            config.MODEL.NUM_CLASSES += 1
            config.freeze()
    except (FileListError, ValueError, KeyError, OSError) as e:
        error = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    error = first_error(error)
    if error is not None:
        raise InputError(error, primary=dist_info.is_primary)
    return config, data


def seed_everything(seed: int, epoch: int, rank: int) -> None:
    """Seed every generator from (SEED, epoch, rank) at the start of each epoch, so that a
    run resumed at epoch E draws exactly what an uninterrupted run draws at epoch E."""
    state = np.random.SeedSequence([seed, epoch, rank]).generate_state(2)
    random.seed(int(state[0]))
    np.random.seed(int(state[1]))
    torch.manual_seed(int(state[0]) << 32 | int(state[1]))


def make_autocast(config, device: torch.device):
    if device.type != "cuda" or not config.AMP_ENABLE:
        return nullcontext, None
    dtypes = {"float16": torch.float16, "bfloat16": torch.bfloat16}
    if config.AMP_DTYPE not in dtypes:
        raise ValueError(f"AMP_DTYPE: unknown dtype {config.AMP_DTYPE!r}; known: float16, bfloat16")
    dtype = dtypes[config.AMP_DTYPE]
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return partial(torch.autocast, "cuda", dtype=dtype), scaler


def make_criterion(config, num_classes: int):
    aug = config.AUG
    if aug.MIXUP > 0 or aug.CUTMIX > 0 or aug.CUTMIX_MINMAX is not None:
        from timm.data import Mixup
        from timm.loss import SoftTargetCrossEntropy

        mixup = Mixup(mixup_alpha=aug.MIXUP, cutmix_alpha=aug.CUTMIX, cutmix_minmax=aug.CUTMIX_MINMAX,
                      prob=aug.MIXUP_PROB, switch_prob=aug.MIXUP_SWITCH_PROB, mode=aug.MIXUP_MODE,
                      label_smoothing=config.MODEL.LABEL_SMOOTHING, num_classes=num_classes)
        return SoftTargetCrossEntropy(), mixup
    return nn.CrossEntropyLoss(label_smoothing=config.MODEL.LABEL_SMOOTHING), None


def checkpoint_state(config, epoch: int, model: nn.Module, ctx: StepContext, metrics: dict) -> dict:
    return {
        "model": model.state_dict(),
        "optimizer": ctx.optimizer.state_dict(),
        "lr_scheduler": ctx.scheduler.state_dict(),
        "scaler": ctx.scaler.state_dict() if ctx.scaler is not None else {},
        "epoch": epoch,
        "config": config.dump(),
        "metrics": metrics,
        **({"dynamic_prune": ctx.pruner.state_dict()} if ctx.pruner is not None else {}),
    }


def resume(config, model: nn.Module, ctx: StepContext) -> Tuple[int, dict]:
    """Restore from MODEL.RESUME or the newest complete checkpoint in OUTPUT; returns the
    first epoch still to run and the metrics record the checkpoint holds ({} if none)."""
    if config.MODEL.RESUME:
        found = (config.MODEL.RESUME, load_checkpoint(config.MODEL.RESUME))
    elif config.TRAIN.AUTO_RESUME:
        found = latest_checkpoint(config.OUTPUT)
    else:
        found = None
    if found is None:
        return config.TRAIN.START_EPOCH, {}
    path, state = found
    model.load_state_dict(state["model"])
    if not config.EVAL_MODE:
        ctx.optimizer.load_state_dict(state["optimizer"])
        ctx.scheduler.load_state_dict(state["lr_scheduler"])
        if ctx.scaler is not None and state.get("scaler"):
            ctx.scaler.load_state_dict(state["scaler"])
        if ctx.pruner is not None:
            if "dynamic_prune" in state:
                ctx.pruner.load_state_dict(state["dynamic_prune"], path)
            else:
                logger.warning(f"{path} holds no dynamic-pruning scores (a run without TRAIN.DYNAMIC_PRUNE): "
                               f"scores start from the resumed epoch")
    logger.info(f"resumed from {path} (epoch {state['epoch']})")
    return int(state["epoch"]) + 1, dict(state.get("metrics") or {})


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

    autocast, scaler = make_autocast(config, device)
    criterion, mixup = make_criterion(config, config.MODEL.NUM_CLASSES)
    optimizer = build_optimizer(config, model)
    batches = (len(data.train) // dist_info.world_size) // config.DATA.BATCH_SIZE_TRAIN
    updates_per_epoch = -(-batches // config.TRAIN.ACCUMULATION_STEPS)
    scheduler = LRScheduler(optimizer, config, max(1, updates_per_epoch))
    pruner = DynamicPruner(config.TRAIN.DYNAMIC_PRUNE, len(data.train), config.TRAIN.EPOCHS, config.SEED,
                           device) if config.TRAIN.DYNAMIC_PRUNE.ENABLE else None
    ctx = StepContext(optimizer, scheduler, criterion, scaler, autocast, config.TRAIN.ACCUMULATION_STEPS,
                      config.TRAIN.CLIP_GRAD, mixup, pruner)
    start_epoch, resumed = resume(config, model, ctx)

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
        if val_loader is None:
            raise ValueError("EVAL_MODE needs DATA.DATA_PATH_VAL")
        metrics = validate(val_loader())
        logger.info(f"validation: {metrics}")
        if dist_info.is_primary:
            atomic_write_text(os.path.join(config.OUTPUT, "eval.json"), json.dumps(metrics, indent=1) + "\n")
        return metrics
    stop_rule = None
    if produce and config.PRODUCE.STOP_WHEN_STABLE.ENABLE:
        stop = config.PRODUCE.STOP_WHEN_STABLE
        stop_rule = StopWhenStable(stop.OVERLAP, stop.PATIENCE, stop.FRACTION)
        if resumed.get(STOPPED_KEY):
            # A rerun of the command that stopped (auto-resume): the produce run is done.
            logger.info(f"this produce run stopped when stable after epoch {resumed['epoch']} (of "
                        f"{config.TRAIN.EPOCHS}); its history and checkpoint are complete, nothing to do. To train "
                        f"on, set PRODUCE.STOP_WHEN_STABLE.ENABLE False")
            return resumed
    tracker = make_tracker(config, len(data.train)) if produce and dist_info.is_primary else None
    try:
        return fit(config, data, train_model, fwd_model, model, ctx, dist_info, start_epoch, produce, val_loader,
                   validate, tracker, stop_rule)
    finally:
        if tracker is not None:
            tracker.close()


def fit(config, data, train_model, fwd_model, model, ctx, dist_info, start_epoch, produce, val_loader,
        validate, tracker: Optional[StabilityTracker] = None, stop_rule: Optional[StopWhenStable] = None) -> dict:
    metrics_log = MetricsLog(config.OUTPUT)
    recorder = embedder = None
    if produce:
        embedder = make_embedder(config, data, model, fwd_model, ctx, dist_info)
        recorder = PredictionRecorder(len(data.train), config.OUTPUT, dist_info.device, dist_info.is_primary,
                                      file_list=data.train.path, tracker=tracker, embeddings=embedder,
                                      topk=make_topk(config, len(data.train), dist_info))
        recorder.resume_from(start_epoch)
        record_threshold(config, len(data.train), dist_info.is_primary)
    best = 0.0  # best top-1 so far, for the log (rank 0 holds the metrics of earlier epochs)
    if dist_info.is_primary:
        earlier = metrics_log.truncate_from(start_epoch)
        best = max([r["acc1"] for r in earlier if "acc1" in r], default=0.0)
        if stop_rule is not None:
            stop_rule.replay(earlier)
    barrier()
    record = {}
    for epoch in range(start_epoch, config.TRAIN.EPOCHS):
        seed_everything(config.SEED, epoch, dist_info.rank)
        plan = plan_pruned_epoch(config, ctx.pruner, ctx.scheduler, epoch, len(data.train), dist_info.world_size)
        loader = build_train_loader(config, data.train, epoch, dist_info.rank, dist_info.world_size,
                                    dist_info.device_id, eval_view=produce,
                                    epoch_order=plan.order if plan is not None else None)
        if recorder is not None:
            recorder.start_epoch(epoch)
        stats = train_one_epoch(train_model, loader, ctx, epoch, dist_info.device, config.PRINT_FREQ,
                                recorder=recorder, recorder_model=fwd_model)
        if ctx.pruner is not None:
            ctx.pruner.end_epoch()
        broadcast_buffers_(model)  # DDP syncs buffers only at training forwards
        # Validation before the history is written: its embeddings go before prob_{epoch}.
        val_metrics = {}
        if val_loader is not None:
            embedding_val = embedder is not None and embedder.start(epoch, "val_embed")
            val_metrics = validate(val_loader(), capture=partial(embedder.capture, "val_embed") if embedding_val
                                   else None)
            if embedding_val:
                embedder.finish(epoch, "val_embed", len(data.val))
        stability = recorder.end_epoch(epoch) if recorder is not None else {}
        record = {"epoch": epoch, **stats, **stability, **val_metrics}
        if plan is not None:
            record.update(images_seen=plan_images(config, plan, dist_info.world_size),
                          prune_candidates=plan.candidates, prune_dropped=plan.dropped)
        if val_loader is not None:
            best = max(best, record["acc1"])
            record["best_acc1"] = best
            logger.info(f"epoch {epoch}: top-1 {record['acc1']:.2f}% top-5 {record['acc5']:.2f}% "
                        f"(best {best:.2f}%) on {record['val_samples']} images")
        stopped = stop_now(stop_rule, record, dist_info.device)
        if stopped:
            record[STOPPED_KEY] = True
            saved = config.TRAIN.EPOCHS - epoch - 1
            logger.info(f"coreset stable: kept-set overlap at {stop_rule.fraction:g} >= {stop_rule.overlap} for "
                        f"{stop_rule.patience} consecutive epochs; stopping after epoch {epoch}: {saved} of "
                        f"{config.TRAIN.EPOCHS} epochs saved ({saved / config.TRAIN.EPOCHS:.0%}); the history of "
                        f"epochs 0..{epoch} and a checkpoint are kept")
        last = epoch + 1 == config.TRAIN.EPOCHS or stopped
        if dist_info.is_primary:
            # History and metrics first, checkpoint last: a run killed in between redoes the
            # epoch, and resuming drops its records before writing them again.
            metrics_log.append(record)
            if (epoch + 1) % config.SAVE_FREQ == 0 or last:
                save_checkpoint(checkpoint_path(config.OUTPUT, epoch), checkpoint_state(config, epoch, model, ctx, record))
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
