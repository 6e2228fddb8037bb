"""The README's main job on the built-in default data (``make run``).

1. Builds the Fashion-MNIST outfits data when it is missing.
2. Runs the TFX pipeline on it (CNN-RNN): validation, Transform, Trainer,
   Evaluator, and the Pusher into TF Serving's layout.
3. Trains the BCE baseline with the same encoder and budget (library API).
4. Scores the pushed SavedModel and the baseline on the test split and prints
   one table, the pushed path, and the command for the plots report.

Falls back to the library's own training for CNN-RNN when the TFX extra is not
installed (e.g. in Colab), and says so.
"""
from __future__ import annotations

import glob
import json
import os
import time

from cnnrnn_tf.schema import SHARD_GLOB

MODEL_NAME = "cnnrnn"


def _has_shards(path: str) -> bool:
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


def _train_or_reuse(config, train_dir, test_dir, out):
    from cnnrnn_tf.model_dir import METRICS_FILE, is_model_dir
    from cnnrnn_tf.training import train

    if is_model_dir(out):
        print(f"{out}: already trained, reusing it (delete it to retrain)", flush=True)
        with open(os.path.join(out, METRICS_FILE), encoding="utf-8") as f:
            return json.load(f)
    return train(config, train_dir, test_dir, out, verbose=2).metrics


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
    from cnnrnn_tf.evaluation import evaluate_saved_model
    from cnnrnn_tf.metrics import format_comparison

    t_start = time.time()
    data_dir = os.path.join(work_dir, "data")
    train_dir, test_dir = os.path.join(data_dir, "train"), os.path.join(data_dir, "test")
    if not (_has_shards(train_dir) and _has_shards(test_dir)):
        print(f"Building the Fashion-MNIST outfits data under {data_dir}", flush=True)
        sizes = {k: v for k, v in (("num_train", num_train), ("num_test", num_test)) if v}
        build_fashion_outfits(data_dir, seed=seed, **sizes)
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
        rows["cnn-rnn"] = _train_or_reuse(cnn_rnn, train_dir, test_dir, cnn_rnn_dir)
    print("Training the BCE baseline (same encoder and budget) ...", flush=True)
    bce_dir = os.path.join(work_dir, "models", "bce")
    rows["bce"] = _train_or_reuse(TrainConfig(model="bce", epochs=epochs, seed=seed),
                                  train_dir, test_dir, bce_dir)
    print()
    print(f"Test split: {test_dir}")
    print(format_comparison(rows))
    if pushed:
        print(f"\nCNN-RNN SavedModel pushed to: {pushed}")
    if cnn_rnn_dir and os.path.isdir(cnn_rnn_dir):
        print(f"Plots and a report: cnnrnn report --model {cnn_rnn_dir} --data {test_dir} "
              f"--out {os.path.join(work_dir, 'report')}")
    print(f"Main job done in {time.time() - t_start:.0f} s.")
    return 0
