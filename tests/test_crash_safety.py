"""Crash safety: interrupted converters leave no shard a reader would take, killed
training resumes from MODEL_DIR/backup, a failed export never replaces a good one.

The pipeline's guarantees (a model that is not blessed is not pushed; data with
anomalies stops the run before the Trainer) are covered in tests/test_pipeline.py:
test_a_model_below_the_value_threshold_is_not_pushed,
test_missing_labels_stop_the_run_before_the_trainer,
test_unknown_eval_label_stops_the_run_before_the_trainer.
"""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from cnnrnn_tf import schema
from cnnrnn_tf.errors import InputError
from tests.conftest import synthetic_records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env():
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3",
           "CUDA_VISIBLE_DEVICES": ""}
    return env


# ------------------------------------------------------------------ converters
def test_converter_interrupted_midway_leaves_nothing(tmp_path, monkeypatch):
    from cnnrnn_tf.data import converters, writing
    from tests.conftest import png_bytes, synthetic_image

    (tmp_path / "imgs").mkdir()
    lines = ["image,labels"]
    for i in range(10):
        (tmp_path / "imgs" / f"{i}.png").write_bytes(png_bytes(synthetic_image(["red"], seed=i)))
        lines.append(f"imgs/{i}.png,red")
    (tmp_path / "data.csv").write_text("\n".join(lines) + "\n")
    real = writing.read_checked_image
    calls = []

    def flaky(path, where):
        calls.append(path)
        if len(calls) == 7:  # three shards of 2 are (being) written by now
            raise KeyboardInterrupt
        return real(path, where)

    monkeypatch.setattr(writing, "read_checked_image", flaky)
    with pytest.raises(KeyboardInterrupt):
        converters.convert_csv(str(tmp_path / "data.csv"), str(tmp_path / "out"),
                               records_per_shard=2)
    assert not (tmp_path / "out").exists()
    monkeypatch.setattr(writing, "read_checked_image", real)
    summary = converters.convert_csv(str(tmp_path / "data.csv"), str(tmp_path / "out"),
                                     records_per_shard=2)
    assert summary.written == 10 and len(schema.list_shards(str(tmp_path / "out"))) == 5


SLOW_WRITER = textwrap.dedent("""
    import signal, sys, time
    # A shell's background job inherits SIGINT ignored; a user's Ctrl-C is not.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from cnnrnn_tf import schema
    from tests.conftest import synthetic_records
    records = synthetic_records(6, seed=5)
    def slow():
        for i, r in enumerate(records):
            if i == 2:
                print("first shard written", flush=True)
                time.sleep(600)
            yield r
    schema.write_records(sys.argv[1], slow(), records_per_shard=1)
""")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_converter_killed_after_the_first_shard(tmp_path, sig):
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(out)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "first shard written"
        assert any(".tmp-" in name for name in os.listdir(out))  # partial, temp-named
        proc.send_signal(sig)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    left = os.listdir(out) if out.exists() else []
    if sig == signal.SIGINT:  # Python unwinds: the writer deletes its temp files
        assert left == []
    # SIGKILL cannot clean up, but no reader takes the temp-named leftovers ...
    assert not any(name.endswith(schema.SHARD_SUFFIX) for name in left)
    if out.exists():
        with pytest.raises(InputError, match="no \\*.tfrecord.gz shards"):
            schema.list_shards(str(out))
    # ... and a later run into the same folder works and reads only its own shards.
    assert schema.write_records(str(out), synthetic_records(3, seed=6)) == 3
    assert len(list(schema.iter_records(str(out)))) == 3


# ------------------------------------------------------------------ training
def _train_cmd(root, out):
    return [sys.executable, "-m", "cnnrnn_tf.cli", "train", "--train", str(root / "train"),
            "--eval", str(root / "test"), "--out", str(out), "--epochs", "4",
            "--image-size", "32", "--batch-size", "16", "--seed", "3", "--verbose", "1",
            "--patience", "10"]


