"""The scoring plan: the flags that get_coreset.py and report.py share, checked into one
Plan (the list, the history, the methods with their parameters, the fractions, the
selection rule). Neither command names a method: each method's own flags are the
MethodFlag entries of its row in dynunc/scoring/methods.py's METHODS, added to both parsers
here and resolved here against the history. The paper's underscore spellings
(--dataset_file_list) are accepted with hyphens too (--dataset-file-list)."""
import argparse
import hashlib
import os
import sys
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from dynunc.lists.index import FileListIndex, open_index
from dynunc.scoring.dedup import check_threshold, eps_threshold
from dynunc.uncertainty import check_fraction
from dynunc.history import (EMBED_CONFIG_KEYS, HistoryError, check_embeddings_samples, check_fingerprint,
                            contiguous_epoch_files, describe_embeddings, embed_path, find_embeddings_dir,
                            find_history_dir, fingerprint_path, list_embed_epochs, load_embeddings, load_epoch_prob,
                            read_sample_keys, read_threshold, record_loader, record_path, sample_keys_path,
                            why_no_embeddings)
from dynunc.ranking import CCS, Cut, Ranking
from dynunc.scoring.methods import METHODS, MethodFlag, ScoreParams, epochs_read, resolve_defaults, with_inputs
from dynunc.paths import check_arguments


def missing_record(hdir: str, method: str, params: ScoreParams, num_epochs: int, edir: str = "") -> Optional[str]:
    """The first record file that `method` reads and `hdir` lacks, or None (prob files are
    not checked: contiguous_epoch_files found every epoch's). An embedding method: its
    epoch's embed_{epoch}.npy in `edir` (the embeddings' folder, default `hdir`;
    params.embed_epoch, None if it holds none), then the records of the methods whose
    scores it reads."""
    if METHODS[method].embed is not None:
        epoch = params.embed_epoch
        path = embed_path(edir or hdir, "<epoch>" if epoch is None else epoch)
        if epoch is None or not os.path.exists(path):
            return path
        for used in METHODS[method].uses(params):
            path = missing_record(hdir, used, params, num_epochs, edir)
            if path is not None:
                return path
        return None
    for kind in METHODS[method].needs:
        if kind == "prob":
            continue
        for epoch in epochs_read(method, params, num_epochs):
            path = record_path(hdir, kind, epoch)
            if not os.path.exists(path):
                return path
    return None


def check_records(hdir: str, methods: Sequence[str], params: ScoreParams, num_epochs: int, edir: str = "") -> None:
    """HistoryError, naming the first missing file and its method, unless `hdir` (and the
    embeddings' folder `edir`, default `hdir`) holds every record file that `methods` read."""
    for name in methods:
        path = missing_record(hdir, name, params, num_epochs, edir)
        if path is not None and os.path.basename(path).startswith("embed_"):
            raise HistoryError(f"{path} is missing: method {name} needs the recorded embeddings; "
                               f"{why_no_embeddings(hdir) if edir in ('', hdir) else 'embed.py writes epoch 0'}")
        if path is not None:
            kind = os.path.basename(path).split("_")[0]
            raise HistoryError(f"{path} is missing: method {name} needs {kind}_{{epoch}}.npy "
                               f"(recorded by produce runs of this version, not by older ones or the paper's)")


def add_flag(parser: argparse.ArgumentParser, name: str, **options) -> None:
    """`name` and, where it has underscores (the paper's spelling), its hyphen spelling."""
    parser.add_argument(*dict.fromkeys((name, name.replace("_", "-"))), **options)


def method_flags() -> Dict[str, Tuple[MethodFlag, List[str]]]:
    """Every method flag by name, with the methods that take it."""
    flags: Dict[str, Tuple[MethodFlag, List[str]]] = {}
    for name, method in METHODS.items():
        for flag in method.flags:
            flags.setdefault(flag.name, (flag, []))[1].append(name)
    return flags


