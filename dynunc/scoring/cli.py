"""Select coresets from a produce run's prediction history: dynamic uncertainty (the
paper's method, the default) and the standard baselines that need only training
dynamics, for one or several fractions, from one pass over the history.

    python get_coreset.py --input OUTPUT --dataset_file_list LIST --fraction 0.75 \
        --window 10 --output CORESET
    python get_coreset.py --input OUTPUT --dataset_file_list LIST --fraction 0.5 0.75 0.9 \
        --method dynunc forgetting el2n aum variability confidence random --window 10 \
        --output out/{method}_{fraction}.txt

A produce run on WebDataset shards or a Hugging Face dataset (DATA.FORMAT wds, hf) names
its samples by keys (pred_prob_history/sample_keys.txt): leave out --dataset_file_list and
each coreset is the kept keys, one per line (main.py --coreset takes it, data/prune.py
writes the pruned shards or dataset).

`--input` is the produce run's output folder (history in OUTPUT/pred_prob_history/) or
the history folder itself. Epoch files are prob_{epoch}.npy (NaN = unseen) or the
paper's prob_{epoch}.txt (0 = unseen), with correct_/margin_/el2n_{epoch}.npy beside
them for the methods that need those; epochs must run 0..K-1 without a gap.

By default (dynunc) the scores are exactly the paper's (docs/semantics.md §3):
K-J windows of J = --window epochs (default: the paper's 10, where K >= 11), the window
that ends at the last epoch NOT used (`--include-last-window` adds it). The
int(N * fraction) highest scores are kept; the lines tied at the cut are drawn at random
from --seed (a pseudo-random priority per line, dynunc/ranking.py's tie_priority), never
taken in list order, and the message says how many were drawn among how many
(dynunc/scoring/methods.py: the methods; dynunc/scoring/plan.py: the flags; dynunc/ranking.py:
the selection rules).

With --dedup THRESHOLD, near-duplicates (recorded embeddings, dynunc/scoring/dedup.py) are
removed before any method selects: the fractions stay fractions of the full list, and the
groups go to OUTPUT.dedup_groups.tsv. A threshold that would remove more than
--dedup-max-removed of the list (default half), or leave fewer lines than a fraction
asks for, is refused with the numbers; --fraction 1 writes the deduplicated list.

With --embeddings FOLDER, --dedup and the embedding methods (moderate, prototype, kcenter,
d2) read FOLDER's embeddings instead of the history's: a pretrained model's (embed.py) or
another produce run's, refused unless made on the same list. An embed.py folder given as
--input, with no produce run, is scored by prototype, kcenter, moderate and random only
(`--method random --fraction 1 --dedup T`: the deduplicated list).

With --label-issues FILE (no --fraction needed), the suspected label errors go to FILE,
a TSV, most suspicious first (dynunc/scoring/label_issues.py: the scores and their
automatic cuts), and the estimate of how many labels are wrong is printed with its rule:

    python get_coreset.py --input OUTPUT --dataset_file_list LIST --label-issues issues.tsv

--drop-label-issues removes the suspects before any method selects (as --dedup does, the
fractions stay fractions of the full list).

Writes, atomically and all together at the end: each coreset (the kept lines of LIST
in LIST's order; without --dataset_file_list, the kept samples' indices, or their keys
for a history that names its samples by keys (sample_keys.txt), one per line,
ascending) and, once per method, its scores (float64, one per line of LIST). On
any refusal nothing is written and the exit code is 2; an interrupted run leaves the
old outputs as they were.
"""
import argparse
import contextlib
import dataclasses
import os
import sys
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from dynunc.lists.lines import write_entries
from dynunc.scoring.dedup import deduplicate, latest_embeddings, write_groups
from dynunc.scoring.label_issues import (DEFAULT_LABEL_SCORE, LABEL_SCORES, methods_scored, score_label_issues,
                                         write_tsv)
from dynunc.scoring.methods import DEFAULT_METHOD, METHODS, score_history
from dynunc.interrupt import run_command
from dynunc.io import atomic_group, remove_stale_temporaries
from dynunc.paths import check_output_file
from dynunc.scoring.plan import (DEDUP_MAX_REMOVED, Plan, add_flag, add_plan_flags, check_dedup_left, check_flags,
                                 make_plan)

METHOD_PLACEHOLDER, FRACTION_PLACEHOLDER = "{method}", "{fraction}"
SCORES_FRACTION = "all"  # what {fraction} becomes in a scores file's name


