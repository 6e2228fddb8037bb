"""TF Serving warmup requests: ``<saved_model>/assets.extra/tf_serving_warmup_requests``.

TF Serving (with ``--enable_model_warmup``, on by default) replays these
PredictRequests when it loads a version, before the version takes traffic, so
the first real request does not pay for graph initialisation. The file is a
TFRecord of ``tensorflow_serving.apis.prediction_log_pb2.PredictionLog``
(at most 1000 records). ``cnnrnn serve`` replays it too.

Needs the serving extra (``tensorflow-serving-api``, imported here at module
level, so importing this module fails without it); the core export must not need
it, so call it guarded::

    try:
        from cnnrnn_tf.serving.warmup import write_warmup_requests
    except ImportError:   # no serving extra: export without warmup requests
        write_warmup_requests = None
"""
from __future__ import annotations

import json
import uuid
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2  # the serving extra

from cnnrnn_tf import schema, uri
from cnnrnn_tf.io_utils import remove_quietly
from cnnrnn_tf.errors import InputError

WARMUP_DIR = "assets.extra"
WARMUP_NAME = "tf_serving_warmup_requests"
MAX_RECORDS = 1000  # TF Serving refuses more
from cnnrnn_tf.serving.contract import INPUT_NAMES, SAVED_MODEL_PB  # noqa: E402
DEFAULT_IMAGE_SIZE = 64


def warmup_image(image_size: int) -> bytes:
    """A small deterministic PNG (a colour gradient) of ``image_size`` pixels a side."""
    ramp = np.linspace(0, 255, image_size, dtype=np.float32)
    pixels = np.stack([np.add.outer(ramp, ramp) / 2, np.tile(ramp, (image_size, 1)),
                       np.tile(ramp[:, None], (1, image_size))], axis=-1)
    return tf.io.encode_png(tf.constant(pixels.astype(np.uint8))).numpy()


def _guess_image_size(saved_model_dir: str) -> int:
    """MODEL_DIR/saved_model: MODEL_DIR/config.json says; otherwise DEFAULT_IMAGE_SIZE
    (any size works: the serving graph resizes, this only makes warmup realistic)."""
    config = uri.join(uri.dirname(str(saved_model_dir).rstrip("/")), "config.json")
    try:
        with tf.io.gfile.GFile(config, "r") as f:
            return int(json.loads(f.read())["train_config"]["image_size"])
    except (OSError, tf.errors.OpError, ValueError, KeyError, TypeError):
        return DEFAULT_IMAGE_SIZE


def warmup_requests(image_size: int, num_records: int = 1,
                    signatures: Sequence[str] = ("serving_default", "predict_images"),
                    batch_sizes: Sequence[int] = (1,), model_name: str = ""):
    """The PredictionLog records: ``num_records`` per (signature, batch size)."""
    image = warmup_image(image_size)
    example = schema.make_example(image, [], "warmup").SerializeToString()
    out = []
    for signature in signatures:
        if signature not in INPUT_NAMES:
            raise InputError(f"warmup signature {signature!r}: choose from {sorted(INPUT_NAMES)}")
        value = example if signature == "serving_default" else image
        for batch in batch_sizes:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = model_name
            request.model_spec.signature_name = signature
            request.inputs[INPUT_NAMES[signature]].CopyFrom(
                tf.make_tensor_proto([value] * int(batch), dtype=tf.string, shape=[int(batch)]))
            record = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            out.extend([record] * num_records)
    return out


def write_warmup_requests(saved_model_dir: str, num_records: int = 1,
                          image_size: Optional[int] = None,
                          signatures: Sequence[str] = ("serving_default", "predict_images"),
                          batch_sizes: Sequence[int] = (1,), model_name: str = "") -> str:
    """Writes ``assets.extra/tf_serving_warmup_requests`` into a SavedModel folder; returns it.

    ``num_records`` requests per signature and batch size, each with a generated
    PNG of ``image_size`` (default: from MODEL_DIR/config.json, else 64). The
    file is written under a temporary name and renamed, so a server polling the
    folder never reads half of it.
    """
    if not tf.io.gfile.exists(uri.join(saved_model_dir, SAVED_MODEL_PB)):
        raise InputError(f"{saved_model_dir}: not a SavedModel folder (no saved_model.pb)")
    if num_records < 1:
        raise InputError(f"num_records {num_records}: must be >= 1")
    if any(int(b) < 1 for b in batch_sizes) or not batch_sizes:
        raise InputError(f"batch sizes {list(batch_sizes)}: each must be >= 1")
    total = num_records * len(signatures) * len(batch_sizes)
    if total > MAX_RECORDS:
        raise InputError(f"{total} warmup records: TF Serving reads at most {MAX_RECORDS}")
    size = int(image_size or _guess_image_size(saved_model_dir))
    records = warmup_requests(size, num_records, signatures, batch_sizes, model_name)
    folder = uri.join(saved_model_dir, WARMUP_DIR)
    tf.io.gfile.makedirs(folder)
    path = uri.join(folder, WARMUP_NAME)
    tmp = uri.join(folder, f".{WARMUP_NAME}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with tf.io.TFRecordWriter(tmp) as writer:  # uncompressed, as TF Serving reads it
            for record in records:
                writer.write(record.SerializeToString())
        tf.io.gfile.rename(tmp, path, overwrite=True)
    finally:
        remove_quietly(tmp)
    return path


def read_warmup_requests(path: str):
    """The PredictionLog records of a warmup file (for checks and tests)."""
    out = []
    for raw in tf.data.TFRecordDataset(path).as_numpy_iterator():
        record = prediction_log_pb2.PredictionLog()
        record.ParseFromString(raw)
        out.append(record)
    return out
