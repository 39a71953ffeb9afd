"""The label-error benchmark on the embedded MNIST demo (docs/label_errors.md): how well
each score of get_coreset.py --label-issues finds flipped labels, from one produce run,
against cleanlab's confident learning on the same run's probabilities and, where asked,
on 4-fold cross-validated out-of-sample probabilities (4 more training runs).

    python scripts/label_errors.py --output /tmp/label_errors --doc docs/label_errors.md

For each noise setting and seed:
1. the demo data (data.mnist_demo) and a noisy copy of its train list: symmetric noise
   (sym0.2: 20% of the labels moved to another class uniformly, data.label_noise), or
   class-conditional sparse noise (pair0.3: 30% of each class moved to one other class,
   a random derangement of the classes: one non-zero off-diagonal entry per row of the
   noise matrix, sparsity 8/9), drawn with the seed;
2. one produce run (main_and_produce.py, SEED = the seed, PRODUCE.TOPK.K 3 at every epoch);
3. with --cv, 4 runs of main.py, each on 3 of 4 folds of the noisy list (folds drawn with
   the seed), then each held-out fold's softmax from its run's last weights on the eval view;
   with --aum-runs, AUM's two produce runs with threshold samples (PRODUCE.THRESHOLD_SAMPLES
   1 and 2);
4. each method's suspicion for every image and its automatic cut (the functions
   get_coreset.py --label-issues calls), and against the flipped indices: precision at
   k = the number of flips (= recall there), AUROC, average precision, the estimated count
   (its cut) and precision and recall at the cut;
5. with --retrain, main.py on the cleaned lists (--retrain-sets: the full noisy list, the
   oracle without the flipped lines, and the list without each method's suspects), top-1 on
   the clean validation digits.

Then OUTPUT/label_errors.csv (one row per setting, seed and method) and the Markdown
tables (mean +- population std over the seeds), written to --doc between the markers
below (the rest of the doc is kept) and printed. Finished runs are not repeated.
"""
import argparse
import csv
import io
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from data.label_noise import flip_labels  # noqa: E402
from dynunc.history import contiguous_epoch_files, history_dir, list_topk_epochs, record_loader  # noqa: E402
from dynunc.scoring.label_issues import (cleanlab_scores, dense_probs, methods_scored, score_label_issues,  # noqa: E402
                                         topk_records)
from dynunc.scoring.methods import ScoreParams, score_history  # noqa: E402
from dynunc.io import atomic_write_text  # noqa: E402

CONFIG = os.path.join(ROOT, "configs", "demo-mnist.yaml")
NUM_CLASSES = 10
TOPK = 3
FOLDS = 4
BEGIN, END = "<!-- label_errors.py: begin -->", "<!-- label_errors.py: end -->"
# method -> (what it is, training runs it costs)
METHODS = {
    "aum": ("minus the mean margin; cut: mean margin < 0", 1),
    "confidence": ("1 - mean p(given label); cut: < 0.5", 1),
    "forgetting": ("forgetting events, never learned = +inf; cut: never learned", 1),
    "el2n": ("EL2N at epoch K//10; cut: > 1", 1),
    "el2n-mean": ("EL2N averaged over all epochs (--epochs 0:K); cut: > 1", 1),
    "cleanlab": ("cleanlab 2.x find_label_issues on the top-3 rebuilt probabilities, mean over all epochs "
                 "(in-sample)", 1),
    "cleanlab-last": ("cleanlab on the top-3 rebuilt probabilities of the last epoch only (in-sample)", 1),
    "cleanlab-cv": ("cleanlab on 4-fold cross-validated out-of-sample softmax", 1 + FOLDS),
    "aum-threshold": ("AUM's two runs with threshold samples (PRODUCE.THRESHOLD_SAMPLES 1 and 2); cut: the 99th "
                      "percentile of the threshold samples' AUM", 2),
}
FIELDS = ["setting", "seed", "method", "flips", "precision_at_k", "auroc", "ap", "estimate", "precision_cut",
          "recall_cut", "runs", "produce_seconds"]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def sh(cmd: Sequence[str]) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(list(cmd), cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-2000:]}\n"
                           f"{proc.stderr[-3000:]}")


