"""The README's main job on the built-in default data (``make run``).

Builds the Fashion-MNIST outfits data when missing, trains CNN-RNN and the BCE
baseline with the same encoder and budget, evaluates both and prints the table.
"""
from __future__ import annotations

import os
import time

from cnnrnn_tf.schema import SHARD_GLOB


def _has_shards(path: str) -> bool:
    import glob

    return bool(glob.glob(os.path.join(path, SHARD_GLOB)))


def run_main_job(work_dir: str, num_train=None, num_test=None, epochs=None, seed=0) -> int:
    from cnnrnn_tf.config import TrainConfig
    from cnnrnn_tf.data import build_fashion_outfits
    from cnnrnn_tf.metrics import format_comparison
    from cnnrnn_tf.model_dir import METRICS_FILE, is_model_dir
    from cnnrnn_tf.training import train
    import json

    data_dir = os.path.join(work_dir, "data")
    train_dir, test_dir = os.path.join(data_dir, "train"), os.path.join(data_dir, "test")
    if not (_has_shards(train_dir) and _has_shards(test_dir)):
        print(f"Building the Fashion-MNIST outfits data under {data_dir}", flush=True)
        kwargs = {}
        if num_train:
            kwargs["num_train"] = num_train
        if num_test:
            kwargs["num_test"] = num_test
        build_fashion_outfits(data_dir, seed=seed, **kwargs)
    rows = {}
    for model in ("cnn-rnn", "bce"):
        out = os.path.join(work_dir, "models", model)
        if is_model_dir(out):
            print(f"{out}: already trained, reusing it (delete it to retrain)")
            with open(os.path.join(out, METRICS_FILE), encoding="utf-8") as f:
                rows[model] = json.load(f)
            continue
        t0 = time.time()
        result = train(TrainConfig(model=model, epochs=epochs, seed=seed), train_dir, test_dir,
                       out, verbose=2)
        rows[model] = result.metrics
        print(f"{model}: trained and evaluated in {time.time() - t0:.0f} s -> {out}", flush=True)
    print()
    print(format_comparison(rows))
    return 0
