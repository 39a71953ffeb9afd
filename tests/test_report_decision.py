"""The decision section separates signal from noise (dynunc/report/decision.py): a gap is
a win only beyond the seed spread, one run per cell cannot tell and says what to run, a
best row that starves a class says so and points to --class-balanced, and one trained
fraction says how to get the curve. On hand-made numbers, no history needed."""
import re

from dynunc.report.accuracy import TopOne
from dynunc.report.decision import decision_rows, reading

FULL_RUN = TopOne(98.0, 0.1, 3)


def numbers_for(methods, fractions, class_min=None):
    """The report numbers decision_rows reads: every class kept at about the fraction,
    except `class_min` {(method, fraction): smallest class share}."""
    class_min = class_min or {}
    return {"num_samples": 4000, "methods": list(methods), "fractions": list(fractions),
            "reference_fraction": fractions[0],
            "keep": {f: int(4000 * float(f)) for f in fractions},
            "kept_counts": {m: {f: int(4000 * float(f)) for f in fractions} for m in methods},
            "class_kept_summary": {m: {f: {"min": class_min.get((m, f), float(f) * 0.95), "median": float(f),
                                           "classes_emptied": 0} for f in fractions} for m in methods},
            "ties": {m: {f: {"drawn": 0, "tied": 0, "score_text": "0"} for f in fractions} for m in methods}}


def decide(accuracy, methods=("dynunc", "random"), fractions=("0.5",), class_min=None, full=FULL_RUN):
    numbers = numbers_for(methods, fractions, class_min)
    rows = decision_rows(list(methods), list(fractions), numbers, accuracy)
    return {(r["method"], r["fraction"]): r for r in rows}, reading(rows, list(fractions), numbers, full), rows


def test_one_run_per_method_cannot_tell_and_says_what_to_run():
    """The demo's case: dynunc 96.60 and random 96.20, one run each, is no result."""
    rows, text, _ = decide({("dynunc", 0.5): TopOne(96.6, 0.0, 1), ("random", 0.5): TopOne(96.2, 0.0, 1)},
                           full=TopOne(98.0, 0.0, 1))
    assert rows["dynunc", "0.5"]["vs_best"] == "highest mean"
    assert rows["random", "0.5"]["vs_best"] == "cannot tell (1 run)"
    assert "below" not in text and "best" not in text
    assert "cannot tell a win from noise" in text and "against random 96.20 (a gap of 0.40 points)" in text
    assert "--seeds" in text and "scripts/pruning_curve.py" in text


def test_a_win_only_beyond_the_seed_spread():
    spread = {("dynunc", 0.5): TopOne(96.6, 0.3, 3), ("random", 0.5): TopOne(96.2, 0.3, 3)}
    rows, text, _ = decide(spread)
    assert rows["dynunc", "0.5"]["vs_best"] == "highest mean" and rows["random", "0.5"]["vs_best"] == "within spread"
    assert "random is within the seed spread of it, so no win there" in text and "best" not in text
    clear = {("dynunc", 0.5): TopOne(96.6, 0.1, 3), ("random", 0.5): TopOne(95.2, 0.2, 3)}
    rows, text, _ = decide(clear)
    assert rows["dynunc", "0.5"]["vs_best"] == "best" and rows["random", "0.5"]["vs_best"] == "below"
    assert "At keep 0.5, dynunc is best (96.60 ± 0.10): random falls below it by more than the seed spread." in text
    # seeds on one side only: still no spread for the pair
    rows, _, _ = decide({("dynunc", 0.5): TopOne(96.6, 0.1, 3), ("random", 0.5): TopOne(90.0, 0.0, 1)})
    assert rows["random", "0.5"]["vs_best"] == "cannot tell (1 run)" and rows["dynunc", "0.5"]["vs_best"] != "best"


def test_best_that_starves_a_class_says_so_and_is_not_bold():
    from dynunc.report.page import decision_html

    clear = {("dynunc", 0.5): TopOne(96.6, 0.1, 3), ("random", 0.5): TopOne(95.2, 0.2, 3)}
    numbers = numbers_for(["dynunc", "random"], ["0.5"], class_min={("dynunc", "0.5"): 0.1})
    rows = decision_rows(["dynunc", "random"], ["0.5"], numbers, clear)
    text = reading(rows, ["0.5"], numbers, FULL_RUN)
    assert rows[0]["vs_best"] == "best; starves a class"
    assert "dynunc starves a class at 0.5" in text
    assert "The highest top-1 of dynunc at 0.5 comes from a coreset that starves a class" in text
    assert "get_coreset.py --class-balanced" in text
    numbers.update(decision=[dict(r, top1=vars(r["top1"])) for r in rows], full_top1=vars(FULL_RUN),
                   reading=text)
    page = "\n".join(decision_html(numbers))
    assert "best; starves a class" in page and 'class="best' not in page
    # the same numbers without the starved class: bold
    numbers = numbers_for(["dynunc", "random"], ["0.5"])
    rows = decision_rows(["dynunc", "random"], ["0.5"], numbers, clear)
    numbers.update(decision=[dict(r, top1=vars(r["top1"])) for r in rows], full_top1=vars(FULL_RUN),
                   reading=reading(rows, ["0.5"], numbers, FULL_RUN))
    page = "\n".join(decision_html(numbers))
    assert re.search(r'<tr class="best[^"]*"><td class="l">dynunc</td>', page)


def test_one_fraction_trained_says_how_to_get_the_curve_and_draws_no_curve():
    from dynunc.report.page import curve_points

    one = {("dynunc", 0.5): TopOne(96.6, 0.1, 3), ("random", 0.5): TopOne(96.2, 0.1, 3), ("full", 1.0): FULL_RUN}
    _, text, _ = decide(one, fractions=("0.7", "0.5", "0.3"))
    assert "Only keep 0.5 was trained, so this page cannot say which fraction to keep" in text
    assert "scripts/pruning_curve.py" in text
    assert not curve_points(one)  # one point per method: a sentence, not a figure
    two = dict(one)
    two["dynunc", 0.3] = TopOne(95.0, 0.1, 3)
    _, text, _ = decide(two, fractions=("0.7", "0.5", "0.3"))
    assert "Only keep" not in text and curve_points(two)
