r"""Embed a training list (and its validation list) with a pretrained timm model, for the
methods that read embeddings: get_coreset.py --dedup, moderate, prototype, kcenter, d2,
and report.py's projection, --dedup and --leakage, each given ``--embeddings OUT``.

    torchrun --nproc_per_node=8 embed.py --config configs/swin-tiny-1k.yaml \
        --model vit_small_patch14_dinov2.lvd142m --weights dinov2_vits14.safetensors \
        --model-kwargs dynamic_img_size=True --img-size 224 --output EMB

SemDeDup, D2 and prototypes read the features of a pretrained model (CLIP, SwAV, DINO),
not those of the model being trained on the data being pruned: this is how to give them
those. The config (or --opts alone) names the data as main.py's does (DATA.*: the file lists, shards or
dataset, the workers); the images go through the produce run's eval view (shorter side
resized to --img-size, centre crop, data/build.py's build_eval_view_loader) on the same
DALI pipeline, and are renormalised from the pipeline's ImageNet mean and std to the
model's own. Nothing is downloaded: --weights is a local file (models/timm_embedder.py
says which kinds).

Writes into OUT, as a produce run's history lays them out (dynunc/history.py):
``embed_0.npy`` (N x D float16, one row per line of the training list) and, with a
validation list, ``val_embed_0.npy``; ``file_list.json`` (and ``sample_keys.txt``): the
samples embedded, so that --embeddings refuses another list's history; ``embedder.json``:
the model, its weights' sha256, the view, and the figures of the run. D is the pooled
features' width (--embed-dim -1, the default: what the methods' authors read) or a fixed
random projection (--embed-dim D: on ImageNet-21K's 13M images, 768 values take 20 GB
and 128 take 3.3 GB). Each rank embeds every world_size-th sample; rank 0 merges the
parts (dynunc/training/embeddings.py's EmbeddingStore), atomically.

An OUT that holds another model's, weights', view's or list's embeddings is refused (exit
2, one line naming what differs): a folder holds one embedding. The same command again
recomputes them.
"""
import argparse
import json
import logging
import os
import sys
import time
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from data.build import build_eval_view_loader, history_identity, load_file_lists
from data.pipeline import IMAGENET_MEAN, IMAGENET_STD
from dynunc.distributed import first_error
from dynunc.history import EMBED_DTYPE, embedder_path, read_embedder, sample_keys_path, write_fingerprint
from dynunc.io import atomic_open, atomic_write_text
from dynunc.lists.file_list import FileListError
from dynunc.lists.index import open_index
from dynunc.paths import check_arguments
from dynunc.training.embeddings import FULL_WIDTH, EmbeddingStore, remove_parts
from dynunc.training.recorder import keys_identity
from main import InputError, with_class_count
from models.timm_embedder import EmbedderError, build_embedder, feature_width, parse_model_kwargs, sha256_of
from utils.config import load_config
from utils.distributed import cleanup, init_distributed
from utils.output_lock import OutputInUseError, lock_output

logger = logging.getLogger("embed")

EPOCH = 0  # the epoch number of the files written: the embeddings of one model, not of a training epoch
# embedder.json's keys that say what the embeddings are: another value for one of them is another folder
IDENTITY_KEYS = ("model", "model_kwargs", "weights_sha256", "img_size", "interpolation", "embed_dim", "train", "val")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config naming the data (DATA.*), as main.py's; without it, utils/config.py's "
                   "defaults and --opts (e.g. --opts DATA.DATA_PATH_TRAIN /data/train DATA.DATASET custom "
                   "MODEL.NUM_CLASSES 10)")
    p.add_argument("--model", required=True, help="timm model name (timm.list_models() lists them)")
    p.add_argument("--weights", required=True, help="local weights file of that model (.pth, .pt, .bin, .safetensors)")
    p.add_argument("--output", required=True, help="folder for the embeddings (get_coreset.py --embeddings OUT)")
    p.add_argument("--model-kwargs", nargs="+", default=[], metavar="KEY=VALUE",
                   help="timm.create_model arguments, e.g. dynamic_img_size=True img_size=224")
    p.add_argument("--img-size", type=int, help="side of the view (default: the size the weights were trained at, "
                   "timm's pretrained_cfg input_size; the config's DATA.IMG_SIZE is the trained model's, not used)")
    p.add_argument("--embed-dim", type=int, default=FULL_WIDTH,
                   help=f"{FULL_WIDTH} (default): the pooled features as they are; D > 0: a fixed random projection "
                   "to D values (disk: N x D x 2 bytes)")
    p.add_argument("--batch-size", type=int, help="images per forward (default DATA.BATCH_SIZE_VAL)")
    p.add_argument("--no-amp", action="store_true", help="on a GPU, run the model in float32 (default bfloat16 autocast)")
    p.add_argument("--opts", nargs="+", default=[], metavar="KEY VALUE", help="config overrides, applied last")
    return p.parse_args(argv)


