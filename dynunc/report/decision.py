"""The decision section of the pruning report: one row per method and fraction with what
the coreset keeps (images, smallest and median class share, images drawn among ties,
relabelled images) and, given accuracies, the top-1 of networks trained on it; and a
paragraph that reads those numbers (which methods are within the seed spread of the
best at each fraction, which empty or starve classes, where ties decide)."""
from typing import Dict, List, Optional, Sequence

from dynunc.report.accuracy import FULL, TopOne, best_of, same_fraction, within_spread

STARVED = 0.5  # a class is starved when it keeps less than this share of the fraction


def _top1_at(accuracy: Optional[Dict], method: str, fraction: str) -> Optional[TopOne]:
    if not accuracy:
        return None
    for (m, f), value in accuracy.items():
        if m == method and same_fraction(f, float(fraction)):
            return value
    return None


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
        scored = {r["method"]: r["top1"] for r in block if r["top1"] is not None}
        if scored:
            best = best_of(scored)
            for r in block:
                if r["top1"] is not None:
                    r["vs_best"] = ("best" if r["method"] == best else
                                    "within spread" if within_spread(r["top1"], scored[best]) else "below")
        rows += block
    return rows


def _names(items: Sequence[str]) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def reading(rows: Sequence[dict], fractions: Sequence[str], numbers: dict, full: Optional[TopOne]) -> str:
    """One paragraph of plain sentences drawn from the rows."""
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
        for f in fractions:
            block = [r for r in rows if r["fraction"] == f and r["top1"] is not None]
            if not block:
                continue
            best = next(r for r in block if r["vs_best"] == "best")
            close = [r["method"] for r in block if r["vs_best"] == "within spread"]
            below = [r["method"] for r in block if r["vs_best"] == "below"]
            text = f"At keep {f}, {best['method']} has the best mean top-1 ({best['top1'].text(per_value)})"
            if close:
                text += f"; {_names(close)} {'is' if len(close) == 1 else 'are'} within the seed spread of it"
            if below:
                text += f"; {_names(below)} {'falls' if len(below) == 1 else 'fall'} below it"
            sentences.append(text + ".")
    else:
        sentences.append("No accuracies were given (--accuracy), so this section shows what each coreset keeps, "
                         "not how well a network trains on it.")
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
    if harmed:
        sentences.append(f"Per class: {'; '.join(harmed)} (starved: less than half the fraction kept).")
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
    return " ".join(sentences)
