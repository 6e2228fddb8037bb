"""Paths as URIs: the library on TF's ram:// file system, and the CLI on a real S3 server.

The S3 tests run the CLI as a subprocess against moto_server on localhost (tests/s3_server.py),
configured only through the standard AWS_* variables, as a user configures MinIO.
"""
import json
import os
import subprocess
import sys
import uuid

import numpy as np
import pytest
import tensorflow as tf

from cnnrnn_tf import io_utils, uri
from cnnrnn_tf.errors import InputError
from tests.conftest import png_bytes, synthetic_image, synthetic_records


# ------------------------------------------------------------------ URI strings
def test_uri_join_dirname_basename():
    assert uri.join("s3://b/x", "y", "z.json") == "s3://b/x/y/z.json"
    assert uri.join("s3://b/x/", "y") == "s3://b/x/y"
    assert uri.join("gs://b", "a") == "gs://b/a"
    assert uri.join("rel/dir", "f") == os.path.join("rel/dir", "f")
    assert uri.dirname("s3://b/x/y") == "s3://b/x"
    assert uri.dirname("s3://b/x") == "s3://b"
    assert uri.basename("gs://b/x/y/") == "y"
    assert uri.absolute("gs://bucket/data") == "gs://bucket/data"   # not <cwd>/gs:/bucket/data
    assert uri.absolute("rel") == os.path.abspath("rel")
    assert uri.is_remote("s3://b") and uri.is_remote("ram://x") and not uri.is_remote("/tmp/x")


def test_unknown_scheme_is_a_clear_error():
    with pytest.raises(InputError, match=r"foo://b/x: unknown URI scheme 'foo://'"):
        uri.ensure_filesystem("foo://b/x")


def test_aws_variables_map_to_tensorflow_io_and_beam():
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_ACCESS_KEY_ID": "k",
           "AWS_SECRET_ACCESS_KEY": "s", "AWS_DEFAULT_REGION": "eu-west-1"}
    assert uri.s3_environment(env) == {"S3_ENDPOINT": "http://127.0.0.1:9000",
                                       "S3_USE_HTTPS": "0", "S3_VERIFY_SSL": "0",
                                       "AWS_REGION": "eu-west-1"}
    # Variables the user set explicitly win.
    assert "S3_ENDPOINT" not in uri.s3_environment(dict(env, S3_ENDPOINT="x"))
    assert uri.s3_environment({"AWS_ENDPOINT_URL": "https://minio:9000"})["S3_USE_HTTPS"] == "1"
    assert uri.beam_s3_options(env) == [
        "--s3_endpoint_url=http://127.0.0.1:9000", "--s3_disable_ssl",
        "--s3_access_key_id=k", "--s3_secret_access_key=s", "--s3_region_name=eu-west-1"]


# ------------------------------------------------------------------ ram:// (in process)
def _ram(name):
    return f"ram://{name}-{uuid.uuid4().hex[:8]}"


def test_atomic_json_and_publish_on_a_remote_file_system():
    root = _ram("pub")
    io_utils.write_json(uri.join(root, "a.json"), {"x": 1})
    assert io_utils.read_json(uri.join(root, "a.json")) == {"x": 1}
    assert [p for p in tf.io.gfile.listdir(root) if io_utils.TMP_INFIX in p] == []
    tmp = uri.join(root, "tmp")
    for rel in ("sub/v.bin", "marker.pb", "z.txt"):
        tf.io.gfile.makedirs(uri.dirname(uri.join(tmp, rel)))
        with tf.io.gfile.GFile(uri.join(tmp, rel), "w") as f:
            f.write(rel)
    copied = []
    real_copy = tf.io.gfile.copy
    try:
        tf.io.gfile.copy = lambda a, b, overwrite=False: (copied.append(b), real_copy(a, b, overwrite))
        io_utils.publish_dir(tmp, uri.join(root, "final"), marker="marker.pb")
    finally:
        tf.io.gfile.copy = real_copy
    assert copied[-1].endswith("final/marker.pb")  # the marker is published last
    assert not tf.io.gfile.exists(tmp)
    with tf.io.gfile.GFile(uri.join(root, "final", "sub", "v.bin")) as f:
        assert f.read() == "sub/v.bin"


def test_shards_labels_and_vocabulary_on_ram():
    from cnnrnn_tf.inputs.dataset import scan_labels
    from cnnrnn_tf.schema import iter_records, write_records
    from cnnrnn_tf.vocabulary import LabelVocabulary

    root = _ram("data")
    assert write_records(uri.join(root, "train"), synthetic_records(10, seed=3),
                         records_per_shard=4) == 10
    stats = scan_labels(uri.join(root, "train"))
    assert stats.num_examples == 10
    assert len(list(iter_records(uri.join(root, "train")))) == 10
    vocab = stats.vocabulary()
    vocab.save(root)
    assert LabelVocabulary.load(root) == vocab


def test_read_bytes_names_a_missing_remote_file():
    with pytest.raises(InputError, match="ram://nope/x.png: image does not exist"):
        io_utils.read_bytes("ram://nope/x.png", "image")


