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
output folder to start over.
"""
import argparse
import json
import os
import subprocess
import sys
import time

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


def read_kept(path: str) -> set:
    with open(path) as f:
        return {line for line in f if line.strip()}


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
    out = os.path.abspath(args.output)
    data = os.path.join(out, "data")
    sh([sys.executable, "-m", "data.mnist_demo", data])
    train_list = os.path.join(data, "train", "file_list.txt")
    opts = ["--opts", "DATA.DATA_PATH_TRAIN", os.path.join(data, "train"), "DATA.DATA_PATH_VAL",
            os.path.join(data, "val")]

    produce = os.path.join(out, "produce")
    torchrun(args.nproc, "main_and_produce.py", "--config", CONFIG, "--output", produce, *opts)
    coresets = {m: os.path.join(out, f"coreset_{m}.txt") for m in METHODS}
    sh([sys.executable, "get_coreset.py", "--input", produce, "--dataset_file_list", train_list,
        "--fraction", str(args.fraction), "--window", str(args.window), "--method", *METHODS,
        "--output", os.path.join(out, "coreset_{method}.txt")])
    dynunc = read_kept(coresets["dynunc"])
    size = len(dynunc)
    print("\n| coreset | lines shared with the dynamic-uncertainty coreset |\n|---|---:|")
    for m in METHODS[1:]:
        print(f"| {NAMES[m]} | {len(read_kept(coresets[m]) & dynunc) / size:.0%} |")

    trained = ["dynunc", "random"] + ([m for m in METHODS if m not in ("dynunc", "random")]
                                      if args.train_baselines else [])
    runs = {"full": os.path.join(out, "train_full")}
    runs.update({m: os.path.join(out, f"train_{m}") for m in trained})
    torchrun(args.nproc, "main.py", "--config", CONFIG, "--output", runs["full"], *opts)
    for m in trained:
        torchrun(args.nproc, "main.py", "--config", CONFIG, "--coreset", coresets[m], "--output", runs[m], *opts)
    report = os.path.join(out, "report")
    accuracy = [f"full={runs['full']}"] + [f"{m}:{args.fraction}={runs[m]}" for m in trained]
    sh([sys.executable, "report.py", "--input", produce, "--dataset_file_list", train_list, "--window",
        str(args.window), "--fraction", *dict.fromkeys(["0.7", str(args.fraction), "0.3"]), "--output", report,
        "--accuracy", *accuracy])

    with open(train_list) as f:
        total = sum(1 for line in f if line.strip())
    rows = [("full training set", total, runs["full"])]
    rows += [(f"{NAMES[m]} ({args.fraction:.0%})", size, runs[m]) for m in trained]
    print("\n| training data | images | top-1 (%) | top-5 (%) |\n|---|---:|---:|---:|")
    for name, n, run in rows:
        rec = last_record(run)
        print(f"| {name} | {n} | {rec['acc1']:.2f} | {rec['acc5']:.2f} |")
    overhead = mean_epoch_time(produce) / mean_epoch_time(runs["full"])
    print(f"\nproduce-mode epoch time / plain epoch time (median, epochs 1+): {overhead:.2f}")
    print(f"pruning report: {os.path.join(report, 'index.html')}")
    print(f"demo wall time: {time.time() - start:.0f} s (outputs in {out})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
