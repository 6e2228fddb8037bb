"""A second, independent multi-label image set, given as a CSV: "shape scenes".

The default data (Fashion-MNIST outfits) is what the project was tuned on. This
script checks the claim on data it was not tuned on, through the command line
only, the way a user with their own CSV would run it:

    .venv/bin/python benchmarks/shapes_csv.py --out runs/shapes            # data + both models
    .venv/bin/python benchmarks/shapes_csv.py --out runs/shapes --data-only

It writes ``OUT/images/{train,val,test}/*.png`` with ``OUT/train.csv``,
``OUT/val.csv`` and ``OUT/test.csv`` (columns ``image,labels``, labels joined by
``|``; three disjoint draws), converts them with ``cnnrnn data from-csv``, trains
``--model cnn-rnn`` and ``--model bce`` with the CLI defaults (same backbone, same
epoch budget) as ``cnnrnn train --train T --eval V --test E``: the validation split
selects (early stopping, the checkpoint, BCE's threshold), the test split is scored
once after the model is final (``MODEL_DIR/metrics.json``) and is what the table
reports. The JSON of every run is kept under OUT.

The scenes are unlike the default data on purpose: 48x48 RGB, 12 labels, 1-5
coloured shapes of random size and colour on a noisy background. The shapes
come in look-alike groups (circle / ring / hexagon, square / frame / diamond,
plus / cross / star, horizontal / vertical bar, triangle / arrow) and a scene
follows one of five themes, so the labels depend on each other:

    theme      items (each present with its probability)
    ---------  ---------------------------------------------------------
    round      circle 0.8, ring 0.6, hexagon 0.4
    boxes      square 0.8, frame 0.6, diamond 0.5
    signs      plus 0.7, cross 0.6, star 0.5
    lines      hbar 0.8, vbar 0.8, triangle 0.3
    arrows     arrow 0.8, triangle 0.6, vbar 0.4

plus, with probability 0.15, one item of another theme. A scene with no item
draws again. Everything comes from ``numpy.random.default_rng([seed, split])``, one
stream per split (train 0, test 1, val 2), so the splits share no scene.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import subprocess
import sys
from typing import Dict, List, Tuple

import numpy as np

THEMES: Dict[str, Tuple[Tuple[str, float], ...]] = {
    "round": (("circle", 0.8), ("ring", 0.6), ("hexagon", 0.4)),
    "boxes": (("square", 0.8), ("frame", 0.6), ("diamond", 0.5)),
    "signs": (("plus", 0.7), ("cross", 0.6), ("star", 0.5)),
    "lines": (("hbar", 0.8), ("vbar", 0.8), ("triangle", 0.3)),
    "arrows": (("arrow", 0.8), ("triangle", 0.6), ("vbar", 0.4)),
}
LABELS = sorted({name for items in THEMES.values() for name, _ in items})
OFF_THEME = 0.15
SIZE = 48  # the default canvas; --size 32 gives a harder set (shapes of 3-5 px radius)
COLOURS = ((230, 60, 60), (60, 200, 80), (70, 110, 240), (240, 200, 40),
           (200, 80, 220), (40, 210, 210), (240, 140, 40), (235, 235, 235))


def draw_shape(draw, name: str, cx: float, cy: float, r: float, colour) -> None:
    """Draws one shape of radius ``r`` centred at (cx, cy) with PIL's ImageDraw."""
    w = max(2, int(round(r / 3)))
    box = (cx - r, cy - r, cx + r, cy + r)

    def polygon(k, phase=0.0, radius=r):
        return [(cx + radius * math.cos(phase + 2 * math.pi * i / k),
                 cy + radius * math.sin(phase + 2 * math.pi * i / k)) for i in range(k)]

    if name == "circle":
        draw.ellipse(box, fill=colour)
    elif name == "ring":
        draw.ellipse(box, outline=colour, width=w)
    elif name == "hexagon":
        draw.polygon(polygon(6), fill=colour)
    elif name == "square":
        s = r * 0.85
        draw.rectangle((cx - s, cy - s, cx + s, cy + s), fill=colour)
    elif name == "frame":
        s = r * 0.85
        draw.rectangle((cx - s, cy - s, cx + s, cy + s), outline=colour, width=w)
    elif name == "diamond":
        draw.polygon(polygon(4), fill=colour)
    elif name == "plus":
        draw.line((cx - r, cy, cx + r, cy), fill=colour, width=w)
        draw.line((cx, cy - r, cx, cy + r), fill=colour, width=w)
    elif name == "cross":
        d = r * 0.75
        draw.line((cx - d, cy - d, cx + d, cy + d), fill=colour, width=w)
        draw.line((cx - d, cy + d, cx + d, cy - d), fill=colour, width=w)
    elif name == "star":
        points = []
        for i in range(10):
            radius = r if i % 2 == 0 else r * 0.45
            a = -math.pi / 2 + math.pi * i / 5
            points.append((cx + radius * math.cos(a), cy + radius * math.sin(a)))
        draw.polygon(points, fill=colour)
    elif name == "hbar":
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=colour)
    elif name == "vbar":
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=colour)
    elif name == "triangle":
        draw.polygon(polygon(3, -math.pi / 2), fill=colour)
    elif name == "arrow":
        draw.polygon([(cx - r, cy - w), (cx, cy - w), (cx, cy - r), (cx + r, cy),
                      (cx, cy + r), (cx, cy + w), (cx - r, cy + w)], fill=colour)
    else:
        raise ValueError(f"unknown shape {name!r}")


