"""The decision section of the pruning report: one row per method and fraction with what
the coreset keeps (images, smallest and median class share, images drawn among ties,
relabelled images) and, given accuracies, the top-1 of networks trained on it; and a
paragraph that reads those numbers, the answer first.

Signal and noise: a method is "below" the highest mean only when the gap exceeds the
seed spread (the one-std bands do not overlap, both cells with at least two runs); with
one run in a cell the difference "cannot tell" and the reading says what to run for
seeds. "best" is the highest mean only when it is ahead of every other trained method by
more than the spread; a row that empties or starves a class says so in its cell, and the
reading points to get_coreset.py --class-balanced. With one fraction trained the reading
says how to get the curve (scripts/pruning_curve.py).
"""
from typing import Dict, List, Optional, Sequence, Tuple

from dynunc.report.accuracy import BELOW, CANNOT_TELL, FULL, WITHIN, TopOne, best_of, compare, same_fraction

BEST, HIGHEST, ONLY = "best", "highest mean", "only one trained"
HARMS = "; starves a class"  # appended to the cell of the highest row that empties or starves a class
SEEDS_HINT = ("train each coreset with more seeds (main.py --opts SEED S, each run given as "
              "--accuracy METHOD:FRACTION=RUN; on the demo data, scripts/pruning_curve.py --seeds 0 1 2)")
CURVE_HINT = ("scripts/pruning_curve.py trains every method at several fractions and seeds (--fractions, --seeds) "
              "and writes the curve.csv that --accuracy reads")
BALANCED_HINT = "get_coreset.py --class-balanced gives each class its share of the budget"
STARVED = 0.5  # a class is starved when it keeps less than this share of the fraction


def _top1_at(accuracy: Optional[Dict], method: str, fraction: str) -> Optional[TopOne]:
    if not accuracy:
        return None
    for (m, f), value in accuracy.items():
        if m == method and same_fraction(f, float(fraction)):
            return value
    return None


def harms_a_class(row: dict) -> bool:
    """Whether a scored row's coreset empties a class or keeps less than STARVED of the
    fraction of one."""
    return bool(row["in_report"] and (row["classes_emptied"] or row["class_min"] < STARVED * float(row["fraction"])))


def _compare_block(block: List[dict]) -> None:
    """Set each trained row's `vs_best` against the highest mean of its fraction."""
    scored = {r["method"]: r["top1"] for r in block if r["top1"] is not None}
    if not scored:
        return
    top = best_of(scored)
    for r in block:
        if r["top1"] is not None and r["method"] != top:
            r["vs_best"] = compare(r["top1"], scored[top])
    others = [r["vs_best"] for r in block if r["top1"] is not None and r["method"] != top]
    head = next(r for r in block if r["method"] == top)
    head["vs_best"] = (ONLY if not others else BEST if all(v == BELOW for v in others) else HIGHEST) \
        + (HARMS if harms_a_class(head) else "")


def decision_rows(methods: Sequence[str], fractions: Sequence[str], numbers: dict,
                  accuracy: Optional[Dict]) -> List[dict]:
    """Rows by fraction (as given), then method: the report's methods, then those only the
    accuracies name (variants such as dynunc-ccs), which have no per-class numbers."""
    extra = list(dict.fromkeys(m for m, _ in (accuracy or {}) if m != FULL and m not in methods))
    rows = []
    for f in fractions:
        block = []
        for m in list(methods) + extra:
            top1 = _top1_at(accuracy, m, f)
            if m not in methods:
                if top1 is not None:
                    block.append({"method": m, "fraction": f, "top1": top1, "in_report": False})
                continue
            summary, tie = numbers["class_kept_summary"][m][f], numbers["ties"][m][f]
            keep = numbers["keep"][f]
            row = {"method": m, "fraction": f, "in_report": True, "kept": numbers["kept_counts"][m][f],
                   "class_min": summary["min"], "class_median": summary["median"],
                   "classes_emptied": summary["classes_emptied"], "drawn": tie["drawn"],
                   "drawn_share": tie["drawn"] / keep, "top1": top1}
            if "flipped" in numbers:
                row["flipped_kept"] = numbers["flipped"]["kept_share"][m][f]
            block.append(row)
        _compare_block(block)
        rows += block
    return rows


def _names(items: Sequence[str]) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _is(items: Sequence[str], one: str, many: str) -> str:
    return f"{_names(items)} {one if len(items) == 1 else many}"


