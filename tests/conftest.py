"""Shared fixtures: tiny generated images and data folders (no downloads)."""
import io
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
from PIL import Image


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG")
    return buf.getvalue()


SHAPES = ("red", "green", "blue", "bar")


def synthetic_image(labels, size=32, seed=0) -> np.ndarray:
    """A 32x32 RGB image whose content depends on its labels (learnable)."""
    rng = np.random.RandomState(seed)
    img = (rng.rand(size, size, 3) * 40).astype(np.uint8)
    h = size // 2
    if "red" in labels:
        img[:h, :h, 0] = 220
    if "green" in labels:
        img[:h, h:, 1] = 220
    if "blue" in labels:
        img[h:, :h, 2] = 220
    if "bar" in labels:
        img[h:, h:, :] = 200
    return img


def synthetic_records(n, seed=0):
    """Records with label dependencies: 'bar' appears only with 'blue'."""
    from cnnrnn_tf.schema import Record

    rng = np.random.RandomState(seed)
    out = []
    for i in range(n):
        labels = [s for s in ("red", "green", "blue") if rng.rand() < 0.5] or ["red"]
        if "blue" in labels and rng.rand() < 0.6:
            labels.append("bar")
        out.append(Record(png_bytes(synthetic_image(labels, seed=seed * 100003 + i)), labels, f"img{i}"))
    return out


@pytest.fixture
def tiny_data(tmp_path):
    """A data folder pair (train/, test/) of tiny synthetic examples."""
    from cnnrnn_tf.schema import write_records

    write_records(str(tmp_path / "train"), synthetic_records(64, seed=1), records_per_shard=32)
    write_records(str(tmp_path / "test"), synthetic_records(24, seed=2))
    return tmp_path


@pytest.fixture(scope="session")
def s3_server():
    """One moto S3 server on localhost for the session (see tests/s3_server.py)."""
    pytest.importorskip("moto")
    from tests.s3_server import S3Server

    server = S3Server.start()
    yield server
    server.stop()


@pytest.fixture
def s3(s3_server, monkeypatch):
    """The S3 server with its AWS_* variables set for this process and a fresh bucket.

    ``s3.bucket`` is the bucket name; ``s3.env`` the variables for subprocesses.
    """
    for key in ("S3_ENDPOINT", "S3_USE_HTTPS", "S3_VERIFY_SSL"):
        monkeypatch.delenv(key, raising=False)
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    from cnnrnn_tf.uri import s3_environment

    for key, value in s3_environment().items():
        monkeypatch.setenv(key, value)
    s3_server.bucket = s3_server.new_bucket()
    return s3_server


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """One tiny trained MODEL_DIR (with saved_model/) for the whole session: read it, never
    write into it (copy its saved_model/ to serve it)."""
    from tests.reliability_helpers import build_tiny_model_dir

    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny_model"))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """tensorflow-io's S3 file system can abort at interpreter exit ("pure virtual method
    called", status 134) after all work succeeded; leave with pytest's own status instead."""
    import sys

    if "tensorflow_io" in sys.modules:
        status = getattr(config, "_cnnrnn_exitstatus", 0)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(int(status))


def pytest_sessionfinish(session, exitstatus):
    session.config._cnnrnn_exitstatus = int(exitstatus)
