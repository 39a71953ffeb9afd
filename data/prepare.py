"""Prepare an image folder for training: file lists, the 21K -> 1K mapping, list checks.

    python -m data.prepare file-list ROOT [--output FILE] [--class-pattern GLOB] [--extensions .JPEG,...]
    python -m data.prepare map-21k --train-21k DIR --val-1k DIR [--release Fall11|Winter21]
    python -m data.prepare check LIST [--root DIR] [--num-classes K | --dataset NAME] [--decode]

Conventions (the paper's, see PAPER_README section 2):

- A class is a directory directly under ROOT whose name matches ``--class-pattern``
  (default ``n*``: the paper keeps the names starting with 'n', i.e. the WordNet synsets).
  Files at ROOT (file_list.txt, mapping_dict.txt) are never classes.
- Label = rank of the class directory in lexicographic (code point) order.
- Within a class, images are sorted the same way; each gives a line
  ``/<class>/<image> <label>``.
- Names starting with '.' are skipped everywhere (the paper's code would list a stray
  ``.DS_Store`` as an image). Every other regular file is an image unless
  ``--extensions`` restricts the list.
- ImageNet-21K (raw) has one ImageNet-1K class that is missing, ``n04399382``: an empty
  directory with that name is created by ``map-21k``. It takes a label and has no lines.
  Any other empty class directory is an error.

Every output is written through ``dynunc.io.atomic_open``: after an error the previous
file (if any) is untouched. Problems are collected over the whole pass and reported
together, so one run shows all of them.
"""
import argparse
import bisect
import fnmatch
import os
import posixpath
import sys
from array import array
from dataclasses import dataclass, field
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from data.datasets import DATASETS
from dynunc.lists.file_list import FileListError, parse_line
from dynunc.lists.parse import iter_lines, label_error
from data.image_check import KINDS, survey_images
from dynunc.io import atomic_open

PLACEHOLDER_CLASS = "n04399382"  # the ImageNet-1K class absent from ImageNet-21K
DEFAULT_CLASS_PATTERN = "n*"
FILE_LIST_NAME = "file_list.txt"
MAPPING_NAME = "mapping_dict.txt"
RELEASES = {"Fall11": "ImageNet-21K_Fall11", "Winter21": "ImageNet-21K_Winter21"}
VAL_1K_DATASET = "ImageNet-1K"
_SHOW = 10  # names shown in a note before "... and N more"


class PrepareError(Exception):
    """A problem with the input tree; the message says what and where."""


def _some(names: Sequence[str], show: int = _SHOW) -> str:
    head = ", ".join(names[:show])
    return head if len(names) <= show else f"{head}, ... and {len(names) - show} more"


def _bad_name(name: str) -> Optional[str]:
    """Why `name` cannot be written as a file-list entry, or None if it can.

    The readers split a line at its last run of whitespace and iterate on newlines, so a
    name must not end in whitespace or hold a line break; a name that is not valid UTF-8
    (os gives it with surrogate escapes) or holds a control character is refused too.
    """
    if name[-1].isspace():
        return "ends in whitespace"
    if not name.isprintable():
        if any("\udc80" <= c <= "\udcff" for c in name):
            return "is not valid UTF-8"
        return "holds a line break or control character"
    return None


# --------------------------------------------------------------------------- classes


def list_class_dirs(root: str, pattern: str = DEFAULT_CLASS_PATTERN) -> Tuple[List[str], List[str]]:
    """(class directories matching `pattern`, other directories), both sorted.

    Hidden entries and non-directories are skipped. One scandir of `root`.
    """
    classes, others = [], []
    try:
        it = os.scandir(root)
    except FileNotFoundError:
        raise PrepareError(f"{root}: no such directory") from None
    except NotADirectoryError:
        raise PrepareError(f"{root}: not a directory") from None
    with it:
        for entry in it:
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            (classes if fnmatch.fnmatchcase(entry.name, pattern) else others).append(entry.name)
    classes.sort()
    others.sort()
    return classes, others


def _require_classes(root: str, pattern: str, classes: List[str], others: List[str]) -> None:
    if classes:
        return
    hint = f" (directories there: {_some(others)}; use --class-pattern '*' to take them all)" if others else ""
    raise PrepareError(f"{root}: no class directories match {pattern!r}{hint}")


