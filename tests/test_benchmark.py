"""``cnnrnn benchmark`` on a tiny trained model."""
import json

import pytest

from cnnrnn_tf.cli.app import main

pytestmark = pytest.mark.slow

KEYS = ("encoder_ms_per_batch", "full_ms_per_batch", "decode_ms_per_batch", "images_per_second",
        "decode_ratio", "batch_size", "beam_size", "device", "tensorflow_version")


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from cnnrnn_tf import schema
    from cnnrnn_tf.config import TrainConfig
    from cnnrnn_tf.training.loop import train
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

    from cnnrnn_tf.evaluation.speed import python_loop_decode_function
    from cnnrnn_tf.model_dir import load_model_dir

    model = load_model_dir(tiny_model_dir).model
    images = tf.constant(np.random.RandomState(3).uniform(0, 255, (5, 32, 32, 3)), tf.float32)
    expected = model.decode(images, beam_size=1)["label_ids"].numpy()
    np.testing.assert_array_equal(python_loop_decode_function(model)(images), expected)


def _benchmark_script(name):
    """A script of benchmarks/ as a module (the folder is not a package)."""
    import importlib.util
    import os
    import sys

    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
    sys.path.insert(0, folder)  # attention.py imports shapes_csv beside it
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", os.path.join(folder, name + ".py"))
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(folder)
    return module


def test_shapes_benchmark_splits_are_separate_draws(tmp_path):
    """train, val and test come from streams of their own for one seed (before, any split
    but train used the test stream, so a val split of the same seed repeated the test
    scenes); train and test keep the streams they had."""
    import csv

    shapes = _benchmark_script("shapes_csv")
    rows = {}
    for split in ("train", "val", "test"):
        with open(shapes.write_split(str(tmp_path), split, 12, seed=0, size=24)) as f:
            rows[split] = [tuple(r) for r in csv.reader(f)][1:]
        images = {(tmp_path / path).read_bytes() for path, _ in rows[split]}
        rows[split + " images"] = images
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not rows[a + " images"] & rows[b + " images"], (a, b)
        assert [labels for _, labels in rows[a]] != [labels for _, labels in rows[b]], (a, b)
    rng = shapes.np.random.default_rng([0, 1])  # the test stream of 0.4.0
    assert rows["test"][0][1] == "|".join(shapes.sample_labels(rng))


def test_attention_benchmark_writes_each_data_set_in_its_own_block(tmp_path):
    attention = _benchmark_script("attention")
    path = tmp_path / "BENCHMARKS.md"
    path.write_text(f"# B\n\n{attention.BEGIN}\n\nto be re-run\n\n{attention.END}\n\nold table\n")
    attention.write_sections(str(path), {"photo": "PHOTO 1"})
    attention.write_sections(str(path), {"shapes": "SHAPES"})
    attention.write_sections(str(path), {"photo": "PHOTO 2"})
    text = path.read_text()
    assert "PHOTO 2" in text and "SHAPES" in text and "PHOTO 1" not in text
    assert text.index(attention.BEGIN) < text.index("PHOTO 2") < text.index("SHAPES") \
        < text.index(attention.END) < text.index("old table")
