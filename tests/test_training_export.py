"""Component tests: train on tiny data -> MODEL_DIR -> SavedModel -> signatures."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from cnnrnn_tf import schema
from cnnrnn_tf.config import TrainConfig
from cnnrnn_tf.evaluation.evaluate import predict_dataset
from cnnrnn_tf.model_dir import load_model_dir
from cnnrnn_tf.training.loop import train

pytestmark = pytest.mark.slow

TINY = dict(image_size=32, batch_size=16, epochs=2, lstm_units=32, embed_dim=16, beam_size=2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from tests.conftest import synthetic_records

    root = tmp_path_factory.mktemp("trained")
    schema.write_records(str(root / "train"), synthetic_records(64, seed=1), records_per_shard=32)
    schema.write_records(str(root / "test"), synthetic_records(24, seed=2))
    out = str(root / "model")
    result = train(TrainConfig(**TINY), str(root / "train"), str(root / "test"), out, verbose=0)
    return root, out, result


def test_model_dir_contents_and_metrics(trained):
    root, out, result = trained
    for name in ("model.keras", "vocabulary.json", "config.json", "metrics.json",
                 "history.json", "saved_model/saved_model.pb", "saved_model/assets/vocabulary.txt"):
        assert os.path.exists(os.path.join(out, name)), name
    assert not os.path.exists(os.path.join(out, "backup"))
    metrics = json.load(open(os.path.join(out, "metrics.json")))
    for key in ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["num_images"] == 24
    # Without a test split the numbers are the validation split's, and say so.
    assert metrics["split"] == "eval" and metrics["data"]["test"] is None
    assert metrics["data"]["eval"] == str(root / "test")
    assert metrics["validation"]["OF1"] == metrics["OF1"] == result.validation_metrics["OF1"]
    assert result.metrics == metrics
    info = json.load(open(os.path.join(out, "config.json")))
    assert info["train_config"]["image_size"] == 32 and info["max_labels"] == 4
    assert len(result.history["loss"]) == 2
    # early stopping / checkpoint selection watch the decoded validation sets (--monitor)
    history = json.load(open(os.path.join(out, "history.json")))
    for key in ("val_f1", "val_map", "val_CF1", "val_OF1"):
        assert len(history[key]) == 2 and all(0.0 <= v <= 1.0 for v in history[key]), key


def test_reload_gives_identical_predictions(trained):
    root, out, result = trained
    loaded = load_model_dir(out)
    a = predict_dataset(result.model, result.vocab, str(root / "test"), 32)
    b = predict_dataset(loaded.model, loaded.vocab, str(root / "test"), 32)
    np.testing.assert_array_equal(a.label_ids, b.label_ids)
    np.testing.assert_array_equal(a.y_score, b.y_score)


def test_saved_model_signatures_match_keras(trained):
    root, out, result = trained
    sm = tf.saved_model.load(os.path.join(out, "saved_model"))
    assert {"serving_default", "predict_images", "label_scores"} <= set(sm.signatures)
    records = list(schema.iter_records(str(root / "test")))
    serialized = tf.constant([schema.make_example(r.image, r.labels).SerializeToString()
                              for r in records])
    outs = sm.signatures["serving_default"](examples=serialized)
    assert set(outs) == {"labels", "scores", "label_count"}
    assert outs["labels"].dtype == tf.string and outs["label_count"].dtype == tf.int32
    keras_preds = predict_dataset(result.model, result.vocab, str(root / "test"), 32)
    vocab = result.vocab.labels
    for row, (labels, count) in enumerate(zip(outs["labels"].numpy(), outs["label_count"].numpy())):
        got = [l.decode() for l in labels[:count]]
        want = [vocab[i] for i in keras_preds.label_ids[row] if i >= 0]
        assert got == want
        assert all(l == b"" for l in labels[count:])
    by_bytes = sm.signatures["predict_images"](images=tf.constant([r.image for r in records]))
    np.testing.assert_array_equal(by_bytes["labels"].numpy(), outs["labels"].numpy())
    np.testing.assert_allclose(by_bytes["scores"].numpy(), outs["scores"].numpy(), atol=1e-5)
    probs = sm.signatures["label_scores"](examples=serialized)["probabilities"].numpy()
    assert probs.shape == (len(records), len(vocab))
    np.testing.assert_allclose(probs, keras_preds.y_score, atol=1e-5)
    empty = sm.signatures["predict_images"](images=tf.constant([], tf.string))
    assert empty["labels"].shape[0] == 0
    with pytest.raises(tf.errors.InvalidArgumentError):
        sm.signatures["predict_images"](images=tf.constant([b"not an image"]))


def test_bce_baseline_trains_and_exports(tmp_path, tiny_data):
    """... with the whole training recipe on: crop, flip, colour, EMA, label smoothing,
    selection on the decoded (calibrated) validation F1."""
    out = str(tmp_path / "bce")
    result = train(TrainConfig(model="bce", augment=True, crop_scale=0.6, hflip=True, ema=True,
                               label_smoothing=0.1, **TINY), str(tiny_data / "train"),
                   str(tiny_data / "test"), out, verbose=0)
    assert result.model.optimizer.use_ema and "val_f1" in result.history
    sm = tf.saved_model.load(os.path.join(out, "saved_model"))
    rec = next(schema.iter_records(str(tiny_data / "test")))
    outs = sm.signatures["predict_images"](images=tf.constant([rec.image]))
    assert outs["labels"].shape == (1, 4)
    assert 0.0 <= result.metrics["OF1"] <= 1.0


def test_training_refuses_a_finished_model_dir(trained, tmp_path):
    from cnnrnn_tf.errors import InputError

    root, out, _ = trained
    with pytest.raises(InputError, match="already holds a trained model"):
        train(TrainConfig(**TINY), str(root / "train"), str(root / "test"), out, verbose=0)


def test_model_saved_by_a_newer_keras_loads_through_the_weights(trained, tmp_path):
    """A newer Keras can write config keys an older one rejects (Keras 3.15 adds
    ``input_axes`` to initializer configs; 3.12 refuses it). Simulated with a key
    that no Keras version knows; the weights must still load."""
    import shutil
    import zipfile

    root, out, result = trained
    copy = tmp_path / "model"
    shutil.copytree(out, copy)
    archive = copy / "model.keras"
    with zipfile.ZipFile(archive) as z:
        files = {n: z.read(n) for n in z.namelist()}
    config = json.loads(files["config.json"])
    text = json.dumps(config).replace('"class_name": "HeNormal", "config": {',
                                      '"class_name": "HeNormal", "config": {"future_option": -2, ')
    assert text != json.dumps(config)  # the small CNN does use HeNormal
    files["config.json"] = text.encode()
    with zipfile.ZipFile(archive, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    import keras

    with pytest.raises(Exception):  # Keras itself refuses the archive ...
        keras.saving.load_model(str(archive))
    loaded = load_model_dir(str(copy))  # ... the MODEL_DIR loader rebuilds and loads weights
    a = predict_dataset(result.model, result.vocab, str(root / "test"), 32)
    b = predict_dataset(loaded.model, loaded.vocab, str(root / "test"), 32)
    np.testing.assert_array_equal(a.label_ids, b.label_ids)
    np.testing.assert_allclose(a.y_score, b.y_score, atol=1e-6)


def test_attention_model_trains_exports_predicts_and_reports(tmp_path, tiny_data, capsys,
                                                             trained):
    """--decoder attention end to end: MODEL_DIR, SavedModel parity (serving_default and
    the predict_attention signature), `cnnrnn predict --json --attention`, and a report
    with attention plots."""
    from cnnrnn_tf.cli.app import main

    out = str(tmp_path / "attention")
    result = train(TrainConfig(decoder="attention", attention_dim=8, **TINY),
                   str(tiny_data / "train"), str(tiny_data / "test"), out, verbose=0)
    loaded = load_model_dir(out)
    assert loaded.model.attends and loaded.config.decoder == "attention"
    records = list(schema.iter_records(str(tiny_data / "test")))[:6]
    images = tf.constant([r.image for r in records])
    sm = tf.saved_model.load(os.path.join(out, "saved_model"))
    served = sm.signatures["predict_attention"](images=images)
    plain = sm.signatures["predict_images"](images=images)
    np.testing.assert_array_equal(served["labels"].numpy(), plain["labels"].numpy())
    keras_preds = predict_dataset(result.model, result.vocab, str(tiny_data / "test"), 32)
    vocab = result.vocab.labels
    for row, (labels, count) in enumerate(zip(plain["labels"].numpy(),
                                              plain["label_count"].numpy())):
        assert [l.decode() for l in labels[:count]] == [
            vocab[i] for i in keras_preds.label_ids[row] if i >= 0]
    maps = served["attention"].numpy()
    grid = tuple(loaded.model.encoder.output.shape[1:3])
    assert maps.shape == (6, loaded.model.output_length) + grid
    counts = served["label_count"].numpy()
    for row, count in enumerate(counts):
        np.testing.assert_allclose(maps[row, :count].sum(axis=(1, 2)), 1.0, rtol=1e-4)
        assert not maps[row, count:].any()
    empty = sm.signatures["predict_attention"](images=tf.constant([], tf.string))
    assert empty["attention"].shape[0] == 0

    image_file = tmp_path / "a.png"
    image_file.write_bytes(records[0].image)
    assert main(["predict", "--model", out, "--json", "--attention", str(image_file)]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(line["labels"]) == counts[0]
    for j, item in enumerate(line["labels"]):
        assert np.asarray(item["attention"]).shape == grid
        np.testing.assert_allclose(item["attention"], maps[0, j], atol=1e-4)

    report = tmp_path / "report"
    assert main(["report", "--model", out, "--data", str(tiny_data / "test"),
                 "--out", str(report)]) == 0
    assert (report / "attention.png").stat().st_size > 1000
    assert "attention.png" in (report / "report.md").read_text()

    # A global-decoder model has no maps: one clear line, exit code 2.
    assert main(["predict", "--model", trained[1], "--attention", str(image_file)]) == 2
    assert "--attention" in capsys.readouterr().err
