"""The report's near-duplicate and leakage sections (report.py --dedup, --leakage), from
the embeddings the produce run recorded (dynunc/scoring/dedup.py does the arithmetic):

- duplicates: get_coreset.py's --dedup groups (same flags, same result), written as
  dedup_groups.tsv beside the page, counted, and drawn as image rows: the kept image
  and its duplicates, the largest groups first;
- leakage: for each image of the validation list, its most similar training image;
  the pairs at or above the threshold written to leakage.csv (highest first) and drawn
  as image rows, each validation image beside its training neighbour.
"""
import argparse
import csv
import io
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from dynunc.lists.file_list import FileList, read_file_list
from dynunc.report import figures
from dynunc.scoring.dedup import check_threshold, deduplicate, latest_embeddings, nearest_neighbours, write_groups
from dynunc.history import embedder_summary, load_embeddings, read_embedder

SHOWN_GROUPS = 12
SHOWN_PAIRS = 24
GROUPS_FILE, GROUPS_FIGURE = "dedup_groups.tsv", "dedup_groups.png"
LEAKAGE_FILE, LEAKAGE_FIGURE = "leakage.csv", "leakage.png"
LEAKAGE_HEADER = ("val_index", "val_line", "val_path", "train_index", "train_line", "train_path", "cosine")

# (full path, name shown) -> (pixels or None, why not): report.py's thumbnail
Thumbnail = Callable[[str, str], Tuple[Optional[np.ndarray], str]]


def add_leakage_flags(parser: argparse.ArgumentParser, add_flag: Callable) -> None:
    add_flag(parser, "--leakage", type=float, metavar="THRESHOLD",
             help="train/val leakage: each validation image's most similar training image by the recorded "
             "embeddings (val_embed_{epoch}.npy against embed_{epoch}.npy, the latest epoch with both); the pairs "
             "with cosine similarity >= THRESHOLD, in [0.5, 1], go to leakage.csv and the page. Needs --val_file_list")
    add_flag(parser, "--val_file_list", metavar="LIST",
             help="--leakage: the validation file list the produce run recorded val_embed on (DATA.VAL_FILE_LIST)")
    add_flag(parser, "--val_data_root", help="folder the validation list's paths are relative to (default: its folder)")


def check_leakage_flags(args: argparse.Namespace) -> None:
    if args.leakage is None:
        return
    check_threshold("--leakage", args.leakage)
    if args.val_file_list is None:
        raise ValueError("--leakage needs --val_file_list: the validation list the embeddings were recorded on")


def _tile(thumbnail: Thumbnail, file_list: FileList, i: int, caption: str,
          unreadable: List[str]) -> Tuple[Optional[np.ndarray], str]:
    pixels, why = thumbnail(file_list.full_path(i), file_list.name(i).lstrip("/"))
    if why:
        unreadable.append(why)
        caption += "\n(unreadable)"
    return pixels, caption


def _class(label: int, class_dirs: Dict[int, str]) -> str:
    return f"class {class_dirs.get(label) or label}"


def embeddings_source(edir: str, epoch: int) -> str:
    """Which embeddings a section read, as the page says it: a produce run's recorded
    ones, or embed.py's (its model and weights)."""
    summary = embedder_summary(edir)
    return f"the embeddings in {edir} ({summary})" if summary else f"the recorded embeddings of epoch {epoch}"


def add_duplicates(files: Dict[str, bytes], numbers: dict, args: argparse.Namespace, hdir: str, file_list: FileList,
                   labels: np.ndarray, class_dirs: Dict[int, str], thumbnail: Thumbnail) -> None:
    """--dedup: the groups file, the figure of the largest groups, numbers['dedup']."""
    n = len(file_list)
    epoch, embeddings = latest_embeddings(hdir, n)
    duplicates = deduplicate(embeddings, args.dedup, args.dedup_clusters, args.seed)
    text = io.StringIO(newline="")
    write_groups(text, duplicates, file_list.index)
    files[GROUPS_FILE] = text.getvalue().encode("utf-8")
    sizes = np.bincount(duplicates.group, minlength=duplicates.num_groups)
    shown = sorted(range(duplicates.num_groups), key=lambda g: (-sizes[g], g))[:SHOWN_GROUPS]
    blocks, listed, unreadable = [], [], []
    for g in shown:
        rows = np.flatnonzero(duplicates.group == g)  # the kept one first
        kept, others = rows[0], rows[1:][np.argsort(-duplicates.cosine_to_kept[rows[1:]], kind="stable")]
        k = int(duplicates.index[kept])
        tiles = [_tile(thumbnail, file_list, k, f"kept, line {int(file_list.line_numbers[k])}\n"
                       f"{_class(int(labels[k]), class_dirs)}", unreadable)]
        members = []
        for r in others[:figures.GRID_COLUMNS - 1]:
            i, cosine = int(duplicates.index[r]), float(duplicates.cosine_to_kept[r])
            tiles.append(_tile(thumbnail, file_list, i, f"cos {cosine:.3f}, line {int(file_list.line_numbers[i])}\n"
                               f"{_class(int(labels[i]), class_dirs)}", unreadable))
            members.append({"index": i, "path": file_list.name(i), "cosine_to_kept": cosine})
        more = f", {len(others) - len(members)} more in {GROUPS_FILE}" if len(others) > len(members) else ""
        blocks.append((f"group {g}: {len(rows)} images, {len(others)} removed{more}", tiles))
        listed.append({"group": g, "size": int(len(rows)), "kept": {"index": k, "path": file_list.name(k)},
                       "removed": members})
    if blocks:
        files[GROUPS_FIGURE] = figures.image_grid(
            f"near-duplicates at cosine >= {args.dedup:g}: the kept image (least similar to its cluster's centroid) "
            "and the removed ones", blocks, figures.GRID_COLUMNS)
    numbers["dedup"] = {"threshold": args.dedup, "clusters": duplicates.clusters, "epoch": epoch,
                        "source": embeddings_source(hdir, epoch),
                        "groups": duplicates.num_groups, "removed": duplicates.num_removed,
                        "removed_share": duplicates.num_removed / n, "file": GROUPS_FILE,
                        "largest_group": duplicates.largest_group, "warning": duplicates.warning(),
                        "figure": GROUPS_FIGURE if blocks else None, "shown": listed, "unreadable": unreadable}


