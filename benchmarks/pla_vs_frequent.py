"""PLA (and optionally MLA) against frequent-first, through the CLI only.

For each grammar (outfits, independent) it builds the data with
``cnnrnn data fashion-outfits`` (train/, val/, test/), trains every label order with
``cnnrnn train --train T --eval V --test E`` (same seed, epochs and flags): the
validation split selects the epoch, the test split is scored once after the model is
final (``MODEL_DIR/metrics.json``, the numbers ``cnnrnn evaluate --json`` gives) and is
what the markdown table reports (mean over seeds, min-max). Runs are cached under
--work: a re-run only computes what is missing.

    .venv/bin/python benchmarks/pla_vs_frequent.py --train 2000 --val 1000 --test 1000 --epochs 8 --seeds 0 1
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

METRICS = ("mAP", "CF1", "OF1", "CP", "CR", "mean_predicted_labels")


def cnnrnn(*args):
    exe = os.path.join(os.path.dirname(sys.executable), "cnnrnn")
    proc = subprocess.run([exe, *map(str, args)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"cnnrnn {' '.join(map(str, args))} failed:\n{proc.stderr[-2000:]}")
    return proc.stdout


def run(args, grammar, order, seed):
    data = os.path.join(args.work, f"data-{grammar}-n{args.train}-v{args.val}-t{args.test}")
    if not all(os.path.exists(os.path.join(data, s)) for s in ("train", "val", "test")):
        cnnrnn("data", "fashion-outfits", "--out", data, "--train", args.train,
               "--val", args.val, "--test", args.test, "--seed", 0, "--grammar", grammar)
    key = f"{grammar}-n{args.train}-v{args.val}-t{args.test}-e{args.epochs}-{order}-s{seed}"
    result_path = os.path.join(args.work, "results", key + ".json")
    if os.path.exists(result_path):
        with open(result_path) as f:
            return json.load(f)
    out = os.path.join(args.work, "models", key)
    shutil.rmtree(out, ignore_errors=True)  # a run without a result did not finish
    t0 = time.time()
    cnnrnn("train", "--train", f"{data}/train", "--eval", f"{data}/val", "--test", f"{data}/test",
           "--out", out, "--epochs", args.epochs, "--label-order", order, "--seed", seed,
           *args.extra)
    seconds = time.time() - t0
    with open(os.path.join(out, "metrics.json")) as f:
        metrics = json.load(f)
    if metrics.get("split") != "test":
        raise SystemExit(f"{out}/metrics.json is not the test split's score")
    result = {"split": "test", "metrics": metrics, "train_seconds": seconds,
              "command": f"cnnrnn train --train {data}/train --eval {data}/val "
                         f"--test {data}/test --out {out} "
                         f"--epochs {args.epochs} --label-order {order} --seed {seed} "
                         + " ".join(args.extra)}
    os.makedirs(os.path.dirname(result_path), exist_ok=True)
    with open(result_path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"{key}: " + ", ".join(f"{m} {metrics[m]:.3f}" for m in METRICS), file=sys.stderr,
          flush=True)
    return result


def cell(values):
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.3f}"
    return f"{mean:.3f} ({min(values):.3f}-{max(values):.3f})"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", type=int, default=2000)
    p.add_argument("--val", type=int, default=1000, help="validation scenes: select, never reported")
    p.add_argument("--test", type=int, default=1000, help="test scenes: reported, never select")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--orders", nargs="+", default=["frequent-first", "pla"])
    p.add_argument("--grammars", nargs="+", default=["outfits", "independent"])
    p.add_argument("--work", default="runs/pla")
    p.add_argument("extra", nargs="*", help="more `cnnrnn train` flags, after --")
    args = p.parse_args(argv)
    lines = []
    for grammar in args.grammars:
        lines += [f"### {grammar}: test split ({args.test} scenes), selected on val "
                  f"({args.val} scenes)", "", "| label order | " + " | ".join(METRICS) + " | train s |",
                  "|---" * (len(METRICS) + 2) + "|"]
        for order in args.orders:
            results = [run(args, grammar, order, s) for s in args.seeds]
            cells = [cell([r["metrics"][m] for r in results]) for m in METRICS]
            secs = cell([r["train_seconds"] for r in results]).split(" ")[0]
            lines.append(f"| {order} | " + " | ".join(cells) + f" | {float(secs):.0f} |")
        lines.append("")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
