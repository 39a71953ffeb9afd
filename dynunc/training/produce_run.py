"""What produce mode adds to a training run (main_and_produce.py): rank 0's coreset
stability tracker and the stop rule it feeds (dynunc/training/stability.py), and the embedding
recorder (dynunc/training/embeddings.py) and the top-k class-probability recorder
(dynunc/training/topk.py), each built from the config."""
import logging
from functools import partial
from typing import Optional

import torch

from data.build import build_eval_view_loader
from dynunc.training import embeddings
from dynunc.history import history_dir
from dynunc.training.stability import StabilityTracker, StopWhenStable, effective_window
from dynunc.training import threshold
from dynunc.training.topk import TopKRecorder, topk_epochs
from utils.distributed import DistInfo, all_reduce_, is_primary

logger = logging.getLogger("main")


def make_tracker(config, num_samples: int) -> Optional[StabilityTracker]:
    """Rank 0's coreset stability tracker (PRODUCE.TRACK_*), None where nothing can be tracked."""
    produce = config.PRODUCE
    window = effective_window(produce.TRACK_WINDOW, config.TRAIN.EPOCHS)
    if not produce.TRACK_FRACTIONS or not window:
        why = "PRODUCE.TRACK_FRACTIONS is empty" if not produce.TRACK_FRACTIONS else (
            f"{config.TRAIN.EPOCHS} epochs give no dynamic-uncertainty window")
        logger.info(f"coreset stability is not tracked: {why}")
        if produce.STOP_WHEN_STABLE.ENABLE:
            logger.warning("PRODUCE.STOP_WHEN_STABLE cannot stop a run whose stability is not tracked")
        return None
    if window != produce.TRACK_WINDOW:
        logger.info(f"coreset stability: window {window} (PRODUCE.TRACK_WINDOW {produce.TRACK_WINDOW} is more than "
                    f"{config.TRAIN.EPOCHS} epochs allow)")
    return StabilityTracker(num_samples, window, produce.TRACK_FRACTIONS, produce.TRACK_DELTA)


def make_embedder(config, data, model, fwd_model, ctx, dist_info: DistInfo) -> Optional[embeddings.EmbeddingRecorder]:
    """Produce mode's embedding recorder (PRODUCE.EMBED_DIM, PRODUCE.EMBED_EPOCHS), None
    for EMBED_DIM 0."""
    produce = config.PRODUCE
    if not produce.EMBED_DIM:
        return None
    epochs = embeddings.embed_epochs(produce.EMBED_EPOCHS, config.TRAIN.EPOCHS)
    if produce.STOP_WHEN_STABLE.ENABLE:
        logger.info(f"embeddings are recorded at epochs {epochs} (PRODUCE.EMBED_EPOCHS): a run that stops when "
                    f"stable before them has none")
    return embeddings.EmbeddingRecorder(
        model, produce.EMBED_DIM, epochs, history_dir(config.OUTPUT), dist_info.rank, dist_info.world_size,
        dist_info.device, forward_model=fwd_model,
        rest_loader=partial(build_eval_view_loader, config, data.train, device_id=dist_info.device_id),
        autocast=ctx.autocast)


def make_topk(config, num_samples: int, dist_info: DistInfo) -> Optional[TopKRecorder]:
    """Produce mode's top-k class-probability recorder (PRODUCE.TOPK), None for K 0."""
    k = config.PRODUCE.TOPK.K
    if not k:
        return None
    epochs = topk_epochs(config.PRODUCE.TOPK.EPOCHS, config.TRAIN.EPOCHS)
    logger.info(f"top-{k} class probabilities are recorded at epochs {epochs} (PRODUCE.TOPK)")
    return TopKRecorder(num_samples, k, config.MODEL.NUM_CLASSES, epochs, history_dir(config.OUTPUT),
                        dist_info.device, dist_info.is_primary)


def record_threshold(config, num_samples: int, is_primary: bool) -> None:
    """With PRODUCE.THRESHOLD_SAMPLES: rank 0 records which images were relabelled to the
    extra class (MODEL.NUM_CLASSES - 1, the class main.py added) beside the history."""
    which = config.PRODUCE.THRESHOLD_SAMPLES
    if not which or not is_primary:
        return
    extra = config.MODEL.NUM_CLASSES - 1
    indices = threshold.threshold_indices(num_samples, extra, which)
    threshold.record(history_dir(config.OUTPUT), config, extra, indices)
    logger.info(f"threshold samples (AUM, set {which}): {len(indices)} images trained under the extra class {extra}")


def stop_now(stop_rule: Optional[StopWhenStable], record: dict, device: torch.device) -> bool:
    """Rank 0 decides from its metrics (the only rank with the stability keys); every rank
    learns the decision from one scalar all-reduce."""
    if stop_rule is None:
        return False
    flag = torch.tensor(int(stop_rule.update(record)) if is_primary() else 0, device=device)
    return bool(all_reduce_(flag).item())
