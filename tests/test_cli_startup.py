"""The CLI answers bad input at once and quietly: before TensorFlow is imported, one line."""
import argparse
import os
import subprocess
import sys
import time

import pytest

from cnnrnn_tf.cli import app as cli

# Runs the CLI in a fresh interpreter and reports whether TensorFlow got imported.
PROBE = ("import sys; from cnnrnn_tf import cli; rc = cli.main(sys.argv[1:]); "
         "print('tensorflow' in sys.modules); sys.exit(rc)")


def _run(args, **env):
    environ = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="0", **env)
    environ.pop("CNNRNN_DEBUG", None)
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True,
                         env=environ, timeout=120)
    return out, time.perf_counter() - start


@pytest.mark.parametrize("args, named", [
    (["train", "--train", "/does/not/exist", "--eval", "/does/not/exist", "--out", "X"],
     "/does/not/exist: data folder does not exist"),
    (["train", "--train", ".", "--eval", ".", "--test", "/no/test", "--out", "X"],
     "/no/test: data folder does not exist"),
    (["evaluate", "--model", "/no/model", "--data", "."], "/no/model: model folder does not exist"),
    (["data", "from-csv", "--csv", "/no.csv", "--out", "o"], "/no.csv: CSV file does not exist"),
    (["data", "split", "--data", "/no/data", "--out", "o", "--val-fraction", "0.1"],
     "/no/data: data folder does not exist"),
])
def test_a_missing_local_path_answers_before_tensorflow(tmp_path, args, named):
    out, seconds = _run(args)
    assert out.returncode == 2
    assert out.stderr.splitlines() == [f"error: {named}"], out.stderr
    assert out.stdout.strip() == "False"  # TensorFlow never imported
    assert seconds < 20  # 3 s on a quiet machine; generous here for a loaded CI
    assert not (tmp_path / "X").exists()


def test_a_bad_flag_is_one_line_before_tensorflow():
    out, _ = _run(["train", "--train", ".", "--eval", ".", "--out", "X", "--learning-rate", "-1"])
    assert out.returncode == 2
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and "--learning-rate" in lines[0] and "error:" in lines[0]


def test_help_does_not_import_tensorflow():
    for args in (["--help"], ["train", "--help"], ["data", "split", "--help"],
                 ["pipeline", "compile", "--help"]):
        out, _ = _run(args)
        assert out.returncode == 0 and "usage: cnnrnn" in out.stdout
        assert out.stderr == ""


def _actions(parser, path="cnnrnn"):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _actions(sub, f"{path} {name}")
        elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            yield path, action


def test_every_flag_has_a_help_text():
    missing = [f"{path} {'/'.join(a.option_strings) or a.dest}"
               for path, a in _actions(cli.build_parser()) if not (a.help or "").strip()]
    assert missing == []


def test_log_level_hides_tensorflow_chatter_whatever_its_env(monkeypatch):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    monkeypatch.delenv("CNNRNN_DEBUG", raising=False)
    cli._quiet_startup("error")
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "3"
    cli._quiet_startup("debug")
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"
    monkeypatch.setenv("CNNRNN_DEBUG", "1")
    cli._quiet_startup("error")
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"


def test_native_log_filter_drops_tensorflow_and_absl_lines_only():
    from cnnrnn_tf.cli.quiet import NATIVE_LOG_LINE, wanted

    dropped = [
        b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
        b"I0000 00:00:1796306199.392137   20096 service.cc:145] XLA service 0x7f initialized\n",
        b"2026-12-03 13:05:00.622781: I tensorflow/core/util/port.cc:113] oneDNN custom operations\n",
        b"2026-12-03 13:05:00.722115: E external/local_xla/xla/stream_executor/cuda/cuda_dnn.cc:"
        b"10575] Unable to register cuDNN factory\n",
    ]
    kept = [b"error: /x: data folder does not exist\n",
            b"F0000 00:00:1796306199.392137   20096 check.cc:1] Check failed\n",
            b"Traceback (most recent call last):\n"]
    assert all(NATIVE_LOG_LINE.match(line) for line in dropped)
    assert not any(NATIVE_LOG_LINE.match(line) for line in kept)
    assert wanted(["train"]) and wanted(["--log-level", "error", "train"])
    assert not wanted(["--log-level", "info", "train"]) and not wanted(["--log-level=debug"])


def test_the_grpc_client_and_the_serving_contract_load_without_keras_or_tensorflow():
    import subprocess
    import sys

    code = ("import sys, cnnrnn_tf.serving.client, cnnrnn_tf.serving.contract; "
            "print('keras' in sys.modules, 'tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "False"], out.stderr
