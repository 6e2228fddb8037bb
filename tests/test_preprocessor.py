"""One preprocessor for training and serving: bit-identical model inputs at every source size."""
import io

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from cnnrnn_tf import schema
from cnnrnn_tf.inputs.preprocessor import Preprocessor, multi_hot
from tests.conftest import synthetic_image

SIZES = ((20, 20), (47, 33), (100, 100), (300, 180), (64, 640))


def encoded(array, fmt):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


def images_of_many_sizes(seed=0):
    rng = np.random.RandomState(seed)
    out = []
    for i, (w, h) in enumerate(SIZES):
        base = synthetic_image(["red", "blue"][: 1 + i % 2], size=64, seed=i)
        array = np.asarray(Image.fromarray(base).resize((w, h), Image.BILINEAR))
        array = np.clip(array.astype(int) + rng.randint(-9, 10, array.shape), 0, 255)
        for fmt in ("PNG", "JPEG"):
            out.append(encoded(array.astype(np.uint8), fmt))
    return out


def test_tf_data_signatures_and_predictor_see_identical_pixels(tmp_path):
    from cnnrnn_tf.inputs.dataset import make_dataset
    from cnnrnn_tf.serving.export import ServingModule
    from cnnrnn_tf.serving.predictor import decode_image_bytes
    from cnnrnn_tf.vocabulary import LabelVocabulary

    vocab = LabelVocabulary(("red", "blue"), (1, 1))
    blobs = images_of_many_sizes()
    schema.write_records(str(tmp_path / "d"),
                         [schema.Record(b, ["red"], f"i{k}") for k, b in enumerate(blobs)])
    ds = make_dataset(str(tmp_path / "d"), vocab, mode="eval", image_size=32, batch_size=64,
                      cache=False)
    from_data = next(iter(ds))[0]["images"].numpy()
    assert from_data.dtype == np.float32
    np.testing.assert_array_equal(from_data, np.round(from_data))  # uint8 values

    module = ServingModule(keras.Sequential([keras.layers.Flatten()]), vocab, 32, beam_size=1)
    examples = tf.constant([schema.make_example(b, ["red"]).SerializeToString() for b in blobs])
    from_examples = module._images_from_examples(examples).numpy()
    from_bytes = module.preprocessor.decode_images(tf.constant(blobs)).numpy()
    from_predictor = np.stack([decode_image_bytes(b, 32) for b in blobs])
    np.testing.assert_array_equal(from_data, from_examples)
    np.testing.assert_array_equal(from_data, from_bytes)
    np.testing.assert_array_equal(from_data, from_predictor)


def test_large_jpeg_decodes_at_a_reduced_scale_consistently():
    big = encoded(np.tile(synthetic_image(["red"], size=64), (16, 16, 1)), "JPEG")  # 1024 px
    pre = Preprocessor(32)
    one = pre.decode_image(tf.constant(big)).numpy()
    batch = pre.decode_images(tf.constant([big, big])).numpy()
    np.testing.assert_array_equal(batch[0], one.astype(np.float32))
    # Reduced-scale DCT decoding stays close to a full decode + resize.
    full = tf.image.resize(tf.io.decode_jpeg(big, channels=3), [32, 32], antialias=True)
    assert np.abs(one.astype(np.float32) - full.numpy()).mean() < 4.0


def test_labels_order_sequence_and_whole_set():
    pre = Preprocessor(32, ("a", "b", "c", "d"), label_rank=[3, 2, 1, 0], max_labels=2)
    ids = pre.label_ids(tf.constant(["a", "zz", "c", "a", "d"])).numpy()
    assert ids.tolist() == [3, 2, 0]  # unknown dropped, duplicate dropped, rank order
    inputs, targets = pre.sequence(tf.constant(ids))
    assert inputs.numpy().tolist() == [1, 5, 4] and targets.numpy().tolist() == [5, 4, 0]
    assert pre.multi_hot(tf.constant(ids)).numpy().tolist() == [1, 0, 1, 1]  # not cut at 2
    assert multi_hot(tf.constant([[0, -1], [2, 2]]), 3).numpy().tolist() == [[1, 0, 0], [0, 0, 1]]
    again = Preprocessor.from_config(pre.get_config())
    assert again.label_rank == pre.label_rank and again.labels == pre.labels