def _expected_21k_without_placeholder() -> Dict[int, str]:
    return {DATASETS[name].num_classes - 1: release for release, name in RELEASES.items()}


# ------------------------------------------------------------------------- file-list


@dataclass
class FileListSummary:
    output: str
    num_classes: int
    num_lines: int
    placeholder_label: Optional[int] = None
    skipped_hidden: int = 0
    skipped_extension: int = 0
    ignored_dirs: List[str] = field(default_factory=list)


def _scan_class(class_dir: str, extensions: Optional[Tuple[str, ...]]):
    """(sorted image names, hidden count, skipped-by-extension count, problems)."""
    problems: List[str] = []
    try:
        with os.scandir(class_dir) as it:
            entries = list(it)
    except OSError as e:
        return [], 0, 0, [f"{class_dir}: cannot list the directory: {e.strerror or e}"]
    # Fast path: DirEntry.is_file() uses the d_type readdir already returned (no stat,
    # except for symlinks, which it follows).
    names = [e.name for e in entries if e.is_file() and e.name[0] != "."]
    hidden = 0
    if len(names) != len(entries):
        nested, special = [], []
        for e in entries:
            if e.name[0] == ".":
                hidden += 1
            elif e.is_dir():
                nested.append(e.name)
            elif not e.is_file():
                special.append(e.name)
        if nested:
            problems.append(
                f"{class_dir}: holds sub-directories (the layout is ROOT/<class>/<image>): {_some(sorted(nested))}"
            )
        if special:
            problems.append(
                f"{class_dir}: entries that are not regular files (broken symlinks?): {_some(sorted(special))}"
            )
    skipped = 0
    if extensions is not None:
        kept = [n for n in names if n.lower().endswith(extensions)]
        skipped = len(names) - len(kept)
        names = kept
    bad = [f"{n!r} {why}" for n in names for why in (_bad_name(n),) if why]
    if bad:
        problems.append(f"{class_dir}: file names that a file list cannot hold: {_some(bad)}")
    names.sort()
    return names, hidden, skipped, problems


def write_file_list(
    root: str,
    output: Optional[str] = None,
    class_pattern: str = DEFAULT_CLASS_PATTERN,
    extensions: Optional[Iterable[str]] = None,
    progress: bool = True,
) -> FileListSummary:
    """Write the paper's file list for the image folder `root`; raise PrepareError listing every problem."""
    output = output or os.path.join(root, FILE_LIST_NAME)
    exts = None if extensions is None else tuple(x.lower() for x in extensions)
    classes, others = list_class_dirs(root, class_pattern)
    _require_classes(root, class_pattern, classes, others)

    problems = [f"class directory name {c!r} {why}" for c in classes for why in (_bad_name(c),) if why]
    release = _expected_21k_without_placeholder().get(len(classes))
    if release and PLACEHOLDER_CLASS not in classes:
        problems.append(
            f"{root}: {len(classes)} class directories and no {PLACEHOLDER_CLASS}: this looks like "
            f"ImageNet-21K {release} without its placeholder class, and every label after it would be "
            f"off by one. Run `python -m data.prepare map-21k --train-21k {root} --val-1k ...` first."
        )
    if problems:
        raise PrepareError("\n".join(problems))

    summary = FileListSummary(output=output, num_classes=len(classes), num_lines=0, ignored_dirs=others)
    bar = tqdm(classes, desc="file-list", unit="class", file=sys.stderr, disable=not progress, mininterval=1.0)
    with atomic_open(output, "w", encoding="utf-8", newline="\n") as f, bar:
        for label, cls in enumerate(bar):
            names, hidden, skipped, class_problems = _scan_class(os.path.join(root, cls), exts)
            summary.skipped_hidden += hidden
            summary.skipped_extension += skipped
            problems += class_problems
            if not names and not class_problems:
                if cls == PLACEHOLDER_CLASS:
                    summary.placeholder_label = label
                else:
                    why = " after the --extensions filter" if skipped else ""
                    problems.append(f"{os.path.join(root, cls)}: empty class directory (no images{why})")
            if problems:  # keep scanning to report everything, but stop writing
                continue
            prefix, suffix = f"/{cls}/", f" {label}\n"
            f.write("".join([prefix + n + suffix for n in names]))
            summary.num_lines += len(names)
            bar.set_postfix_str(f"{summary.num_lines} images", refresh=False)
        if problems:  # raised inside atomic_open: the temporary file goes, `output` is untouched
            raise PrepareError("\n".join(problems))
    return summary


