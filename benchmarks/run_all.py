"""All benchmarks of the project, written to BENCHMARKS.md (what ``make bench`` runs).

    .venv/bin/python benchmarks/run_all.py                 # the full run (about 50 min, 2 cores)
    .venv/bin/python benchmarks/run_all.py --quick         # minutes: checks that everything runs
    .venv/bin/python benchmarks/run_all.py --train 4000 --val 1000 --test 1000 --epochs 12 --seeds 3

The protocol: three splits, three jobs. Every model is trained on ``train/``; the
validation split ``val/`` (Fashion-MNIST train items that no train scene uses) drives
early stopping, checkpoint selection and the BCE/ASL threshold calibration, and picks
"the best CNN-RNN" for the beam-size table; the test split ``test/`` (Fashion-MNIST test
items) is scored once, after the model is final, and is the only split the tables report.

(a) Accuracy on the Fashion-MNIST outfits data and on its ``independent`` control
    variant (same label frequencies, no dependencies): BCE, ASL and CNN-RNN with the
    label orders frequent-first (also with the paper's model, --label-head none),
    rare-first, random and PLA; beam 1/3/5 for the best
    CNN-RNN; small CNN vs frozen EfficientNet-Lite0. mAP, CF1, OF1, top-3 CF1/OF1,
    mean and spread (min-max) over seeds.
(b) Speed: training images/second per model; inference latency at batch 1 and 32,
    encoder alone vs full decode with beam 1/3/5; in-graph vs Python-loop decoding.

Time budget of the defaults (2000 / 1000 / 1000 scenes, 8 epochs, 2 seeds), from measured
throughput on 2 CPU cores: small-CNN models train at about 200 images/s (PLA slower:
it adds an inference pass and a host round trip per step), so about 2 min per model
with its evaluation, 28 small-CNN models, 2 EfficientNet-Lite0 models at 96 px, beam
re-evaluations, the speed table and the serving load test: 51 min measured with 0.4.0's
two splits (the test split scored once more per model adds a little). (3000 scenes
and 12 epochs take about 4 min per model, over 2 hours in all.) Early stopping on the
validation split can end runs sooner.

Everything is cached under ``--work`` (default runs/bench): data, trained MODEL_DIRs
and one JSON per result, keyed by the settings and stamped with the library version
(a result of another version is recomputed), so a re-run only computes what is
missing (``--remeasure-speed`` re-times the speed figures).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SCRIPT = "benchmarks/run_all.py"
PAPER_ROW = "CNN-RNN frequent-first, paper's model (--label-head none)"
LABEL_ORDER_RUNS = (  # (name, model, label_order, label_head); head None: the default
    ("BCE", "bce", "frequent-first", None),
    ("ASL", "asl", "frequent-first", None),
    (PAPER_ROW, "cnn-rnn", "frequent-first", "none"),
    ("CNN-RNN frequent-first", "cnn-rnn", "frequent-first", None),
    ("CNN-RNN rare-first", "cnn-rnn", "rare-first", None),
    ("CNN-RNN random", "cnn-rnn", "random", None),
    ("CNN-RNN PLA", "cnn-rnn", "pla", None),
)
GRAMMARS = ("outfits", "independent")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", type=int, default=None, help="training scenes (default 2000)")
    p.add_argument("--val", type=int, default=None,
                   help="validation scenes: selection only, never reported (default: --test)")
    p.add_argument("--test", type=int, default=None, help="test scenes (default 1000)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per model (default 8)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per setting (default 2)")
    p.add_argument("--effnet-size", type=int, default=None,
                   help="EfficientNet-Lite0 input size for the accuracy table (default 96)")
    p.add_argument("--speed-repeats", type=int, default=None, help="timed calls (default 20)")
    p.add_argument("--quick", action="store_true",
                   help="tiny settings (train 256, val 128, test 128, 1 epoch, 1 seed): checks, not figures")
    p.add_argument("--work", default="runs/bench")
    p.add_argument("--output", default="BENCHMARKS.md")
    p.add_argument("--skip-accuracy", action="store_true")
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--remeasure-speed", action="store_true",
                   help="re-time the speed and serving figures instead of reusing them")
    p.add_argument("--skip-serving", action="store_true", help="skip the serving load test")
    p.add_argument("--serving-clients", type=int, default=4, help="concurrent gRPC clients")
    p.add_argument("--serving-seconds", type=float, default=None,
                   help="seconds per batch size (default 10; --quick 2)")
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.val is None:
        args.val = args.test
    return args


QUICK = dict(train=256, test=128, epochs=1, seeds=1, effnet_size=64, speed_repeats=5,
             serving_seconds=2.0)
DEFAULTS = dict(train=2000, test=1000, epochs=8, seeds=2, effnet_size=96, speed_repeats=20,
                serving_seconds=10.0)


def command_line(args) -> str:
    parts = [".venv/bin/python", SCRIPT]
    if args.quick:
        parts.append("--quick")
    parts += ["--train", str(args.train), "--val", str(args.val), "--test", str(args.test),
              "--epochs", str(args.epochs),
              "--seeds", str(args.seeds), "--effnet-size", str(args.effnet_size)]
    return " ".join(parts)


# ---------------------------------------------------------------- caching
class Cache:
    def __init__(self, root):
        self.root = os.path.join(root, "results")
        os.makedirs(self.root, exist_ok=True)

    def path(self, key):
        return os.path.join(self.root, key.replace("/", "_") + ".json")

    def get(self, key):
        """The cached result, or None when missing or computed by another library version."""
        from cnnrnn_tf import __version__

        try:
            with open(self.path(key), encoding="utf-8") as f:
                value = json.load(f)
        except FileNotFoundError:
            return None
        return value if value.get("library_version") == __version__ else None

    def put(self, key, value):
        from cnnrnn_tf import __version__
        from cnnrnn_tf.model_dir import write_json

        value = dict(value, library_version=__version__)
        write_json(self.path(key), value)
        return value


def log(msg):
    print(f"[{datetime.datetime.now().strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- data and training
def data_dir(args, grammar):
    """The data folder of one grammar, with train/, val/ and test/ (built once)."""
    from cnnrnn_tf.data import build_fashion_outfits

    path = os.path.join(args.work, "data",
                        f"{grammar}-train{args.train}-val{args.val}-test{args.test}")
    if not all(os.path.isdir(os.path.join(path, s)) for s in ("train", "val", "test")):
        log(f"building data {path}")
        build_fashion_outfits(path, num_train=args.train, num_test=args.test, num_val=args.val,
                              seed=0, grammar=grammar, progress=False)
    return path


def data_command(args, grammar):
    return (f"cnnrnn data fashion-outfits --train {args.train} --val {args.val} "
            f"--test {args.test} --seed 0"
            + (f" --grammar {grammar}" if grammar != "outfits" else ""))


def train_run(args, cache, grammar, model, label_order, seed, backbone="small-cnn",
              image_size=64, label_head=None):
    """Trains (or reuses) one model; returns its result dict.

    ``metrics``: the test split, scored once after the model is final; ``validation``:
    the validation split that selected the epoch (and the BCE/ASL threshold).
    """
    from cnnrnn_tf.config import TrainConfig
    from cnnrnn_tf.model_dir import is_model_dir

    head = f"-head{label_head}" if label_head else ""
    name = (f"{grammar}-n{args.train}-v{args.val}-t{args.test}-e{args.epochs}-"
            f"{backbone}{image_size}-{model}-{label_order}{head}-s{seed}")
    cached = cache.get("train-" + name)
    out = os.path.join(args.work, "models", name)
    if cached is not None and is_model_dir(out):
        return cached
    import shutil

    from cnnrnn_tf.training import train

    shutil.rmtree(out, ignore_errors=True)
    data = data_dir(args, grammar)
    config = TrainConfig(model=model, label_order=label_order, seed=seed, backbone=backbone,
                         image_size=image_size, epochs=args.epochs,
                         **({"label_head": label_head} if label_head else {}))
    log(f"training {name}")
    t0 = time.time()
    timer = EpochTimer()
    result = train(config, os.path.join(data, "train"), os.path.join(data, "val"), out,
                   test_data=os.path.join(data, "test"), export=False, evaluate_after=True,
                   verbose=0, extra_callbacks=[timer])
    seconds = time.time() - t0
    value = {
        "name": name, "model_dir": out, "config": config.to_dict(), "info": result.info,
        "split": "test",
        "metrics": _headline(result.metrics),
        "validation": _headline(result.validation_metrics),
        "train_images_per_second": timer.images_per_second(args.train),
        "wall_seconds": round(seconds, 1),
        "command": (f"cnnrnn train --train {data}/train --eval {data}/val "
                    f"--test {data}/test --out {out} "
                    f"--model {model} --backbone {backbone} --image-size {image_size} "
                    f"--epochs {args.epochs} --label-order {label_order} --seed {seed}"
                    + (f" --label-head {label_head}" if label_head else "")),
    }
    return cache.put("train-" + name, value)


def EpochTimer():
    """A Keras callback: seconds of the training batches of each epoch (validation excluded)."""
    import keras

    class _Timer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds = []
            self._t0 = None

        def on_epoch_begin(self, epoch, logs=None):
            self._t0 = time.perf_counter()

        def on_test_begin(self, logs=None):
            if self._t0 is not None:
                self.seconds.append(time.perf_counter() - self._t0)
                self._t0 = None

        def on_epoch_end(self, epoch, logs=None):
            self.on_test_begin()

        def images_per_second(self, num_train):
            # The first epoch includes tracing; use the later ones when there are any.
            secs = self.seconds[1:] or self.seconds
            return round(num_train / statistics.median(secs), 1) if secs else None

    return _Timer()


def _headline(metrics):
    top = metrics.get(f"top{metrics.get('top_k', 3)}", {})
    return {"mAP": metrics["mAP"], "CF1": metrics["CF1"], "OF1": metrics["OF1"],
            "top3_CF1": top.get("CF1"), "top3_OF1": top.get("OF1"),
            "beam_size": metrics.get("beam_size"),
            "mean_predicted_labels": metrics.get("mean_predicted_labels")}


def beam_run(args, cache, run, grammar, beam):
    from cnnrnn_tf.evaluation.evaluate import evaluate_model
    from cnnrnn_tf.model_dir import load_model_dir

    key = f"beam-{run['name']}-b{beam}"
    cached = cache.get(key)
    if cached is not None:
        return cached
    loaded = load_model_dir(run["model_dir"])
    data = data_dir(args, grammar)
    metrics = evaluate_model(loaded.model, loaded.vocab, os.path.join(data, "test"),
                             loaded.image_size, beam_size=beam)
    return cache.put(key, {"metrics": _headline(metrics),
                           "command": f"cnnrnn evaluate --model {run['model_dir']} "
                                      f"--data {data}/test --beam-size {beam} --json"})


# ---------------------------------------------------------------- speed
def speed_runs(args, cache, model_dir):
    """Latency of the trained small-CNN CNN-RNN and of a frozen EfficientNet-Lite0 CNN-RNN."""
    import numpy as np

    from cnnrnn_tf.evaluation.speed import benchmark_model
    from cnnrnn_tf.config import TrainConfig
    from cnnrnn_tf.model_dir import load_model_dir
    from cnnrnn_tf.models import build_model

    rows = []
    models = [("small-cnn 64px (trained)", lambda: load_model_dir(model_dir), model_dir)]

    def effnet():
        config = TrainConfig(backbone="efficientnet-lite0", image_size=224)
        model = build_model(config, 10, 4)
        model({"images": np.zeros((1, 224, 224, 3), "float32"),
               "label_inputs": np.zeros((1, 5), "int32")})
        return model

    models.append(("efficientnet-lite0 224px frozen (untrained head)", effnet, None))
    for label, make, mdir in models:
        loaded = None
        for batch in (1, 32):
            for beam in (1, 3, 5):
                key = f"speed-{label.split()[0]}-{label.split()[1]}-b{batch}-k{beam}-r{args.speed_repeats}"
                if mdir:
                    key += "-" + os.path.basename(mdir)
                cached = None if args.remeasure_speed else cache.get(key)
                if cached is None:
                    if loaded is None:
                        log(f"timing {label}")
                        loaded = make()
                    model = loaded.model if hasattr(loaded, "model") else loaded
                    size = loaded.image_size if hasattr(loaded, "image_size") else 224
                    r = benchmark_model(model, size, batch_size=batch, beam_size=beam,
                                        repeats=args.speed_repeats, warmup=3,
                                        python_loop=(beam == 1))
                    r["label"] = label
                    r["command"] = (f"cnnrnn benchmark --model {mdir} --batch-size {batch} "
                                    f"--beam-size {beam} --repeats {args.speed_repeats} "
                                    f"--python-loop --json" if mdir else
                                    f"benchmarks/run_all.py (cnnrnn_tf.evaluation.speed.benchmark_model "
                                    f"on a freshly built model, batch {batch}, beam {beam})")
                    cached = cache.put(key, r)
                rows.append(cached)
    return rows


def serving_run(args, cache, model_dir):
    """``benchmarks/serving_load.py`` against ``cnnrnn serve`` over ``model_dir``'s export.

    Returns the cached dict with the script's stdout (the command line and the table).
    """
    import shutil
    import subprocess

    key = (f"serving-{os.path.basename(model_dir)}-c{args.serving_clients}"
           f"-s{args.serving_seconds:g}")
    cached = None if args.remeasure_speed else cache.get(key)
    if cached is not None:
        return cached
    from cnnrnn_tf.serving.export import export_saved_model
    from cnnrnn_tf.model_dir import load_model_dir

    base = os.path.join(args.work, "serving", os.path.basename(model_dir), "cnnrnn")
    if not os.path.isfile(os.path.join(base, "1", "saved_model.pb")):
        log(f"exporting {model_dir} for the serving load test")
        shutil.rmtree(base, ignore_errors=True)
        loaded = load_model_dir(model_dir)
        export_saved_model(loaded.model, loaded.vocab, loaded.image_size,
                           os.path.join(base, "1"), beam_size=loaded.config.beam_size)
    log(f"serving load test on {base}")
    proc = subprocess.run(
        [sys.executable, "benchmarks/serving_load.py", "--model-base-path", base,
         "--model-name", "cnnrnn", "--clients", str(args.serving_clients),
         "--seconds", f"{args.serving_seconds:g}", "--signature", "predict_images"],
        capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"serving_load.py failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return cache.put(key, {"model_dir": model_dir, "base_path": base, "stdout": proc.stdout})


def gpu_lines():
    """BENCHMARKS.md's GPU paragraph: what this machine has, and what that means here."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        return [f"GPUs visible to TensorFlow: {len(gpus)} ({', '.join(g.name for g in gpus)}). "
                "Every training figure above was measured on them (`cnnrnn train` and the TFX "
                "Trainer place the model on the visible GPUs through tf.distribute)."]
    return ["No GPU on this machine: every figure above is CPU only, and the GPU-vs-CPU "
            "training comparison is **not measured**. On a machine with a GPU the same "
            "command measures it: training picks the visible GPUs through tf.distribute "
            "(MirroredStrategy over several), and the `train img/s` column then holds GPU "
            "throughput."]