def add_leakage(files: Dict[str, bytes], numbers: dict, args: argparse.Namespace, hdir: str, file_list: FileList,
                thumbnail: Thumbnail) -> None:
    """--leakage: the pairs file, the figure of the most similar pairs, numbers['leakage']."""
    val_list = read_file_list(args.val_file_list, root=args.val_data_root)
    embedded_val = (read_embedder(hdir) or {}).get("val")  # embed.py records the validation list it embedded
    if embedded_val and embedded_val["sha256"] != val_list.index.fingerprint()["sha256"]:
        raise ValueError(f"--val_file_list {args.val_file_list} is not the validation list embedded in {hdir} "
                         f"({embedded_val['path']}, {embedded_val['entries']} entries)")
    epoch, val = latest_embeddings(hdir, len(val_list), kind="val_embed")
    train = load_embeddings(hdir, len(file_list), epoch)  # the same epoch's training embeddings
    found, cosine = nearest_neighbours(train, val)
    above = np.flatnonzero(cosine >= args.leakage)
    above = above[np.lexsort((above, -cosine[above]))]  # highest first, then the lower validation line
    text = io.StringIO(newline="")
    out = csv.writer(text, lineterminator="\n")
    out.writerow(LEAKAGE_HEADER)
    for v in above.tolist():
        t = int(found[v])
        out.writerow((v, int(val_list.line_numbers[v]), val_list.name(v), t, int(file_list.line_numbers[t]),
                      file_list.name(t), f"{float(cosine[v]):.4f}"))
    files[LEAKAGE_FILE] = text.getvalue().encode("utf-8")
    per_row = figures.GRID_COLUMNS // 2
    blocks, listed, unreadable = [], [], []
    shown = above[:SHOWN_PAIRS]
    for start in range(0, len(shown), per_row):
        tiles = []
        for v in shown[start:start + per_row].tolist():
            t, c = int(found[v]), float(cosine[v])
            tiles.append(_tile(thumbnail, val_list, v, f"val line {int(val_list.line_numbers[v])}", unreadable))
            tiles.append(_tile(thumbnail, file_list, t, f"train line {int(file_list.line_numbers[t])}\ncos {c:.3f}",
                               unreadable))
            listed.append({"val_index": v, "val_path": val_list.name(v), "train_index": t,
                           "train_path": file_list.name(t), "cosine": c})
        last = start + len(tiles) // 2
        pairs = f"pairs {start + 1}-{last}" if last > start + 1 else f"pair {last}"
        blocks.append((f"{pairs}: validation image, then its nearest training image", tiles))
    if blocks:
        files[LEAKAGE_FIGURE] = figures.image_grid(
            f"validation images whose nearest training image has cosine >= {args.leakage:g}", blocks,
            figures.GRID_COLUMNS)
    numbers["leakage"] = {"threshold": args.leakage, "epoch": epoch, "val_images": len(val_list),
                          "source": embeddings_source(hdir, epoch),
                          "pairs": int(len(above)), "share": len(above) / max(len(val_list), 1),
                          "max_cosine": float(cosine.max()) if len(cosine) else None,
                          "median_cosine": float(np.median(cosine)) if len(cosine) else None,
                          "file": LEAKAGE_FILE, "figure": LEAKAGE_FIGURE if blocks else None, "shown": listed,
                          "unreadable": unreadable, "warning": leakage_warning(len(above), len(val_list), args.leakage)}


# A share of validation images this large above the threshold is rarely leaked copies.
LEAKAGE_CAUTION_SHARE = 0.05


def leakage_warning(pairs: int, val_images: int, threshold: float) -> Optional[str]:
    """A caution when so many validation images match a training image that the threshold
    is more likely below the similarity of one class's features than a sign of copies."""
    share = pairs / max(val_images, 1)
    if share < LEAKAGE_CAUTION_SHARE:
        return None
    return (f"{share:.0%} of the validation images have a training image at cosine >= {threshold:g}; leaked copies "
            f"are rarely this common: at this threshold these embeddings likely match images of the same class, not "
            f"copies (compare the median above); raise --leakage and look at the pairs")
