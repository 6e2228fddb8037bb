"""The main job's splits: train/ fits, val/ selects, test/ is only scored."""
import json

import pytest

from cnnrnn_tf import main_job, schema
from cnnrnn_tf.errors import InputError
from cnnrnn_tf.training import split_names
from tests.conftest import synthetic_records


def test_val_folder_is_used_as_it_is(tmp_path, capsys):
    for split, n in (("train", 8), ("val", 4), ("test", 4)):
        schema.write_records(str(tmp_path / split), synthetic_records(n, seed=n))
    train, val, test, name = main_job._splits(str(tmp_path))
    assert (train, val, test, name) == (str(tmp_path / "train"), str(tmp_path / "val"),
                                        str(tmp_path / "test"), str(tmp_path / "val"))
    assert capsys.readouterr().out == ""


def test_without_val_the_last_train_shards_validate_and_leave_training(tmp_path, capsys):
    """0.4.0's layout (train/ + test/): not refused; val is carved from train/ and said so."""
    schema.write_records(str(tmp_path / "train"), synthetic_records(12, seed=1),
                         records_per_shard=4)
    schema.write_records(str(tmp_path / "test"), synthetic_records(4, seed=2))
    shards = schema.list_shards(str(tmp_path / "train"))
    train, val, test, name = main_job._splits(str(tmp_path))
    assert (train, val, test) == (shards[:-1], shards[-1:], str(tmp_path / "test"))
    assert not set(train) & set(val) and name == f"the last shard of {tmp_path / 'train'}"
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "no val/" in out[0] and "last 1 of train/'s 3 shards" in out[0]


def test_a_single_train_shard_without_val_says_how_to_fix_it(tmp_path):
    schema.write_records(str(tmp_path / "train"), synthetic_records(4, seed=1))
    schema.write_records(str(tmp_path / "test"), synthetic_records(4, seed=2))
    with pytest.raises(InputError, match="no val/ folder.*single shard"):
        main_job._splits(str(tmp_path))


def test_a_model_selected_on_other_splits_is_trained_again(tmp_path, monkeypatch, capsys):
    """A 0.4.0 MODEL_DIR (selected on test/) is not reused; one of this run's splits is."""
    import cnnrnn_tf.training as training

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