def finished(output: str, epochs: int) -> bool:
    path = os.path.join(output, "metrics.jsonl")
    if not os.path.exists(path):
        return False
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return bool(records) and records[-1]["epoch"] == epochs - 1


def pair_noise(labels: np.ndarray, rate: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """(noisy labels, flipped indices): round(n_c * rate) of each class c, drawn uniformly,
    moved to class perm[c], perm a random derangement."""
    rng = np.random.default_rng([seed, 0x70616972])
    while True:
        perm = rng.permutation(NUM_CLASSES)
        if (perm != np.arange(NUM_CLASSES)).all():
            break
    noisy = labels.copy()
    flipped = []
    for c in range(NUM_CLASSES):
        members = np.flatnonzero(labels == c)
        chosen = rng.choice(members, size=int(round(len(members) * rate)), replace=False)
        noisy[chosen] = perm[c]
        flipped.append(chosen)
    return noisy, np.sort(np.concatenate(flipped))


def make_noisy_list(clean_list: str, setting: str, seed: int, out: str) -> np.ndarray:
    """Write the noisy list `out` (and out.flipped.npy); returns the flipped indices."""
    flipped_file = out + ".flipped.npy"
    if os.path.exists(flipped_file) and os.path.exists(out):
        return np.load(flipped_file)
    with open(clean_list) as f:
        lines = [line.split() for line in f if line.strip()]
    labels = np.array([int(label) for _, label in lines])
    kind, rate = setting[:-3], float(setting[-3:])
    if kind == "sym":
        noisy, flipped = flip_labels(labels, rate, NUM_CLASSES, seed)
    elif kind == "pair":
        noisy, flipped = pair_noise(labels, rate, seed)
    else:
        raise ValueError(f"unknown setting {setting!r}: symR or pairR, R like 0.2")
    np.save(flipped_file, flipped)
    atomic_write_text(out, "".join(f"{path} {y}\n" for (path, _), y in zip(lines, noisy)))
    return flipped


def run_opts(data: str, train_list: str, epochs: int, seed: int) -> List[str]:
    return ["DATA.DATA_PATH_TRAIN", os.path.join(data, "train"), "DATA.DATA_PATH_VAL", os.path.join(data, "val"),
            "DATA.TRAIN_FILE_LIST", train_list, "TRAIN.EPOCHS", str(epochs), "DATA.NUM_WORKERS", "1", "SEED",
            str(seed)]


def produce(args, data: str, folder: str, seed: int, threshold_set: int = 0) -> float:
    """The produce run of one noisy list (with `threshold_set`, AUM's threshold samples of that
    set, into folder/aum{set}); its wall time in seconds (NaN if it was done before)."""
    out = os.path.join(folder, f"aum{threshold_set}" if threshold_set else "produce")
    if finished(out, args.epochs):
        timing = os.path.join(out, "wall_seconds.txt")
        return float(open(timing).read()) if os.path.exists(timing) else float("nan")
    start = time.time()
    epochs = "[" + ",".join(str(e) for e in range(args.epochs)) + "]"
    sh([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
        os.path.join(ROOT, "main_and_produce.py"), "--config", CONFIG, "--output", out, "--opts",
        *run_opts(data, os.path.join(folder, "train.txt"), args.epochs, seed), "PRODUCE.EMBED_DIM", "0",
        "PRODUCE.TOPK.K", "0" if threshold_set else str(TOPK), "PRODUCE.TOPK.EPOCHS", epochs,
        "PRODUCE.TRACK_FRACTIONS", "[]", "PRODUCE.THRESHOLD_SAMPLES", str(threshold_set)])
    seconds = time.time() - start
    atomic_write_text(os.path.join(out, "wall_seconds.txt"), f"{seconds:.1f}\n")
    log(f"{out}: produce run {seconds:.0f} s")
    return seconds


def cv_folds(n: int, seed: int) -> List[np.ndarray]:
    order = np.random.default_rng([seed, 0x6376]).permutation(n)
    return [np.sort(order[f::FOLDS]) for f in range(FOLDS)]


def predict(run_dir: str, data: str, list_path: str, rows: np.ndarray, epochs: int, seed: int) -> np.ndarray:
    """Softmax (len(rows) x C) of the rows of `list_path`, on the eval view, with the last
    weights of the training run `run_dir`."""
    import torch

    from data.build import build_eval_view_loader
    from dynunc.lists.file_list import read_file_list
    from models.build import build_model
    from utils.checkpoint import latest_checkpoint
    from utils.config import load_config

    config = load_config(CONFIG, run_opts(data, list_path, epochs, seed))
    model = build_model(config)
    _, state = latest_checkpoint(run_dir)
    model.load_state_dict(state["model"])
    model.eval()
    file_list = read_file_list(list_path, root=config.DATA.DATA_PATH_TRAIN, num_classes=NUM_CLASSES)
    out = np.zeros((len(rows), NUM_CLASSES))
    where = {int(r): j for j, r in enumerate(rows)}
    with torch.no_grad():
        for batch in build_eval_view_loader(config, file_list, rows, None):
            probs = torch.softmax(model(batch["images"]).float(), -1).numpy()
            for i, p in zip(batch["indices"].numpy(), probs):
                out[where[int(i)]] = p
    return out


def train_fold(args, data: str, folder: str, seed: int, fold: int) -> None:
    """main.py on the noisy list without fold `fold` (the folds drawn with the seed)."""
    train_list = os.path.join(folder, "train.txt")
    with open(train_list) as f:
        lines = [line for line in f if line.strip()]
    keep = np.ones(len(lines), dtype=bool)
    keep[cv_folds(len(lines), seed)[fold]] = False
    coreset = os.path.join(folder, f"cv_train_{fold}.txt")
    atomic_write_text(coreset, "".join(line for line, k in zip(lines, keep) if k))
    out = os.path.join(folder, f"cv_{fold}")
    if not finished(out, args.epochs):
        start = time.time()
        sh([sys.executable, "main.py", "--config", CONFIG, "--coreset", coreset, "--output", out, "--opts",
            *run_opts(data, train_list, args.epochs, seed)])
        log(f"{out}: fold {fold} trained in {time.time() - start:.0f} s")


def cross_validated(args, data: str, folder: str, seed: int) -> np.ndarray:
    """Out-of-sample softmax (N x C): each fold predicted by the run trained without it."""
    path = os.path.join(folder, "cv_probs.npy")
    if os.path.exists(path):
        return np.load(path)
    train_list = os.path.join(folder, "train.txt")
    with open(train_list) as f:
        n = sum(1 for line in f if line.strip())
    probs = np.zeros((n, NUM_CLASSES))
    for fold, held in enumerate(cv_folds(n, seed)):
        train_fold(args, data, folder, seed, fold)
        probs[held] = predict(os.path.join(folder, f"cv_{fold}"), data, train_list, held, args.epochs, seed)
    np.save(path, probs)
    return probs


def ranking_metrics(suspicion: np.ndarray, flagged: np.ndarray, truth: np.ndarray) -> Dict[str, float]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    s = np.array(suspicion, dtype=np.float64)
    finite = s[np.isfinite(s)]
    top = finite.max() if len(finite) else 0.0
    s[np.isposinf(s)] = top + 1.0  # never learned (forgetting): above every count
    s[np.isnan(s)] = -np.inf
    s[np.isneginf(s)] = (finite.min() if len(finite) else 0.0) - 1.0
    k = int(truth.sum())
    order = np.lexsort((np.arange(len(s)), -s))  # ties: lower index first
    hits = int(truth[flagged].sum())
    return {"flips": k, "precision_at_k": float(truth[order[:k]].mean()), "auroc": float(roc_auc_score(truth, s)),
            "ap": float(average_precision_score(truth, s)), "estimate": int(flagged.sum()),
            "precision_cut": hits / max(int(flagged.sum()), 1), "recall_cut": hits / max(k, 1)}


def evaluate(folder: str, flipped: np.ndarray, cv_probs: Optional[np.ndarray], two_runs: bool = False
             ) -> Tuple[Dict[str, Dict[str, float]], Dict[str, np.ndarray]]:
    """({method: its metrics}, {method: its suspects, a bool per line})."""
    hdir = history_dir(os.path.join(folder, "produce"))
    with open(os.path.join(folder, "train.txt")) as f:
        labels = np.array([int(line.split()[1]) for line in f if line.strip()])
    n = len(labels)
    truth = np.zeros(n, dtype=bool)
    truth[flipped] = True
    paths = contiguous_epoch_files(hdir)
    k = len(paths)
    load = record_loader(hdir, paths, n)
    names = ["aum", "confidence", "forgetting", "el2n"]
    scored = score_history(list(dict.fromkeys(sum((methods_scored(m) for m in names), []))), k, n, load,
                           ScoreParams())
    suspects = {}
    for name in names + ["cleanlab"]:
        issues = score_label_issues(name, scored, labels, hdir)
        suspects[name] = (issues.suspicion, issues.flagged)
    mean_el2n = score_history(["el2n"], k, n, load, ScoreParams(epochs=range(k)))["el2n"]
    suspects["el2n-mean"] = (mean_el2n, mean_el2n > 1)
    last = list_topk_epochs(hdir)[-1]
    classes, records = topk_records(hdir, n, [last])
    probs, seen = dense_probs(records, classes)
    suspects["cleanlab-last"] = cleanlab_scores(labels, probs, seen)
    if cv_probs is not None:
        suspects["cleanlab-cv"] = cleanlab_scores(labels, cv_probs, np.ones(n, dtype=bool))
    if two_runs:
        suspects["aum-threshold"] = aum_threshold(folder, labels)
    results = {m: ranking_metrics(*suspects[m], truth) for m in METHODS if m in suspects}
    return results, {m: flagged for m, (_, flagged) in suspects.items()}


def aum_threshold(folder: str, labels: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """AUM's two runs (folder/aum1, folder/aum2, disjoint threshold sets): (suspicion, flagged).
    A sample's suspicion is its minus-AUM averaged over the runs in which it is not a
    threshold sample; it is flagged when every such run flags it."""
    suspicions, flags = [], []
    for which in (1, 2):
        hdir = history_dir(os.path.join(folder, f"aum{which}"))
        paths = contiguous_epoch_files(hdir)
        scored = score_history(methods_scored("aum"), len(paths), len(labels), record_loader(hdir, paths, len(labels)),
                               ScoreParams())
        issues = score_label_issues("aum", scored, labels, hdir)
        suspicions.append(issues.suspicion)
        flags.append(np.where(np.isnan(issues.suspicion), np.nan, issues.flagged.astype(float)))
    with np.errstate(invalid="ignore"):
        suspicion = np.nanmean(np.stack(suspicions), axis=0)
        flagged = np.nanmin(np.stack(flags), axis=0) == 1
    return suspicion, flagged


RETRAINED = ("full", "oracle", "aum", "el2n-mean", "cleanlab")  # the sets retrained on (--retrain)


def retrain(args, data: str, folder: str, seed: int, name: str, drop: Optional[np.ndarray]) -> float:
    """main.py on the noisy list without the lines `drop` (None: all of it); top-1 on the
    (clean) validation list at the last epoch."""
    train_list = os.path.join(folder, "train.txt")
    out = os.path.join(folder, f"retrain_{name}")
    cmd = [sys.executable, "main.py", "--config", CONFIG, "--output", out]
    if drop is not None:
        with open(train_list) as f:
            lines = [line for line in f if line.strip()]
        coreset = os.path.join(folder, f"cleaned_{name}.txt")
        atomic_write_text(coreset, "".join(line for line, d in zip(lines, drop) if not d))
        cmd += ["--coreset", coreset]
    if not finished(out, args.epochs):
        sh(cmd + ["--opts", *run_opts(data, train_list, args.epochs, seed)])
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return float([json.loads(line) for line in f if line.strip()][-1]["acc1"])


def tables(rows: List[dict]) -> str:
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    out = []
    for setting in settings:
        mine = [r for r in rows if r["setting"] == setting]
        seeds = sorted({r["seed"] for r in mine})
        flips = mine[0]["flips"]
        seconds = [r["produce_seconds"] for r in mine if r["method"] == "aum" and np.isfinite(r["produce_seconds"])]
        out += [f"**{setting}** ({flips} of 4000 labels flipped; seeds {', '.join(map(str, seeds))}; one produce run "
                f"{np.mean(seconds):.0f} s)" if seconds else f"**{setting}**", "",
                "| method | training runs | precision at k = flips | AUROC | average precision | estimate (cut) | "
                "precision at cut | recall at cut |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for method in METHODS:
            got = [r for r in mine if r["method"] == method]
            if not got:
                continue

            def cell(key: str, fmt: str = "{:.3f}") -> str:
                values = [float(r[key]) for r in got]
                return (fmt.format(np.mean(values)) + (f" ± {fmt.format(np.std(values))}" if len(values) > 1 else "")
                        + ("" if len(values) == len(seeds) else f" ({len(values)} seed)"))

            out.append(f"| {method} | {got[0]['runs']} | {cell('precision_at_k')} | {cell('auroc')} | {cell('ap')} | "
                       f"{cell('estimate', '{:.0f}')} | {cell('precision_cut')} | {cell('recall_cut')} |")
        out.append("")
    return "\n".join(out)


def write_doc(doc: str, text: str) -> None:
    with open(doc) as f:
        current = f.read()
    if BEGIN not in current or END not in current:
        raise ValueError(f"{doc}: lacks the markers {BEGIN} and {END}")
    head, rest = current.split(BEGIN, 1)
    atomic_write_text(doc, head + BEGIN + "\n" + text + "\n" + END + rest.split(END, 1)[1])


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="folder for the data, the runs and label_errors.csv")
    parser.add_argument("--settings", nargs="+", default=["sym0.2", "sym0.4", "pair0.3"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--cv", nargs="*", default=[], metavar="SETTING:SEED",
                        help="the (setting, seed) pairs that also get cleanlab on 4-fold cross-validation")
    parser.add_argument("--aum-runs", nargs="*", default=[], metavar="SETTING:SEED",
                        help="the (setting, seed) pairs that also get AUM's two runs with threshold samples")
    parser.add_argument("--retrain", nargs="*", default=[], metavar="SETTING:SEED",
                        help="the (setting, seed) pairs whose cleaned sets are retrained on (main.py): the full noisy "
                        "list, the oracle (flipped lines removed), and each of aum, el2n-mean, cleanlab's suspects "
                        "removed")
    parser.add_argument("--retrain-sets", nargs="+", default=list(RETRAINED), choices=RETRAINED,
                        help="--retrain: which sets")
    parser.add_argument("--jobs", type=int, default=2, help="training runs at a time")
    parser.add_argument("--doc", help="Markdown file whose marked section receives the tables")
    args = parser.parse_args(argv)
    start = time.time()
    out = os.path.abspath(args.output)
    data = os.path.join(out, "data")
    if not os.path.exists(os.path.join(data, "train", "file_list.txt")):
        sh([sys.executable, "-m", "data.mnist_demo", data])
    clean = os.path.join(data, "train", "file_list.txt")
    cases = [(setting, seed) for setting in args.settings for seed in args.seeds]
    flips = {}
    for setting, seed in cases:
        folder = os.path.join(out, f"{setting}_s{seed}")
        os.makedirs(folder, exist_ok=True)
        flips[setting, seed] = make_noisy_list(clean, setting, seed, os.path.join(folder, "train.txt"))
    folds = [(setting, seed, fold) for setting, seed in cases if f"{setting}:{seed}" in args.cv
             for fold in range(FOLDS)]
    aum_runs = [(setting, seed, which) for setting, seed in cases if f"{setting}:{seed}" in args.aum_runs
                for which in (1, 2)]
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:  # produce runs first, then the others
        produced = pool.map(lambda c: produce(args, data, os.path.join(out, f"{c[0]}_s{c[1]}"), c[1]), cases)
        trained = pool.map(lambda c: train_fold(args, data, os.path.join(out, f"{c[0]}_s{c[1]}"), c[1], c[2]), folds)
        thresholds = pool.map(lambda c: produce(args, data, os.path.join(out, f"{c[0]}_s{c[1]}"), c[1], c[2]),
                              aum_runs)
        seconds = dict(zip(cases, produced))
        list(trained)
        list(thresholds)
    rows, retrain_jobs = [], []
    for setting, seed in cases:
        folder = os.path.join(out, f"{setting}_s{seed}")
        cv = cross_validated(args, data, folder, seed) if f"{setting}:{seed}" in args.cv else None
        results, flagged = evaluate(folder, flips[setting, seed], cv, f"{setting}:{seed}" in args.aum_runs)
        for method, metrics in results.items():
            rows.append({"setting": setting, "seed": seed, "method": method, **metrics, "runs": METHODS[method][1],
                         "produce_seconds": seconds[setting, seed]})
        log(f"{setting} seed {seed} scored")
        if f"{setting}:{seed}" in args.retrain:
            oracle = np.zeros(len(flagged["aum"]), dtype=bool)
            oracle[flips[setting, seed]] = True
            drops = {"full": None, "oracle": oracle, **{m: flagged[m] for m in RETRAINED if m in flagged}}
            retrain_jobs += [(setting, seed, name, drops[name], len(oracle)) for name in args.retrain_sets]
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        top1 = list(pool.map(lambda j: retrain(args, data, os.path.join(out, f"{j[0]}_s{j[1]}"), j[1], j[2], j[3]),
                             retrain_jobs))
    retrained = [{"setting": s, "seed": seed, "trained_on": name, "top1": t,
                  "images": n - (0 if drop is None else int(drop.sum()))}
                 for (s, seed, name, drop, n), t in zip(retrain_jobs, top1)]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(os.path.join(out, "label_errors.csv"), buf.getvalue())
    text = tables(rows)
    if retrained:
        text += ("\n**Retrained on the cleaned sets** (main.py, the same 8 epochs and seed, the suspects of each "
                 "method's cut removed; top-1 on the clean validation digits, one run each)\n\n"
                 "| noise | seed | trained on | images | top-1 (%) |\n|---|---:|---|---:|---:|\n"
                 + "".join(f"| {r['setting']} | {r['seed']} | {r['trained_on']} | {r['images']} | {r['top1']:.2f} |\n"
                           for r in retrained))
        buf_r = io.StringIO()
        w = csv.DictWriter(buf_r, fieldnames=["setting", "seed", "trained_on", "images", "top1"], lineterminator="\n")
        w.writeheader()
        w.writerows(retrained)
        atomic_write_text(os.path.join(out, "retrained.csv"), buf_r.getvalue())
    if args.doc:
        write_doc(args.doc, text)
        atomic_write_text(os.path.splitext(args.doc)[0] + ".csv", buf.getvalue())
    print(text)
    log(f"wall time {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
