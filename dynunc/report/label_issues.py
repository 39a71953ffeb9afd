"""The report's label-error section (report.py --label-issues [SCORE]): the suspects that
get_coreset.py --label-issues would write (dynunc/scoring/label_issues.py does the
scoring, same score, same cut), written as label_issues.tsv beside the page, counted per
class, drawn as image rows (the most suspicious first, captioned with the given and the
suggested label), and, with --flipped (the demo's relabelled lines), their precision and
recall against the labels known to be wrong.
"""
import argparse
import html
import io
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from dynunc.lists.file_list import FileList
from dynunc.history import contiguous_epoch_files, record_loader
from dynunc.report import figures
from dynunc.scoring.label_issues import DEFAULT_LABEL_SCORE, LABEL_SCORES, methods_scored, score_label_issues, write_tsv
from dynunc.scoring.methods import score_history

TSV_FILE, FIGURE = "label_issues.tsv", "label_issues.png"
SHOWN = 32  # suspects drawn
CLASS_ROWS = 20  # classes in the per-class table
ANCHOR, TITLE = "label_issues", "Suspected label errors (--label-issues)"

Thumbnail = Callable[[str, str], Tuple[Optional[np.ndarray], str]]


def add_flag(parser: argparse.ArgumentParser, add: Callable) -> None:
    add(parser, "--label-issues", nargs="?", const=DEFAULT_LABEL_SCORE, choices=list(LABEL_SCORES), metavar="SCORE",
        help=f"add the suspected label errors (get_coreset.py --label-issues; SCORE as its --label-score, default "
        f"{DEFAULT_LABEL_SCORE}): the suspects as image rows with their suggested label, per-class counts, "
        "label_issues.tsv, and with --flipped their precision and recall")


def add_label_issues(files: Dict[str, bytes], numbers: dict, score: str, plan, file_list: FileList,
                     labels: np.ndarray, thumbnail: Thumbnail, flipped: Optional[np.ndarray]) -> None:
    """numbers["label_issues"] and the files of the section (one more pass over the history's
    records that the score reads). Labels are shown as numbers: the page's class names (the
    folder of a label's first line) can mislead where labels are wrong."""
    n = plan.num_samples
    load = record_loader(plan.hdir, contiguous_epoch_files(plan.hdir), n)
    scores = score_history(methods_scored(score), plan.num_epochs, n, load, plan.params)
    issues = score_label_issues(score, scores, labels, plan.hdir)
    buf = io.StringIO(newline="")
    write_tsv(buf, issues, labels, lambda i: int(file_list.line_numbers[i]), file_list.name)
    files[TSV_FILE] = buf.getvalue().encode("utf-8")
    sizes = np.bincount(labels, minlength=int(labels.max()) + 1 if len(labels) else 0)
    counts = np.bincount(labels[issues.order], minlength=len(sizes))
    by_count = sorted(np.flatnonzero(counts), key=lambda c: (-counts[c], c))[:CLASS_ROWS]
    section = {"score": score, "what": LABEL_SCORES[score].what, "rule": issues.rule, "count": len(issues.order),
               "share": len(issues.order) / max(n, 1), "file": TSV_FILE, "suggested": issues.suggested is not None,
               "classes_with_suspects": int(np.count_nonzero(counts)),
               "per_class": [{"label": int(c), "size": int(sizes[c]),
                              "suspects": int(counts[c]), "share": float(counts[c] / sizes[c])} for c in by_count]}
    if flipped is not None:
        truth = np.zeros(n, dtype=bool)
        truth[flipped] = True
        hits = int(truth[issues.order].sum())
        seen = np.where(np.isnan(issues.suspicion), -np.inf, issues.suspicion)
        top = np.lexsort((np.arange(n), -seen))[:len(flipped)]
        section["flipped"] = {"count": int(len(flipped)), "found": hits,
                              "precision": hits / len(issues.order) if len(issues.order) else None,
                              "recall": hits / len(flipped) if len(flipped) else None,
                              "precision_at_flips": float(truth[top].mean()) if len(flipped) else None}
    shown, tiles, unreadable = [], [], []
    for j, i in enumerate(issues.order[:SHOWN]):
        i = int(i)
        given = int(labels[i])
        suggested = int(issues.suggested[j]) if issues.suggested is not None else None
        name = file_list.name(i)
        pixels, why = thumbnail(file_list.full_path(i), name.lstrip("/"))
        caption = f"line {int(file_list.line_numbers[i])}\ngiven {given}"
        if suggested is not None and suggested >= 0:
            caption += f" → {suggested}"
        if flipped is not None:
            caption += " (flipped)" if truth[i] else ""
        if why:
            unreadable.append(why)
            caption += "\n(unreadable)"
        tiles.append((pixels, caption))
        shown.append({"index": i, "path": name, "label": given, "suggested": suggested,
                      "score": float(issues.suspicion[i])})
    section["shown"], section["unreadable"] = shown, sorted(set(unreadable))
    section["figure"] = FIGURE if tiles else None
    if tiles:
        arrow = ", given → suggested label" if issues.suggested is not None else ", given label"
        files[FIGURE] = figures.image_grid(f"suspected label errors ({score}), most suspicious first{arrow}",
                                           [(f"the {len(tiles)} most suspicious of {len(issues.order)}", tiles)],
                                           SHOWN)
    numbers["label_issues"] = section


def _pct(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def label_issues_html(section: Optional[dict], table: Callable) -> List[str]:
    """The section's HTML after its heading (`table(header, rows, left=...)`: the page's tables)."""
    if section is None:
        return []
    out = [f"<p class=\"reading\">{section['count']} labels suspected wrong "
           f"({_pct(section['share'])} of the list), by {html.escape(section['score'])}: "
           f"{html.escape(section['what'])}; suspects: {html.escape(section['rule'])}. Every suspect, most suspicious "
           f"first: <a href=\"{section['file']}\">{section['file']}</a> (what get_coreset.py --label-issues "
           "writes).</p>"]
    flipped = section.get("flipped")
    if flipped is not None:
        out.append(table(["relabelled images", "found among the suspects", "precision", "recall",
                          "precision among the top k = relabelled"],
                         [[flipped["count"], flipped["found"], _pct(flipped["precision"]), _pct(flipped["recall"]),
                           _pct(flipped["precision_at_flips"])]], left=0))
    if section["figure"]:
        out += [f"<p class=\"note\">The {len(section['shown'])} most suspicious images, with their line in the list "
                "and their given label"
                + (" → the suggested one (the most probable other class in the recorded top-k probabilities)"
                   if section["suggested"] else " (the run recorded no class probabilities, PRODUCE.TOPK, so no "
                   "label is suggested)")
                + ".</p>", f"<img src=\"{section['figure']}\" alt=\"suspected label errors\">"]
    if section["per_class"]:
        out += [f"<h3>Suspects per class</h3><p class=\"note\">{section['classes_with_suspects']} classes hold "
                f"suspects; at most {CLASS_ROWS} shown, most suspects first.</p>",
                table(["label", "images", "suspects", "share of the class"],
                      [[c["label"], c["size"], c["suspects"], _pct(c["share"])] for c in section["per_class"]])]
    if section["unreadable"]:
        out.append("<p>Could not be read: " + html.escape("; ".join(section["unreadable"])) + "</p>")
    return out