def add_plan_flags(parser: argparse.ArgumentParser, method_default: Optional[List[str]], method_help: str,
                   fraction_default: Optional[Sequence[str]], seed_help: str, selection: bool = False,
                   fraction_required: Optional[bool] = None) -> None:
    """The shared flags. `method_default` None: the methods the history has records for;
    `fraction_default` None: --fraction required (unless `fraction_required` is False: the
    caller checks); `selection`: get_coreset.py's rule flags (and --dataset_file_list
    optional: without it the coreset is the kept indices or keys)."""
    add_flag(parser, "--input", required=True, help="produce run's output folder, or its pred_prob_history folder"
             + ("; or an embed.py folder alone (methods prototype, kcenter, moderate, random)" if selection else ""))
    add_flag(parser, "--dataset_file_list", required=not selection,
             help="the training file list the history was recorded on" + (
                 "; without it, the coreset file holds the kept samples' indices (0-based), or their keys if the "
                 "history names its samples by keys (sample_keys.txt), one per line" if selection else ""))
    add_flag(parser, "--method", nargs="+", default=method_default, metavar="NAME", help=method_help)
    required = not fraction_default if fraction_required is None else fraction_required
    add_flag(parser, "--fraction", nargs="+", metavar="F", required=required,
             default=list(fraction_default or ()), help="fraction(s) of lines to keep, each in (0, 1]"
             + (f" (default {' '.join(fraction_default)})" if fraction_default else ""))
    for flag, _ in method_flags().values():
        add_flag(parser, flag.name, dest=flag.param, help=flag.help, **flag.options)
    add_flag(parser, "--seed", type=int, default=0, help=seed_help)
    add_flag(parser, "--embeddings", metavar="FOLDER",
             help="read the embeddings (--dedup, the embedding methods, the report's projection and --leakage) from "
             "FOLDER instead of the history: embed.py's output (a pretrained model's features) or another produce "
             "run; refused unless they were made on the same list")
    add_flag(parser, "--dedup", type=float, metavar="COSINE",
             help="remove near-duplicates first (SemDeDup, dynunc/scoring/dedup.py): images whose recorded embeddings "
             "(embed_{epoch}.npy, the latest epoch) have a cosine SIMILARITY >= COSINE, in [0.5, 1], within a "
             "k-means cluster form a group, and only one image per group is kept; identical embeddings (exact "
             "copies) form a group at any value. SemDeDup's eps is 1 - cosine: see --dedup-eps")
    add_flag(parser, "--dedup-eps", type=float, metavar="EPS",
             help="--dedup in SemDeDup's spelling: EPS = 1 - cosine similarity, in [0, 0.5] (--dedup-eps 0.07 is "
             "--dedup 0.93; 0: exact copies only)")
    add_flag(parser, "--dedup-clusters", type=int, metavar="K",
             help="--dedup: the number of k-means clusters (default: sqrt(N), rounded)")
    if selection:
        add_flag(parser, "--class-balanced", action="store_true",
                 help="each class keeps its share of the budget, in proportion to its size (largest remainders); "
                 "top scores (or CCS) within the class. Classes: the file list's labels")
        add_flag(parser, "--ccs", type=float, metavar="BETA",
                 help="coverage-centric selection (Zheng et al. 2023): drop the hardest BETA fraction (BETA in "
                 "[0, 1)), then spread the budget over equal-width score bins, smallest bin first")
        add_flag(parser, "--ccs-bins", type=int, default=50, help="--ccs: the number of score bins (default 50)")


def check_not_repeated(flag: str, values: Sequence[str]) -> None:
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f"{flag}: {repeated[0]!r} is given twice")


def fraction_keeps(fractions: Sequence[str], num_samples: int) -> Dict[str, int]:
    """{fraction as written: lines kept}; ValueError naming --fraction if one is not a
    number, out of range, keeps nothing, or is given twice."""
    check_not_repeated("--fraction", fractions)
    keeps = {}
    for fraction in fractions:
        try:
            value = float(fraction)
        except ValueError:
            raise ValueError(f"--fraction: {fraction!r} is not a number") from None
        keeps[fraction] = check_fraction(num_samples, value)
    return keeps


@dataclass(frozen=True)
class Selection:
    """The selection rule applied to each method's ranking."""

    class_balanced: bool = False
    ccs: Optional[CCS] = None
    seed: int = 0

    def ranking(self, scores: np.ndarray, labels: Optional[np.ndarray]) -> Ranking:
        return Ranking(scores, labels, self.seed)  # the seed breaks ties at a cut

    def choose(self, ranking: Ranking, keep: int) -> Tuple[np.ndarray, Optional[Cut]]:
        """(kept indices, how the cut meets ties: None under CCS, which samples within score bins)."""
        return ranking.choose(keep, class_balanced=self.class_balanced, ccs=self.ccs)

    def describe(self) -> str:
        return (", class-balanced" if self.class_balanced else "") + (f", ccs {self.ccs.beta}" if self.ccs else "")


