"""`select`: get_coreset.py as a function, for a loop that recorded with dynunc.Recorder.

    kept = select(out_dir, method="dynunc", fraction=0.7, window=10)   # ascending int64 indices

The same plan, scores and selection rule as the command (dynunc/scoring/cli.py): the
method's own parameters are its flags' (``window``, ``epochs``, ``embed_epoch``,
``prototypes``, ``knn``, ...; `select` accepts each flag's dest name), `seed` breaks
ties at the cut, `class_balanced` and `ccs` are the rule flags. Without `file_list` the
samples are the history's indices (its sample_keys.txt, if any, names them: `keys_of`);
with it, the list is checked against the history's fingerprint as the command does.
Bad input raises ValueError (HistoryError, a ValueError, for the history), nothing is
written."""
from typing import List, Optional

import numpy as np

from dynunc.history import find_history_dir, read_sample_keys
from dynunc.scoring.methods import DEFAULT_METHOD, METHODS, score_history
from dynunc.scoring.plan import add_plan_flags, check_flags, make_plan, method_flags


def _fail(message: str):
    raise ValueError(message)


def _argv(out_dir: str, method: str, fraction: float, seed: int, class_balanced: bool, ccs: Optional[float],
          file_list: Optional[str], params: dict) -> List[str]:
    argv = ["--input", str(out_dir), "--method", method, "--fraction", repr(float(fraction)), "--seed", str(seed)]
    if file_list is not None:
        argv += ["--dataset_file_list", str(file_list)]
    if class_balanced:
        argv.append("--class-balanced")
    if ccs is not None:
        argv += ["--ccs", repr(float(ccs))]
    flags = {flag.param: flag for flag, _ in method_flags().values()}
    for name, value in params.items():
        if name not in flags:
            raise TypeError(f"select: unknown parameter {name!r}; known: {', '.join(sorted(flags))}")
        if value is None or value is False:
            continue
        flag = flags[name]
        if flag.options.get("action") == "store_true":
            argv.append(flag.name)
        elif isinstance(value, range):
            argv += [flag.name, f"{value.start}:{value.stop}" + (f":{value.step}" if value.step != 1 else "")]
        else:
            argv += [flag.name, str(value)]
    return argv


def select(out_dir: str, method: str = DEFAULT_METHOD, fraction: float = 0.5, *, seed: int = 0,
           class_balanced: bool = False, ccs: Optional[float] = None, file_list: Optional[str] = None,
           **params) -> np.ndarray:
    """The indices (int64, ascending) of the samples that get_coreset.py keeps at
    `fraction` by `method` from the history in `out_dir` (a run folder or its
    pred_prob_history); `params`: the method's parameters by their flags' names."""
    import argparse

    if method not in METHODS:
        raise ValueError(f"method: unknown method {method!r}; known: {', '.join(METHODS)}")
    parser = argparse.ArgumentParser(prog="dynunc.select", add_help=False)
    add_plan_flags(parser, [DEFAULT_METHOD], "", fraction_default=None, seed_help="", selection=True)
    parser.error = _fail  # a bad value is a ValueError here, not an exit
    args = parser.parse_args(_argv(out_dir, method, fraction, seed, class_balanced, ccs, file_list, params))
    selection = check_flags(args)
    plan = make_plan(args, selection)
    scores = score_history(plan.methods, plan.num_epochs, plan.num_samples, plan.loader(mmap=True), plan.params,
                           embedded=plan.embedded)
    (keep,) = plan.keeps.values()
    lowest = METHODS[method].keeps_lowest(plan.params, keep, plan.num_samples)  # prototype's Sorscher rule
    ranking = selection.ranking(-scores[method] if lowest else scores[method], plan.labels if class_balanced else None)
    indices, _ = selection.choose(ranking, keep)
    return np.sort(np.asarray(indices, dtype=np.int64))


def keys_of(out_dir: str, indices: np.ndarray) -> Optional[List[str]]:
    """The keys (sample_keys.txt) of `indices` in the history of `out_dir`; None if it
    names its samples by index."""
    keys = read_sample_keys(find_history_dir(out_dir))
    return None if keys is None else [keys[i] for i in np.asarray(indices).tolist()]