def scores_path(output: str) -> str:
    return output + ".scores.npy"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="get_coreset.py",
        description="Keep the samples with the highest pruning scores (dynamic uncertainty by default).",
    )
    add_plan_flags(p, [DEFAULT_METHOD], f"scoring method(s), default {DEFAULT_METHOD}. "
                   + "; ".join(f"{name}: {m.score} ({m.paper})" for name, m in METHODS.items()),
                   fraction_default=None, selection=True, fraction_required=False,
                   seed_help="ties at a cut: which of the tied images are kept (a uniform draw); random: the subset "
                   "drawn; --ccs: the draws in each bin")
    add_flag(p, "--label-issues", metavar="FILE",
             help="write the suspected label errors to FILE (TSV, most suspicious first: index, line, path, label, "
             "score, and suggested where PRODUCE.TOPK recorded class probabilities) and print how many labels are "
             "estimated wrong, by the rule of --label-score; --fraction and --output are then optional")
    add_flag(p, "--label-score", default=DEFAULT_LABEL_SCORE, choices=list(LABEL_SCORES),
             help=f"how label errors are scored (default {DEFAULT_LABEL_SCORE}); "
             + "; ".join(f"{name}: {s.what}, suspects: {s.rule}" for name, s in LABEL_SCORES.items()))
    add_flag(p, "--drop-label-issues", action="store_true",
             help="remove the suspected label errors (--label-score's cut) before any method selects; the fractions "
             "stay fractions of the full list")
    add_flag(
        p, "--output",
        help="coreset file to write (required with --fraction). With several methods it must contain {method}, "
        "with several fractions {fraction} (as written in --fraction), e.g. out/{method}_{fraction}.txt. Each "
        "method's scores go once to OUTPUT.scores.npy, with {fraction} written as 'all' (out/dynunc_all.txt.scores.npy)",
    )
    add_flag(p, "--dedup-max-removed", type=float, default=DEDUP_MAX_REMOVED, metavar="SHARE",
             help=f"--dedup: refuse a threshold that removes more than this share of the list (default "
             f"{DEDUP_MAX_REMOVED:g}); a fraction other than 1 that asks for more lines than are left is refused too")
    return p


@dataclass(frozen=True)
class Output:
    method: str
    fraction: str  # as written on the command line
    keep: int
    path: str


def render(template: str, method: str, fraction: str) -> str:
    return template.replace(METHOD_PLACEHOLDER, method).replace(FRACTION_PLACEHOLDER, fraction)


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_command(parser.prog, lambda: run(args))


def check_placeholders(args: argparse.Namespace) -> None:
    for flag, needed in ((METHOD_PLACEHOLDER, len(args.method) > 1), (FRACTION_PLACEHOLDER, len(args.fraction) > 1)):
        if needed and flag not in args.output:
            raise ValueError(f"--output {args.output!r} must contain {flag}: several "
                             f"{'methods' if flag == METHOD_PLACEHOLDER else 'fractions'} are asked for")


def plan_outputs(template: str, plan: Plan) -> List[Output]:
    return [Output(m, fraction, keep, render(template, m, fraction))
            for fraction, keep in plan.keeps.items() for m in plan.methods]


def method_scores_path(template: str, method: str) -> str:
    return scores_path(render(template, method, SCORES_FRACTION))


def dedup_groups_path(template: str) -> str:
    """--dedup's groups file: OUTPUT.dedup_groups.tsv, {method} written 'dedup' and {fraction} 'all'."""
    return render(template, "dedup", SCORES_FRACTION) + ".dedup_groups.tsv"


def write_kept_names(f, kept: np.ndarray, keys: Optional[Sequence[str]]) -> None:
    """The kept samples of a history without a file list, ascending, one per line: their
    key (sample_keys.txt) or, without keys, their index."""
    chunk = 1 << 16
    indices = np.flatnonzero(kept)
    for start in range(0, len(indices), chunk):
        part = indices[start:start + chunk]
        names = [keys[i] for i in part] if keys is not None else part.astype(str).tolist()
        f.write("".join(f"{name}\n" for name in names))


