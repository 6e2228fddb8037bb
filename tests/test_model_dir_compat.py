"""A MODEL_DIR written by 0.4.0 still loads, predicts the same and exports with today's code
(tests/fixtures/model_dir_0_4_0/README.md says how the fixture was made)."""
import json
import os

import pytest

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "model_dir_0_4_0")
IMAGES = os.path.join(FIXTURE, "images")


def _expected(name):
    with open(os.path.join(FIXTURE, name, "expected_predictions.json")) as f:
        return json.load(f)


@pytest.mark.parametrize("name", ["cnn_rnn", "bce"])
def test_0_4_0_model_dir_predicts_what_0_4_0_predicted(name):
    from cnnrnn_tf.model_dir import load_model_dir
    from cnnrnn_tf.serving.predictor import Predictor

    loaded = load_model_dir(os.path.join(FIXTURE, name))
    assert loaded.config.model == ("cnn-rnn" if name == "cnn_rnn" else "bce")
    expected = _expected(name)
    predictor = Predictor.from_model_dir(os.path.join(FIXTURE, name))
    got = list(predictor.predict_files([os.path.join(IMAGES, e["image"]) for e in expected]))
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert [x["label"] for x in g["labels"]] == [x["label"] for x in e["labels"]], e["image"]
        for gx, ex in zip(g["labels"], e["labels"]):
            assert gx["score"] == pytest.approx(ex["score"], abs=1e-5)


@pytest.mark.slow
def test_0_4_0_model_dir_exports_for_serving(tmp_path):
    import numpy as np
    import tensorflow as tf

    from cnnrnn_tf.cli import main

    out = str(tmp_path / "serving" / "1")
    assert main(["export", "--model", os.path.join(FIXTURE, "cnn_rnn"), "--out", out]) == 0
    loaded = tf.saved_model.load(out)
    expected = _expected("cnn_rnn")
    with open(os.path.join(IMAGES, expected[0]["image"]), "rb") as f:
        image = f.read()
    result = loaded.signatures["predict_images"](images=tf.constant([image]))
    labels = [x.decode() for x in np.asarray(result["labels"])[0] if x]
    assert labels == [x["label"] for x in expected[0]["labels"]]
