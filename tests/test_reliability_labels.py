"""Bad label data: empty lists, duplicates, whitespace, very long or non-UTF-8 names,
labels the model does not know at evaluation time."""
import json
import os

import pytest
import tensorflow as tf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnnrnn_tf import schema
from cnnrnn_tf.inputs.dataset import scan_labels
from cnnrnn_tf.errors import InputError
from cnnrnn_tf.vocabulary import LabelVocabulary
from tests.conftest import png_bytes
from tests.reliability_helpers import (assert_cli_error, build_tiny_model_dir, good_image,
                                       run_main)

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
IMAGE = png_bytes(good_image())


def raw_example(labels, image=IMAGE):
    """A tf.Example with arbitrary label bytes (bypasses make_example's checks)."""
    feature = {schema.IMAGE_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[image])),
               schema.LABELS_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=labels))}
    return tf.train.Example(features=tf.train.Features(feature=feature))


def write_raw(folder, examples):
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"data-00000-of-00001{schema.SHARD_SUFFIX}")
    with tf.io.TFRecordWriter(path, options=schema.COMPRESSION) as w:
        for ex in examples:
            w.write(ex.SerializeToString())
    return path


# ------------------------------------------------------------------ label names
@settings(max_examples=60, **SETTINGS)
@given(st.text(max_size=300))
def test_validate_label_accepts_or_refuses_in_one_line(name):
    try:
        clean = schema.validate_label(name, "row 1")
    except InputError as exc:
        assert str(exc).startswith("row 1: ") and "\n" not in str(exc)
        return
    assert clean == name.strip() and clean
    assert len(clean.encode("utf-8")) <= 256
    assert not any(ch in clean for ch in "\n\r\t\x00")


@pytest.mark.parametrize("labels, expected", [
    (["a", "a", "b"], ["a", "b"]),             # duplicates removed, order kept
    ([" a ", "a"], ["a"]),                     # whitespace stripped before deduplication
])
def test_make_example_cleans_labels(labels, expected):
    record = schema.parse_example_proto(schema.make_example(IMAGE, labels).SerializeToString())
    assert record.labels == expected


@pytest.mark.parametrize("labels, needle", [
    (["   "], "empty label name"),
    (["x" * 257], "longer than 256 bytes"),
    (["é" * 129], "longer than 256 bytes"),  # 258 bytes in UTF-8
    (["a\tb"], "control character"),
])
def test_make_example_refuses_bad_names(labels, needle):
    with pytest.raises(InputError, match=needle):
        schema.make_example(IMAGE, labels, "img7")


# ------------------------------------------------------------------ labels in shards
def test_empty_label_list_in_training_data(tmp_path):
    write_raw(tmp_path / "d", [raw_example([b"a"]), raw_example([])])
    with pytest.raises(InputError, match=r"record 1: no 'image/labels'"):
        scan_labels(str(tmp_path / "d"))
    assert scan_labels(str(tmp_path / "d"), require_labels=False).num_examples == 2


@pytest.mark.parametrize("bad", [b"\xff\xfe", b"ok\x80", b"\xc3"])
def test_non_utf8_label_bytes_in_a_shard(tmp_path, bad):
    path = write_raw(tmp_path / "d", [raw_example([b"a"]), raw_example([b"b", bad])])
    with pytest.raises(InputError) as exc:
        scan_labels(str(tmp_path / "d"))
    assert str(exc.value) == f"{path} record 1: a value of 'image/labels' is not UTF-8"
    with pytest.raises(InputError, match="not UTF-8"):
        list(schema.iter_records(str(tmp_path / "d")))


def test_duplicate_labels_in_a_shard_count_once(tmp_path):
    write_raw(tmp_path / "d", [raw_example([b"a", b"a", b"b"]), raw_example([b"a"])])
    stats = scan_labels(str(tmp_path / "d"))
    assert stats.label_lists == [["a", "b"], ["a"]] and stats.max_labels == 2
    assert stats.vocabulary().counts == (2, 1)


def test_vocabulary_refuses_duplicates_and_empty():
    with pytest.raises(InputError, match="duplicate"):
        LabelVocabulary(("a", "a"))
    with pytest.raises(InputError, match="no labels"):
        LabelVocabulary.from_label_lists([[], []])


@pytest.mark.parametrize("content, needle", [
    ("{", "not valid JSON"),
    ('{"counts": []}', "malformed"),
    ('{"labels": ["a", "a"]}', "duplicate"),
])
def test_bad_vocabulary_file(tmp_path, content, needle):
    (tmp_path / "vocabulary.json").write_text(content)
    with pytest.raises(InputError, match=needle):
        LabelVocabulary.load(str(tmp_path))


# ------------------------------------------------------------------ evaluation
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_model_dir(tmp_path_factory.mktemp("labels"))


@pytest.mark.slow
def test_evaluate_on_data_with_only_unknown_labels(model_dir, tmp_path, capfd):
    """Every label unknown to the model: a clear error, not NaN metrics or a crash."""
    write_raw(tmp_path / "d", [raw_example([b"zebra"]), raw_example([b"giraffe", b"lion"])])
    code, out, err = run_main(["evaluate", "--model", model_dir, "--data", tmp_path / "d"], capfd)
    line = assert_cli_error(code, err, str(tmp_path / "d"))
    assert code == 2 and "unknown" in line and out == ""


@pytest.mark.slow
def test_evaluate_with_some_unknown_labels_reports_them(model_dir, tmp_path, capfd):
    write_raw(tmp_path / "d", [raw_example([b"red", b"zebra"]), raw_example([b"blue"])])
    code, out, err = run_main(["evaluate", "--model", model_dir, "--data", tmp_path / "d",
                               "--json"], capfd)
    assert code == 0, err
    assert json.loads(out)["unknown_labels"] == ["zebra"]


@pytest.mark.slow
def test_evaluate_with_non_utf8_labels(model_dir, tmp_path, capfd):
    path = write_raw(tmp_path / "d", [raw_example([b"red"]), raw_example([b"\xff"])])
    code, _, err = run_main(["evaluate", "--model", model_dir, "--data", tmp_path / "d"], capfd)
    assert code == 2
    assert_cli_error(code, err, f"{path} record 1")


def test_more_labels_than_the_cap(tmp_path):
    """An image with 20 labels: the decoded path is capped at MAX_LABELS_CAP (16) labels;
    training keeps the first 16 in the label order (documented in RELIABILITY.md)."""
    import numpy as np

    from cnnrnn_tf.inputs.dataset import MAX_LABELS_CAP, choose_max_labels, sequence_targets

    names = [f"l{i:02d}".encode() for i in range(20)]
    write_raw(tmp_path / "d", [raw_example(names), raw_example([b"l00"])])
    stats = scan_labels(str(tmp_path / "d"))
    assert stats.max_labels == 20 and choose_max_labels(stats) == MAX_LABELS_CAP == 16
    inputs, targets = sequence_targets(tf.range(20), MAX_LABELS_CAP)
    assert inputs.shape == targets.shape == (17,)
    assert np.count_nonzero(targets.numpy() >= 2) == 16