def _cmd_file_list(args) -> int:
    exts = None
    if args.extensions:
        exts = ["." + x.strip().lstrip(".") for x in args.extensions.split(",") if x.strip()]
    s = write_file_list(args.root, args.output, args.class_pattern, exts, progress=not args.no_progress)
    print(f"wrote {s.output}: {s.num_lines} images, {s.num_classes} classes (labels 0..{s.num_classes - 1})")
    if s.placeholder_label is not None:
        print(f"placeholder class {PLACEHOLDER_CLASS} is empty: label {s.placeholder_label}, no lines")
    if s.ignored_dirs:
        print(f"ignored {len(s.ignored_dirs)} directories not matching {args.class_pattern!r}: {_some(s.ignored_dirs)}")
    if s.skipped_hidden:
        print(f"skipped {s.skipped_hidden} hidden entries inside class directories")
    if s.skipped_extension:
        print(f"skipped {s.skipped_extension} files not ending in {', '.join(exts)}")
    return 0


# --------------------------------------------------------------------------- map-21k


def build_mapping(classes_21k: Sequence[str], classes_1k: Sequence[str]) -> np.ndarray:
    """Index of each 1K class among the (sorted) 21K classes; PrepareError naming any missing."""
    index = {c: i for i, c in enumerate(classes_21k)}
    missing = [c for c in classes_1k if c not in index]
    if missing:
        raise PrepareError(
            f"{len(missing)} ImageNet-1K val class(es) have no directory in the 21K training set: {_some(missing)}"
        )
    return np.asarray([index[c] for c in classes_1k], dtype=np.int64)


def write_mapping_21k(
    train_21k: str,
    val_1k: str,
    release: Optional[str] = None,
    expect_classes: Optional[int] = None,
    expect_val_classes: Optional[int] = None,
    class_pattern: str = DEFAULT_CLASS_PATTERN,
) -> Tuple[str, np.ndarray, bool]:
    """Check both trees, create the placeholder class, write mapping_dict.txt.

    Returns (mapping path, mapping, whether the placeholder was created). Nothing is
    created or written unless every check passes.
    """
    classes_21k, others = list_class_dirs(train_21k, class_pattern)
    _require_classes(train_21k, class_pattern, classes_21k, others)
    create_placeholder = PLACEHOLDER_CLASS not in classes_21k
    if create_placeholder:
        classes_21k = sorted(classes_21k + [PLACEHOLDER_CLASS])
    n = len(classes_21k)

    if expect_classes is not None:
        if n != expect_classes:
            raise PrepareError(
                f"{train_21k}: {n} class directories (with {PLACEHOLDER_CLASS}), --expect-classes says {expect_classes}"
            )
    else:
        counts = {DATASETS[name].num_classes: r for r, name in RELEASES.items()}
        if release is None:
            release = counts.get(n)
        if release is None or DATASETS[RELEASES[release]].num_classes != n:
            want = " or ".join(f"{c} ({r})" for c, r in counts.items() if release in (None, r))
            raise PrepareError(
                f"{train_21k}: {n} class directories matching {class_pattern!r} (with {PLACEHOLDER_CLASS}), "
                f"expected {want}. Is this the ImageNet-21K training folder?"
            )

    classes_1k, others_1k = list_class_dirs(val_1k, class_pattern)
    _require_classes(val_1k, class_pattern, classes_1k, others_1k)
    want_val = DATASETS[VAL_1K_DATASET].num_classes if expect_val_classes is None else expect_val_classes
    if len(classes_1k) != want_val:
        raise PrepareError(
            f"{val_1k}: {len(classes_1k)} class directories matching {class_pattern!r}, expected {want_val}. "
            f"Is this the ImageNet-1K val folder?"
        )

    mapping = build_mapping(classes_21k, classes_1k)
    if create_placeholder:
        os.makedirs(os.path.join(train_21k, PLACEHOLDER_CLASS), exist_ok=True)
    path = os.path.join(train_21k, MAPPING_NAME)
    # The paper's np.savetxt(np.asarray(list_of_ints)): default fmt '%.18e', one per line.
    with atomic_open(path, "w") as f:
        np.savetxt(f, mapping.astype(np.float64))
    return path, mapping, create_placeholder


