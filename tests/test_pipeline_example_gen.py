"""The pipeline's ExampleGen: train/eval/test from each of the three data layouts.

The executor runs on its own (Beam DirectRunner, a few dozen tiny records), without
the rest of the pipeline; tests/test_pipeline.py runs it inside the whole pipeline.
"""
import collections
import glob
import json

import pytest

pytest.importorskip("tfx")

import tensorflow as tf  # noqa: E402
from cnnrnn_pipeline import example_gen  # noqa: E402

from cnnrnn_tf import schema  # noqa: E402
from cnnrnn_tf.errors import InputError  # noqa: E402
from cnnrnn_tf.data.split_hash import assign_split, split_fraction  # noqa: E402
from tests.conftest import synthetic_records  # noqa: E402

pytestmark = [pytest.mark.pipeline]


def _write(folder, n, seed, per_shard=None):
    records = synthetic_records(n, seed=seed)
    records = [r._replace(image_id=f"{folder.name}-{seed}-{i}") for i, r in enumerate(records)]
    schema.write_records(str(folder), records, records_per_shard=per_shard or n)


def _raw(pattern):
    """The serialized records of every GZIP shard matching ``pattern``, as bytes."""
    out = []
    for path in sorted(glob.glob(pattern)):
        out += [r.numpy() for r in tf.data.TFRecordDataset(path, compression_type="GZIP")]
    return out


def _run_example_gen(data, out):
    from tfx.types import artifact_utils, standard_artifacts, standard_component_specs

    from cnnrnn_pipeline.example_gen import Executor

    examples = standard_artifacts.Examples()
    examples.uri = str(out)
    executor = Executor(Executor.Context(
        beam_pipeline_args=["--direct_running_mode=in_memory", "--direct_num_workers=1"],
        tmp_dir=str(out) + "_tmp", unique_id="1"))
    executor.Do({}, {standard_component_specs.EXAMPLES_KEY: [examples]},
                {standard_component_specs.INPUT_BASE_KEY: str(data)})
    names = artifact_utils.decode_split_names(examples.split_names)
    splits = {name: _raw(f"{out}/Split-{name}/*.gz") for name in names}
    return splits, examples.get_json_value_custom_property("split_counts")


def _assert_partition(splits, inputs):
    """The splits are disjoint and together are the input, record for record, byte for byte."""
    everything = [r for records in splits.values() for r in records]
    assert collections.Counter(everything) == collections.Counter(inputs)
    sides = [set(records) for records in splits.values()]
    assert all(not (a & b) for i, a in enumerate(sides) for b in sides[i + 1:])


def test_train_val_test_folders_are_read_as_they_are(tmp_path):
    data = tmp_path / "data"
    _write(data / "train", 20, seed=1, per_shard=8)
    _write(data / "val", 6, seed=2)
    _write(data / "test", 5, seed=3)
    splits, counts = _run_example_gen(data, tmp_path / "out")
    assert list(splits) == ["train", "eval", "test"]
    for split, folder in (("train", "train"), ("eval", "val"), ("test", "test")):
        assert sorted(splits[split]) == sorted(_raw(f"{data}/{folder}/*.gz")), split
    assert counts == {"train": 20, "eval": 6, "test": 5}


def test_train_and_test_folders_get_eval_carved_out_of_train(tmp_path, caplog):
    data = tmp_path / "data"
    _write(data / "train", 60, seed=1, per_shard=25)
    _write(data / "test", 7, seed=3)
    splits, counts = _run_example_gen(data, tmp_path / "out")
    assert list(splits) == ["train", "eval", "test"]
    assert sorted(splits["test"]) == sorted(_raw(f"{data}/test/*.gz"))
    train = _raw(f"{data}/train/*.gz")
    _assert_partition({k: splits[k] for k in ("train", "eval")}, train)
    assert 1 <= len(splits["eval"]) <= 15 and counts["eval"] == len(splits["eval"])
    # The side of each record is the hash of its image/id, 1 in 10 to eval.
    expected = {r for r in train if assign_split(r, example_gen.CARVE_SHARES) == "eval"}
    assert set(splits["eval"]) == expected
    # ... which is the val that `cnnrnn data split --val-fraction 0.1` carves.
    from cnnrnn_tf.data import split_train_val

    split_train_val(str(data / "train"), str(tmp_path / "carved"), 0.1)
    assert sorted(splits["eval"]) == sorted(_raw(f"{tmp_path}/carved/val/*.gz"))
    # ... and the run says so, in one line.
    notes = [r.getMessage() for r in caplog.records if "carved out of train" in r.getMessage()]
    assert len(notes) == 1 and "no val/" in notes[0] and "\n" not in notes[0]


