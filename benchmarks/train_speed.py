"""Training speed side by side: the CLI against plain Keras on the same images.

Runs, each in a fresh process, interleaved round by round (the machine's load changes,
so the ratios come from runs next to each other):

* ``ref-xla-off`` / ``ref-xla-on``: a plain-Keras reference, the small CNN of
  ``cnnrnn_tf.models.encoders`` ("small-cnn") with the same per-label BCE head, trained
  with ``model.fit`` on the same decoded images held in memory as numpy arrays (with the
  same validation split), XLA off / on;
* ``bce`` and ``cnn-rnn``: ``cnnrnn train --model bce|cnn-rnn`` (small-cnn) on the same
  data as TFRecord shards;
* ``effnet-frozen``: ``cnnrnn train --backbone efficientnet-lite0 --image-size 96``
  (frozen pretrained backbone: its features are computed once, in the first epoch).

Epoch times: the CLI's ``history.json`` (``epoch_seconds``, epoch begin to end, validation
included); the reference times its epochs with the same kind of callback. Prints a
Markdown table and the ratios; writes ``WORK/train_speed.json``.

    python benchmarks/train_speed.py --work /tmp/train-speed [--train 3000] [--epochs 3]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

REFERENCE = r'''
import json, sys, time
import keras, numpy as np
from cnnrnn_tf.inputs.dataset import make_dataset, scan_labels
from cnnrnn_tf.models.encoders import build_encoder
train_dir, eval_dir, size, batch, epochs, jit, out = sys.argv[1:8]
size, batch, epochs = int(size), int(batch), int(epochs)
vocab = scan_labels(train_dir).vocabulary()
def arrays(d):
    xs, ys = [], []
    for x, y in make_dataset(d, vocab, mode="multi_hot", image_size=size, batch_size=256):
        xs.append(x["images"].numpy()); ys.append(y.numpy())
    return np.concatenate(xs), np.concatenate(ys)
(x, y), (xe, ye) = arrays(train_dir), arrays(eval_dir)
keras.utils.set_random_seed(0)
inputs = keras.Input((size, size, 3))
logits = keras.layers.Dense(len(vocab))(keras.layers.Dropout(0.1)(
    build_encoder("small-cnn", size)(inputs)))
model = keras.Model(inputs, logits)
model.compile(keras.optimizers.RMSprop(1e-3),
              keras.losses.BinaryCrossentropy(from_logits=True), jit_compile=jit == "on")
class Timer(keras.callbacks.Callback):
    def on_epoch_begin(self, e, logs=None): self.t = time.perf_counter()
    def on_epoch_end(self, e, logs=None): logs["epoch_seconds"] = time.perf_counter() - self.t
h = model.fit(x, y, batch_size=batch, epochs=epochs, validation_data=(xe, ye),
              shuffle=True, verbose=0, callbacks=[Timer()])
json.dump({"epoch_seconds": h.history["epoch_seconds"]}, open(out, "w"))
'''


def run(cmd, log):
    t0 = time.time()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONWARNINGS="ignore")
    with open(log, "w") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env).returncode
    if rc:
        raise SystemExit(f"failed ({rc}): {' '.join(cmd)}; see {log}")
    return time.time() - t0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", required=True)
    p.add_argument("--train", type=int, default=3000)
    p.add_argument("--test", type=int, default=500)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--only", default="ref-xla-off,ref-xla-on,bce,cnn-rnn,effnet-frozen")
    args = p.parse_args(argv)
    os.makedirs(args.work, exist_ok=True)
    data = os.path.join(args.work, "data")
    if not os.path.isdir(os.path.join(data, "test")):
        from cnnrnn_tf.data import build_fashion_outfits

        build_fashion_outfits(data, num_train=args.train, num_test=args.test, seed=0)
    train_dir, eval_dir = os.path.join(data, "train"), os.path.join(data, "test")
    py = sys.executable
    cnnrnn = [py, "-m", "cnnrnn_tf.cli"] if not os.path.exists(
        os.path.join(os.path.dirname(py), "cnnrnn")) else [os.path.join(os.path.dirname(py), "cnnrnn")]
    common = ["--train", train_dir, "--eval", eval_dir, "--epochs", str(args.epochs),
              "--batch-size", str(args.batch_size), "--verbose", "2"]
    runs = {
        "ref-xla-off": lambda out: [py, "-c", REFERENCE, train_dir, eval_dir, str(args.image_size),
                                    str(args.batch_size), str(args.epochs), "off", out],
        "ref-xla-on": lambda out: [py, "-c", REFERENCE, train_dir, eval_dir, str(args.image_size),
                                   str(args.batch_size), str(args.epochs), "on", out],
        "bce": lambda out: cnnrnn + ["train", "--model", "bce", "--out", out,
                                     "--image-size", str(args.image_size)] + common,
        "cnn-rnn": lambda out: cnnrnn + ["train", "--model", "cnn-rnn", "--out", out,
                                         "--image-size", str(args.image_size)] + common,
        "effnet-frozen": lambda out: cnnrnn + ["train", "--model", "cnn-rnn", "--out", out,
                                               "--backbone", "efficientnet-lite0",
                                               "--image-size", "96"] + common,
    }
    names = [n for n in args.only.split(",") if n]
    results = {n: [] for n in names}
    for r in range(args.rounds):
        for name in names:
            out = os.path.join(args.work, f"{name}-r{r}")
            target = out + ".json" if name.startswith("ref") else out
            if os.path.exists(target):
                subprocess.run(["rm", "-rf", target])
            wall = run(runs[name](target), out + ".log")
            path = target if name.startswith("ref") else os.path.join(target, "history.json")
            with open(path) as f:
                secs = json.load(f)["epoch_seconds"]
            results[name].append(secs)
            print(f"round {r} {name}: epochs {[round(s, 1) for s in secs]} (process {wall:.0f} s)",
                  flush=True)
    summary = summarize(results)
    with open(os.path.join(args.work, "train_speed.json"), "w") as f:
        json.dump({"args": vars(args), "epoch_seconds": results, "summary": summary}, f, indent=1)
    print(table(summary))


def summarize(results):
    out = {}
    for name, rounds in results.items():
        first = [s[0] for s in rounds]
        later = [x for s in rounds for x in s[1:]]
        out[name] = {"first": sum(first) / len(first),
                     "later": sum(later) / len(later) if later else None}
    refs = [out[n]["later"] for n in ("ref-xla-off", "ref-xla-on") if n in out]
    best = min(refs) if refs else None
    best_first = min(out[n]["first"] for n in ("ref-xla-off", "ref-xla-on") if n in out) \
        if refs else None
    for name, row in out.items():
        if best and not name.startswith("effnet"):
            row["later_vs_best_reference"] = row["later"] / best
            row["first_vs_best_reference"] = row["first"] / best_first
        if row["later"] is not None:
            row["later_vs_first"] = row["later"] / row["first"]
    return out


def table(summary):
    lines = ["| run | first epoch (s) | later epochs, mean (s) | later / best reference "
             "| first / best reference | later / first |",
             "|---|---|---|---|---|---|"]
    for name, row in summary.items():
        def fmt(key, digits=2):
            v = row.get(key)
            return "" if v is None else f"{v:.{digits}f}"
        lines.append(f"| {name} | {fmt('first', 1)} | {fmt('later', 1)} | "
                     f"{fmt('later_vs_best_reference')} | {fmt('first_vs_best_reference')} | "
                     f"{fmt('later_vs_first')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