def sample_identity(samples) -> Tuple[Optional[dict], Optional[bytes]]:
    """(the fingerprint a history records for `samples`: a file list's, or the sample
    keys'; sample_keys.txt's bytes, None for a file list). (None, None) for no samples."""
    if samples is None:
        return None, None
    named = history_identity(samples)
    if "file_list" in named:
        return open_index(named["file_list"]).fingerprint(), None
    text, fingerprint = keys_identity(named["keys"])
    return fingerprint, text


def describe(args: argparse.Namespace, config, embedder, width: int, train: dict, val: Optional[dict]) -> dict:
    """embedder.json without the run's figures: what defines the embeddings (IDENTITY_KEYS)
    and where they came from."""
    return {"model": args.model, "model_kwargs": parse_model_kwargs(args.model_kwargs),
            "weights": os.path.abspath(args.weights), "weights_sha256": sha256_of(args.weights),
            "img_size": config.DATA.IMG_SIZE, "interpolation": config.DATA.INTERPOLATION,
            "embed_dim": args.embed_dim, "width": width if args.embed_dim == FULL_WIDTH else args.embed_dim,
            "features": width, "mean": list(embedder.mean), "std": list(embedder.std),
            "train": train, "val": val,
            "classifier_keys_dropped": len(embedder.dropped)}


def check_same(output: str, described: dict) -> None:
    """ValueError naming the first identity key in which OUT's embeddings differ."""
    old = read_embedder(output)
    if old is None:
        return
    for key in IDENTITY_KEYS:
        if json.dumps(old.get(key), sort_keys=True) != json.dumps(described[key], sort_keys=True):
            shown = {k: (v.get("sha256", "")[:16] + "..." if isinstance(v, dict) else v)
                     for k, v in (("old", old.get(key)), ("new", described[key]))}
            raise ValueError(f"{embedder_path(output)}: {output} holds embeddings with {key} {shown['old']}, this "
                             f"command's is {shown['new']}; give another --output (a folder holds one embedding)")


def read_inputs(args: argparse.Namespace, dist_info):
    """(config, data, embedder, description, the training samples' sample_keys.txt bytes or
    None), checked on every rank: the lowest rank's problem is everyone's (InputError)."""
    result, error = None, None
    try:
        check_arguments(args, in_files=("config", "weights"), out_folders=("output",))
        if args.embed_dim == 0 or args.embed_dim < FULL_WIDTH:
            raise ValueError(f"--embed-dim must be {FULL_WIDTH} (the features as they are) or a width > 0, "
                             f"got {args.embed_dim}")
        for flag, value in (("--batch-size", args.batch_size), ("--img-size", args.img_size)):
            if value is not None and value < 1:
                raise ValueError(f"{flag} must be >= 1, got {value}")
        embedder = build_embedder(args.model, args.weights, parse_model_kwargs(args.model_kwargs))
        opts = list(args.opts) + ["OUTPUT", args.output, "DATA.IMG_SIZE", str(args.img_size or embedder.input_size)]
        if args.batch_size:
            opts += ["DATA.BATCH_SIZE_VAL", str(args.batch_size)]
        config = with_class_count(load_config(args.config, opts), args.config or "--opts")
        data = load_file_lists(config)
        train, keys_text = sample_identity(data.train)
        width = feature_width(embedder.model, config.DATA.IMG_SIZE, args.model)
        described = describe(args, config, embedder, width, train, sample_identity(data.val)[0])
        check_same(args.output, described)
        result = (config, data, embedder, described, keys_text)
    except (FileListError, EmbedderError, ValueError, KeyError, OSError) as e:
        error = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
    error = first_error(error)
    if error is not None:
        raise InputError(error, primary=dist_info.is_primary)
    return result