def test_one_folder_is_hash_split_8_1_1_by_the_stable_hash(tmp_path):
    data = tmp_path / "data"
    _write(data, 80, seed=4, per_shard=30)
    splits, counts = _run_example_gen(data, tmp_path / "out")
    assert list(splits) == ["train", "eval", "test"]
    records = _raw(f"{data}/*.gz")
    _assert_partition(splits, records)
    assert counts == {k: len(v) for k, v in splits.items()}
    assert counts["train"] > 3 * (counts["eval"] + counts["test"]) and min(counts.values()) >= 1
    # Each record's side is a function of the record alone: the same data, the same splits.
    shares = example_gen.SINGLE_SHARES
    assert {k: set(v) for k, v in splits.items()} == {
        k: {r for r in records if assign_split(r, shares) == k} for k in splits}


def test_a_split_left_empty_fails_the_run_in_one_line(tmp_path):
    data = tmp_path / "data"
    _write(data, 2, seed=5)
    with pytest.raises(InputError) as err:
        _run_example_gen(data, tmp_path / "out")
    assert "would be empty" in str(err.value) and "\n" not in str(err.value)


def test_layout_detection_and_its_one_line_errors(tmp_path):
    from cnnrnn_pipeline.example_gen import detect_layout

    with pytest.raises(InputError, match="does not exist"):
        detect_layout(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="neither train/ and test/"):
        detect_layout(str(tmp_path / "empty"))
    _write(tmp_path / "half" / "train", 3, seed=1)
    with pytest.raises(InputError, match="no test/ folder"):
        detect_layout(str(tmp_path / "half"))
    _write(tmp_path / "noval" / "val", 3, seed=1)
    _write(tmp_path / "noval" / "test", 3, seed=2)
    with pytest.raises(InputError, match="has val/, test/ but no train/ folder"):
        detect_layout(str(tmp_path / "noval"))
    (tmp_path / "emptytest" / "test").mkdir(parents=True)
    _write(tmp_path / "emptytest" / "train", 3, seed=1)
    with pytest.raises(InputError, match=r"emptytest/test: no \*.tfrecord.gz shards"):
        detect_layout(str(tmp_path / "emptytest"))


def test_layout_detection_reads_uris():
    from cnnrnn_pipeline.example_gen import detect_layout

    root = "ram://example_gen_layout/data"
    for folder in ("train", "val", "test"):
        schema.write_records(f"{root}/{folder}", synthetic_records(3, seed=1))
    layout = detect_layout(root)
    assert layout.name == "train-val-test"
    assert [s.files[0].startswith(f"{root}/{s.folder}/") for s in layout.sources] == [True] * 3
    tf.io.gfile.rmtree(f"{root}/val")
    assert detect_layout(root).name == "train-test"


def test_the_split_hash_follows_the_image_id_and_the_seed():
    a, b = synthetic_records(2, seed=7)
    one = schema.make_example(a.image, a.labels, "same-id").SerializeToString()
    other = schema.make_example(b.image, b.labels, "same-id").SerializeToString()
    assert one != other and split_fraction(one) == split_fraction(other)
    no_id = [schema.make_example(r.image, r.labels, "").SerializeToString()
             for r in synthetic_records(200, seed=8)]
    fractions = [split_fraction(r) for r in no_id]
    assert len(set(fractions)) == len(no_id) and all(0 <= f < 1 for f in fractions)
    assert fractions != [split_fraction(r, seed=1) for r in no_id]
    shares = example_gen.SINGLE_SHARES
    sides = collections.Counter(assign_split(r, shares) for r in no_id)
    assert 130 <= sides["train"] <= 190 and sides["eval"] >= 5 and sides["test"] >= 5
    assert json.dumps(sides, sort_keys=True) == json.dumps(
        collections.Counter(assign_split(r, shares) for r in no_id), sort_keys=True)