def sample_labels(rng: np.random.Generator) -> List[str]:
    themes = sorted(THEMES)
    while True:
        theme = themes[rng.integers(len(themes))]
        names = [name for name, p in THEMES[theme] if rng.random() < p]
        if rng.random() < OFF_THEME:
            others = [n for n in LABELS if n not in {x for x, _ in THEMES[theme]}]
            names.append(others[rng.integers(len(others))])
        if names:
            return names


def render(rng: np.random.Generator, names: List[str], size: int = SIZE, clutter: int = 0):
    """One scene: the shapes in distinct cells of a 3x3 grid, on noise, plus clutter strokes."""
    from PIL import Image, ImageDraw

    noise = rng.integers(0, 60, size=(size, size, 3), dtype=np.uint8)
    image = Image.fromarray(noise, "RGB")
    draw = ImageDraw.Draw(image)
    cell = size / 3
    for _ in range(rng.integers(0, clutter + 1)):  # short unlabelled strokes
        x, y = rng.uniform(0, size, 2)
        dx, dy = rng.uniform(-cell / 3, cell / 3, 2)
        draw.line((x, y, x + dx, y + dy), fill=COLOURS[rng.integers(len(COLOURS))], width=1)
    cells = rng.permutation(9)[: len(names)]
    for name, c in zip(names, cells):
        r = rng.uniform(0.28, 0.47) * cell
        cx = (c % 3 + 0.5) * cell + rng.uniform(-cell / 2 + r, cell / 2 - r)
        cy = (c // 3 + 0.5) * cell + rng.uniform(-cell / 2 + r, cell / 2 - r)
        draw_shape(draw, name, cx, cy, r, COLOURS[rng.integers(len(COLOURS))])
    return image


SPLIT_STREAMS = {"train": 0, "test": 1, "val": 2}  # train and test as before val existed


def write_split(out: str, split: str, count: int, seed: int, size: int = SIZE,
                clutter: int = 0) -> str:
    rng = np.random.default_rng([seed, SPLIT_STREAMS[split]])
    folder = os.path.join(out, "images", split)
    os.makedirs(folder, exist_ok=True)
    csv_path = os.path.join(out, f"{split}.csv")
    with open(csv_path + ".tmp", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "labels"])
        for i in range(count):
            names = sample_labels(rng)
            name = f"{split}_{i:05d}.png"
            render(rng, names, size, clutter).save(os.path.join(folder, name))
            writer.writerow([f"images/{split}/{name}", "|".join(names)])
    os.replace(csv_path + ".tmp", csv_path)
    return csv_path