def renormalise(embedder, device: torch.device):
    """(scale, shift) per channel taking the pipeline's ImageNet-normalised images to the
    model's normalisation: x_model = x * scale + shift."""
    pipe_mean = torch.tensor(IMAGENET_MEAN) / 255.0
    pipe_std = torch.tensor(IMAGENET_STD) / 255.0
    mean, std = torch.tensor(embedder.mean), torch.tensor(embedder.std)
    scale, shift = pipe_std / std, (pipe_mean - mean) / std
    return scale.view(1, 3, 1, 1).to(device), shift.view(1, 3, 1, 1).to(device)


@torch.no_grad()
def embed_samples(config, samples, kind: str, embedder, described: dict, dist_info, amp: bool) -> dict:
    """Embed `samples` (every world_size-th on this rank) into ``{kind}_0.npy``; rank 0's
    figures of the pass."""
    device, rank, world = dist_info.device, dist_info.rank, dist_info.world_size
    n = len(samples)
    scale, shift = renormalise(embedder, device)
    store = EmbeddingStore(config.OUTPUT, described["width"], rank, world,
                           project=described["embed_dim"] != FULL_WIDTH)
    mine = np.arange(rank, n, world)
    started, done, next_note = time.perf_counter(), 0, 0.1
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if amp else torch.autocast("cpu", enabled=False)
    if len(mine):
        for batch in build_eval_view_loader(config, samples, mine, dist_info.device_id):
            images = batch["images"].to(device, non_blocking=True) * scale + shift
            with autocast:
                features = embedder.model(images)
            store.add(batch["indices"], features.float())
            done += len(batch["indices"])
            if dist_info.is_primary and done >= next_note * len(mine):
                logger.info(f"{kind}: {done} of {len(mine)} images on rank 0 "
                            f"({done / (time.perf_counter() - started):.0f} images/s)")
                next_note += 0.1
    path = store.finish(EPOCH, kind, n)
    seconds = time.perf_counter() - started
    return {"images": n, "dim": store.dim, "seconds": round(seconds, 2), "file": path and os.path.basename(path)}


def write_identity(output: str, fingerprint: dict, keys_text: Optional[bytes]) -> None:
    """file_list.json (and sample_keys.txt for samples named by keys): what the rows are."""
    if keys_text is not None:
        with atomic_open(sample_keys_path(output), "wb") as f:
            f.write(keys_text)
    write_fingerprint(output, fingerprint)


def main(args: argparse.Namespace) -> dict:
    dist_info = init_distributed()
    try:
        config, data, embedder, described, keys_text = read_inputs(args, dist_info)
        try:
            lock = lock_output(config.OUTPUT, dist_info.rank)
        except OutputInUseError as e:
            raise InputError(str(e), primary=dist_info.is_primary) from None
        try:
            return run(args, config, data, embedder, described, keys_text, dist_info)
        finally:
            lock.release()
    finally:
        cleanup()


def run(args, config, data, embedder, described: dict, keys_text: Optional[bytes], dist_info) -> dict:
    output = config.OUTPUT
    embedder.model.to(dist_info.device)
    amp = dist_info.device.type == "cuda" and not args.no_amp
    if dist_info.is_primary:
        os.makedirs(output, exist_ok=True)
        remove_parts(output)  # what a killed run left
        logger.info(f"{args.model} ({args.weights}, sha256 {described['weights_sha256'][:16]}...) on "
                    f"{dist_info.world_size} process(es), {dist_info.device}: {len(data.train)} training images"
                    f"{f', {len(data.val)} validation images' if data.val is not None else ''} at "
                    f"{config.DATA.IMG_SIZE} px")
    figures = {"processes": dist_info.world_size, "device": str(dist_info.device), "amp": amp,
               "embed": embed_samples(config, data.train, "embed", embedder, described, dist_info, amp)}
    if data.val is not None:
        figures["val_embed"] = embed_samples(config, data.val, "val_embed", embedder, described, dist_info, amp)
    if dist_info.is_primary:
        write_identity(output, described["train"], keys_text)
        atomic_write_text(embedder_path(output), json.dumps({**described, "run": figures}, indent=1) + "\n")
        logger.info(f"embed_{EPOCH}.npy: {len(data.train)} x {figures['embed']['dim']} "
                    f"{np.dtype(EMBED_DTYPE).name} in {figures['embed']['seconds']:.1f}s -> {output} "
                    f"(get_coreset.py / report.py --embeddings {output})")
    return figures


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """0 when the embeddings are written; 2 on bad input, said by rank 0 in one line."""
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s", stream=sys.stderr)
    args = parse_args(argv)
    try:
        main(args)
    except InputError as e:
        if e.primary:
            print(f"embed.py: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(cli())
