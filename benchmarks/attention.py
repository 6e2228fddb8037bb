"""Attention decoder vs global decoder vs calibrated BCE and ASL, on four data sets.

    .venv/bin/python benchmarks/attention.py                       # the default run
    .venv/bin/python benchmarks/attention.py --train 2000 --val 500 --test 1000 --epochs 10 --seeds 0 1
    .venv/bin/python benchmarks/attention.py --datasets photo --seeds 0   # one data set

Everything goes through the command line, as a user runs it: data with ``cnnrnn data
fashion`` / ``from-csv`` / ``from-coco``, models with ``cnnrnn train`` (default settings:
BCE and ASL calibrate their threshold on the validation split; CNN-RNN selects its
checkpoint on the decoded validation F1), as ``cnnrnn train --train T --eval V --test E``:
the test split is scored once, after the model is final (``MODEL_DIR/metrics.json``, the
numbers ``cnnrnn evaluate --json`` gives), and the validation split, which chose
thresholds and checkpoints, is not reported. The three splits share no image and no
source item: for outfits and control the val scenes are drawn from Fashion-MNIST train
items that no train scene uses and the test scenes from its test items
(``cnnrnn data fashion-outfits --val``); shapes and photo draw each split from its own
random stream. Same encoder (small CNN), image size, epochs and seed for every model.

Data sets:
  outfits   the default data (Fashion-MNIST outfits, label grammar)
  control   the same items without label dependencies (``--grammar independent``)
  shapes    the shapes CSV set (benchmarks/shapes_csv.py), 48 px scenes, 12 labels
  photo     photo-like colour JPEGs of many sizes in MS-COCO's layout
            (benchmarks/photo_scenes.py), converted with ``cnnrnn data from-coco``

Results are cached under ``--work`` (one metrics JSON per run, keyed by the split sizes
and epochs); ``--write`` puts each data set's table, and the attention maps of a few test
images (``cnnrnn report``), into BENCHMARKS.md between that data set's markers inside the
"Attention decoder" section's markers (a run of one data set keeps the others').
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from shapes_csv import cnnrnn  # noqa: E402  runs the CLI with this Python, fails loudly
MODELS = (  # (row name, cnnrnn train flags)
    ("BCE (calibrated)", ["--model", "bce"]),
    ("ASL (calibrated)", ["--model", "asl"]),
    ("CNN-RNN global", ["--model", "cnn-rnn"]),
    ("CNN-RNN attention", ["--model", "cnn-rnn", "--decoder", "attention"]),
)
DATASETS = ("outfits", "control", "shapes", "photo")
IMAGE_SIZE = {"outfits": 64, "control": 64, "shapes": 48, "photo": 96}
KEYS = ("mAP", "CF1", "OF1")
BEGIN, END = "<!-- attention-benchmark:begin -->", "<!-- attention-benchmark:end -->"


def make_data(args, name):
    """{split: data folder} for train / val / test of one data set (made once)."""
    root = os.path.join(args.work, "data", f"{name}-{args.train}-{args.val}-{args.test}")
    out = {s: os.path.join(root, s) for s in ("train", "val", "test")}
    if all(os.path.isdir(p) for p in out.values()):
        return out
    if name in ("outfits", "control"):
        grammar = "outfits" if name == "outfits" else "independent"
        cnnrnn("data", "fashion-outfits", "--out", root, "--train", str(args.train),
               "--val", str(args.val), "--test", str(args.test), "--grammar", grammar,
               "--seed", "0")
    elif name == "shapes":
        import shapes_csv  # noqa: F811

        for split, count in (("train", args.train), ("val", args.val), ("test", args.test)):
            src = os.path.join(root, "csv", split)
            csv_path = shapes_csv.write_split(src, split, count, 0)
            cnnrnn("data", "from-csv", "--csv", csv_path, "--out", out[split])
    elif name == "photo":
        import photo_scenes

        src = os.path.join(root, "scenes")
        photo_scenes.write(src, {"train": args.train, "val": args.val, "test": args.test}, seed=0)
        for split in ("train", "val", "test"):
            cnnrnn("data", "from-coco", "--annotations",
                   os.path.join(src, "coco", "annotations", f"instances_{split}.json"),
                   "--images", os.path.join(src, "coco", split), "--out", out[split])
    else:
        raise SystemExit(f"unknown data set {name}")
    return out


def run_key(args, name, row, seed):
    """The cache key of one run: data set, split sizes, epochs, model and seed."""
    return (f"{name}-{args.train}-{args.val}-{args.test}-e{args.epochs}-"
            f"{row.split()[0].lower()}{'-att' if 'attention' in row else ''}-s{seed}")


def run(args, name, data, row, flags, seed):
    key = run_key(args, name, row, seed)
    model_dir = os.path.join(args.work, "models", key)
    result = os.path.join(args.work, "results", key + ".json")
    if os.path.exists(result):
        with open(result) as f:
            return json.load(f)
    t0 = time.time()
    if not os.path.exists(os.path.join(model_dir, "metrics.json")):
        shutil.rmtree(model_dir, ignore_errors=True)
        cnnrnn("train", "--train", data["train"], "--eval", data["val"], "--test", data["test"],
               "--out", model_dir, "--image-size", str(IMAGE_SIZE[name]),
               "--epochs", str(args.epochs), "--seed", str(seed), "--verbose", "0", *flags)
    seconds = time.time() - t0
    with open(os.path.join(model_dir, "metrics.json")) as f:
        metrics = json.load(f)
    if metrics.get("split") != "test":
        raise SystemExit(f"{model_dir}/metrics.json is not the test split's score")
    with open(os.path.join(model_dir, "config.json")) as f:
        info = json.load(f)
    out = {"data": name, "split": "test", "model": row, "seed": seed, "model_dir": model_dir,
           "train_seconds": round(seconds, 1), "epochs_run": info.get("epochs_run"),
           "metrics": {k: metrics[k] for k in KEYS},
           "mean_predicted_labels": metrics.get("mean_predicted_labels"),
           "command": f"cnnrnn train --train {data['train']} --eval {data['val']} "
                      f"--test {data['test']} --out {model_dir} "
                      f"--image-size {IMAGE_SIZE[name]} --epochs {args.epochs} --seed {seed} "
                      + " ".join(flags)}
    os.makedirs(os.path.dirname(result), exist_ok=True)
    with open(result, "w") as f:
        json.dump(out, f, indent=1)
    return out


def attention_figure(args, name, data, seed):
    """`cnnrnn report` on the attention model; its attention.png copied for BENCHMARKS.md."""
    key = run_key(args, name, "CNN-RNN attention", seed)
    target = os.path.join(HERE, "figures", f"attention_{name}.png")
    report = os.path.join(args.work, "reports", key)
    model_file = os.path.join(args.work, "models", key, "model.keras")
    figure = os.path.join(report, "attention.png")
    if not os.path.exists(figure) or os.path.getmtime(figure) < os.path.getmtime(model_file):
        shutil.rmtree(report, ignore_errors=True)
        cnnrnn("report", "--model", os.path.join(args.work, "models", key),
               "--data", data["test"], "--out", report)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.copyfile(figure, target)
    return os.path.relpath(target, os.path.dirname(HERE))


def table(results):
    """Markdown rows: mean (min-max over seeds) of each metric, in percent."""
    lines = ["| model | " + " | ".join(KEYS) + " | labels/image | epochs run | train s |",
             "|---|" + "---|" * (len(KEYS) + 3)]
    for row, _ in MODELS:
        rs = [r for r in results if r["model"] == row]
        if not rs:
            continue
        cells = []
        for k in KEYS:
            v = [100 * r["metrics"][k] for r in rs]
            cells.append(f"{statistics.mean(v):.1f}" + (f" ({min(v):.1f}-{max(v):.1f})" if len(v) > 1 else ""))
        cells.append(f"{statistics.mean(r['mean_predicted_labels'] for r in rs):.2f}")
        cells.append("/".join(str(r["epochs_run"]) for r in rs))
        cells.append(f"{statistics.mean(r['train_seconds'] for r in rs):.0f}")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return lines


def gaps(results):
    """Attention minus the best calibrated baseline and minus the global decoder (points)."""
    def mean(row, k):
        v = [100 * r["metrics"][k] for r in results if r["model"] == row]
        return statistics.mean(v) if v else None

    out = {}
    for k in ("CF1", "OF1"):
        att, glob = mean("CNN-RNN attention", k), mean("CNN-RNN global", k)
        base = max(x for x in (mean("BCE (calibrated)", k), mean("ASL (calibrated)", k)) if x is not None)
        if att is not None:
            out[k] = (att - base, att - glob if glob is not None else None)
    return out


PROTOCOL = ("Protocol: train fits; val selects (early stopping, the checkpoint, the BCE/ASL "
            "threshold); test only reports: every figure here is the test split's, scored once "
            "after the model was final. No image or source item is in two splits.")


def write_sections(path, sections):
    """Puts each data set's section into ``path`` between its own markers, inside the
    BEGIN/END block: a run of some data sets (each has its own sizes) keeps the others'."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if BEGIN not in text:
        text += ("\n## Attention decoder vs global decoder vs calibrated BCE / ASL\n\n"
                 f"{BEGIN}\n\n{PROTOCOL}\n\n{END}\n")
    for name, body in sections.items():
        begin, end = (f"<!-- attention-benchmark:{name}:begin -->",
                      f"<!-- attention-benchmark:{name}:end -->")
        block = f"{begin}\n{body}\n{end}"
        if begin in text:
            text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
        else:
            text = text[:text.index(END)] + block + "\n\n" + text[text.index(END):]
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="runs/attention")
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    p.add_argument("--train", type=int, default=2000)
    p.add_argument("--val", type=int, default=500, help="selects; never reported")
    p.add_argument("--test", type=int, default=1000, help="reported; never selects")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--write", action="store_true",
                   help="update each data set's section of BENCHMARKS.md")
    args = p.parse_args(argv)
    sections = {}
    for name in args.datasets:
        data = make_data(args, name)
        results = [run(args, name, data, row, flags, seed)
                   for seed in args.seeds for row, flags in MODELS]
        command = (f"`.venv/bin/python benchmarks/attention.py --datasets {name} --train "
                   f"{args.train} --val {args.val} --test {args.test} --epochs {args.epochs} "
                   f"--seeds {' '.join(map(str, args.seeds))} --write`")
        lines = [f"#### {name}: test split ({args.test} images), selected on val "
                 f"({IMAGE_SIZE[name]} px, {args.train}/{args.val}/{args.test} train/val/test, "
                 f"{args.epochs} epochs, seeds {' '.join(map(str, args.seeds))})", "",
                 f"Command: {command}", ""]
        lines += table(results)
        g = gaps(results)
        lines += ["", "Attention minus the better calibrated baseline / minus the global decoder "
                  "(points): " + "; ".join(f"{k} {a:+.1f} / {b:+.1f}" for k, (a, b) in g.items())]
        figure = attention_figure(args, name, data, args.seeds[0])
        lines += ["", f"![attention maps, {name}]({figure})", ""]
        print("\n".join(lines), flush=True)
        sections[name] = "\n".join(lines)
    if args.write:
        write_sections(os.path.join(os.path.dirname(HERE), "BENCHMARKS.md"), sections)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