def _cmd_map_21k(args) -> int:
    path, mapping, created = write_mapping_21k(
        args.train_21k, args.val_1k, args.release, args.expect_classes, args.expect_val_classes, args.class_pattern
    )
    if created:
        print(f"created the empty placeholder class {os.path.join(args.train_21k, PLACEHOLDER_CLASS)}")
    print(f"wrote {path}: {len(mapping)} indices (max {int(mapping.max())})")
    return 0


# ----------------------------------------------------------------------------- check


@dataclass
class CheckReport:
    path: str
    entries: int = 0
    blank: int = 0
    directories: int = 0
    labels_seen: int = 0
    label_range: Optional[Tuple[int, int]] = None
    problems: List[Tuple[int, str]] = field(default_factory=list)  # (line number, message); 0 = whole file
    counts: Dict[str, int] = field(default_factory=dict)

    def add(self, lineno: int, kind: str, message: str) -> None:
        self.problems.append((lineno, message))
        self.counts[kind] = self.counts.get(kind, 0) + 1

    @property
    def ok(self) -> bool:
        return not self.problems


def _list_regular_files(directory: str) -> Tuple[Optional[np.ndarray], Optional[str]]:
    """(sorted hashes of the regular file names in `directory`, None) or (None, why not)."""
    try:
        with os.scandir(directory) as it:
            hashes = np.fromiter((hash(e.name) for e in it if e.is_file()), dtype=np.int64)
    except FileNotFoundError:
        return None, "no such directory"
    except NotADirectoryError:
        return None, "not a directory"
    except OSError as e:
        return None, f"cannot list it: {e.strerror or e}"
    hashes.sort()
    return hashes, None


