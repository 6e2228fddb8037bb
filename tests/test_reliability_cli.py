"""Every command's answer to bad input: exit != 0, ONE line on stderr that starts with
`error:` (or argparse's `cnnrnn ...: error:`) and names the input, no traceback, and
nothing partial left behind."""
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from tests.reliability_helpers import assert_cli_error, build_tiny_model_dir, run_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------ flags (argparse)
FLAG_CASES = [
    (["data", "fashion-outfits", "--out", "o", "--train", "0"], "--train"),
    (["data", "fashion-outfits", "--out", "o", "--image-size", "-3"], "--image-size"),
    (["data", "fashion-outfits", "--out", "o", "--grammar", "x"], "--grammar"),
    (["data", "from-csv", "--csv", "a.csv", "--out", "o", "--label-sep", ""], "--label-sep"),
    (["data", "from-csv", "--out", "o"], "--csv"),
    (["data", "from-coco", "--annotations", "a", "--out", "o"], "--images"),
    (["data", "from-voc", "--root", "r", "--out", "o"], "--split"),
    (["data", "from-tiff", "--out", "o"], "from-tiff"),
    (["train", "--train", "a", "--eval", "b", "--out", "c", "--learning-rate", "-1"], "--learning-rate"),
    (["train", "--train", "a", "--eval", "b", "--out", "c", "--learning-rate", "nan"], "--learning-rate"),
    (["train", "--train", "a", "--eval", "b", "--out", "c", "--threshold", "1.5"], "--threshold"),
    (["train", "--train", "a", "--eval", "b", "--out", "c", "--verbose", "7"], "--verbose"),
    (["train", "--train", "a", "--eval", "b", "--out", "c", "--image-size", "1e3"], "--image-size"),
    (["train", "--train", "a", "--eval", "b", "--out", "c", "--max-labels", "0"], "--max-labels"),
    (["train", "--train", "a", "--out", "c"], "--eval"),
    (["evaluate", "--model", "m", "--data", "d", "--batch-size", "0"], "--batch-size"),
    (["predict", "--model", "m", "--beam-size", "0", "x.png"], "--beam-size"),
    (["predict", "--model", "m"], "IMAGE"),
    (["export", "--model", "m", "--out", "o", "--beam-size", "two"], "--beam-size"),
    (["report", "--model", "m", "--data", "d", "--out", "o", "--beam-size", "-2"], "--beam-size"),
    (["benchmark", "--model", "m", "--repeats", "0"], "--repeats"),
    (["benchmark", "--model", "m", "--warmup", "-1"], "--warmup"),
    (["pipeline", "run", "--data", "d", "--pipeline-root", "p", "--serving-dir", "s",
      "--train-steps", "0"], "--train-steps"),
    (["pipeline", "compile", "--runner", "airflow", "--image", "i", "--output", "o"], "--runner"),
    (["serve", "--model-base-path", "b", "--model-name", "m", "--port", "70000"], "--port"),
    (["serve", "--model-base-path", "b", "--model-name", "m", "--max-batch-size", "0"],
     "--max-batch-size"),
    (["client", "--server", "s", "--model", "m", "--timeout", "0", "x.png"], "--timeout"),
    (["main-job", "--epochs", "-1"], "--epochs"),
    (["frobnicate"], "frobnicate"),
    ([], "COMMAND"),
]