@pytest.mark.slow
def test_training_killed_after_an_epoch_resumes_and_matches(tmp_path):
    schema.write_records(str(tmp_path / "train"), synthetic_records(96, seed=1),
                         records_per_shard=32)
    schema.write_records(str(tmp_path / "test"), synthetic_records(32, seed=2))
    killed = tmp_path / "killed"
    meta = killed / "backup" / "training_metadata.json"
    stopping_state = killed / "backup" / "early_stopping.json"
    proc = subprocess.Popen(_train_cmd(tmp_path, killed), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 400
        while time.time() < deadline and proc.poll() is None:
            try:
                if (json.loads(meta.read_text())["epoch"] >= 1
                        and json.loads(stopping_state.read_text())["epoch"] >= 1):
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.2)
        assert proc.poll() is None, "training ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    done = json.loads(meta.read_text())["epoch"]
    assert 1 <= done < 4 and not (killed / "model.keras").exists()
    # Early stopping's state is kept beside the resume checkpoint (written after it at each
    # epoch end: a kill between the two writes leaves it one epoch behind).
    stopping = json.loads(stopping_state.read_text())
    assert max(1, done - 1) <= stopping["epoch"] <= done and stopping["best_weights"]

    resumed = subprocess.run(_train_cmd(tmp_path, killed), env=_env(), capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resuming from {killed / 'backup'} (epoch {done} of 4 done)" in resumed.stdout
    assert not (killed / "backup").exists()  # removed once the MODEL_DIR is complete
    history = json.loads((killed / "history.json").read_text())
    assert len(history["loss"]) == 4 - done  # only the remaining epochs ran

    full = tmp_path / "full"
    straight = subprocess.run(_train_cmd(tmp_path, full), env=_env(), capture_output=True,
                              text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr[-2000:]
    assert "resuming" not in straight.stdout
    a = json.loads((killed / "metrics.json").read_text())
    b = json.loads((full / "metrics.json").read_text())
    # Same seed, same data, same number of epochs. Not bit-identical: the resumed run
    # restarts the tf.data shuffle sequence, so later epochs see batches in another
    # order. On 32 test images with ~60 true labels one flipped label moves OF1 by
    # ~0.02; 0.15 allows a handful, and still fails if the resumed run had restarted
    # from scratch with only 4 - done epochs or lost its weights (OF1 near 0.3 after 1 epoch).
    for key in ("OF1", "mAP"):
        assert abs(a[key] - b[key]) <= 0.15, (key, a[key], b[key])


class _Interrupted(Exception):
    pass


def _fit_with_scores(backup, scores, epochs, interrupt_after=None):
    """A tiny model fitted with BackupAndRestore and ResumableEarlyStopping on a logged
    "score" that follows ``scores``; returns the model, its history and the callbacks' view
    (the weights at each epoch end, early stopping's best epoch and stop)."""
    import keras
    import numpy as np

    from cnnrnn_tf.training.early_stopping import ResumableEarlyStopping

    class Score(keras.callbacks.Callback):
        weights = {}

        def on_epoch_end(self, epoch, logs=None):
            logs["score"] = scores[epoch]
            Score.weights[epoch] = [w.numpy() for w in self.model.weights]

    class Interrupt(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == interrupt_after:
                raise _Interrupted

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.1), "mse")
    stopping = ResumableEarlyStopping(str(backup), monitor="score", mode="max", patience=2,
                                      restore_best_weights=True)
    x = np.random.RandomState(0).normal(size=(32, 4)).astype("float32")
    history = model.fit(x, x.sum(axis=1), epochs=epochs, verbose=0, callbacks=[
        keras.callbacks.BackupAndRestore(str(backup)), Score(), stopping, Interrupt()])
    return model, history.history, Score.weights, stopping


def test_early_stopping_state_survives_an_interrupted_run(tmp_path):
    """Best score at epoch 1, patience 2. Straight through, training stops after epoch 3
    and restores epoch 1's weights. Interrupted after epoch 2 and resumed, the resumed run
    must do the same: without the saved state it would take epoch 3's lower score as its
    best, train on to epoch 7 and keep later weights."""
    import numpy as np

    scores = [0.5, 0.9, 0.6, 0.7, 0.8, 0.95, 0.97, 0.99]
    model, history, weights, stopping = _fit_with_scores(tmp_path / "a", scores, 8)
    assert len(history["loss"]) == 4 and (stopping.best_epoch, stopping.stopped_epoch) == (1, 3)
    straight = [w.numpy() for w in model.weights]
    for a, b in zip(straight, weights[1]):
        np.testing.assert_array_equal(a, b)

    with pytest.raises(_Interrupted):
        _fit_with_scores(tmp_path / "b", scores, 8, interrupt_after=2)
    state = json.loads((tmp_path / "b" / "early_stopping.json").read_text())
    assert state == {"epoch": 3, "best": 0.9, "wait": 1, "best_epoch": 1, "best_weights": True,
                     "best_tie": None}  # no val_loss in these logs: no tie-breaker value
    model, history, _, stopping = _fit_with_scores(tmp_path / "b", scores, 8)
    assert len(history["loss"]) == 1  # epoch 3 only, then it stops
    assert (stopping.best_epoch, stopping.stopped_epoch, stopping.best) == (1, 3, 0.9)
    for a, b in zip(model.weights, straight):
        np.testing.assert_array_equal(a.numpy(), b)
    assert not (tmp_path / "b").exists()  # BackupAndRestore removes it, state included


# ------------------------------------------------------------------ export
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from tests.reliability_helpers import build_tiny_model_dir
    from cnnrnn_tf.model_dir import load_model_dir

    root = tmp_path_factory.mktemp("crash_export")
    return load_model_dir(build_tiny_model_dir(root)), root


def _listing(folder):
    return sorted(os.path.relpath(os.path.join(d, f), folder)
                  for d, _, files in os.walk(folder) for f in files)


@pytest.mark.slow
@pytest.mark.parametrize("where", ["save", "rename"])
def test_failed_export_keeps_the_old_one(trained, tmp_path, monkeypatch, where):
    import tensorflow as tf

    from cnnrnn_tf.serving import export

    loaded, _ = trained
    out = tmp_path / "sm"
    export.export_saved_model(loaded.model, loaded.vocab, loaded.image_size, str(out))
    before = {p: (out / p).read_bytes() for p in _listing(out)}
    if where == "save":
        real = tf.saved_model.save

        def half_save(module, path, signatures=None):
            os.makedirs(os.path.join(path, "variables"))
            with open(os.path.join(path, "saved_model.pb"), "wb") as f:
                f.write(b"\x08half")
            raise KeyboardInterrupt  # e.g. Ctrl-C mid-write

        monkeypatch.setattr(tf.saved_model, "save", half_save)
    else:
        real_rename = os.rename

        def rename(src, dst):
            if os.path.normpath(dst) == os.path.normpath(str(out)) and src.endswith("sm"):
                raise OSError(28, "No space left on device")
            return real_rename(src, dst)

        monkeypatch.setattr(os, "rename", rename)
    with pytest.raises((KeyboardInterrupt, OSError)):
        export.export_saved_model(loaded.model, loaded.vocab, loaded.image_size, str(out))
    monkeypatch.undo()
    assert {p: (out / p).read_bytes() for p in _listing(out)} == before
    assert [n for n in os.listdir(tmp_path) if n.startswith(".tmp")] == []
    fn = tf.saved_model.load(str(out)).signatures["predict_images"]
    from tests.conftest import png_bytes
    from tests.reliability_helpers import good_image
    assert fn(images=tf.constant([png_bytes(good_image())]))["labels"].shape[0] == 1


@pytest.mark.slow
def test_export_replaced_while_a_reader_loads_it(trained, tmp_path):
    """A reader loading in a loop while the export is replaced 3 times never sees a
    half-written SavedModel: each load either finds the folder absent for an instant
    (between the two renames) or loads a complete model."""
    import threading

    import tensorflow as tf

    from cnnrnn_tf.serving import export

    loaded, _ = trained
    out = tmp_path / "sm"
    export.export_saved_model(loaded.model, loaded.vocab, loaded.image_size, str(out))
    stop, errors, loads = threading.Event(), [], []

    def reader():
        while not stop.is_set():
            try:
                tf.saved_model.load(str(out)).signatures["predict_images"]
                loads.append(1)
            except (OSError, tf.errors.NotFoundError) as exc:
                if os.path.isdir(out) and os.path.isfile(out / "saved_model.pb") and \
                        "saved_model.pb" not in str(exc):
                    errors.append(exc)
            except Exception as exc:  # noqa: BLE001: a half-written model would land here
                errors.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for _ in range(3):
            export.export_saved_model(loaded.model, loaded.vocab, loaded.image_size, str(out))
    finally:
        stop.set()
        thread.join(120)
    assert not errors, errors[:3]
    assert loads