def check_file_list(path: str, root: Optional[str] = None, num_classes: Optional[int] = None) -> CheckReport:
    """Check a file list (or coreset) line by line; every problem is reported with its line.

    Per line: format, label >= 0 and < num_classes, a path inside root of the form
    [/]<dir>/<file>. Then: files exist (one scandir per directory), no path listed twice,
    one label per directory, and labels increasing with the directory names (the
    paper's lexicographic labels). Memory stays at a few tens of bytes per line: names
    are kept as 64-bit hashes (a hash match is confirmed on the text before a duplicate
    is reported; a false "exists" needs a 64-bit collision within one directory).
    """
    if root is None:
        root = os.path.dirname(os.path.abspath(path))
    report = CheckReport(path)
    if not os.path.isdir(root):
        report.add(0, "root", f"data root {root} is not a directory")
        return report

    dir_index: Dict[str, int] = {}
    dir_of, name_hash, labels, linenos = array("q"), array("q"), array("q"), array("q")
    try:
        f = open(path, "rb")
    except OSError as e:
        report.add(0, "list", f"cannot read the list: {e.strerror or e}")
        return report
    with f:
        for lineno, line in iter_lines(f, path, errors="surrogateescape"):
            line = line.strip()
            if not line:
                report.blank += 1
                continue
            report.entries += 1
            try:
                rel, label = parse_line(line, path, lineno)
            except FileListError as e:
                report.add(lineno, "format", str(e).removeprefix(f"{path}:{lineno}: "))
                continue
            if not rel.isascii():
                try:
                    rel.encode("utf-8")
                except UnicodeEncodeError:
                    report.add(lineno, "format", "the line is not valid UTF-8")
                    continue
            bad_label = label_error(path, lineno, label, num_classes)
            if bad_label is not None:
                report.add(lineno, "label", str(bad_label).removeprefix(f"{path}:{lineno}: "))
            norm = rel.lstrip("/")
            if "//" in norm or "/." in norm or norm.startswith("."):  # normpath is the slow step: only when needed
                norm = posixpath.normpath(norm)
            if norm == ".." or norm.startswith("../"):
                report.add(lineno, "path", f"path {rel!r} leads outside the data root")
                continue
            directory, _, name = norm.rpartition("/")
            if not directory or name in ("", "."):
                report.add(lineno, "path", f"path {rel!r} is not of the form /<class>/<image>")
                continue
            dir_of.append(dir_index.setdefault(directory, len(dir_index)))
            name_hash.append(hash(name))
            labels.append(label)
            linenos.append(lineno)

    if report.entries == 0:
        report.add(0, "empty", "the list has no entries")
    dirs, hashes, labs, lines = (np.frombuffer(a, dtype=np.int64) for a in (dir_of, name_hash, labels, linenos))
    dir_names = list(dir_index)
    report.directories = len(dir_names)
    if len(labs):
        report.labels_seen = int(np.unique(labs).size)
        report.label_range = (int(labs.min()), int(labs.max()))

    # Entries grouped by directory, in line order within each group.
    order = np.lexsort((lines, dirs))
    groups = np.split(order, np.flatnonzero(np.diff(dirs[order])) + 1) if len(order) else []
    missing: List[int] = []  # line numbers; the message needs the text (second pass)
    first_label: Dict[int, Tuple[int, int]] = {}  # directory -> (its label, a line giving it)
    for g in groups:
        d = int(dirs[g[0]])
        dname = dir_names[d]
        on_disk, why = _list_regular_files(os.path.join(root, dname))
        if on_disk is None:
            for i in g:
                report.add(int(lines[i]), "missing", f"{os.path.join(root, dname)}: {why}")
        elif len(on_disk) == 0:
            missing.extend(int(lines[i]) for i in g)
        else:
            pos = np.minimum(np.searchsorted(on_disk, hashes[g]), len(on_disk) - 1)
            missing.extend(int(lines[i]) for i in g[on_disk[pos] != hashes[g]])
        glabs = labs[g]
        ref = 0  # index in g of a line with the label the directory takes: the most common (ties: the smaller)
        if (glabs != glabs[0]).any():
            values, counts = np.unique(glabs, return_counts=True)
            ref = int(np.flatnonzero(glabs == values[np.argmax(counts)])[0])
            for i in g[glabs != glabs[ref]]:
                report.add(
                    int(lines[i]),
                    "class-label",
                    f"label {int(labs[i])} differs from label {int(glabs[ref])}, which most lines of /{dname}/ have "
                    f"(first on line {int(lines[g[ref]])})",
                )
        first_label[d] = (int(glabs[ref]), int(lines[g[ref]]))

    # Possible duplicates: same directory, same name hash; (line, first line with that key).
    suspects: List[Tuple[int, int]] = []
    if len(order):
        by_key = np.lexsort((lines, hashes, dirs))
        same = (dirs[by_key][1:] == dirs[by_key][:-1]) & (hashes[by_key][1:] == hashes[by_key][:-1])
        hits = np.flatnonzero(same)
        if len(hits):
            starts = hits[np.concatenate(([True], np.diff(hits) > 1))]  # each run of equal keys
            first = starts[np.searchsorted(starts, hits, side="right") - 1]
            suspects = [(int(lines[by_key[k + 1]]), int(lines[by_key[j]])) for k, j in zip(hits, first)]

    # Labels must grow with the directory names (a label is the rank of the sorted class
    # name). The directories blamed are those off a longest increasing run of labels.
    in_range = {d: v for d, v in first_label.items() if v[0] >= 0 and (num_classes is None or v[0] < num_classes)}
    by_name = sorted(in_range, key=dir_names.__getitem__)
    keep = _longest_increasing([in_range[d][0] for d in by_name])
    kept_positions = sorted(keep)
    for pos, d in enumerate(by_name):
        if pos in keep:
            continue
        label, line = in_range[d]
        k = bisect.bisect_left(kept_positions, pos)
        around = [
            f"/{dir_names[by_name[q]]}/ (label {in_range[by_name[q]][0]}, line {in_range[by_name[q]][1]})"
            for q in kept_positions[max(k - 1, 0) : k + 1]
        ]
        report.add(
            line,
            "order",
            f"/{dir_names[d]}/ has label {label}, out of order: labels must increase with the sorted class "
            f"names, and it sorts next to {' and '.join(around)}",
        )

    texts = _line_paths(path, set(missing).union(*suspects) if suspects else set(missing))
    for ln in missing:
        report.add(ln, "missing", f"no such file: {os.path.join(root, texts[ln])}")
    for ln, earlier in suspects:
        if texts[ln] == texts[earlier]:
            report.add(ln, "duplicate", f"/{texts[ln]} is listed already on line {earlier}")
    report.problems.sort(key=lambda p: p[0])
    return report