def check_flags(args: argparse.Namespace) -> Selection:
    """The checks that need neither the list nor the history; the selection rule."""
    check_arguments(args, in_files=("dataset_file_list",), in_folders=("input", "embeddings"))
    if args.method is not None:
        unknown = [m for m in args.method if m not in METHODS]
        if unknown:
            raise ValueError(f"--method: unknown method {unknown[0]!r}; known: {', '.join(METHODS)}")
        check_not_repeated("--method", args.method)
    if getattr(args, "dedup_eps", None) is not None:
        if args.dedup is not None:
            raise ValueError(f"give --dedup (a cosine similarity) or --dedup-eps (1 - cosine), not both: "
                             f"--dedup {args.dedup:g} --dedup-eps {args.dedup_eps:g}")
        args.dedup = eps_threshold("--dedup-eps", args.dedup_eps)
    elif args.dedup is not None:
        check_threshold("--dedup", args.dedup, eps_flag="--dedup-eps")
    if args.dedup_clusters is not None and args.dedup_clusters < 1:
        raise ValueError(f"--dedup-clusters must be >= 1, got {args.dedup_clusters}")
    ccs = CCS(args.ccs, args.ccs_bins, args.seed) if getattr(args, "ccs", None) is not None else None
    return Selection(getattr(args, "class_balanced", False), ccs, args.seed)


# get_coreset.py --dedup refuses to remove more than this share of the list unless told
# otherwise (--dedup-max-removed): below the similarity of a class's features to one
# another, distinct images form large groups (README, "Near-duplicates").
DEDUP_MAX_REMOVED = 0.5


def check_dedup_left(threshold: float, max_removed: float, num_samples: int, left: int,
                     keeps: Dict[str, int]) -> None:
    """ValueError, with the numbers, when deduplication at `threshold` removes more than
    `max_removed` of the list, or leaves fewer lines than a fraction other than 1 asks for
    (--fraction 1 asks for the deduplicated list itself)."""
    removed = num_samples - left
    if removed > max_removed * num_samples:
        raise ValueError(
            f"--dedup {threshold:g} would remove {removed} of {num_samples} lines ({removed / num_samples:.1%}), more "
            f"than --dedup-max-removed {max_removed:g} of the list: at this threshold distinct images group together; "
            f"raise the threshold (report.py --dedup {threshold:g} shows the groups; README, 'Near-duplicates'), or "
            f"raise --dedup-max-removed if the list really is mostly copies")
    for fraction, keep in keeps.items():
        if float(fraction) != 1.0 and keep > left:
            raise ValueError(
                f"--dedup {threshold:g} leaves {left} of {num_samples} lines, fewer than --fraction {fraction} asks "
                f"for (int({num_samples} * {fraction}) = {keep}): raise the threshold or lower the fraction "
                f"(--fraction 1 writes the deduplicated list)")


@dataclass(frozen=True)
class Plan:
    """What to score and keep, checked against the list and the history before any record is read."""

    index: Optional[FileListIndex]  # the list: its count, labels, identity and bytes (None: no list given)
    hdir: str
    prob_paths: List[str]
    methods: List[str]
    params: ScoreParams
    fractions: List[str]  # as written on the command line
    keeps: Dict[str, int]  # fraction -> int(N * fraction)
    selection: Selection
    count: int = 0  # N, read from the history when no list is given
    keys: Optional[List[str]] = None  # sample_keys.txt of a history without a list (None: named by index)
    also: Tuple[str, ...] = ()  # methods scored for another use (get_coreset's --label-score), no coreset
    edir: str = ""  # the embeddings' folder: --embeddings, checked against the list (default: the history)

    @property
    def embed_dir(self) -> str:
        return self.edir or self.hdir

    @property
    def num_samples(self) -> int:
        return self.index.count if self.index is not None else self.count

    @property
    def labels(self) -> Optional[np.ndarray]:
        return self.index.labels if self.index is not None else None

    @property
    def num_epochs(self) -> int:
        return len(self.prob_paths)

    def loader(self, mmap: bool = False) -> Callable[[int, str], np.ndarray]:
        return record_loader(self.hdir, self.prob_paths, self.num_samples, mmap=mmap)

    def embedded(self) -> Tuple[np.ndarray, np.ndarray]:
        """(the embeddings of --embed-epoch, a checked float16 memory map N x D; the
        list's labels): what the embedding methods read, loaded once for all of them."""
        embeddings = load_embeddings(self.embed_dir, self.num_samples, self.params.embed_epoch)
        readers = ", ".join(m for m in self.methods if METHODS[m].embed is not None) or "the embedding methods"
        print(f"{readers}: read {embed_path(self.embed_dir, self.params.embed_epoch)}, {embeddings.shape[0]} x "
              f"{embeddings.shape[1]} float16 ({describe_embeddings(self.embed_dir)})", file=sys.stderr)
        return embeddings, self.labels

    def describe_params(self) -> str:
        """The parameters the methods took, as flags: '; window 10; epochs 0:3'."""
        taken = [(flag.name[2:], getattr(self.params, flag.param)) for flag, owners in method_flags().values()
                 if any(m in self.methods for m in owners)]
        return "".join(f"; {name}" + ("" if value is True else f" {_spelled(value)}")
                       for name, value in taken if value not in (None, False))

    def params_json(self) -> dict:
        """The parameters for report.json, an epoch range as a list."""
        return {k: list(v) if isinstance(v, range) else v for k, v in self.params.values().items()}


