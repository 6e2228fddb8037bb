"""The CLI end to end on tiny data, and its answers to bad input."""
import csv
import json
import os

import numpy as np
import pytest

from cnnrnn_tf.cli.app import main
from tests.conftest import jpeg_bytes, png_bytes, synthetic_image

pytestmark = pytest.mark.slow


def make_csv(folder, n, seed):
    rng = np.random.RandomState(seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "imgs").mkdir(exist_ok=True)
    rows = []
    for i in range(n):
        labels = [s for s in ("red", "green", "blue") if rng.rand() < 0.5] or ["green"]
        if "blue" in labels and rng.rand() < 0.6:
            labels.append("bar")
        name = f"imgs/{seed}_{i}.png" if i % 3 else f"imgs/{seed}_{i}.jpg"
        data = png_bytes if name.endswith(".png") else jpeg_bytes
        (folder / name).write_bytes(data(synthetic_image(labels, seed=seed * 1000 + i)))
        rows.append((name, "|".join(labels)))
    with open(folder / "data.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "labels"])
        writer.writerows(rows)
    return folder / "data.csv"


@pytest.fixture(scope="module")
def cli_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    assert main(["data", "from-csv", "--csv", str(make_csv(root / "a", 48, 1)),
                 "--out", str(root / "train")]) == 0
    assert main(["data", "from-csv", "--csv", str(make_csv(root / "b", 16, 2)),
                 "--out", str(root / "test")]) == 0
    assert main(["train", "--train", str(root / "train"), "--eval", str(root / "test"),
                 "--out", str(root / "model"), "--image-size", "32", "--epochs", "1",
                 "--batch-size", "16", "--verbose", "0"]) == 0
    return root


def test_evaluate_json(cli_model, capsys):
    capsys.readouterr()
    assert main(["evaluate", "--model", str(cli_model / "model"),
                 "--data", str(cli_model / "test"), "--json", "--beam-size", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1"):
        assert 0.0 <= result[key] <= 1.0
    assert set(result["top3"]) >= {"CP", "CR", "CF1", "OP", "OR", "OF1"}
    assert result["num_images"] == 16 and result["num_classes_evaluated"] >= 3


def test_predict_json_lines(cli_model, capsys):
    images = sorted(str(p) for p in (cli_model / "b" / "imgs").iterdir())[:3]
    capsys.readouterr()
    assert main(["predict", "--model", str(cli_model / "model"), "--json", *images]) == 0
    lines = [json.loads(l) for l in capsys.readouterr().out.splitlines()]
    assert [l["image"] for l in lines] == images
    vocab = json.load(open(cli_model / "model" / "vocabulary.json"))["labels"]
    for line in lines:
        names = [x["label"] for x in line["labels"]]
        assert len(set(names)) == len(names) and set(names) <= set(vocab)
        assert all(0.0 <= x["score"] <= 1.0 for x in line["labels"])


def test_export(cli_model, capsys):
    out = cli_model / "exported"
    assert main(["export", "--model", str(cli_model / "model"), "--out", str(out)]) == 0
    assert (out / "saved_model.pb").exists()


@pytest.mark.parametrize("argv, needle", [
    (["train", "--train", "NOPE", "--eval", "NOPE", "--out", "x"], "NOPE: data folder does not exist"),
    (["evaluate", "--model", "NOPE", "--data", "x"], "NOPE: model folder does not exist"),
    (["data", "from-csv", "--csv", "NOPE.csv", "--out", "x"], "NOPE.csv"),
])
def test_bad_paths_give_one_line_errors(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0]
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("backbone", ["vgg16", "efficientnet-lite0"])
def test_random_frozen_backbone_is_refused(backbone, capsys, tmp_path, monkeypatch):
    """--no-pretrained-weights leaves a pretrained backbone frozen unless --fine-tune trains
    it: refused in one line naming both flags, before anything is read or written."""
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--train", "NOPE", "--eval", "NOPE", "--out", "x",
            "--backbone", backbone, "--no-pretrained-weights"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    assert "--no-pretrained-weights" in err[0] and "--fine-tune" in err[0] and backbone in err[0]
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("argv, needle", [
    (["train", "--train", "a", "--eval", "b", "--out", "c", "--epochs", "0"], "--epochs"),
    (["train", "--train", "a", "--eval", "b", "--out", "c", "--batch-size", "x"], "--batch-size"),
    (["train", "--train", "a", "--eval", "b", "--out", "c", "--model", "svm"], "--model"),
    (["train", "--train", "a", "--eval", "b", "--out", "c", "--label-order", "abc"], "--label-order"),
    (["train", "--train", "a", "--eval", "b", "--out", "c", "--backbone", "vgg19"], "--backbone"),
    (["train", "--train", "a", "--eval", "b", "--out", "c", "--label-head", "big"], "--label-head"),
    (["train", "--train", "a", "--eval", "b", "--out", "c", "--aux-loss-weight", "-1"],
     "--aux-loss-weight"),
    (["train", "--train", "a", "--eval", "b", "--out", "c", "--aux-loss-weight", "nan"],
     "--aux-loss-weight"),
    (["evaluate", "--model", "m", "--data", "d", "--beam-size", "-1"], "--beam-size"),
    (["data", "fashion-outfits", "--out", "o", "--train", "ten"], "--train"),
])
def test_invalid_flags(argv, needle, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert needle in capsys.readouterr().err


def test_predict_bad_images(cli_model, capsys, tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_bytes(b"hello, not an image")
    good = str(sorted((cli_model / "b" / "imgs").iterdir())[0])
    for name, needle in (("missing.png", "does not exist"), ("empty.png", "image file is empty"),
                         ("text.png", "not a decodable")):
        capsys.readouterr()
        assert main(["predict", "--model", str(cli_model / "model"), good,
                     str(tmp_path / name)]) == 2
        out = capsys.readouterr()
        assert out.out == ""  # checked before any output
        assert needle in out.err and name in out.err


def test_train_flags_reach_the_config():
    from cnnrnn_tf.cli.app import build_parser
    from cnnrnn_tf.cli.train import config_from_args as _train_config

    base = ["train", "--train", "a", "--eval", "b", "--out", "c"]
    config = _train_config(build_parser().parse_args(base))
    assert config.label_head == "evidence" and config.aux_loss_weight == 1.0
    config = _train_config(build_parser().parse_args(
        base + ["--label-head", "none", "--aux-loss-weight", "0.25"]))
    assert config.label_head == "none" and config.aux_loss_weight == 0.25


def test_paper_preset_reaches_the_model():
    from cnnrnn_tf.cli.app import build_parser
    from cnnrnn_tf.cli.train import config_from_args as _train_config
    from cnnrnn_tf.config import PAPER_SETTINGS, TrainConfig
    from cnnrnn_tf.models import build_model

    base = ["train", "--train", "a", "--eval", "b", "--out", "c"]
    config = _train_config(build_parser().parse_args(base + ["--paper"]))
    for key, value in PAPER_SETTINGS.items():
        assert getattr(config, key) == value, key
    assert config == TrainConfig.paper()
    explicit = _train_config(build_parser().parse_args(base + ["--paper", "--lstm-units", "32"]))
    assert explicit.lstm_units == 32 and explicit.label_head == "none"
    assert _train_config(build_parser().parse_args(base + ["--no-mask-seen"])).mask_seen is False
    model = build_model(TrainConfig.paper(image_size=32, lstm_units=8, embed_dim=4), 5, 3)
    assert model.decoder.mask_seen is False and model.label_head is None
    assert model.decoder.dropout_rate == 0.0
    from cnnrnn_tf.training.loop import make_optimizer

    lr = make_optimizer(TrainConfig.paper(), total_steps=100).learning_rate
    assert float(lr.numpy() if hasattr(lr, "numpy") else lr) == pytest.approx(1e-3)


def test_every_train_config_field_is_declared_with_help_and_a_flag_or_api_only():
    """Adding a TrainConfig field without a help text (or without a flag, unless it is
    declared api_only) fails here; each flag reaches its field."""
    import dataclasses

    from cnnrnn_tf.cli.app import build_parser
    from cnnrnn_tf.cli.train import config_from_args
    from cnnrnn_tf.config import TrainConfig, flag_name

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    flags = {o for a in train._actions for o in a.option_strings}
    for field in dataclasses.fields(TrainConfig):
        meta = field.metadata
        assert meta.get("help", "").strip(), f"TrainConfig.{field.name} has no help text"
        assert meta.get("api_only") or flag_name(field) in flags, field.name
    base = ["train", "--train", "a", "--eval", "b", "--out", "c"]
    parser = build_parser()
    config = config_from_args(parser.parse_args(base + [
        "--validation-steps", "3", "--patience", "2", "--no-early-stopping", "--hflip",
        "--no-pretrained-weights", "--crop-scale", "0.5", "--cache", "none"]))
    assert (config.validation_steps, config.early_stopping_patience, config.early_stopping,
            config.hflip, config.weights, config.crop_scale, config.cache) == (
        3, 2, False, True, "none", 0.5, "none")
    assert config_from_args(parser.parse_args(base)) == TrainConfig()
    with pytest.raises(SystemExit):
        parser.parse_args(base + ["--dropout", "1.5"])


def test_pipeline_training_flags_come_from_the_same_declaration_without_defaults():
    from cnnrnn_tf.cli.app import build_parser
    from cnnrnn_tf.config import config_overrides

    parser = build_parser()
    common = ["--data", "d", "--pipeline-root", "r", "--serving-dir", "s"]
    args = parser.parse_args(["pipeline", "run", *common])
    assert config_overrides(args) == {}  # nothing overrides a --train-config file
    args = parser.parse_args(["pipeline", "compile", "--runner", "kubeflow-v2", "--image", "i",
                              "--output", "p.json", *common, "--lstm-units", "32", "--ema"])
    assert config_overrides(args) == {"lstm_units": 32, "ema": True}


def test_predict_prints_only_its_result_and_no_tensorflow_start_up_lines():
    """No CUDA probe or oneDNN note on stderr at the default --log-level, also where
    TensorFlow logs them through absl before TF_CPP_MIN_LOG_LEVEL applies (2.20+)."""
    import os
    import subprocess
    import sys

    fixture = os.path.join(os.path.dirname(__file__), "fixtures", "model_dir_0_4_0")
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "CNNRNN_DEBUG")}
    proc = subprocess.run(
        [sys.executable, "-m", "cnnrnn_tf.cli", "predict", "--model",
         os.path.join(fixture, "cnn_rnn"), os.path.join(fixture, "images", "img0.png")],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout.startswith(os.path.join(fixture, "images", "img0.png") + ": green")
