"""Tests of ``cnnrnn data split`` (cnnrnn_tf.data.split): a val split carved from a train folder."""
import gzip
import hashlib
import json
import logging
import os
import uuid
from collections import Counter

import pytest
import tensorflow as tf

from cnnrnn_tf.data import split_train_val, val_point
from cnnrnn_tf.errors import InputError
from cnnrnn_tf.schema import Record, iter_records, list_shards, make_example, write_records

from tests.conftest import png_bytes, synthetic_image, synthetic_records
from tests.reliability_helpers import assert_cli_error, run_main


def _raw(folder):
    """Every record's serialized bytes, in shard order (read independently of the module)."""
    return [r.numpy() for path in list_shards(str(folder))
            for r in tf.data.TFRecordDataset(path, compression_type="GZIP")]


def _files(folder):
    with_bytes = {}
    for name in sorted(tf.io.gfile.listdir(str(folder))):
        with tf.io.gfile.GFile(f"{folder}/{name}", "rb") as f:
            with_bytes[name] = f.read()
    return with_bytes


@pytest.fixture
def data(tmp_path):
    """40 records with ids in 3 shards."""
    folder = tmp_path / "in"
    write_records(str(folder), synthetic_records(40, seed=1), records_per_shard=16)
    return folder


def test_split_is_disjoint_covering_byte_identical_and_repeatable(data, tmp_path):
    summary = split_train_val(str(data), str(tmp_path / "a"), 0.25, seed=3)
    source = _raw(data)
    train, val = _raw(tmp_path / "a" / "train"), _raw(tmp_path / "a" / "val")
    # Together the input, byte for byte; no record on both sides; input order kept.
    assert Counter(train) + Counter(val) == Counter(source)
    assert not set(train) & set(val)
    assert train == [r for r in source if r in set(train)]
    assert 0 < len(val) < len(source) and summary["val"].written == len(val)
    assert summary["train"].written == len(train)
    # The same on a second run, whatever the input's shard layout.
    split_train_val(str(data), str(tmp_path / "b"), 0.25, seed=3)
    for side in ("train", "val"):
        assert _files(tmp_path / "a" / side) == _files(tmp_path / "b" / side)
    write_records(str(tmp_path / "reshard"), synthetic_records(40, seed=1), records_per_shard=7)
    split_train_val(str(tmp_path / "reshard"), str(tmp_path / "c"), 0.25, seed=3)
    assert _raw(tmp_path / "c" / "val") == val
    # Another seed, another split.
    split_train_val(str(data), str(tmp_path / "d"), 0.25, seed=4)
    assert set(_raw(tmp_path / "d" / "val")) != set(val)
    # The side is the documented hash of image/id: sha256(seed as 8 bytes big-endian + id).
    for record in iter_records(str(tmp_path / "a" / "val")):
        digest = hashlib.sha256((3).to_bytes(8, "big") + record.image_id.encode()).digest()
        assert int.from_bytes(digest[:8], "big") < 0.25 * 2 ** 64


def test_label_counts_json(data, tmp_path):
    summary = split_train_val(str(data), str(tmp_path / "out"), 0.3)
    for side in ("train", "val"):
        folder = tmp_path / "out" / side
        records = list(iter_records(str(folder)))
        counts = Counter(label for r in records for label in set(r.labels))
        written = json.loads((folder / "label_counts.json").read_text())
        assert written == {"num_examples": len(records), "label_counts": dict(sorted(counts.items())),
                           "shards": sorted(os.listdir(folder))[1:]}
        assert written["shards"] == [f"{side}-00000-of-00001.tfrecord.gz"]
        assert summary[side].labels == dict(counts)


def test_val_point_is_uniform_and_pinned():
    points = [val_point(f"id-{i}".encode(), seed=7) for i in range(20000)]
    assert all(0 <= p < 1 for p in points)
    assert abs(sum(p < 0.3 for p in points) / len(points) - 0.3) < 0.015
    # Pinned value: the split must not change between releases or processes.
    digest = hashlib.sha256(b"\x00" * 8 + b"img0").digest()
    assert val_point(b"img0") == int.from_bytes(digest[:8], "big") / 2 ** 64


@pytest.mark.parametrize("fraction", [0, 1, 1.5, -0.1, float("nan"), "0.5", True])
def test_fraction_outside_zero_one_is_refused(data, tmp_path, fraction):
    with pytest.raises(InputError, match="--val-fraction"):
        split_train_val(str(data), str(tmp_path / "out"), fraction)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text", ["0", "1", "1.5", "x"])
