"""Images/s of the DALI CPU training loader against a torchvision DataLoader doing the same work.

    python benchmarks/bench_loader.py [--images 1500] [--workers 2] [--batch 64] [--epochs 3]
        [--dir DIR] [--auto-augment] [--only dali-train,dali-produce,torch-train,torch-produce]

Generates (or reuses, under --dir) a tree of ImageNet-like JPEGs: ~500 x 375 px (sides
drawn around ImageNet's typical sizes), quality 90, ~110 KB each, with natural-ish
content (smooth multi-scale colour noise, edges, fine grain), and a file list in the
paper's format. Then, each in a fresh child process (so each has the cores to itself and
its own peak RSS), runs --epochs epochs, a new loader each epoch as training does:

- dali-train:    data.build.build_train_loader (CPU pipeline): decode with a random crop,
                 resize to 224, flip, normalise (AutoAugment with --auto-augment);
- dali-produce:  the same with the produce-mode eval view (decode once, train view +
                 resize shorter side to 224 and centre crop);
- torch-train:   torch.utils.data.DataLoader over the same list: PIL decode,
                 RandomResizedCrop(224, bicubic), flip, ToTensor, Normalize (AutoAugment);
- torch-produce: the same plus the eval view from the same decoded image.

Both sides get the same parallelism: DALI with DATA.NUM_THREADS = --workers (plus its
file-reading threads, which only read bytes), the DataLoader with num_workers =
--workers processes. Nothing is asserted; images/s are printed.
"""
import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks.measure import run_child, this_process  # noqa: E402

MODES = ("dali-train", "dali-produce", "torch-train", "torch-produce")