def _longest_increasing(values: Sequence[int]) -> set:
    """Positions of one longest strictly increasing subsequence of `values` (O(n log n))."""
    tails: List[int] = []  # tails[k]: position of the smallest last value of an increasing run of length k+1
    tail_values: List[int] = []
    before = [-1] * len(values)
    for i, v in enumerate(values):
        k = bisect.bisect_left(tail_values, v)
        before[i] = tails[k - 1] if k else -1
        if k == len(tails):
            tails.append(i)
            tail_values.append(v)
        else:
            tails[k] = i
            tail_values[k] = v
    run, i = set(), tails[-1] if tails else -1
    while i != -1:
        run.add(i)
        i = before[i]
    return run


def _line_paths(path: str, wanted: set) -> Dict[int, str]:
    """Second pass over the list: the normalized path of each wanted line."""
    texts: Dict[int, str] = {}
    if not wanted:
        return texts
    with open(path, "rb") as f:
        for lineno, line in iter_lines(f, path, errors="surrogateescape"):
            if lineno in wanted:
                texts[lineno] = posixpath.normpath(line.strip().rsplit(maxsplit=1)[0].lstrip("/"))
    return texts


def _listed_images(path: str, root: str) -> Iterator[Tuple[int, str]]:
    """(line number, full path) of each line that parses and names an existing file (the
    others are problems the line check reports already)."""
    with open(path, "rb") as f:
        for lineno, line in iter_lines(f, path, errors="surrogateescape"):
            if not line.strip():
                continue
            try:
                rel, _ = parse_line(line.strip(), path, lineno)
            except FileListError:
                continue
            full = os.path.join(root, posixpath.normpath(rel.lstrip("/")))
            if os.path.isfile(full):
                yield lineno, full


def _decode_all(args, report: CheckReport) -> None:
    """--decode: decode every listed image once; undecodable ones become problems, the
    odd-but-fine ones are counted by kind."""
    root = args.root or os.path.dirname(os.path.abspath(args.list))
    survey = survey_images(_listed_images(args.list, root), total=report.entries, workers=args.workers,
                           progress=not args.no_progress)
    for lineno, message in survey.undecodable:
        report.add(lineno, "undecodable", message)
    report.problems.sort(key=lambda p: p[0])
    print(f"{report.path}: decoded {survey.decoded + len(survey.undecodable)} images: {survey.decoded} fine, "
          f"{len(survey.undecodable)} undecodable")
    if survey.kinds:
        counts = ", ".join(f"{KINDS[k]} {len(survey.kinds[k])}" for k in KINDS if k in survey.kinds)
        print(f"{report.path}: odd images, decoded and converted to 8-bit RGB by the pipeline: {counts}")
        for kind in KINDS:
            if kind in survey.kinds:
                print(f"  {KINDS[kind]}: lines {_some([str(n) for n in survey.kinds[kind]])}")


def _cmd_check(args) -> int:
    num_classes = args.num_classes
    if args.dataset:
        num_classes = DATASETS[args.dataset].num_classes
    report = check_file_list(args.list, args.root, num_classes)
    if args.decode and os.path.isfile(args.list):
        _decode_all(args, report)
    shown = report.problems if args.max_report is None else report.problems[: args.max_report]
    for lineno, message in shown:
        print(f"{report.path}:{lineno}: {message}" if lineno else f"{report.path}: {message}")
    if len(shown) < len(report.problems):
        print(f"... {len(report.problems) - len(shown)} more problems not shown (--max-report)")
    labels = "no labels" if report.label_range is None else (
        f"{report.labels_seen} distinct labels in {report.label_range[0]}..{report.label_range[1]}"
    )
    if num_classes is not None and report.label_range is not None:
        labels += f" of {num_classes} classes"
    print(f"{report.path}: {report.entries} entries, {report.directories} directories, {labels}")
    if report.ok:
        print(f"{report.path}: OK")
        return 0
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(report.counts.items()))
    print(f"{report.path}: {len(report.problems)} problems ({kinds})")
    return 1


