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
