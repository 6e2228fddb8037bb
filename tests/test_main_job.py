"""The main job's splits: train/ fits, val/ selects, test/ is only scored."""
import json

import pytest

from cnnrnn_tf import schema

from cnnrnn_tf.cli import main_job
from cnnrnn_tf.training.splits import split_names
from tests.conftest import synthetic_records


def test_val_folder_is_used_as_it_is(tmp_path, capsys):
    for split, n in (("train", 8), ("val", 4), ("test", 4)):
        schema.write_records(str(tmp_path / split), synthetic_records(n, seed=n))
    train, val, test, name = main_job._splits(str(tmp_path))
    assert (train, val, test, name) == (str(tmp_path / "train"), str(tmp_path / "val"),
                                        str(tmp_path / "test"), str(tmp_path / "val"))
    assert capsys.readouterr().out == ""


def _raw_records(data):
    import tensorflow as tf

    return sorted(r.numpy() for r in tf.data.TFRecordDataset(schema.list_shards(data),
                                                             compression_type="GZIP"))


@pytest.mark.parametrize("per_shard", [4, 64])  # several shards, and a single one
def test_without_val_a_tenth_of_train_is_carved_out_once(tmp_path, capsys, per_shard):
    """0.4.0's layout (train/ + test/): not refused; val is carved from train/ by the
    `cnnrnn data split` hash, said in one line, and reused by the next run."""
    schema.write_records(str(tmp_path / "train"), synthetic_records(40, seed=1),
                         records_per_shard=per_shard)
    schema.write_records(str(tmp_path / "test"), synthetic_records(4, seed=2))
    train, val, test, name = main_job._splits(str(tmp_path))
    carved = tmp_path / main_job.CARVED_DIR
    assert (train, val, test) == (str(carved / "train"), str(carved / "val"),
                                  str(tmp_path / "test"))
    assert str(tmp_path / "train") in name
    train_records, val_records = _raw_records(train), _raw_records(val)
    assert val_records and not set(train_records) & set(val_records)
    assert sorted(train_records + val_records) == _raw_records(str(tmp_path / "train"))
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "no val/" in out[0] and "carved" in out[0]
    assert main_job._splits(str(tmp_path))[:3] == (train, val, test)  # the same carve, reused


def test_a_model_selected_on_other_splits_is_trained_again(tmp_path, monkeypatch, capsys):
    """A 0.4.0 MODEL_DIR (selected on test/) is not reused; one of this run's splits is."""
    import cnnrnn_tf.training.loop as training

    out = tmp_path / "model"
    out.mkdir()
    (out / "model.keras").write_bytes(b"")
    splits = ("tr", "va", "te")
    (out / "metrics.json").write_text(json.dumps({"OF1": 0.5}))  # 0.4.0: no "split"
    calls = []

    class Result:
        metrics = {"OF1": 0.7, "split": "test"}

    monkeypatch.setattr(training, "train", lambda *a, **k: calls.append((a, k)) or Result())
    assert main_job._train_or_reuse("config", *splits, str(out))["OF1"] == 0.7
    (args, kwargs), = calls
    assert args == ("config", "tr", "va", str(out)) and kwargs["test_data"] == "te"
    assert not out.exists() and "training it again" in capsys.readouterr().out

    out.mkdir()
    (out / "model.keras").write_bytes(b"")
    (out / "metrics.json").write_text(json.dumps(
        {"OF1": 0.6, "split": "test", "data": split_names(*splits)}))
    assert main_job._train_or_reuse("config", *splits, str(out))["OF1"] == 0.6
    assert len(calls) == 1 and "reusing it" in capsys.readouterr().out


def test_the_table_title_names_the_test_split_its_size_and_the_selection_split():
    title = main_job._table_title({"bce": {"num_images": 2000}, "cnn-rnn": {"num_images": 2000}},
                                  "w/data/test", "w/data/val")
    assert "test split w/data/test (2000 images)" in title and "selected on w/data/val" in title