# ------------------------------------------------------------------------------ main


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m data.prepare", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    pattern_help = (
        f"glob (case-sensitive) for the directories that are classes; default {DEFAULT_CLASS_PATTERN!r}, "
        "the paper's filter (names starting with 'n', the ImageNet synsets). Use '*' for any other dataset. "
        "Hidden directories never count."
    )
    fl = sub.add_parser(
        "file-list",
        help="write ROOT/file_list.txt",
        description="Write the paper's file list: class directories sorted, label = rank, images sorted, "
        "lines '/<class>/<image> <label>'. Hidden files are skipped; every other regular file is listed "
        "unless --extensions is given. An empty class directory is an error, except the 21K placeholder "
        f"{PLACEHOLDER_CLASS}, which takes a label and has no lines. Nothing is written unless the whole "
        "tree is clean; every problem is reported.",
    )
    fl.add_argument("root", metavar="ROOT", help="image folder: ROOT/<class>/<image>")
    fl.add_argument("--output", metavar="FILE", help=f"output file (default ROOT/{FILE_LIST_NAME})")
    fl.add_argument("--class-pattern", metavar="GLOB", default=DEFAULT_CLASS_PATTERN, help=pattern_help)
    fl.add_argument(
        "--extensions",
        metavar="LIST",
        help="comma-separated file extensions to list, case-insensitive, e.g. '.JPEG,.png' "
        "(default: every non-hidden regular file)",
    )
    fl.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    fl.set_defaults(func=_cmd_file_list)

    counts = ", ".join(f"{DATASETS[n].num_classes} {r}" for r, n in RELEASES.items())
    mp = sub.add_parser(
        "map-21k",
        help=f"create the {PLACEHOLDER_CLASS} placeholder and mapping_dict.txt for ImageNet-21K",
        description=f"Check the class counts ({counts}, with {PLACEHOLDER_CLASS}; "
        f"{DATASETS[VAL_1K_DATASET].num_classes} val classes), create the empty placeholder class "
        f"{PLACEHOLDER_CLASS} in the 21K training folder and write {MAPPING_NAME} there: for each 1K val class "
        "(sorted) its index among the sorted 21K classes, one per line in np.savetxt's default '%.18e' format "
        "(read it with np.loadtxt). Nothing is created or written unless every check passes.",
    )
    mp.add_argument("--train-21k", required=True, metavar="DIR", help="ImageNet-21K training folder")
    mp.add_argument("--val-1k", required=True, metavar="DIR", help="ImageNet-1K val folder")
    mp.add_argument(
        "--release", choices=sorted(RELEASES), help="which 21K release (default: inferred from the class count)"
    )
    mp.add_argument("--class-pattern", metavar="GLOB", default=DEFAULT_CLASS_PATTERN, help=pattern_help)
    mp.add_argument(
        "--expect-classes",
        type=int,
        metavar="N",
        help="for tests and non-standard trees: expect N 21K classes (placeholder included) instead of the "
        "release's count; --release is then ignored",
    )
    mp.add_argument(
        "--expect-val-classes",
        type=int,
        metavar="N",
        help=f"for tests and non-standard trees: expect N val classes instead of {DATASETS[VAL_1K_DATASET].num_classes}",
    )
    mp.set_defaults(func=_cmd_map_21k)

    ck = sub.add_parser(
        "check",
        help="validate a file list or a coreset",
        description="Check every line: format, label range, path form, file exists; then duplicate paths, "
        "one label per class directory and labels increasing with the class names. Every problem is printed "
        "as LIST:LINE: message, then a summary. Exit status 0 only when the list is clean.",
    )
    ck.add_argument("list", metavar="LIST", help="file list or coreset file")
    ck.add_argument("--root", metavar="DIR", help="data root the paths are relative to (default: the list's folder)")
    g = ck.add_mutually_exclusive_group()
    g.add_argument("--num-classes", type=int, metavar="K", help="labels must lie in [0, K)")
    g.add_argument("--dataset", choices=sorted(DATASETS), help="take K from the dataset table")
    ck.add_argument("--max-report", type=int, metavar="N", help="print at most N problems (default: all)")
    ck.add_argument(
        "--decode",
        action="store_true",
        help="also decode every listed image once (Pillow, full decode): undecodable files are problems; CMYK, "
        "grayscale, PNG named .JPEG, RGBA, 16-bit and EXIF-rotated images are counted and listed by line",
    )
    ck.add_argument("--workers", type=int, default=0, metavar="N", help="--decode threads (default: one per CPU)")
    ck.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    ck.set_defaults(func=_cmd_check)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except (PrepareError, FileListError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
