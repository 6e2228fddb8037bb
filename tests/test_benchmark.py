"""``cnnrnn benchmark`` on a tiny trained model."""
import json

import pytest

from cnnrnn_tf.cli import main

pytestmark = pytest.mark.slow

KEYS = ("encoder_ms_per_batch", "full_ms_per_batch", "decode_ms_per_batch", "images_per_second",
        "decode_ratio", "batch_size", "beam_size", "device", "tensorflow_version")


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from cnnrnn_tf import schema
    from cnnrnn_tf.config import TrainConfig
    from cnnrnn_tf.training import train
    from tests.conftest import synthetic_records

    root = tmp_path_factory.mktemp("bench")
    schema.write_records(str(root / "train"), synthetic_records(32, seed=1))
    schema.write_records(str(root / "test"), synthetic_records(8, seed=2))
    out = str(root / "model")
    train(TrainConfig(image_size=32, batch_size=16, epochs=1, lstm_units=16, embed_dim=8),
          str(root / "train"), str(root / "test"), out, export=False, evaluate_after=False,
          verbose=0)
    return out


def test_benchmark_json_keys_and_values(tiny_model_dir, capsys):
    rc = main(["benchmark", "--model", tiny_model_dir, "--batch-size", "2", "--beam-size", "3",
               "--repeats", "2", "--warmup", "1", "--python-loop", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in KEYS:
        assert key in out, key
    assert out["batch_size"] == 2 and out["beam_size"] == 3
    assert 0 < out["encoder_ms_per_batch"] < 60_000
    # On a shared machine two calls are too few to order encoder and full reliably.
    assert 0 < out["full_ms_per_batch"] < 60_000
    assert out["decode_ms_per_batch"] == pytest.approx(
        out["full_ms_per_batch"] - out["encoder_ms_per_batch"], abs=1e-2)
    assert out["images_per_second"] == pytest.approx(2000.0 / out["full_ms_per_batch"], rel=1e-2)
    assert out["python_loop_ms_per_batch"] > 0 and out["full_beam1_ms_per_batch"] > 0


def test_benchmark_table_and_bad_model_dir(tiny_model_dir, tmp_path, capsys):
    assert main(["benchmark", "--model", tiny_model_dir, "--batch-size", "2",
                 "--repeats", "2", "--warmup", "1"]) == 0
    text = capsys.readouterr().out
    assert "encoder ms/batch" in text and "full ms/batch" in text
    assert main(["benchmark", "--model", str(tmp_path / "missing")]) != 0
    assert "error:" in capsys.readouterr().err


def test_python_loop_decode_matches_in_graph_greedy(tiny_model_dir):
    import numpy as np
    import tensorflow as tf

    from cnnrnn_tf.benchmark import python_loop_decode_function
    from cnnrnn_tf.model_dir import load_model_dir

    model = load_model_dir(tiny_model_dir).model
    images = tf.constant(np.random.RandomState(3).uniform(0, 255, (5, 32, 32, 3)), tf.float32)
    expected = model.decode(images, beam_size=1)["label_ids"].numpy()
    np.testing.assert_array_equal(python_loop_decode_function(model)(images), expected)
