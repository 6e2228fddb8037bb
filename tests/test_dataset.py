"""tf.data input, label order, vocabulary and schema round trips."""
import numpy as np
import pytest
import tensorflow as tf

from cnnrnn_tf import schema
from cnnrnn_tf.inputs.dataset import make_dataset, scan_labels, sequence_targets
from cnnrnn_tf.errors import InputError
from cnnrnn_tf.vocabulary import LabelVocabulary, label_rank
from tests.conftest import png_bytes, synthetic_image


def test_vocabulary_is_frequency_ordered_ties_as_tft(tmp_path):
    vocab = LabelVocabulary.from_label_lists([["b", "a"], ["c", "a"], ["b", "a"], ["d"], ["c"]])
    assert vocab.labels == ("a", "c", "b", "d") and vocab.counts == (3, 2, 2, 1)
    vocab.save(str(tmp_path))
    assert LabelVocabulary.load(str(tmp_path)) == vocab
    grown = vocab.extend(["e", "a"])
    assert grown.labels[:4] == vocab.labels and grown.labels[4] == "e"
    with pytest.raises(InputError, match="unknown label 'zz'"):
        vocab.encode(["zz"])


def test_label_orders():
    vocab = LabelVocabulary(("a", "b", "c", "d"))
    assert list(label_rank(vocab, "frequent-first")) == [0, 1, 2, 3]
    assert list(label_rank(vocab, "rare-first")) == [3, 2, 1, 0]
    r1, r2 = label_rank(vocab, "random", seed=3), label_rank(vocab, "random", seed=3)
    assert sorted(r1) == [0, 1, 2, 3] and list(r1) == list(r2)
    with pytest.raises(InputError, match="--label-order"):
        label_rank(vocab, "alphabetical")


def test_sequence_targets_layout():
    inputs, targets = sequence_targets(tf.constant([3, 0], tf.int32), max_labels=3)
    assert list(inputs.numpy()) == [1, 5, 2, 0]       # START, l3+2, l0+2, END pad
    assert list(targets.numpy()) == [5, 2, 0, -1]     # l3, l0, END, ignored
    inputs, targets = sequence_targets(tf.constant([0, 1, 2, 3], tf.int32), max_labels=2)
    assert list(targets.numpy()) == [2, 3, 0]         # truncated to max_labels, END kept


def write(tmp_path, rows):
    recs = [schema.Record(png_bytes(synthetic_image(labels, seed=i)), labels, f"i{i}")
            for i, labels in enumerate(rows)]
    schema.write_records(str(tmp_path), recs)
    return str(tmp_path)


def test_make_dataset_orders_by_frequency_and_drops_unknown(tmp_path):
    data = write(tmp_path / "d", [["red"], ["green", "red"], ["blue", "green", "red"]])
    stats = scan_labels(data)
    assert stats.num_examples == 3 and stats.max_labels == 3
    vocab = LabelVocabulary(("red", "green"))  # "blue" unknown here
    ds = make_dataset(data, vocab, mode="sequence", image_size=16, batch_size=3, max_labels=3)
    (features, targets), = list(ds)
    assert features["images"].shape == (3, 16, 16, 3)
    assert float(tf.reduce_max(features["images"])) > 100  # raw pixels, not normalised
    np.testing.assert_array_equal(targets.numpy(),
                                  [[2, 0, -1, -1], [2, 3, 0, -1], [2, 3, 0, -1]])
    ds = make_dataset(data, vocab, mode="sequence", image_size=16, batch_size=3, max_labels=3,
                      label_order="rare-first")
    (_, targets), = list(ds)
    np.testing.assert_array_equal(targets.numpy()[2], [3, 2, 0, -1])
    ds = make_dataset(data, vocab, mode="multi_hot", image_size=16, batch_size=3)
    (_, y), = list(ds)
    np.testing.assert_array_equal(y.numpy(), [[1, 0], [1, 1], [1, 1]])


def test_scan_labels_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        scan_labels(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no \\*.tfrecord.gz shards"):
        scan_labels(str(tmp_path / "empty"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.tfrecord.gz").write_bytes(b"this is not gzip")
    with pytest.raises(InputError, match="x.tfrecord.gz: corrupt"):
        scan_labels(str(bad))
    nolabels = tmp_path / "nolabels"
    with schema.ShardWriter(str(nolabels)) as w:
        w.write_record(png_bytes(synthetic_image([])), [], "a")
    with pytest.raises(InputError, match="record 0: no 'image/labels'"):
        scan_labels(str(nolabels))


def test_shard_writer_is_atomic(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with schema.ShardWriter(str(out), records_per_shard=1) as w:
            w.write_record(png_bytes(synthetic_image(["red"])), ["red"])
            w.write_record(png_bytes(synthetic_image(["red"])), ["red"])
            raise RuntimeError("interrupted")
    assert list(out.iterdir()) == []
    with schema.ShardWriter(str(out), records_per_shard=1) as w:
        for _ in range(3):
            w.write_record(png_bytes(synthetic_image(["red"])), ["red", "red", " blue "])
    names = sorted(p.name for p in out.iterdir())
    assert names == [f"data-0000{i}-of-00003.tfrecord.gz" for i in range(3)]
    recs = list(schema.iter_records(str(out)))
    assert len(recs) == 3 and recs[0].labels == ["red", "blue"]
    with pytest.raises(InputError, match="already holds"):
        with schema.ShardWriter(str(out)) as w:
            pass


def test_make_example_rejects_bad_labels():
    with pytest.raises(InputError, match="empty label"):
        schema.make_example(b"x", ["ok", "  "])
    with pytest.raises(InputError, match="control character"):
        schema.make_example(b"x", ["a\nb"])
    with pytest.raises(InputError, match="image bytes are empty"):
        schema.make_example(b"", ["a"])


def test_early_stopping_patience_follows_the_schedule():
    from cnnrnn_tf.config import TrainConfig, early_stopping_patience

    assert early_stopping_patience(TrainConfig(), 8) == 4
    assert early_stopping_patience(TrainConfig(), 27) == 9
    assert early_stopping_patience(TrainConfig(early_stopping_patience=2), 27) == 2
    assert early_stopping_patience(TrainConfig(early_stopping=False), 27) is None