def fraction_sentence(block: Sequence[dict], fraction: str, per_value: bool) -> str:
    """What the accuracies at one fraction say, and what they cannot."""
    head = next(r for r in block if r["vs_best"].split(";")[0] in (BEST, HIGHEST, ONLY))
    kind = head["vs_best"].split(";")[0]
    value = head["top1"].text(per_value)
    if kind == ONLY:
        return f"At keep {fraction}, only {head['method']} was trained ({value}): there is nothing to compare it with."
    close = [r["method"] for r in block if r.get("vs_best") == WITHIN]
    below = [r["method"] for r in block if r.get("vs_best") == BELOW]
    unsure = [r for r in block if r.get("vs_best") == CANNOT_TELL]
    if kind == BEST:
        return (f"At keep {fraction}, {head['method']} is best ({value}): {_names(below)} "
                f"{'falls' if len(below) == 1 else 'fall'} below it by more than the seed spread.")
    text = f"At keep {fraction}, {head['method']} has the highest mean top-1 ({value})"
    if close:
        text += f"; {_is(close, 'is', 'are')} within the seed spread of it, so no win there"
    if below:
        text += f"; {_is(below, 'falls', 'fall')} below it by more than the seed spread"
    if unsure:
        gaps = ", ".join(f"{r['method']} {r['top1'].mean:.2f}" for r in unsure)
        largest = max(head["top1"].mean - r["top1"].mean for r in unsure)
        size = f"a gap of {largest:.2f} points" if len(unsure) == 1 else f"gaps of at most {largest:.2f} points"
        text += (f"; against {gaps} ({size}) a cell holds one run, so there is no seed spread and this page cannot "
                 f"tell a win from noise: to tell, {SEEDS_HINT}")
    return text + "."


def reading(rows: Sequence[dict], fractions: Sequence[str], numbers: dict, full: Optional[TopOne]) -> str:
    """One paragraph of plain sentences drawn from the rows: the answer (accuracies, and
    what they cannot say), then the classes, ties and relabelled images behind it."""
    return " ".join(part for part in reading_parts(rows, fractions, numbers, full) if part)


def reading_parts(rows: Sequence[dict], fractions: Sequence[str], numbers: dict,
                  full: Optional[TopOne]) -> Tuple[str, str]:
    """The reading in two: the answer (what the accuracies say and cannot), and what
    lies behind it (classes, ties, relabelled images)."""
    sentences = []
    if any(r["top1"] is not None for r in rows):
        counts = {v.runs for v in [full] + [r["top1"] for r in rows] if v is not None}
        per_value = len(counts) > 1  # the number of runs beside each value, or once here
        if not per_value:
            runs = counts.pop()
            sentences.append(f"Top-1 is the mean ± std over {runs} runs." if runs > 1 else
                             "Each top-1 is one run, so there is no seed spread to compare with.")
        if full is not None:
            sentences.append(f"The full training set reaches {full.text(per_value)}.")
        trained = []
        for f in fractions:
            block = [r for r in rows if r["fraction"] == f and r["top1"] is not None]
            if block:
                trained.append(f)
                sentences.append(fraction_sentence(block, f, per_value))
        if len(trained) == 1:
            sentences.append(f"Only keep {trained[0]} was trained, so this page cannot say which fraction to keep: "
                             f"{CURVE_HINT}.")
    else:
        sentences.append("No accuracies were given (--accuracy), so this section shows what each coreset keeps, "
                         "not how well a network trains on it.")
    answer, sentences = " ".join(sentences), []
    harmed = []
    for m in numbers["methods"]:
        emptied = [(f, r["classes_emptied"]) for f in fractions for r in rows
                   if r["in_report"] and r["method"] == m and r["fraction"] == f and r["classes_emptied"]]
        starved = [f for f in fractions for r in rows if r["in_report"] and r["method"] == m and r["fraction"] == f
                   and not r["classes_emptied"] and r["class_min"] < STARVED * float(f)]
        parts = [f"empties {n} class{'es' if n > 1 else ''} at {f}" for f, n in emptied]
        if starved:
            parts.append(f"starves a class at {_names(starved)}")
        if parts:
            harmed.append(f"{m} {_names(parts)}")
    flagged = [f"{r['method']} at {r['fraction']}" for r in rows if r.get("vs_best", "").endswith(HARMS)]
    if harmed:
        sentences.append(f"Per class: {'; '.join(harmed)} (starved: less than half the fraction kept).")
        sentences.append((f"The highest top-1 of {_names(flagged)} comes from a coreset that starves a class; "
                          if flagged else "To keep every class, ") + f"{BALANCED_HINT} (rank within each class).")
    else:
        sentences.append("No method empties a class or keeps less than half the fraction of any class.")
    tied = [r for r in rows if r["in_report"] and r["drawn"]]
    if tied:
        worst = max(tied, key=lambda r: r["drawn_share"])
        tie = numbers["ties"][worst["method"]][worst["fraction"]]
        sentences.append(
            f"Ties decide part of {_names(list(dict.fromkeys(r['method'] for r in tied)))}'s coresets: at most, "
            f"{worst['method']} at {worst['fraction']} draws {worst['drawn']} of its {worst['kept']} kept images "
            f"({_pct(worst['drawn_share'])}) at random among {tie['tied']} tied at score {tie['score_text']}.")
    if "flipped" in numbers:
        ref = numbers["reference_fraction"]
        shares = {r["method"]: r["flipped_kept"] for r in rows
                  if r["in_report"] and r["fraction"] == ref and isinstance(r.get("flipped_kept"), float)}
        if shares:
            low = min(shares, key=shares.get)
            sentences.append(f"Of the {numbers['flipped']['count']} relabelled images, {low} keeps the fewest at "
                             f"{ref}: {_pct(shares[low])} (a class-blind random subset keeps about "
                             f"{_pct(float(ref))}).")
    return answer, " ".join(sentences)