def test_cli_refuses_fraction(data, tmp_path, capfd, text):
    code, out, err = run_main(["data", "split", "--data", data, "--out", tmp_path / "out",
                               "--val-fraction", text], capfd)
    assert code == 2 and out == ""
    assert_cli_error(code, err, "--val-fraction", argparse_ok=True)
    assert not (tmp_path / "out").exists()


def test_a_side_left_empty_is_refused_and_nothing_written(tmp_path, capfd):
    write_records(str(tmp_path / "three"), synthetic_records(3))
    points = [val_point(r.image_id.encode()) for r in synthetic_records(3)]
    for fraction, side in ((min(points) / 2, "val"), ((max(points) + 1) / 2, "train")):
        with pytest.raises(InputError, match=f"--val-fraction .*none of the 3 records.* in {side}"):
            split_train_val(str(tmp_path / "three"), str(tmp_path / "out"), fraction)
        assert not (tmp_path / "out").exists()
    code, _, err = run_main(["data", "split", "--data", tmp_path / "three", "--out",
                             tmp_path / "out", "--val-fraction", f"{min(points) / 2}"], capfd)
    assert_cli_error(code, err, "--val-fraction")
    assert not (tmp_path / "out").exists()


def _rare_label_folder(folder) -> str:
    """12 "red" records and one "red"+"rare" record whose id puts it in train at seed 0, 0.5."""
    rare_id = next(f"rare-{i}" for i in range(100) if val_point(f"rare-{i}".encode()) >= 0.5)
    image = png_bytes(synthetic_image(["red"]))
    records = [Record(image, ["red"], f"r{i}") for i in range(12)]
    records.append(Record(image, ["red", "rare"], rare_id))
    write_records(str(folder), records)
    return rare_id


def test_warns_when_a_training_label_has_no_val_example(tmp_path, caplog):
    rare_id = _rare_label_folder(tmp_path / "in")
    with caplog.at_level(logging.WARNING, logger="cnnrnn_tf.data.split"):
        split_train_val(str(tmp_path / "in"), str(tmp_path / "out"), 0.5)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert "1 training label (rare)" in warnings[0] and str(tmp_path / "out" / "val") in warnings[0]
    # With a seed that puts the rare record in val (and "red" on both sides): no warning.
    caplog.clear()
    seed = next(s for s in range(1, 100) if val_point(rare_id.encode(), s) < 0.5)
    with caplog.at_level(logging.WARNING, logger="cnnrnn_tf.data.split"):
        summary = split_train_val(str(tmp_path / "in"), str(tmp_path / "out2"), 0.5, seed=seed)
    assert summary["val"].labels.get("rare") == 1 and summary["train"].labels["red"] > 0
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_cli_warns_in_one_line(tmp_path, capfd):
    _rare_label_folder(tmp_path / "in")
    code, out, err = run_main(["data", "split", "--data", tmp_path / "in", "--out",
                               tmp_path / "out", "--val-fraction", "0.5"], capfd)
    assert code == 0 and len(out.splitlines()) == 2
    warnings = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "(rare)" in warnings[0] and "--val-fraction" in warnings[0]