def check_label_flags(args: argparse.Namespace) -> bool:
    """Whether coresets are asked for (--fraction); ValueError naming the flag for a
    combination that cannot run. Without --fraction only --label-issues runs, and
    --method is then not scored."""
    if (args.label_issues or args.drop_label_issues) and args.dataset_file_list is None:
        raise ValueError("--label-issues and --drop-label-issues need --dataset_file_list: the labels given to "
                         "the images are the list's")
    if not args.fraction:
        for flag, given in (("--drop-label-issues", args.drop_label_issues), ("--dedup", args.dedup is not None),
                            ("--output", args.output is not None)):
            if given:
                raise ValueError(f"{flag} needs --fraction (it shapes or names the coresets)")
        if args.label_issues is None:
            raise ValueError("--fraction is required (or --label-issues FILE alone)")
        return False
    if args.output is None:
        raise ValueError("--output is required with --fraction")
    return True


def check_output_paths(args: argparse.Namespace, written: Sequence[str]) -> None:
    listed = os.path.realpath(args.dataset_file_list) if args.dataset_file_list is not None else None
    seen: Dict[str, str] = {}
    for path in written:
        real = os.path.realpath(path)
        if real == listed:
            raise ValueError(f"{path!r} would overwrite --dataset_file_list {args.dataset_file_list!r}")
        if real in seen:
            flag = "--label-issues" if path == args.label_issues or seen[real] == args.label_issues else "--output"
            raise ValueError(f"{flag} {path!r}: two outputs would both be written to {path!r}")
        seen[real] = path


