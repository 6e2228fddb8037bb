"""The README's main job on the built-in default data (``make run``).

1. Builds the Fashion-MNIST outfits data when it is missing.
2. Runs the TFX pipeline on it (CNN-RNN): validation, Transform, Trainer,
   Evaluator, and the Pusher into TF Serving's layout.
3. Trains the BCE baseline with the same encoder and budget (library API): it trains
   on ``train/``, is selected on ``val/`` (early stopping, checkpoint, thresholds) and
   scored on ``test/``, which it reads only once the model is final.
4. Scores the pushed SavedModel and the baseline on the test split and prints
   one table, the pushed path, and the command for the plots report.

Data written by 0.4.0 has no ``val/``: the job then validates on a tenth carved out of
``train/``, which it leaves out of training, and says so in one line.

Falls back to the library's own training for CNN-RNN when the TFX extra is not
installed (e.g. in Colab), and says so; that training keeps the same three splits.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import time

from cnnrnn_tf.cli.args import non_negative_int, positive_int

MODEL_NAME = "cnnrnn"


def _has_shards(path: str) -> bool:
    from cnnrnn_tf.schema import SHARD_GLOB

    return bool(glob.glob(os.path.join(path, SHARD_GLOB)))


def _pipeline_available() -> bool:
    try:
        import cnnrnn_pipeline.local_runner  # noqa: F401
    except ImportError:
        return False
    return True


def _run_pipeline(data_dir, work_dir, config):
    """Runs the pipeline; returns ``(pushed SavedModel, MODEL_DIR, test metrics)``.

    The test metrics are the pipeline's TestEvaluator's on the ``test`` split, which
    nothing in the pipeline selects on; None when this run pushed no model (the newest
    pushed version is then an earlier run's, which the caller scores itself).
    """
    from cnnrnn_pipeline import local_runner, results
    from cnnrnn_pipeline.cli import DEFAULT_MIN_OF1, PIPELINE_NAME, format_summary

    pipeline_root = os.path.abspath(os.path.join(work_dir, "pipeline"))
    serving_dir = os.path.abspath(os.path.join(work_dir, "serving"))
    local_runner.run(PIPELINE_NAME, pipeline_root, os.path.abspath(data_dir), serving_dir,
                     model_name=MODEL_NAME, train_config=config.to_dict(),
                     min_of1=DEFAULT_MIN_OF1)
    sqlite = local_runner.metadata_path(pipeline_root)
    summary = results.summarize(sqlite, PIPELINE_NAME)
    print(format_summary(summary), flush=True)
    trainer = results.latest_run(results.open_store(sqlite), PIPELINE_NAME).get("Trainer")
    model_dir = None
    if trainer and trainer.outputs.get("model_run"):
        model_dir = os.path.join(trainer.outputs["model_run"][0].uri, "model_dir")
    pushed = summary.pushed_path
    test_metrics = dict(summary.test_metrics) if pushed and summary.test_metrics else None
    if not pushed:
        # Not blessed this time (e.g. not better than the model already pushed): the newest.
        versions = sorted(glob.glob(os.path.join(serving_dir, MODEL_NAME, "*", "saved_model.pb")))
        pushed = os.path.dirname(versions[-1]) if versions else None
    return pushed, model_dir, test_metrics


VAL_FRACTION = 0.1  # of train/, when the data has no val/ (0.4.0's layout)
CARVED_DIR = "carved"  # DATA/carved/{train,val}: train/ split by `cnnrnn data split`


def _splits(data_dir: str):
    """(train, val, test, what val is): the data arguments of the three splits.

    Without ``val/`` (data written by 0.4.0, which had only train/ and test/), val is
    carved from train/ as ``cnnrnn data split --val-fraction 0.1`` does (a stable hash of
    each record's id), once, into DATA/carved/{train,val}; training then reads
    carved/train, which leaves the val records out.
    """
    from cnnrnn_tf.data import split_train_val

    train_dir, val_dir, test_dir = (os.path.join(data_dir, s) for s in ("train", "val", "test"))
    if _has_shards(val_dir):
        return train_dir, val_dir, test_dir, val_dir
    carved = os.path.join(data_dir, CARVED_DIR)
    carved_train, carved_val = os.path.join(carved, "train"), os.path.join(carved, "val")
    if not (_has_shards(carved_train) and _has_shards(carved_val)):
        split_train_val(train_dir, carved, VAL_FRACTION)
    print(f"{data_dir}: no val/ folder (data written by cnnrnn 0.4.0); validating on "
          f"{carved_val}, a tenth of train/ carved out by a hash of each record's id, which "
          f"training leaves out", flush=True)
    return carved_train, carved_val, test_dir, f"{carved_val} (carved from {train_dir})"


def _train_or_reuse(config, train_data, val_data, test_dir, out):
    """metrics.json of a model trained on train, selected on val and scored on test:
    the one in ``out`` when it was trained on exactly these splits, else a new one."""
    from cnnrnn_tf.model_dir import METRICS_FILE, is_model_dir
    from cnnrnn_tf.training.loop import train
    from cnnrnn_tf.training.splits import split_names

    if is_model_dir(out):
        try:
            with open(os.path.join(out, METRICS_FILE), encoding="utf-8") as f:
                metrics = json.load(f)
        except (OSError, ValueError):  # interrupted before its evaluation was written
            metrics = {}
        if (metrics.get("split") == "test"
                and metrics.get("data") == split_names(train_data, val_data, test_dir)):
            print(f"{out}: already trained on these splits, reusing it (delete it to retrain)",
                  flush=True)
            return metrics
        # e.g. 0.4.0's models, selected on the very test split they reported
        print(f"{out}: trained on other splits (or selected on test/, as 0.4.0 did); "
              f"training it again", flush=True)
        shutil.rmtree(out)
    return train(config, train_data, val_data, out, test_data=test_dir, verbose=2).metrics


def _quiet_logs() -> None:
    """TFX, TFMA and Beam log deprecation warnings by the hundred; keep errors only."""
    import logging

    import tensorflow as tf

    tf.get_logger().setLevel(logging.ERROR)
    try:
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)
    except ImportError:
        pass


def run_main_job(work_dir: str, num_train=None, num_test=None, epochs=None, seed=0) -> int:
    from cnnrnn_tf.config import TrainConfig
    from cnnrnn_tf.data import build_fashion_outfits
    from cnnrnn_tf.evaluation.evaluate import evaluate_saved_model
    from cnnrnn_tf.metrics import format_comparison

    t_start = time.time()
    data_dir = os.path.join(work_dir, "data")
    if not (_has_shards(os.path.join(data_dir, "train"))
            and _has_shards(os.path.join(data_dir, "test"))):
        print(f"Building the Fashion-MNIST outfits data under {data_dir}", flush=True)
        sizes = {k: v for k, v in (("num_train", num_train), ("num_test", num_test)) if v}
        build_fashion_outfits(data_dir, seed=seed, **sizes)
    train_data, val_data, test_dir, val_name = _splits(data_dir)
    _quiet_logs()
    rows = {}
    pushed = None
    cnn_rnn_dir = os.path.join(work_dir, "models", "cnn-rnn")
    cnn_rnn = TrainConfig(model="cnn-rnn", epochs=epochs, seed=seed)
    if _pipeline_available():
        print("Running the TFX pipeline (CNN-RNN) ...", flush=True)
        pushed, cnn_rnn_dir, test_metrics = _run_pipeline(data_dir, work_dir, cnn_rnn)
        if pushed:
            # The seven metrics are the pipeline's test score (TestEvaluator); the library's
            # pass over the same split adds the top-k columns the pipeline does not compute.
            rows["cnn-rnn (pushed)"] = {**evaluate_saved_model(pushed, test_dir),
                                        **(test_metrics or {})}
    else:
        print("The TFX extra is not installed: training CNN-RNN with the library instead "
              "(pip install 'cnnrnn-tf[pipeline]' for the pipeline).", flush=True)
        rows["cnn-rnn"] = _train_or_reuse(cnn_rnn, train_data, val_data, test_dir, cnn_rnn_dir)
    print("Training the BCE baseline (same encoder and budget) ...", flush=True)
    bce_dir = os.path.join(work_dir, "models", "bce")
    rows["bce"] = _train_or_reuse(TrainConfig(model="bce", epochs=epochs, seed=seed),
                                  train_data, val_data, test_dir, bce_dir)
    print()
    print(_table_title(rows, test_dir, val_name))
    print(format_comparison(rows))
    if pushed:
        print(f"\nCNN-RNN SavedModel pushed to: {pushed}")
    if cnn_rnn_dir and os.path.isdir(cnn_rnn_dir):
        print(f"Plots and a report: cnnrnn report --model {cnn_rnn_dir} --data {test_dir} "
              f"--out {os.path.join(work_dir, 'report')}")
    print(f"Main job done in {time.time() - t_start:.0f} s.")
    return 0


def _table_title(rows, test_dir: str, val_name: str) -> str:
    """What the table's numbers are: the test split, its size, and where selection ran."""
    sizes = sorted({int(r["num_images"]) for r in rows.values() if "num_images" in r})
    images = " / ".join(str(n) for n in sizes) or "?"
    return (f"Scored on the test split {test_dir} ({images} images), which no step before "
            f"read; early stopping, checkpoints and thresholds selected on {val_name}")


def cmd_main_job(args) -> int:
    from cnnrnn_tf.cli.main_job import run_main_job

    return run_main_job(args.work_dir, num_train=args.train, num_test=args.test,
                        epochs=args.epochs, seed=args.seed)


def register(sub) -> None:
    p = sub.add_parser("main-job", help="the README's main job (what 'make run' calls)")
    p.add_argument("--work-dir", default="runs/default",
                   help="data, pipeline, models and report go here")
    p.add_argument("--train", type=positive_int, default=None,
                   help="train scenes when the job builds its data (default 10000)")
    p.add_argument("--test", type=positive_int, default=None,
                   help="val and test scenes each, when the job builds its data (default 2000)")
    p.add_argument("--epochs", type=positive_int, default=None,
                   help="training epochs (default: chosen from the training set size)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="data and training seed")
    p.set_defaults(func=cmd_main_job)
