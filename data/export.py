"""Write a file list's images, unchanged and in the list's order, as WebDataset shards or
as a Hugging Face dataset: the same samples in the three formats a run reads.

    python -m data.export --file-list ROOT/file_list.txt --shards 'OUT/train-%05d.tar' [--per-shard 1000]
    python -m data.export --file-list ROOT/file_list.txt --hf OUT_DIR [--parquet OUT.parquet]

A sample's key is its path without the leading '/' and the extension ("3/mnist_00012"),
its members KEY.<image's extension> (the file's bytes) and KEY.cls (the label). The HF
dataset (``datasets``, installed for it) has columns image (datasets' Image feature, the
file's bytes) and label (ClassLabel over MODEL.NUM_CLASSES = the list's largest label + 1,
or --num-classes); --hf writes its save_to_disk folder, --parquet one parquet file.
"""
import argparse
import os
import sys
from typing import List, Optional, Sequence, Tuple

from dynunc.lists.file_list import FileListError, read_file_list
from data.shards import LABEL_EXT, write_shards


def list_samples(list_path: str, root: Optional[str] = None) -> List[Tuple[str, str, bytes, int]]:
    """(key, image extension, bytes, label) of each entry, in the list's order."""
    fl = read_file_list(list_path, root=root)
    out = []
    for i in range(len(fl)):
        name = fl.name(i).lstrip("/")
        stem, ext = os.path.splitext(name)
        with open(fl.full_path(i), "rb") as f:
            out.append((stem, ext.lstrip(".").lower(), f.read(), int(fl.labels[i])))
    return out


def to_shards(samples: Sequence[Tuple[str, str, bytes, int]], pattern: str, per_shard: int) -> List[str]:
    return write_shards([(key, [(ext, data), (LABEL_EXT, str(label).encode())]) for key, ext, data, label in samples],
                        pattern, per_shard)


def to_hf(samples: Sequence[Tuple[str, str, bytes, int]], num_classes: int, folder: Optional[str] = None,
          parquet: Optional[str] = None) -> None:
    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=num_classes)})
    ds = datasets.Dataset.from_dict({"image": [{"bytes": data, "path": None} for _, _, data, _ in samples],
                                     "label": [label for *_, label in samples]}, features=features)
    if folder:
        ds.save_to_disk(folder)
    if parquet:
        ds.to_parquet(parquet)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m data.export", description=__doc__.splitlines()[0])
    p.add_argument("--file-list", required=True)
    p.add_argument("--root", help="the folder the list's paths are relative to (default: the list's folder)")
    p.add_argument("--shards", help="shard names, a %%d pattern: OUT/train-%%05d.tar")
    p.add_argument("--per-shard", type=int, default=1000)
    p.add_argument("--hf", help="a save_to_disk folder to write")
    p.add_argument("--parquet", help="a parquet file to write")
    p.add_argument("--num-classes", type=int)
    args = p.parse_args(argv)
    if not (args.shards or args.hf or args.parquet):
        p.error("give --shards, --hf or --parquet")
    if args.shards and "%" not in args.shards:
        p.error(f"--shards {args.shards!r}: needs a %d field for the shard number (e.g. train-%05d.tar)")
    if args.per_shard < 1:
        p.error("--per-shard must be >= 1")
    try:
        samples = list_samples(args.file_list, args.root)
    except (FileListError, OSError) as e:
        p.error(str(e))
    if args.shards:
        paths = to_shards(samples, args.shards, args.per_shard)
        print(f"wrote {len(samples)} samples to {len(paths)} shards: {paths[0]} .. {paths[-1]}")
    if args.hf or args.parquet:
        to_hf(samples, args.num_classes or max(s[3] for s in samples) + 1, args.hf, args.parquet)
        print(f"wrote {len(samples)} rows to {', '.join(x for x in (args.hf, args.parquet) if x)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