def run(args: argparse.Namespace) -> int:
    # Cheap checks first; nothing is written until every check has passed and every
    # score is computed. The list is never held as Python strings (13M lines would take
    # gigabytes): its count, identity and labels come from its index (the plan opens it),
    # and after scoring its bytes are read once, in blocks, to copy the kept lines.
    coresets = check_label_flags(args)  # the command line alone: before any path is looked at
    if coresets:
        check_placeholders(args)
    else:
        args.method = []  # --label-issues alone: no coreset method is scored
    selection = check_flags(args)
    if not 0.0 <= args.dedup_max_removed <= 1.0:
        raise ValueError(f"--dedup-max-removed must be in [0, 1], got {args.dedup_max_removed:g}")
    for method in args.method:  # the outputs' paths, before the list and the history are opened
        for path in [render(args.output, method, f) for f in args.fraction] + [method_scores_path(args.output, method)]:
            check_output_file("--output", path)
    if args.label_issues:
        check_output_file("--label-issues", args.label_issues)
    label_score = LABEL_SCORES[args.label_score] if (args.label_issues or args.drop_label_issues) else None
    if label_score is None and args.label_score != DEFAULT_LABEL_SCORE:
        print("warning: --label-score is used by --label-issues and --drop-label-issues only; ignored", file=sys.stderr)
    plan = make_plan(args, selection, also=methods_scored(args.label_score) if label_score else [],
                     embeddings_only=True)
    outputs = plan_outputs(args.output, plan) if coresets else []
    written = [method_scores_path(args.output, m) for m in plan.methods] + [o.path for o in outputs]
    groups_path = dedup_groups_path(args.output) if args.dedup is not None else None
    extra = [p for p in (groups_path, args.label_issues) if p]
    check_output_paths(args, written + extra)
    if groups_path:
        check_output_file("--output", groups_path)
    labels = plan.labels if selection.class_balanced else None
    n = plan.num_samples
    # the embeddings are checked before any scoring
    embed_epoch, embeddings = latest_embeddings(plan.embed_dir, n) if args.dedup is not None else (None, None)
    t0 = time.perf_counter()
    scores = score_history(list(plan.methods) + list(plan.also), plan.num_epochs, n, plan.loader(mmap=True),
                           plan.params, embedded=plan.embedded)
    issues = None
    if label_score is not None:
        issues = score_label_issues(args.label_score, scores, plan.index.labels, plan.hdir)
    duplicates, pool = None, None  # pool: the lines methods select from (all when None)
    if embeddings is not None:
        dedup_started = time.perf_counter()
        duplicates = deduplicate(embeddings, args.dedup, args.dedup_clusters, args.seed)
        dedup_seconds = time.perf_counter() - dedup_started
        pool = np.flatnonzero(~duplicates.removed)
        check_dedup_left(args.dedup, args.dedup_max_removed, n, len(pool), plan.keeps)  # before anything is written
    if issues is not None and args.drop_label_issues:
        kept_lines = ~issues.flagged
        if duplicates is not None:
            kept_lines &= ~duplicates.removed
        pool = np.flatnonzero(kept_lines)
    kept = {}  # output -> one bool per line (N bytes, not 8 bytes per kept line)
    cuts = {}  # output -> how its cut meets ties (select.Cut; None under CCS)
    lowest = {o: METHODS[o.method].keeps_lowest(plan.params, o.keep, n) for o in outputs}  # prototype's rule
    for method in plan.methods:
        rankings = {}  # by side: the highest scores kept (False) or the lowest (True)
        for side in sorted({lowest[o] for o in outputs if o.method == method}):
            signed = -scores[method] if side else scores[method]
            if pool is None:
                rankings[side] = selection.ranking(signed, labels)
            else:
                rankings[side] = selection.ranking(signed[pool], None if labels is None else labels[pool])
        for o in outputs:
            if o.method == method:
                ranking = rankings[lowest[o]]
                try:
                    indices, cuts[o] = selection.choose(ranking, o.keep if pool is None else min(o.keep, len(pool)))
                    if lowest[o] and cuts[o] is not None and cuts[o].score is not None:
                        cuts[o] = dataclasses.replace(cuts[o], score=-cuts[o].score)  # the score as written
                except ValueError as e:
                    if selection.ccs is None:
                        raise
                    raise ValueError(f"--ccs {selection.ccs.beta} with --fraction {o.fraction} ({method}): "
                                     f"{e}") from None
                kept[o] = np.zeros(n, dtype=bool)
                kept[o][indices if pool is None else pool[indices]] = True
    elapsed = time.perf_counter() - t0
    t1 = time.perf_counter()
    for path in written + extra:
        remove_stale_temporaries(path)  # left by a run of this command killed while writing
    with atomic_group() as group:
        for method in plan.methods:
            group.save_npy(method_scores_path(args.output, method), scores[method])
        if plan.index is not None:
            with contextlib.ExitStack() as files:
                targets = [(kept[o], files.enter_context(group.open(o.path, "wb"))) for o in outputs]
                write_entries(plan.index, targets)
        else:
            for o in outputs:
                with group.open(o.path, "w", encoding="utf-8", newline="\n") as f:
                    write_kept_names(f, kept[o], plan.keys)
        if duplicates is not None:
            with group.open(groups_path, "w", encoding="utf-8", newline="") as f:
                write_groups(f, duplicates, plan.index, plan.keys)
        if issues is not None and args.label_issues:
            with group.open(args.label_issues, "w", encoding="utf-8", newline="") as f:
                write_tsv(f, issues, plan.index.labels, lambda i: int(plan.index.lines[i]), plan.index.name)
    if issues is not None:
        where = f" -> {args.label_issues}" if args.label_issues else ""
        dropped = "; dropped before selection" if args.drop_label_issues else ""
        print(f"label issues: {issues.describe(n)}{dropped}{where}")
    if not coresets:
        return 0
    size = sum(os.path.getsize(path) for path in written)
    source = f"over {plan.num_epochs} epochs" if plan.num_epochs else f"from the embeddings in {plan.embed_dir}"
    print(f"scored {n} lines {source} ({', '.join(plan.methods)}{plan.describe_params()}) in "
          f"{elapsed:.1f}s; wrote {len(written)} files ({size / 2**20:.0f} MiB, synced to disk) in "
          f"{time.perf_counter() - t1:.1f}s; scores -> {', '.join(written[:len(plan.methods)])}", file=sys.stderr)
    rule = selection.describe()
    if duplicates is not None:
        source = f" in {plan.embed_dir}" if plan.edir else ""
        print(f"{duplicates.describe()}, embeddings of epoch {embed_epoch}{source}, in {dedup_seconds:.1f}s; methods select "
              f"from the other {len(pool)} -> {groups_path}")
        if duplicates.warning():
            print(f"get_coreset.py: warning: {duplicates.warning()}", file=sys.stderr)
    for o in outputs:
        detail = "" if (o.method == DEFAULT_METHOD and not rule) else f", {o.method}{rule}"
        detail += ", the lowest scores kept" if lowest[o] else ""
        ties = f"; {cuts[o].describe()} (--seed {selection.seed})" if cuts[o] and cuts[o].tied else ""
        removed_by = " and ".join(f for f, on in (("--dedup", duplicates is not None),
                                                   ("--drop-label-issues", args.drop_label_issues)) if on)
        whole = (f"; int(N * fraction) = {o.keep} exceeds the {len(pool)} lines left after {removed_by}: all kept"
                 if pool is not None and o.keep > len(pool) else "")
        print(f"kept {int(kept[o].sum())} of {n} lines (fraction {o.fraction}{detail}{ties}{whole}) -> {o.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