def cnnrnn(*args: str, capture: bool = False) -> str:
    """Runs the installed CLI (the same Python); fails loudly. Returns stdout if captured."""
    cmd = [sys.executable, "-m", "cnnrnn_tf.cli", *args]
    print("$ cnnrnn " + " ".join(args), flush=True)
    done = subprocess.run(cmd, stdout=subprocess.PIPE if capture else None, text=True)
    if done.returncode:
        raise SystemExit(f"command failed ({done.returncode}): {' '.join(cmd)}")
    return done.stdout or ""


def trained_on(model_dir: str, val_dir: str, test_dir: str) -> bool:
    """Whether ``model_dir`` is a finished run selected on ``val_dir`` and scored on
    ``test_dir`` (a model of 0.4.0, selected on its test split, is not)."""
    from cnnrnn_tf.model_dir import is_model_dir

    path = os.path.join(model_dir, "metrics.json")
    if not is_model_dir(model_dir) or not os.path.isfile(path):
        return False
    with open(path, encoding="utf-8") as f:
        metrics = json.load(f)
    data = metrics.get("data") or {}
    same = lambda a, b: bool(a) and os.path.abspath(a) == os.path.abspath(b)  # noqa: E731
    return (metrics.get("split") == "test" and same(data.get("eval"), val_dir)
            and same(data.get("test"), test_dir))


def test_metrics(model_dir: str) -> dict:
    """The test split's metrics that ``cnnrnn train --test`` wrote (the same numbers as
    ``cnnrnn evaluate --data TEST --json``), without the validation ones."""
    with open(os.path.join(model_dir, "metrics.json"), encoding="utf-8") as f:
        metrics = json.load(f)
    if metrics.get("split") != "test":
        raise SystemExit(f"{model_dir}/metrics.json is not a test-split score")
    return {k: v for k, v in metrics.items() if k not in ("validation", "data", "split")}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/shapes")
    p.add_argument("--train", type=int, default=3000)
    p.add_argument("--val", type=int, default=1000, help="selects; never reported")
    p.add_argument("--test", type=int, default=1000, help="reported; never selects")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=SIZE, help="canvas side in pixels")
    p.add_argument("--clutter", type=int, default=0,
                   help="up to this many unlabelled strokes per scene")
    p.add_argument("--epochs", type=int, default=None, help="default: the CLI's own choice")
    p.add_argument("--data-only", action="store_true")
    args = p.parse_args(argv)
    from cnnrnn_tf.metrics import format_comparison
    from cnnrnn_tf.model_dir import write_json

    csvs = {}
    for split, count in (("train", args.train), ("val", args.val), ("test", args.test)):
        csvs[split] = os.path.join(args.out, f"{split}.csv")
        if not os.path.exists(csvs[split]):
            print(f"writing {count} {split} scenes", flush=True)
            write_split(args.out, split, count, args.seed, args.size, args.clutter)
        shards = os.path.join(args.out, "data", split)
        if not os.path.isdir(shards):
            cnnrnn("data", "from-csv", "--csv", csvs[split], "--out", shards)
    if args.data_only:
        return 0
    split = {s: os.path.join(args.out, "data", s) for s in ("train", "val", "test")}
    rows = {}
    for model in ("cnn-rnn", "bce"):
        model_dir = os.path.join(args.out, "models", model)
        result = os.path.join(args.out, f"test-{model}.json")
        if not os.path.exists(result):
            if not trained_on(model_dir, split["val"], split["test"]):
                shutil.rmtree(model_dir, ignore_errors=True)  # e.g. 0.4.0's, selected on test
                extra = ["--epochs", str(args.epochs)] if args.epochs else []
                cnnrnn("train", "--train", split["train"], "--eval", split["val"],
                       "--test", split["test"], "--out", model_dir,
                       "--model", model, "--seed", str(args.seed), *extra)
            write_json(result, test_metrics(model_dir))
        with open(result, encoding="utf-8") as f:
            rows[model] = json.load(f)
    print()
    print(f"test split ({args.test} scenes), selected on val ({args.val} scenes); percent:")
    print(format_comparison(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