# -----------------------------------------------------------------------------
# The image tree
# -----------------------------------------------------------------------------
def natural_image(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """An RGB uint8 image with the statistics JPEG sees in photos: most energy at low
    spatial frequencies (noise summed over octaves, ~1/f), a few hard edges, and a
    fine grain that sets the compressed size."""
    from PIL import Image

    image = np.zeros((height, width, 3), dtype=np.float32)
    for octave in range(1, 9):
        cells = 2 ** octave
        coarse = rng.normal(0, 1, (max(2, cells * height // width), cells, 3)).astype(np.float32)
        layer = np.stack([np.asarray(Image.fromarray(coarse[..., c]).resize((width, height), Image.BICUBIC))
                          for c in range(3)], axis=-1)
        image += layer * (30.0 / octave ** 0.2)
    for _ in range(rng.integers(2, 6)):  # objects: flat-ish shapes with hard edges
        x0, y0 = rng.integers(0, width), rng.integers(0, height)
        rx, ry = rng.integers(15, width // 4), rng.integers(15, height // 4)
        yy, xx = np.ogrid[:height, :width]
        inside = ((xx - x0) / rx) ** 2 + ((yy - y0) / ry) ** 2 < 1
        image[inside] = image[inside] * 0.6 + rng.normal(0, 40, 3).astype(np.float32)
    image += rng.normal(0, 12, image.shape).astype(np.float32)  # sensor grain
    return np.clip(image + 128, 0, 255).astype(np.uint8)


def make_tree(root: str, images: int, classes: int, seed: int = 0) -> str:
    """JPEGs under root/train/<class>/ and root/train/file_list.txt; returns the train root."""
    from PIL import Image

    train = os.path.join(root, "train")
    marker = os.path.join(root, "params.json")
    params = dict(images=images, classes=classes, seed=seed, version=1)
    if os.path.exists(marker):
        with open(marker) as f:
            if json.load(f) == params:
                return train
        sys.exit(f"{root} holds an image tree made with other parameters; remove it or pick another --dir")
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(images):
        label = i % classes
        folder = f"n{label:08d}"
        os.makedirs(os.path.join(train, folder), exist_ok=True)
        # ImageNet: most images are 500 x 375 or 375 x 500, with some spread.
        long_side = int(np.clip(rng.normal(500, 40), 300, 800))
        short_side = int(long_side * rng.choice([0.75, 0.75, 0.75, 0.667, 0.8, 1.0]))
        width, height = (long_side, short_side) if rng.random() < 0.75 else (short_side, long_side)
        name = f"{folder}/{folder}_{i}.JPEG"
        Image.fromarray(natural_image(rng, width, height)).save(os.path.join(train, name), quality=90)
        lines.append(f"/{name} {label}\n")
    with open(os.path.join(train, "file_list.txt"), "w") as f:
        f.writelines(lines)
    with open(marker, "w") as f:
        json.dump(params, f)
    return train


# -----------------------------------------------------------------------------
# The two loaders
# -----------------------------------------------------------------------------
def dali_batches(train: str, args, eval_view: bool, epoch: int):
    from data.build import build_train_loader, load_file_lists
    from utils.config import load_config

    config = load_config(None, [
        "DATA.DATA_PATH_TRAIN", train, "MODEL.NUM_CLASSES", str(args.classes), "DATA.DATASET", "custom",
        "DATA.IMG_SIZE", "224", "DATA.BATCH_SIZE_TRAIN", str(args.batch), "DATA.DECODE_DEVICE", "cpu",
        "DATA.NUM_THREADS", str(args.workers), "DATA.NUM_WORKERS", str(args.reader_threads),
        "DATA.PREFETCH", str(args.prefetch), "AUG.AUTO_AUGMENT", str(args.auto_augment),
    ])
    file_list = load_file_lists(config).train
    loader = build_train_loader(config, file_list, epoch, rank=0, world_size=1, device_id=None, eval_view=eval_view)
    for batch in loader:
        yield batch["images"].shape[0]


class TorchDataset:
    """The file list, read with PIL and transformed as the DALI pipeline does."""

    def __init__(self, train: str, eval_view: bool, auto_augment: bool):
        import torchvision.transforms as T

        from dynunc.lists.file_list import read_file_list
        from data.pipeline import IMAGENET_MEAN, IMAGENET_STD

        self.files = read_file_list(os.path.join(train, "file_list.txt"), root=train)
        bicubic = T.InterpolationMode.BICUBIC
        normalize = [T.ToTensor(), T.Normalize([m / 255 for m in IMAGENET_MEAN], [s / 255 for s in IMAGENET_STD])]
        self.train = T.Compose([T.RandomResizedCrop(224, scale=(0.08, 1.0), interpolation=bicubic),
                                T.RandomHorizontalFlip()]
                               + ([T.AutoAugment(T.AutoAugmentPolicy.IMAGENET)] if auto_augment else [])
                               + normalize)
        self.eval = T.Compose([T.Resize(224, interpolation=bicubic), T.CenterCrop(224)] + normalize) if eval_view else None

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        from PIL import Image

        with Image.open(self.files.full_path(i)) as im:
            image = im.convert("RGB")
        views = [self.train(image)] + ([self.eval(image)] if self.eval is not None else [])
        return (*views, int(self.files.labels[i]), i)


def torch_batches(train: str, args, eval_view: bool, epoch: int):
    import torch

    torch.manual_seed(epoch)
    dataset = TorchDataset(train, eval_view, args.auto_augment)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch, shuffle=True, drop_last=True,
                                         num_workers=args.workers, prefetch_factor=args.prefetch,
                                         persistent_workers=False)
    for batch in loader:
        yield batch[0].shape[0]


def measure(mode: str, train: str, args) -> dict:
    """Steady images/s of `mode` over args.epochs epochs: each epoch is timed from the end
    of its first batch, so that building the loader and filling its queues (start-up,
    reported apart; negligible against an ImageNet epoch) is left out. Also the rate of
    the epochs after the first with everything included (the first has the imports)."""
    import torch

    torch.set_num_threads(1)  # the main process only collates/hands over batches
    make = dali_batches if mode.startswith("dali") else torch_batches
    eval_view = mode.endswith("produce")
    started = time.perf_counter()
    images, seconds, startup = 0, 0.0, []
    whole_images, whole_seconds = 0, 0.0  # epochs after the first, everything included
    for epoch in range(args.epochs):
        begin = time.perf_counter()
        first = None
        for size in make(train, args, eval_view, epoch):
            if epoch > 0:
                whole_images += size
            if first is None:
                first = time.perf_counter()
                startup.append(first - begin)
                continue
            images += size
        seconds += time.perf_counter() - first
        if epoch > 0:
            whole_seconds += time.perf_counter() - begin
    usage = this_process(started)  # the DataLoader workers included
    return dict(mode=mode, images=images, images_per_s=round(images / seconds, 1),
                epoch_images_per_s=round(whole_images / whole_seconds, 1) if whole_seconds else None,
                startup_s=[round(x, 2) for x in startup], cpu_s=round(usage.cpu_s, 1),
                peak_rss_mib=round(usage.peak_rss_mib))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=1500)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2, help="DALI threads = DataLoader worker processes")
    ap.add_argument("--reader-threads", type=int, default=2, help="DATA.NUM_WORKERS: threads reading files for DALI")
    ap.add_argument("--prefetch", type=int, default=2, help="DATA.PREFETCH and the DataLoader's prefetch_factor")
    ap.add_argument("--auto-augment", action="store_true")
    ap.add_argument("--dir", help="make (or reuse) the image tree here and keep it (default: a temporary folder)")
    ap.add_argument("--only", default=",".join(MODES), help="comma-separated modes to run")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run the modes this many times, interleaved (on a shared machine: read the best)")
    ap.add_argument("--child", help=argparse.SUPPRESS)  # internal: run one mode, print JSON
    args = ap.parse_args()

    if args.child:
        print(json.dumps(measure(args.child, args.dir, args)))
        return
    tmp = None
    if args.dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench_loader_")
        args.dir = tmp.name
    try:
        t = time.perf_counter()
        train = make_tree(args.dir, args.images, args.classes)
        sizes = [os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(train) for f in fs if f.endswith(".JPEG")]
        print(f"{len(sizes)} JPEGs, mean {np.mean(sizes) / 1000:.0f} KB (ready in {time.perf_counter() - t:.0f}s); "
              f"batch {args.batch}, {args.workers} workers, prefetch {args.prefetch}, "
              f"AutoAugment {'on' if args.auto_augment else 'off'}, {args.epochs} epochs")
        modes = args.only.split(",")
        for mode in modes:
            if mode not in MODES:
                sys.exit(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
        rates = {mode: [] for mode in modes}
        for _ in range(args.repeat):
            for mode in modes:
                cmd = [sys.executable, os.path.abspath(__file__), "--child", mode, "--dir", train]
                for key in ("images", "classes", "batch", "epochs", "workers", "reader_threads", "prefetch"):
                    cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
                if args.auto_augment:
                    cmd.append("--auto-augment")
                result = json.loads(run_child(cmd, cwd=ROOT).stdout.strip().splitlines()[-1])
                rates[mode].append(result["images_per_s"])
                print(f"{mode:14s} {result['images_per_s']:7.1f} images/s steady, "
                      f"{result['epoch_images_per_s']} whole epochs 2+  (start-up per epoch {result['startup_s']}s, "
                      f"CPU {result['cpu_s']}s, peak RSS {result['peak_rss_mib']} MiB)", flush=True)
        if args.repeat > 1:
            for mode in modes:
                print(f"{mode:14s} best {max(rates[mode]):7.1f} images/s of {rates[mode]}")
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    main()
