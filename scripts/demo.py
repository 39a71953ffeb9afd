"""The whole pipeline on the embedded MNIST sample, on the CPU, with the paper's commands:

1. write the 5,000 digits as an image tree with file lists (4,000 train / 1,000 val);
2. torchrun (2 processes, gloo, DALI CPU) main_and_produce.py: train and record the history;
3. get_coreset.py, one call: the dynamic-uncertainty coreset and every baseline method's
   (forgetting, EL2N, AUM, variability, confidence, random) at the same fraction;
4. main.py on the full set, on the dynamic-uncertainty coreset and on the random subset
   (with --train-baselines also on every other baseline's coreset);
5. report.py: the HTML report that compares the methods, with the accuracies of step 4
   in its decision section (OUTPUT/report/index.html);
6. print how much each baseline's coreset shares with dynamic uncertainty's, and a table
   of top-1 accuracies.

    python scripts/demo.py [--output demo_output] [--fraction 0.5] [--window 4] [--nproc 2] [--train-baselines]

Finished runs are not repeated (auto-resume finds their last checkpoint); delete the
output folder to start over. Other settings get their own files and folders (`run_names`:
e.g. train_dynunc_fraction0.3/ and report_fraction0.3/ for --fraction 0.3; the produce
run and the full-data run are shared by every --fraction and --window), so a run is never
taken for another. The figures the demo prints are also written to OUTPUT/demo_record.json
(with the machine and the commit); docs/demo_record.json is the record the README quotes.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "demo-mnist.yaml")


def sh(cmd) -> None:
    print("+ " + " ".join(cmd), flush=True)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)


def torchrun(nproc: int, script: str, *args: str) -> None:
    sh([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        os.path.join(ROOT, script), *args])


def last_record(output: str) -> dict:
    with open(os.path.join(output, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()][-1]


def mean_epoch_time(output: str) -> float:
    with open(os.path.join(output, "metrics.jsonl")) as f:
        times = [json.loads(line)["epoch_time"] for line in f if line.strip()]
    return float(np.median(times[1:] if len(times) > 1 else times))  # epoch 0 includes warm-up


METHODS = ["dynunc", "forgetting", "el2n", "aum", "variability", "confidence", "random"]
NAMES = {"dynunc": "dynamic-uncertainty coreset", "forgetting": "forgetting coreset", "el2n": "EL2N coreset",
         "aum": "AUM coreset", "variability": "variability coreset", "confidence": "low-confidence coreset",
         "random": "random subset"}


DEFAULTS = {"fraction": 0.5, "window": 4, "nproc": 2}


def run_names(out: str, fraction: float, window: int, nproc: int) -> dict:
    """The demo's paths for these settings: the defaults' plain names, another setting's
    with a suffix naming what differs from the defaults (the produce and full-data runs
    depend on --nproc only)."""
    def suffix(**settings) -> str:
        return "".join(f"_{k}{v:g}" if isinstance(v, float) else f"_{k}{v}"
                       for k, v in settings.items() if v != DEFAULTS[k])

    procs, setting = suffix(nproc=nproc), suffix(fraction=fraction, window=window, nproc=nproc)
    names = {"produce": os.path.join(out, f"produce{procs}"), "full": os.path.join(out, f"train_full{procs}"),
             "report": os.path.join(out, f"report{setting}"), "record": os.path.join(out, f"demo_record{setting}.json")}
    for m in METHODS:
        names[f"coreset_{m}"] = os.path.join(out, f"coreset_{m}{setting}.txt")
        names[f"train_{m}"] = os.path.join(out, f"train_{m}{setting}")
    return names


def read_kept(path: str) -> set:
    with open(path) as f:
        return {line for line in f if line.strip()}


def forgetting_ties(scores_path: str, train_list: str, fraction: float) -> dict:
    """Why ties are drawn at random (README, "Ties at a cut"): how many forgetting scores
    are 0, and what "the lower line index wins" would keep at `fraction`: the classes
    kept whole and the class kept least (share of the class)."""
    scores = np.load(scores_path)
    with open(train_list) as f:
        labels = np.array([int(line.rsplit(maxsplit=1)[1]) for line in f if line.strip()])
    keep = int(len(scores) * fraction)
    kept = np.zeros(len(scores), dtype=bool)
    kept[np.argsort(-scores, kind="stable")[:keep]] = True  # equal scores: the lower line first
    shares = {int(c): float(kept[labels == c].mean()) for c in np.unique(labels)}
    least = min(shares, key=shares.get)
    return {"zero_scores": int(np.count_nonzero(scores == 0)), "lines": int(len(scores)),
            "lower_index_rule_whole_classes": [c for c, v in shares.items() if v == 1.0],
            "lower_index_rule_least_kept_class": least, "lower_index_rule_least_kept_share": round(shares[least], 4)}


def git_commit() -> str:
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=os.path.join(ROOT, "demo_output"))
    parser.add_argument("--fraction", type=float, default=0.5)
    parser.add_argument("--window", type=int, default=4)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--train-baselines", action="store_true",
                        help="also train on the forgetting, EL2N, AUM, variability and confidence coresets")
    args = parser.parse_args()
    start = time.time()
    commit = git_commit()
    out = os.path.abspath(args.output)
    names = run_names(out, args.fraction, args.window, args.nproc)
    data = os.path.join(out, "data")
    sh([sys.executable, "-m", "data.mnist_demo", data])
    train_list = os.path.join(data, "train", "file_list.txt")
    opts = ["--opts", "DATA.DATA_PATH_TRAIN", os.path.join(data, "train"), "DATA.DATA_PATH_VAL",
            os.path.join(data, "val")]

    produce = names["produce"]
    torchrun(args.nproc, "main_and_produce.py", "--config", CONFIG, "--output", produce, *opts)
    coresets = {m: names[f"coreset_{m}"] for m in METHODS}
    template = names["coreset_dynunc"].replace("coreset_dynunc", "coreset_{method}")
    sh([sys.executable, "get_coreset.py", "--input", produce, "--dataset_file_list", train_list,
        "--fraction", str(args.fraction), "--window", str(args.window), "--method", *METHODS,
        "--output", template])
    dynunc = read_kept(coresets["dynunc"])
    size = len(dynunc)
    shares = {m: len(read_kept(coresets[m]) & dynunc) / size for m in METHODS[1:]}
    print("\n| coreset | lines shared with the dynamic-uncertainty coreset |\n|---|---:|")
    for m in METHODS[1:]:
        print(f"| {NAMES[m]} | {shares[m]:.0%} |")

    trained = ["dynunc", "random"] + ([m for m in METHODS if m not in ("dynunc", "random")]
                                      if args.train_baselines else [])
    runs = {"full": names["full"]}
    runs.update({m: names[f"train_{m}"] for m in trained})
    torchrun(args.nproc, "main.py", "--config", CONFIG, "--output", runs["full"], *opts)
    for m in trained:
        torchrun(args.nproc, "main.py", "--config", CONFIG, "--coreset", coresets[m], "--output", runs[m], *opts)
    report = names["report"]
    accuracy = [f"full={runs['full']}"] + [f"{m}:{args.fraction}={runs[m]}" for m in trained]
    sh([sys.executable, "report.py", "--input", produce, "--dataset_file_list", train_list, "--window",
        str(args.window), "--fraction", *dict.fromkeys(["0.7", str(args.fraction), "0.3"]), "--output", report,
        "--accuracy", *accuracy])

    with open(train_list) as f:
        total = sum(1 for line in f if line.strip())
    rows = [("full training set", total, runs["full"])]
    rows += [(f"{NAMES[m]} ({args.fraction:.0%})", size, runs[m]) for m in trained]
    table = []
    print("\n| training data | images | top-1 (%) | top-5 (%) |\n|---|---:|---:|---:|")
    for name, n, run in rows:
        rec = last_record(run)
        table.append({"training data": name, "images": n, "top1": round(rec["acc1"], 2), "top5": round(rec["acc5"], 2)})
        print(f"| {name} | {n} | {rec['acc1']:.2f} | {rec['acc5']:.2f} |")
    overhead = mean_epoch_time(produce) / mean_epoch_time(runs["full"])
    print(f"\nproduce-mode epoch time / plain epoch time (median, epochs 1+): {overhead:.2f}")
    wall = time.time() - start
    record = {
        "command": "python scripts/demo.py " + " ".join(sys.argv[1:]),
        "settings": {"fraction": args.fraction, "window": args.window, "nproc": args.nproc},
        "table": table,
        "shared_with_dynunc": {m: round(v, 4) for m, v in shares.items()},
        "forgetting_ties": forgetting_ties(coresets["forgetting"] + ".scores.npy", train_list, args.fraction),
        "produce_over_plain_epoch_time": round(overhead, 2),
        "wall_seconds": round(wall),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_1min": round(os.getloadavg()[0], 2)},
        "commit": commit,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
    }
    with open(names["record"] + ".tmp", "w") as f:
        f.write(json.dumps(record, indent=1) + "\n")
    os.replace(names["record"] + ".tmp", names["record"])
    print(f"pruning report: {os.path.join(report, 'index.html')}")
    print(f"demo wall time: {wall:.0f} s (outputs in {out}; the figures in {names['record']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