def _spelled(value) -> str:
    """A parameter as its flag is written: a range of epochs as START:STOP[:STEP]."""
    if not isinstance(value, range):
        return str(value)
    return f"{value.start}:{value.stop}" + (f":{value.step}" if value.step != 1 else "")


def make_plan(args: argparse.Namespace, selection: Selection, index: Optional[FileListIndex] = None,
              also: Sequence[str] = (), embeddings_only: bool = False) -> Plan:
    """Open the list's index (unless given), open its history (HistoryError naming both
    if the list is not the one it was recorded on) and resolve the method flags; --method
    None: every method whose records the history holds (an empty list: none, when `also`
    names methods to score for another use, checked as --method's are). ValueError /
    HistoryError / FileListError naming the flag or file. `embeddings_only`: --input may
    be an embeddings folder without a history (open_input)."""
    if args.dataset_file_list is None:
        return _plan_without_list(args, selection, also, embeddings_only)
    index = open_index(args.dataset_file_list) if index is None else index
    keeps = fraction_keeps(args.fraction, index.count)
    hdir, paths = open_input(args.input, embeddings_only)
    listed = args.dataset_file_list or index.list_path  # the list, or the history's sample_keys.txt
    if not check_fingerprint(hdir, listed, index.fingerprint()):
        print(f"warning: {fingerprint_path(hdir)} does not exist (a history from an older run or the paper's "
              f"code): cannot check that {listed} is the list it was recorded on", file=sys.stderr)
    edir = embeddings_dir(args, hdir, index.fingerprint())
    chosen, params, also = _methods(args, hdir, paths, index.count, also, edir)
    return Plan(index, hdir, paths, chosen, params, list(args.fraction), keeps, selection, also=also, edir=edir)


# The methods that read nothing but the embeddings (and the list's labels), or nothing at
# all: what an embeddings folder without a history can be scored by.
WITHOUT_HISTORY = tuple(m for m in METHODS if all(kind == "embed" for kind in METHODS[m].needs)
                        and not METHODS[m].uses(ScoreParams()))  # not d2: it reads another method's scores


def open_input(path: str, embeddings_only: bool = False) -> Tuple[str, List[str]]:
    """--input's history folder and its epoch files. With `embeddings_only`, an embeddings
    folder without a history (embed.py's output: no training dynamics) is taken too, as
    (that folder, no epoch files); then only WITHOUT_HISTORY's methods can score it."""
    try:
        hdir = find_history_dir(path)
    except HistoryError as e:
        try:
            edir = find_embeddings_dir(path)
        except HistoryError:
            raise e from None
        if not embeddings_only:
            raise HistoryError(f"{e}; {edir} holds embeddings only: give it as --embeddings beside a produce run's "
                               f"--input") from None
        return edir, []
    return hdir, contiguous_epoch_files(hdir)


def embeddings_dir(args: argparse.Namespace, hdir: str, fingerprint: Optional[dict]) -> str:
    """--embeddings' folder (find_embeddings_dir), checked to hold the samples of the
    list (`fingerprint`) or of the history; "" without --embeddings (the history's own)."""
    if not getattr(args, "embeddings", None):
        return ""
    edir = find_embeddings_dir(args.embeddings)
    if not check_embeddings_samples(edir, hdir, fingerprint):
        print(f"warning: {fingerprint_path(hdir)} does not exist: only the row count of the embeddings in {edir} "
              f"can be checked against the history", file=sys.stderr)
    return edir