# ---------------------------------------------------------------- the report
def fmt(values):
    vals = [v for v in values if v is not None]
    if not vals:
        return "n/a"
    if len(vals) == 1:
        return f"{vals[0]:.3f}"
    return f"{statistics.mean(vals):.3f} ({min(vals):.3f}-{max(vals):.3f})"


METRIC_COLS = ("mAP", "CF1", "OF1", "top3_CF1", "top3_OF1")


def accuracy_table(rows):
    """rows: (name, [result, ...]) -> markdown."""
    lines = ["| model | " + " | ".join(METRIC_COLS) + " | labels/image | train img/s (median) |",
             "|---|" + "---|" * (len(METRIC_COLS) + 2)]
    for name, results in rows:
        cells = [fmt([r["metrics"][k] for r in results]) for k in METRIC_COLS]
        cells.append(fmt([r["metrics"].get("mean_predicted_labels") for r in results]))
        speed = [r.get("train_images_per_second") for r in results if r.get("train_images_per_second")]
        cells.append(f"{statistics.median(speed):.0f}" if speed else "")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.work, exist_ok=True)
    cache = Cache(args.work)
    t_start = time.time()
    seeds = list(range(args.seeds))
    cmd = command_line(args)
    md = ["# Benchmarks", ""]
    if args.quick:
        md += ["> **QUICK MODE** (`--quick`): tiny data and one short epoch, to check that the "
               "benchmark runs end to end. These are **not** the project's figures; run "
               "`make bench` (or the command below without `--quick`) for them.", ""]
    elif any(getattr(args, k) != v for k, v in DEFAULTS.items()) or args.val != args.test:
        md += ["> **Non-default settings** (see below): smaller than `make bench`'s defaults "
               f"({', '.join(f'{k}={v}' for k, v in DEFAULTS.items())}, val=test); "
               "indicative figures, not the project's final ones.", ""]
    md += [f"- regenerate: `{cmd}` (cached under `{args.work}/`; a re-run only computes "
           "what is missing)",
           f"- settings: {args.train} training / {args.val} validation / {args.test} test scenes, "
           f"{args.epochs} epochs (early stopping on the validation split may stop sooner), "
           f"seeds {seeds}, small CNN at 64 px unless noted, beam 3 unless noted",
           "- protocol: train fits; **val selects** (early stopping, the checkpoint, the BCE/ASL "
           "threshold, the best CNN-RNN of the beam-size table); **test only reports**: every "
           "accuracy figure below is on the test split, scored once after the model was final",
           f"- machine: `{platform.platform()}`, {platform.processor() or platform.machine()}, "
           f"{os.cpu_count()} CPUs (shared with other jobs: timings are indicative), "
           f"Python {platform.python_version()}",
           f"- date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
           ""]
    best_dir = None
    if not args.skip_accuracy:
        md += ["## (a) Accuracy", "",
               "Cells: mean over seeds, (min-max) when there are several seeds. "
               "labels/image: mean size of the predicted set. Every model was trained with "
               "`cnnrnn train --train DATA/train --eval DATA/val --test DATA/test --model M "
               "--label-order O --seed S` (exact commands in "
               f"`{args.work}/results/train-*.json`): selected on the val split, **scored on the "
               "test split**, which nothing before the final scoring read.", ""]
        rows_by_grammar = {}
        for grammar in GRAMMARS:
            rows = []
            for name, model, order, head in LABEL_ORDER_RUNS:
                rows.append((name, [train_run(args, cache, grammar, model, order, s,
                                              label_head=head) for s in seeds]))
            title = "outfit grammar (default data)" if grammar == "outfits" else \
                "`independent` control (no label dependencies)"
            md += [f"### {title}: test split ({args.test} scenes), selected on val", "",
                   f"Data: `{data_command(args, grammar)}`", "",
                   accuracy_table(rows), ""]
            rows_by_grammar[grammar] = rows
        outfit_rows = rows_by_grammar["outfits"]
        best_name, best_runs = best_cnn_rnn(outfit_rows)
        best_dir = best_runs[0]["model_dir"]
        md += [f"### Beam size ({best_name}, the best CNN-RNN by mean CF1 and OF1 on the "
               "outfits **validation** split): test split", "",
               f"Command: `cnnrnn evaluate --model MODEL_DIR --data DATA/test --beam-size K` "
               f"for each seed's MODEL_DIR. Each row is reported, none is chosen: the models "
               "decode with beam 3.", ""]
        beam_rows = []
        for beam in (1, 3, 5):
            beam_rows.append((f"beam {beam}", [beam_run(args, cache, r, "outfits", beam)
                                                for r in best_runs]))
        md += [accuracy_table(beam_rows), ""]
        md += ["### Encoder: small CNN (64 px, trained) vs frozen EfficientNet-Lite0 "
               f"({args.effnet_size} px, ImageNet weights): test split, selected on val", "",
               f"Outfits data, seed 0. EfficientNet-Lite0 command: `cnnrnn train ... --backbone "
               f"efficientnet-lite0 --image-size {args.effnet_size}`.", ""]
        enc_rows = [(f"small CNN: {n}", [rs[0]]) for n, rs in outfit_rows
                    if n in ("BCE", "CNN-RNN frequent-first")]
        for name, model, order in (("BCE", "bce", "frequent-first"),
                                   ("CNN-RNN frequent-first", "cnn-rnn", "frequent-first")):
            enc_rows.append((f"EfficientNet-Lite0: {name}",
                             [train_run(args, cache, "outfits", model, order, 0,
                                        backbone="efficientnet-lite0",
                                        image_size=args.effnet_size)]))
        md += [accuracy_table(enc_rows), ""]
        md += _observations(rows_by_grammar, args)
    if not args.skip_speed:
        if best_dir is None:
            best_dir = train_run(args, cache, "outfits", "cnn-rnn", "frequent-first", 0)["model_dir"]
        rows = speed_runs(args, cache, best_dir)
        md += ["## (b) Inference speed", "",
               "Medians of timed calls (after warm-up) on random images; `full` = encoder + "
               "beam search, the compiled function `cnnrnn predict` / `evaluate` use; "
               "`decode` = full - encoder; `decoder alone` = the beam search on precomputed features "
               "(the decode's own cost, measured directly); greedy columns: encoder + greedy decode, "
               "in the graph vs a Python loop calling the compiled step once per label. "
               "Command per row: "
               "`cnnrnn benchmark --model MODEL_DIR --batch-size B --beam-size K --python-loop --json`"
               " (the EfficientNet rows time a freshly built, untrained model: same cost).", "",
               "| model | batch | beam | encoder ms | full ms | decode ms | decoder alone ms | full/encoder "
               "| images/s | in-graph greedy ms | Python-loop greedy ms |",
               "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in rows:
            md.append(f"| {r['label']} | {r['batch_size']} | {r['beam_size']} | "
                      f"{r['encoder_ms_per_batch']:.2f} | {r['full_ms_per_batch']:.2f} | "
                      f"{r['decode_ms_per_batch']:.2f} | {_ms(r.get('decoder_only_ms_per_batch'))} | "
                      f"{r['decode_ratio']:.2f} | "
                      f"{r['images_per_second']:.0f} | "
                      f"{_ms(r.get('full_beam1_ms_per_batch'))} | "
                      f"{_ms(r.get('python_loop_ms_per_batch'))} |")
        goal = [r for r in rows if r["label"].startswith("efficientnet")
                and r["batch_size"] == 32 and r["beam_size"] == 3]
        if goal:
            g = goal[0]
            md += ["", f"Goal (frozen EfficientNet-Lite0, 224 px, batch 32, beam 3: full within 15% "
                   f"of the encoder alone): full/encoder = {g['decode_ratio']:.3f}, "
                   + ("met." if g["decode_ratio"] <= 1.15 else "**not met** in this run.")]
        md += ["", f"Device: {rows[0]['device']}, TensorFlow {rows[0]['tensorflow_version']}, "
               f"{args.speed_repeats} timed calls each.", "",
               "Training speed: the `train img/s` column of the accuracy tables: training images "
               "per second of the training batches of an epoch (median over epochs after the "
               "first, which includes tracing; validation excluded; input pipeline included).",
               ""]
    if not args.skip_serving:
        if best_dir is None:
            best_dir = train_run(args, cache, "outfits", "cnn-rnn", "frequent-first", 0)["model_dir"]
        served = serving_run(args, cache, best_dir)
        md += ["## (c) Serving load", "",
               f"`benchmarks/serving_load.py`: {args.serving_clients} concurrent gRPC clients "
               "(one thread and channel each, TF Serving's own `PredictionService` stubs) "
               "against `cnnrnn serve` in the same process on loopback, `predict_images` "
               f"requests of one 64x64 PNG repeated to the batch size, for "
               f"{args.serving_seconds:g} s per batch size after a warm-up request; model: "
               f"`{served['base_path']}` (the exported SavedModel of `{best_dir}`). "
               "The clients share the 2 CPU cores with the server, so the throughput is a "
               "lower bound of what the server alone does. TF Serving's own binary cannot be "
               "installed here and is not measured.", ""]
        md += ["```", served["stdout"].strip(), "```", ""]
    md += ["## GPU", ""] + gpu_lines() + [""]
    md += [f"_Total time of this run: {(time.time() - t_start) / 60:.1f} min "
           "(cached results reused where present)._", ""]
    md += _other_sections(args.output)
    with open(args.output, "w", encoding="utf-8") as f:
        f.write("\n".join(md))
    log(f"wrote {args.output}")
    return 0


def _other_sections(path):
    """The sections of ``path`` that other scripts write (beam search, scaling, training
    speed, attention): everything after this script's closing "_Total time" line, kept."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    for i, line in enumerate(lines):
        if line.startswith("_Total time of this run:"):
            return lines[i + 1:]
    return []


def _ms(value):
    return "" if value is None else f"{value:.2f}"


def _mean(results, key, split="metrics"):
    return statistics.mean(r[split][key] for r in results)


def best_cnn_rnn(rows):
    """The CNN-RNN row (name, results) with the best mean of CF1 and OF1 on the
    validation split: a choice, so it never looks at the test split it then reports."""
    return max(((n, rs) for n, rs in rows if n.startswith("CNN-RNN")),
               key=lambda nr: _mean(nr[1], "CF1", "validation") + _mean(nr[1], "OF1", "validation"))


def _spread(results, key):
    vals = [r["metrics"][key] for r in results]
    return min(vals), max(vals)


def _versus(a, b, keys):
    """One clause per metric: 'CF1 0.812 vs 0.796 (+0.016)', with a note when the seeds'
    ranges overlap on any; and whether a >= b on all."""
    parts, wins, overlap = [], True, False
    for k in keys:
        ma, mb = _mean(a, k), _mean(b, k)
        wins = wins and ma >= mb
        lo_a, hi_a = _spread(a, k)
        lo_b, hi_b = _spread(b, k)
        overlap = overlap or (len(a) > 1 and lo_a <= hi_b and lo_b <= hi_a)
        parts.append(f"{k} {ma:.3f} vs {mb:.3f} ({ma - mb:+.3f})")
    note = " (the seeds' ranges overlap on at least one)" if overlap else ""
    return ", ".join(parts) + note, wins


def _observations(rows_by_grammar, args):
    """The issue's goals, checked against the tables above (one line each)."""
    out = ["### What these figures say (written by the script from the numbers above)", "",
           "Test-split figures; \"the best CNN-RNN\" is the one with the best mean CF1 + OF1 "
           "on the validation split.", ""]
    for grammar, rows in rows_by_grammar.items():
        by = dict(rows)
        best_name, best = best_cnn_rnn(rows)
        text, wins = _versus(best, by["BCE"], ("CF1", "OF1"))
        label = "Outfits data" if grammar == "outfits" else "Independent control"
        verdict = ("beats BCE on both" if wins else "does **not** beat BCE on both")
        out.append(f"- {label}: the best CNN-RNN ({best_name}) {verdict}: {text}.")
        text, wins = _versus(by["CNN-RNN frequent-first"], by[PAPER_ROW], ("CF1", "OF1"))
        verdict = "at least matches" if wins else "does **not** match"
        out.append(f"- {label}: frequent-first with the default label head (evidence) "
                   f"{verdict} the paper's model on both: {text}.")
        if grammar == "outfits":
            text, wins = _versus(by["CNN-RNN PLA"], by["CNN-RNN frequent-first"], METRIC_COLS)
            verdict = ("at least matches frequent-first on every metric" if wins else
                       "does **not** match frequent-first on every metric")
            out.append(f"- Outfits data: PLA {verdict}: {text}.")
    if args.seeds < 2:
        out.append("- One seed only: differences of a few points are within the run-to-run noise.")
    return out + [""]


if __name__ == "__main__":
    sys.exit(main())