@pytest.mark.slow
def test_evaluate_equals_the_saved_model_on_mixed_size_jpegs(tmp_path):
    """`cnnrnn evaluate` (tf.data + the Keras model) and the exported signatures agree."""
    from cnnrnn_tf.config import TrainConfig
    from cnnrnn_tf.evaluation.evaluate import evaluate_saved_model
    from cnnrnn_tf.metrics import multilabel_metrics
    from cnnrnn_tf.training.loop import train
    from tests.conftest import synthetic_records

    def jpeg_records(n, seed):
        rng = np.random.RandomState(seed)
        out = []
        for rec in synthetic_records(n, seed=seed):
            w, h = (int(v) for v in rng.randint(24, 160, size=2))
            array = np.asarray(Image.open(io.BytesIO(rec.image)).convert("RGB").resize((w, h)))
            out.append(schema.Record(encoded(array, "JPEG"), rec.labels, rec.image_id))
        return out

    schema.write_records(str(tmp_path / "train"), jpeg_records(48, 1))
    schema.write_records(str(tmp_path / "test"), jpeg_records(24, 2))
    result = train(TrainConfig(image_size=32, epochs=2, batch_size=16), str(tmp_path / "train"),
                   str(tmp_path / "test"), str(tmp_path / "m"), verbose=0)
    served = evaluate_saved_model(str(tmp_path / "m" / "saved_model"), str(tmp_path / "test"))
    for key in ("mAP", "CF1", "OF1"):
        assert served[key] == pytest.approx(result.metrics[key], abs=5e-4), key
    # label_scores and serving_default directly, scored with the library's metrics.
    sm = tf.saved_model.load(str(tmp_path / "m" / "saved_model"))
    recs = list(schema.iter_records(str(tmp_path / "test")))
    ex = tf.constant([schema.make_example(r.image, r.labels).SerializeToString() for r in recs])
    probs = sm.signatures["label_scores"](examples=ex)["probabilities"].numpy()
    labels = sm.signatures["serving_default"](examples=ex)["labels"].numpy()
    names = list(result.vocab.labels)
    y_true = result.vocab.multi_hot([r.labels for r in recs]).astype(np.int32)
    y_pred = result.vocab.multi_hot([[v.decode() for v in row if v] for row in labels])
    direct = multilabel_metrics(y_true, y_pred.astype(np.int32), probs, label_names=names)
    assert direct["mAP"] == pytest.approx(result.metrics["mAP"], abs=5e-4)
    assert direct["OF1"] == pytest.approx(result.metrics["OF1"], abs=2e-3)


MEMORY_SCRIPT = r"""
import io, resource, sys
import numpy as np, tensorflow as tf
from PIL import Image
from cnnrnn_tf.inputs.images import decode_images
def png(side):
    buf = io.BytesIO()
    Image.fromarray(np.full((side, side, 3), 90, np.uint8)).save(buf, "PNG")
    return buf.getvalue()
side = int(sys.argv[1])
batch = tf.constant([png(side)] * 4)
fn = tf.function(lambda x: decode_images(x, 64))
fn(tf.constant([png(64)]))  # trace and warm up first
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    out = fn(batch).numpy()
    print("ok", out.shape)
except tf.errors.InvalidArgumentError as exc:
    print("refused", exc.message.splitlines()[0])
print("growth_mb", (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024)
"""


@pytest.mark.slow
@pytest.mark.parametrize("side,bound_mb", [(4096, 400), (8192, 64)])
def test_batch_of_large_pngs_has_bounded_decode_memory(side, bound_mb):
    """Four 4096 x 4096 PNGs (16 MP each, the cap) grow peak memory by well under 400 MB
    (0.2.0: about 4 x 4 x 48 MB float copies); four 8192 x 8192 are refused from the header."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(side)], capture_output=True,
                          text=True, timeout=300, env=dict(__import__("os").environ,
                                                           TF_CPP_MIN_LOG_LEVEL="3"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in proc.stdout.strip().splitlines())
    assert ("ok" in lines) == (side == 4096), proc.stdout
    if side == 8192:
        assert "image too large" in lines["refused"]
    assert float(lines["growth_mb"]) < bound_mb, proc.stdout