def _plan_without_list(args: argparse.Namespace, selection: Selection, also: Sequence[str] = (),
                       embeddings_only: bool = False) -> Plan:
    """The plan of a history scored without its file list: N from its first epoch file
    (or an embeddings folder's embed file), the samples named by its sample_keys.txt or
    by index; no labels, so class-balanced selection and the methods that read labels
    are refused."""
    hdir, paths = open_input(args.input, embeddings_only)
    if paths:
        count = len(load_epoch_prob(paths[0], mmap=True))
    else:  # the rows of the latest embed file (load_embeddings checks them against this count later)
        count = len(np.load(embed_path(hdir, list_embed_epochs(hdir)[-1]), mmap_mode="r", allow_pickle=False))
    keys = read_sample_keys(hdir, count)
    fingerprint = None
    if keys is not None:  # the keys must be the ones the history was recorded on
        text = "".join(k + "\n" for k in keys).encode("utf-8")
        fingerprint = {"entries": len(keys), "sha256": hashlib.sha256(text).hexdigest()}
        check_fingerprint(hdir, sample_keys_path(hdir), fingerprint)
    edir = embeddings_dir(args, hdir, fingerprint)
    if selection.class_balanced:
        raise ValueError("--class-balanced needs --dataset_file_list: the classes are the list's labels")
    keeps = fraction_keeps(args.fraction, count)
    chosen, params, also = _methods(args, hdir, paths, count, also, edir)
    needing = [m for m in with_inputs(chosen + list(also), params) if METHODS[m].labels(params)]
    if needing:
        raise ValueError(f"method {needing[0]} reads the class labels: give --dataset_file_list")
    return Plan(None, hdir, paths, chosen, params, list(args.fraction), keeps, selection, count, keys, also, edir)


def _check_without_history(path: str, methods: Sequence[str]) -> None:
    """ValueError naming the first of `methods` that an embeddings folder alone cannot score."""
    for name in methods:
        if name not in WITHOUT_HISTORY:
            raise ValueError(
                f"method {name} reads a produce run's history, and --input {path} holds embeddings only (embed.py): "
                f"give --method {' '.join(WITHOUT_HISTORY)} (random with --fraction 1 --dedup T writes the "
                f"deduplicated list), or a produce run as --input and this folder as --embeddings")


def _methods(args: argparse.Namespace, hdir: str, paths: List[str], count: int, also: Sequence[str] = (),
             edir: str = "") -> Tuple[List[str], ScoreParams, Tuple[str, ...]]:
    """The methods to score (--method, or every one whose records `hdir` holds, the
    embeddings in `edir` when given), their resolved parameters, and `also` (methods
    scored for another use) without those."""
    chosen = list(args.method) if args.method is not None else list(METHODS)
    flags = method_flags()
    given = {flag.param: getattr(args, flag.param) for flag, _ in flags.values()}
    also = tuple(m for m in dict.fromkeys(also) if m not in chosen)
    if not paths:  # an embeddings folder alone (open_input)
        chosen = chosen if args.method is not None else [m for m in chosen if m in WITHOUT_HISTORY]
        _check_without_history(args.input, chosen + list(also))
    params = resolve_defaults(chosen + list(also), ScoreParams(seed=args.seed), len(paths), hdir, given,
                              embed_where=edir)
    check_records(hdir, also, params, len(paths), edir)
    if args.method is not None:
        check_records(hdir, chosen, params, len(paths), edir)
    else:
        chosen = [m for m in chosen if missing_record(hdir, m, params, len(paths), edir) is None]
        left_out = [m for m in METHODS if m not in chosen and METHODS[m].embed is None]
        if left_out:
            print(f"warning: {hdir} lacks the records of {', '.join(left_out)}: left out (produce runs of this "
                  "version record them)", file=sys.stderr)
        unembedded = [m for m in METHODS if m not in chosen and METHODS[m].embed is not None]
        if unembedded:
            print(f"warning: {hdir} lacks the embeddings (embed_{{epoch}}.npy) or records of {', '.join(unembedded)}: "
                  f"left out (produce runs record embeddings when {EMBED_CONFIG_KEYS} ask for them)", file=sys.stderr)
    scored = with_inputs(chosen + list(also), params)  # with the methods whose scores they read (d2's --d2-score)
    for flag, owners in flags.values():
        if given[flag.param] not in (None, False) and not any(m in scored for m in owners):
            print(f"warning: {flag.name} is used by method{'s' if len(owners) > 1 else ''} {', '.join(owners)} "
                  "only; ignored", file=sys.stderr)
    if chosen and read_threshold(hdir, count) is not None:
        raise HistoryError(f"{hdir}: a run with AUM's threshold samples (threshold.json, PRODUCE.THRESHOLD_SAMPLES) "
                           "is for label errors only (get_coreset.py --label-issues without --fraction): its "
                           "relabelled images' records are about the extra class")
    if not chosen and not also and args.method is None:  # [] (get_coreset --label-issues alone): none asked
        raise ValueError(f"{hdir}: holds the records of no method (give --method)")
    return chosen, params, also