def test_records_without_id_are_split_by_their_bytes_and_copied_as_they_are(tmp_path):
    examples = [make_example(png_bytes(synthetic_image(["red"], seed=i)), ["red"]) for i in range(20)]
    serialized = [e.SerializeToString(deterministic=True) for e in examples]
    serialized.append(serialized[0])  # an exact duplicate stays on its original's side
    # Not in canonical form (image/id after image/labels): any re-serialisation changes it.
    odd = serialized[1] + tf.train.Example(features=tf.train.Features(feature={
        "image/id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"odd"]))})
    ).SerializeToString()
    parsed = tf.train.Example.FromString(odd)
    assert parsed.features.feature["image/id"].bytes_list.value == [b"odd"]
    assert parsed.SerializeToString(deterministic=True) != odd
    serialized.append(odd)
    with tf.io.TFRecordWriter(str(tmp_path / "in.tfrecord.gz"), options="GZIP") as writer:
        for s in serialized:
            writer.write(s)
    os.makedirs(tmp_path / "in")
    os.rename(tmp_path / "in.tfrecord.gz", tmp_path / "in" / "x.tfrecord.gz")
    split_train_val(str(tmp_path / "in"), str(tmp_path / "out"), 0.4, seed=2)
    val = _raw(tmp_path / "out" / "val")
    assert val == [s for s in serialized if val_point(b"odd" if s == odd else s, 2) < 0.4]
    assert Counter(val) + Counter(_raw(tmp_path / "out" / "train")) == Counter(serialized)


def test_bad_input_files_are_named(data, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.tfrecord.gz").write_bytes(b"this is not gzip at all")
    with pytest.raises(InputError, match=r"a\.tfrecord\.gz: corrupt or not a GZIP TFRecord"):
        split_train_val(str(bad), str(tmp_path / "out"), 0.5)
    (bad / "a.tfrecord.gz").write_bytes(gzip.compress(b"gzip, but no TFRecord inside"))
    with pytest.raises(InputError, match=r"a\.tfrecord\.gz: corrupt or not a GZIP TFRecord"):
        split_train_val(str(bad), str(tmp_path / "out"), 0.5)
    (bad / "a.tfrecord.gz").unlink()
    with tf.io.TFRecordWriter(str(bad / "a.tfrecord.gz"), options="GZIP") as writer:
        writer.write(b"\xff\xff not an example")
    with pytest.raises(InputError, match=r"a\.tfrecord\.gz record 0: not a serialized"):
        split_train_val(str(bad), str(tmp_path / "out"), 0.5)
    with pytest.raises(InputError, match="nowhere: data folder does not exist"):
        split_train_val(str(tmp_path / "nowhere"), str(tmp_path / "out"), 0.5)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"empty: no \*\.tfrecord\.gz shards"):
        split_train_val(str(tmp_path / "empty"), str(tmp_path / "out"), 0.5)
    # Good shards first, then a truncated one: nothing of the good ones is left behind.
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for name in os.listdir(data):
        (mixed / name).write_bytes((data / name).read_bytes())
    (mixed / "zz.tfrecord.gz").write_bytes((data / sorted(os.listdir(data))[0]).read_bytes()[:300])
    with pytest.raises(InputError, match="zz.tfrecord.gz: corrupt"):
        split_train_val(str(mixed), str(tmp_path / "out"), 0.5)
    assert not (tmp_path / "out").exists()


def test_refuses_an_output_that_holds_shards(data, tmp_path):
    split_train_val(str(data), str(tmp_path / "out"), 0.5)
    before = {side: _files(tmp_path / "out" / side) for side in ("train", "val")}
    with pytest.raises(InputError, match="out.train: already holds"):
        split_train_val(str(data), str(tmp_path / "out"), 0.3)
    assert {side: _files(tmp_path / "out" / side) for side in ("train", "val")} == before
    # The input itself as OUT/train is refused too (it holds shards).
    with pytest.raises(InputError, match="already holds"):
        split_train_val(str(tmp_path / "out" / "train"), str(tmp_path / "out"), 0.3)


def test_split_on_uris(tmp_path):
    root = f"ram://split-{uuid.uuid4().hex[:8]}"
    write_records(f"{root}/in", synthetic_records(20, seed=4), records_per_shard=8)
    summary = split_train_val(f"{root}/in", f"{root}/out", 0.5)
    assert summary["val"].out_dir == f"{root}/out/val"
    train, val = _raw(f"{root}/out/train"), _raw(f"{root}/out/val")
    assert Counter(train) + Counter(val) == Counter(_raw(f"{root}/in")) and train and val
    counts = json.loads(_files(f"{root}/out/val")["label_counts.json"])
    assert counts["num_examples"] == len(val)


def test_cli_prints_both_sides(data, tmp_path, capfd):
    code, out, err = run_main(["data", "split", "--data", data, "--out", tmp_path / "out",
                               "--val-fraction", "0.3", "--seed", "1"], capfd)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{tmp_path / 'out' / 'train'}: wrote ")
    assert lines[1].startswith(f"{tmp_path / 'out' / 'val'}: wrote ")
    written = sum(int(line.split("wrote ")[1].split()[0]) for line in lines)
    assert written == 40


def _data_subparser(name):
    import argparse

    from cnnrnn_tf.cli.app import build_parser

    def sub(parser, key):
        action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        return action.choices[key]

    return sub(sub(build_parser(), "data"), name)


@pytest.mark.parametrize("command", ["split", "fashion-outfits"])
def test_every_flag_has_help(command):
    flags = [a for a in _data_subparser(command)._actions if a.option_strings and a.dest != "help"]
    assert flags and all(a.help for a in flags), [a.dest for a in flags if not a.help]
    if command == "split":
        assert {a.dest for a in flags} == {"data", "out", "val_fraction", "seed"}