@pytest.mark.parametrize("argv, needle", FLAG_CASES, ids=[" ".join(a[:3]) + "|" + n for a, n in FLAG_CASES])
def test_invalid_flag_values(argv, needle, capfd, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_main(argv, capfd)
    assert code == 2
    line = assert_cli_error(code, err, needle, argparse_ok=True)
    assert line.startswith("cnnrnn") and "Traceback" not in out
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------ data and MODEL_DIR
@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_rel")
    model = build_tiny_model_dir(root)
    return root, model


def _broken_model_dirs(model, root):
    """name -> (MODEL_DIR, what the message must name)."""
    out = {}

    def copy(name):
        dst = root / "broken" / name
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(model, dst, ignore=shutil.ignore_patterns("saved_model", "logs"))
        return dst

    d = copy("no_model"); (d / "model.keras").unlink(); out["no_model"] = (d, "model.keras")
    d = copy("no_config"); (d / "config.json").unlink(); out["no_config"] = (d, "config.json")
    d = copy("no_vocab"); (d / "vocabulary.json").unlink(); out["no_vocab"] = (d, "vocabulary")
    d = copy("bad_config"); (d / "config.json").write_text("{oops"); out["bad_config"] = (d, "config.json")
    d = copy("junk_model"); (d / "model.keras").write_bytes(b"not a zip at all")
    out["junk_model"] = (d, "model.keras")
    d = copy("cut_model"); data = (d / "model.keras").read_bytes()
    (d / "model.keras").write_bytes(data[: len(data) // 2]); out["cut_model"] = (d, "model.keras")
    d = copy("empty_zip")
    with zipfile.ZipFile(d / "model.keras", "w"):
        pass
    out["empty_zip"] = (d, "model.keras")
    d = copy("model_is_folder"); (d / "model.keras").unlink(); (d / "model.keras").mkdir()
    out["model_is_folder"] = (d, "model.keras")
    return out


@pytest.mark.slow
def test_broken_model_dirs_for_evaluate_predict_export(env, capfd, tmp_path):
    root, model = env
    image = tmp_path / "x.png"
    from tests.conftest import png_bytes
    from tests.reliability_helpers import good_image
    image.write_bytes(png_bytes(good_image()))
    for name, (d, needle) in _broken_model_dirs(model, root).items():
        for argv in (["evaluate", "--model", d, "--data", root / "test"],
                     ["predict", "--model", d, image],
                     ["export", "--model", d, "--out", tmp_path / f"exp_{name}"]):
            code, out, err = run_main(argv, capfd)
            assert code == 2, (name, argv[0], err)
            line = assert_cli_error(code, err, needle)
            assert str(d) in line, (name, line)
            assert out == ""
            assert not (tmp_path / f"exp_{name}").exists()


@pytest.mark.slow
def test_data_folder_without_shards_or_with_a_corrupt_shard(env, capfd, tmp_path):
    root, model = env
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("hi")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    shard = corrupt / "data-00000-of-00001.tfrecord.gz"
    shard.write_bytes(os.urandom(300))
    cut = tmp_path / "cut"
    cut.mkdir()
    good_shard = sorted((root / "test").iterdir())[0]
    data = good_shard.read_bytes()
    (cut / good_shard.name).write_bytes(data[: len(data) * 2 // 3])
    partial = tmp_path / "partial"  # only a temp-named shard: a killed converter's leftover
    partial.mkdir()
    (partial / "data-00000.tmp-deadbeef").write_bytes(data)
    for folder, needle in ((empty, "no *.tfrecord.gz shards"), (corrupt, str(shard)),
                           (cut, good_shard.name), (partial, "no *.tfrecord.gz shards")):
        for argv in (["evaluate", "--model", model, "--data", folder],
                     ["train", "--train", folder, "--eval", root / "test", "--out",
                      tmp_path / "m", "--epochs", "1", "--verbose", "0"],
                     ["train", "--train", root / "train", "--eval", folder, "--out",
                      tmp_path / "m", "--epochs", "1", "--verbose", "0"]):
            code, out, err = run_main(argv, capfd)
            assert code == 2, (folder, argv[0], err)
            assert_cli_error(code, err, needle)
            assert str(folder) in err
            assert not (tmp_path / "m").exists()


@pytest.mark.slow
def test_train_with_missing_eval_or_out_a_file(env, capfd, tmp_path):
    root, _ = env
    code, _, err = run_main(["train", "--train", root / "train", "--eval", tmp_path / "nope",
                             "--out", tmp_path / "m", "--epochs", "1"], capfd)
    assert_cli_error(code, err, f"{tmp_path / 'nope'}: data folder does not exist")
    assert code == 2 and not (tmp_path / "m").exists()
    target = tmp_path / "file.txt"
    target.write_text("keep")
    code, _, err = run_main(["train", "--train", root / "train", "--eval", root / "test",
                             "--out", target, "--epochs", "1"], capfd)
    assert code == 2
    assert_cli_error(code, err, f"{target}: exists and is not a folder")
    assert target.read_text() == "keep"


@pytest.mark.slow
def test_train_refuses_a_finished_model_dir(env, capfd):
    root, model = env
    code, _, err = run_main(["train", "--train", root / "train", "--eval", root / "test",
                             "--out", model, "--epochs", "1"], capfd)
    assert code == 2
    assert_cli_error(code, err, "already holds a trained model")


@pytest.mark.slow
def test_train_on_a_record_with_a_corrupt_image(env, capfd, tmp_path):
    from cnnrnn_tf import schema
    from tests.conftest import synthetic_records

    root, _ = env
    records = synthetic_records(20, seed=3)
    records[7] = schema.Record(b"\x89PNG\r\n\x1a\n garbage", ["red"], "bad7")
    schema.write_records(str(tmp_path / "bad"), records)
    code, out, err = run_main(["train", "--train", tmp_path / "bad", "--eval", root / "test",
                               "--out", tmp_path / "m", "--epochs", "1", "--image-size", "32",
                               "--verbose", "0"], capfd)
    assert code == 2
    assert_cli_error(code, err, "a record cannot be read while training")
    assert not (tmp_path / "m" / "model.keras").exists()
    code, out, err = run_main(["evaluate", "--model", env[1], "--data", tmp_path / "bad"], capfd)
    assert code == 2 and out == ""
    assert_cli_error(code, err, f"{tmp_path / 'bad'}: a record cannot be read")


@pytest.mark.slow
def test_output_path_is_an_existing_file(env, capfd, tmp_path):
    root, model = env
    target = tmp_path / "taken"
    target.write_text("keep")
    for argv, needle in (
        (["export", "--model", model, "--out", target], "exists and is not a folder"),
        (["export", "--model", model, "--out", target / "sub"], str(target)),
        (["data", "fashion-outfits", "--out", target, "--train", "2", "--test", "2"], str(target)),
        (["report", "--model", model, "--data", root / "test", "--out", target], str(target)),
    ):
        code, out, err = run_main(argv, capfd)
        assert code == 2, (argv, err)
        assert_cli_error(code, err, needle)
        assert target.read_text() == "keep"
        assert os.listdir(tmp_path) == ["taken"], os.listdir(tmp_path)


@pytest.mark.slow
def test_export_refuses_a_folder_that_is_not_a_saved_model(env, capfd, tmp_path):
    _, model = env
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("keep")
    code, _, err = run_main(["export", "--model", model, "--out", tmp_path / "mine"], capfd)
    assert code == 2
    assert_cli_error(code, err, "holds no SavedModel")
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "keep"


@pytest.mark.slow
@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root ignores folder permissions")
def test_unwritable_output_folder(env, capfd, tmp_path):
    root, model = env
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        for argv in (["export", "--model", model, "--out", locked / "sm"],
                     ["train", "--train", root / "train", "--eval", root / "test",
                      "--out", locked / "m", "--epochs", "1"]):
            code, _, err = run_main(argv, capfd)
            assert code == 2
            assert_cli_error(code, err, str(locked))
            assert os.listdir(locked) == []
    finally:
        locked.chmod(0o700)


@pytest.mark.slow
def test_subprocess_bad_input_prints_exactly_one_line(tmp_path):
    """The installed entry point, as a user runs it: no TensorFlow chatter, no traceback."""
    (tmp_path / "x.csv").write_text("image,labels\nnope.png,a\n")
    env = {**os.environ, "PYTHONPATH": ROOT}
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the CLI's own default hides TF's C++ logs
    proc = subprocess.run([sys.executable, "-m", "cnnrnn_tf.cli", "data", "from-csv", "--csv",
                           str(tmp_path / "x.csv"), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2
    assert_cli_error(proc.returncode, proc.stderr, "nope.png")
    assert proc.stdout == "" and not (tmp_path / "o").exists()