# ------------------------------------------------------------------ the CLI on S3
def _cli(args, env, cwd=None, check=True):
    proc = subprocess.run([sys.executable, "-m", "cnnrnn_tf.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, f"{args[0]} exited {proc.returncode}: {proc.stderr[-2000:]}"
    return proc


@pytest.fixture(scope="module")
def s3_trained(s3_server, tmp_path_factory):
    """Tiny data uploaded to S3, a CNN-RNN trained there with the CLI (s3:// in and out)."""
    from cnnrnn_tf.schema import write_records

    local = tmp_path_factory.mktemp("s3data")
    write_records(str(local / "train"), synthetic_records(48, seed=1), records_per_shard=16)
    write_records(str(local / "test"), synthetic_records(16, seed=2))
    bucket = s3_server.new_bucket()
    data = s3_server.upload_dir(str(local), bucket, "data")
    env = dict(os.environ, **s3_server.env, TF_CPP_MIN_LOG_LEVEL="3")
    for key in ("S3_ENDPOINT", "S3_USE_HTTPS", "S3_VERIFY_SSL"):
        env.pop(key, None)
    cwd = tmp_path_factory.mktemp("cwd")
    model = f"s3://{bucket}/models/m1"
    _cli(["train", "--train", f"{data}/train", "--eval", f"{data}/test", "--out", model,
          "--image-size", "32", "--epochs", "1", "--batch-size", "16", "--verbose", "0"],
         env, cwd=cwd)
    return dict(bucket=bucket, data=data, model=model, env=env, cwd=cwd, server=s3_server)


@pytest.mark.slow
def test_train_writes_model_dir_to_s3_and_nothing_local(s3_trained):
    keys = s3_trained["server"].keys(s3_trained["bucket"], "models/m1/")
    names = {k[len("models/m1/"):] for k in keys}
    for required in ("model.keras", "vocabulary.json", "config.json", "metrics.json",
                     "history.json", "saved_model/saved_model.pb",
                     "saved_model/assets/vocabulary.txt"):
        assert required in names, sorted(names)
    assert not any(".tmp-" in k or "/backup/" in k for k in keys), keys
    assert not any("tmp-export" in k for k in s3_trained["server"].keys(s3_trained["bucket"]))
    assert os.listdir(s3_trained["cwd"]) == []  # nothing written to the working folder


@pytest.mark.slow
def test_evaluate_predict_export_report_on_s3(s3_trained, tmp_path):
    env, model, data = s3_trained["env"], s3_trained["model"], s3_trained["data"]
    out = _cli(["evaluate", "--model", model, "--data", f"{data}/test", "--json"], env)
    metrics = json.loads(out.stdout)
    assert 0.0 <= metrics["mAP"] <= 1.0 and metrics["num_images"] == 16
    image = tmp_path / "x.png"
    image.write_bytes(png_bytes(synthetic_image(["red"], seed=5)))
    bucket = s3_trained["bucket"]
    s3_trained["server"].client().upload_file(str(image), bucket, "images/x.png")
    out = _cli(["predict", "--model", model, "--json", f"s3://{bucket}/images/x.png"], env)
    line = json.loads(out.stdout.splitlines()[0])
    assert line["image"] == f"s3://{bucket}/images/x.png" and line["labels"]
    _cli(["export", "--model", model, "--out", f"s3://{bucket}/serving/cnnrnn/1"], env)
    keys = s3_trained["server"].keys(bucket, "serving/cnnrnn/1/")
    assert "serving/cnnrnn/1/saved_model.pb" in keys
    loaded = _cli(["evaluate", "--model", model, "--data", f"{data}/test", "--json"], env)
    assert json.loads(loaded.stdout)["mAP"] == pytest.approx(metrics["mAP"])
    _cli(["report", "--model", model, "--data", f"{data}/test",
          "--out", f"s3://{bucket}/report"], env)
    report = s3_trained["server"].keys(bucket, "report/")
    assert "report/report.md" in report and any(k.endswith(".png") for k in report)


@pytest.mark.slow
def test_s3_bad_input_is_one_line_and_leaves_nothing(s3_trained):
    env, data = s3_trained["env"], s3_trained["data"]
    server = s3_trained["server"]
    # A bucket that does not exist.
    proc = _cli(["train", "--train", f"{data}/train", "--eval", f"{data}/test",
                 "--out", "s3://no-such-bucket-cnnrnn/m", "--epochs", "1", "--verbose", "0"],
                env, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "s3://no-such-bucket-cnnrnn" in lines[0], proc.stderr
    # Missing data on S3.
    proc = _cli(["evaluate", "--model", s3_trained["model"], "--data",
                 f"s3://{s3_trained['bucket']}/nothing-here"], env, check=False)
    assert proc.returncode == 2 and "nothing-here" in proc.stderr
    # An unknown scheme.
    proc = _cli(["evaluate", "--model", "foo://b/m", "--data", f"{data}/test"], env, check=False)
    assert proc.returncode == 2 and "unknown URI scheme" in proc.stderr
    # An unreachable endpoint: a clear error, no hang, nothing written.
    bad = dict(env, AWS_ENDPOINT_URL="http://127.0.0.1:9")
    proc = _cli(["data", "from-csv", "--csv", f"{data}/none.csv",
                 "--out", f"s3://{s3_trained['bucket']}/never"], bad, check=False)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert server.keys(s3_trained["bucket"], "never") == []
