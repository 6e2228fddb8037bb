"""The tf.Example schema, and reading / writing GZIP TFRecord shards.

This module owns the on-disk format that every other part (converters,
training, the TFX pipeline, serving) shares:

* ``image/encoded``: bytes, one value, a PNG or JPEG file's bytes (required);
* ``image/labels``: bytes, one UTF-8 label name per value (at least one);
* ``image/id``: bytes, one value (optional).

A data folder is a directory of ``*.tfrecord.gz`` shards (GZIP TFRecord).
Shards are written under a temporary name and renamed when complete, so a
reader never sees a partial shard.
"""
from __future__ import annotations

import os
import uuid
from typing import Iterable, Iterator, List, NamedTuple, Optional, Sequence

import tensorflow as tf

from cnnrnn_tf import uri
from cnnrnn_tf.errors import InputError

# Images larger than this (either side, in pixels) are refused rather than
# decoded: a 20000x20000 RGB image would take 1.2 GB before resizing. The side is
# read from the PNG / JPEG / GIF / BMP header first (inputs.images.image_header_side), so
# a file whose header claims 100000x100000 is refused without allocating its pixels.
MAX_IMAGE_SIDE = 8192
# 16 MP in all (4096 x 4096): the decoded RGB image then takes at most 48 MiB.
MAX_IMAGE_PIXELS = 16 * 1024 * 1024
TOO_LARGE_MESSAGE = (f"image too large: at most {MAX_IMAGE_SIDE} pixels a side and "
                     f"{MAX_IMAGE_PIXELS} pixels in all")


def image_too_large(width: int, height: int) -> bool:
    """The Python side of the size limits (converters, Pillow checks)."""
    return max(width, height) > MAX_IMAGE_SIDE or width * height > MAX_IMAGE_PIXELS


IMAGE_KEY = "image/encoded"
LABELS_KEY = "image/labels"
ID_KEY = "image/id"
SHARD_SUFFIX = ".tfrecord.gz"
SHARD_GLOB = "*" + SHARD_SUFFIX
COMPRESSION = "GZIP"
# Partial shards carry this infix until they are complete; readers skip them.
_TMP_INFIX = ".tmp-"

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"


class Record(NamedTuple):
    """One example in Python form."""

    image: bytes
    labels: List[str]
    image_id: Optional[str] = None


def image_format(data: bytes) -> Optional[str]:
    """Returns "png" or "jpeg" from the magic bytes, else None."""
    if data.startswith(PNG_MAGIC):
        return "png"
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    return None


def validate_label(label: str, where: str = "label") -> str:
    """Checks one label name; returns it stripped."""
    if not isinstance(label, str):
        raise InputError(f"{where}: label {label!r} is not a string")
    name = label.strip()
    if not name:
        raise InputError(f"{where}: empty label name")
    if any(ch in name for ch in "\n\r\t\x00"):
        raise InputError(f"{where}: label {name!r} contains a control character")
    if len(name.encode("utf-8")) > 256:
        raise InputError(f"{where}: label {name[:40]!r}... is longer than 256 bytes")
    return name


def make_example(
    image: bytes, labels: Sequence[str], image_id: Optional[str] = None
) -> tf.train.Example:
    """Builds a tf.train.Example in the project schema.

    Labels are kept in the order given, with duplicates removed.
    """
    if not isinstance(image, (bytes, bytearray)) or not image:
        raise InputError(f"{image_id or 'example'}: image bytes are empty")
    where = image_id or "example"
    clean: List[str] = []
    for label in labels:
        name = validate_label(label, where)
        if name not in clean:
            clean.append(name)
    feature = {
        IMAGE_KEY: tf.train.Feature(bytes_list=tf.train.BytesList(value=[bytes(image)])),
        LABELS_KEY: tf.train.Feature(
            bytes_list=tf.train.BytesList(value=[n.encode("utf-8") for n in clean])
        ),
    }
    if image_id is not None:
        feature[ID_KEY] = tf.train.Feature(
            bytes_list=tf.train.BytesList(value=[str(image_id).encode("utf-8")])
        )
    return tf.train.Example(features=tf.train.Features(feature=feature))


def parse_example_proto(serialized: bytes, where: str = "record") -> Record:
    """Parses one serialized example in Python, with clear errors."""
    example = tf.train.Example()
    try:
        example.ParseFromString(serialized)
    except Exception as exc:  # protobuf raises DecodeError
        raise InputError(f"{where}: not a serialized tf.train.Example ({exc})") from None
    feats = example.features.feature
    if IMAGE_KEY not in feats or not feats[IMAGE_KEY].bytes_list.value:
        raise InputError(f"{where}: missing feature {IMAGE_KEY!r}")
    labels = []
    for raw in feats[LABELS_KEY].bytes_list.value if LABELS_KEY in feats else []:
        try:
            labels.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise InputError(f"{where}: a value of {LABELS_KEY!r} is not UTF-8") from None
    image_id = None
    if ID_KEY in feats and feats[ID_KEY].bytes_list.value:
        image_id = feats[ID_KEY].bytes_list.value[0].decode("utf-8", "replace")
    return Record(feats[IMAGE_KEY].bytes_list.value[0], labels, image_id)


# Feature spec for tf.io.parse_example (used in tf.data and in the serving graph).
def feature_spec(require_labels: bool = True) -> dict:
    spec = {
        IMAGE_KEY: tf.io.FixedLenFeature([], tf.string),
        ID_KEY: tf.io.FixedLenFeature([], tf.string, default_value=""),
    }
    if require_labels:
        spec[LABELS_KEY] = tf.io.VarLenFeature(tf.string)
    return spec


def list_shards(data_dir: str) -> List[str]:
    """Returns the sorted shard paths of a data folder, or raises InputError."""
    if not data_dir:
        raise InputError("data folder: no path given")
    if not tf.io.gfile.exists(data_dir):
        raise InputError(f"{data_dir}: data folder does not exist")
    if not tf.io.gfile.isdir(data_dir):
        raise InputError(f"{data_dir}: not a folder (expected a folder of {SHARD_GLOB} shards)")
    paths = sorted(
        p
        for p in tf.io.gfile.glob(uri.join(data_dir, SHARD_GLOB))
        if _TMP_INFIX not in uri.basename(p)
    )
    if not paths:
        raise InputError(f"{data_dir}: no {SHARD_GLOB} shards in this folder")
    return paths


def iter_records(data_dir_or_files) -> Iterator[Record]:
    """Yields the records of a data folder (or a list of shard files), in order.

    Corrupt shards and malformed records raise InputError naming the shard.
    Records without labels are yielded as they are (prediction data may have none).
    """
    files = (
        list_shards(data_dir_or_files)
        if isinstance(data_dir_or_files, (str, os.PathLike))
        else list(data_dir_or_files)
    )
    for path in files:
        dataset = tf.data.TFRecordDataset(path, compression_type=COMPRESSION)
        index = 0
        try:
            for serialized in dataset.as_numpy_iterator():
                yield parse_example_proto(serialized, f"{path} record {index}")
                index += 1
        except tf.errors.OpError as exc:
            raise InputError(
                f"{path}: corrupt or not a GZIP TFRecord shard (after {index} records: "
                f"{exc.message.splitlines()[0]})"
            ) from None


class ShardWriter:
    """Writes examples into ``num_shards``-style GZIP shards, atomically.

    Use as a context manager. Records go to temporary files that are renamed to
    ``<prefix>-00000-of-00004.tfrecord.gz`` only when the writer closes without
    an exception; on an exception (or KeyboardInterrupt) the temporary files
    are deleted and nothing is left behind.
    """

    def __init__(self, out_dir: str, prefix: str = "data", records_per_shard: int = 2048):
        if records_per_shard < 1:
            raise ValueError("records_per_shard must be >= 1")
        self.out_dir = out_dir
        self.prefix = prefix
        self.records_per_shard = records_per_shard
        self._token = uuid.uuid4().hex[:8]
        self._tmp_paths: List[str] = []
        self._writer: Optional[tf.io.TFRecordWriter] = None
        self._in_shard = 0
        self.count = 0

    def __enter__(self) -> "ShardWriter":
        uri.ensure_filesystem(self.out_dir)
        try:
            if tf.io.gfile.exists(self.out_dir) and not tf.io.gfile.isdir(self.out_dir):
                raise InputError(f"{self.out_dir}: exists and is not a folder")
            tf.io.gfile.makedirs(self.out_dir)
            existing = tf.io.gfile.glob(uri.join(self.out_dir, f"{self.prefix}-*{SHARD_SUFFIX}"))
        except tf.errors.OpError as exc:
            raise uri.storage_error(self.out_dir, exc, "output folder cannot be written") \
                from None
        if existing:
            raise InputError(
                f"{self.out_dir}: already holds {self.prefix}-*{SHARD_SUFFIX} shards; "
                "choose an empty output folder"
            )
        return self

    def _open_next(self) -> None:
        if self._writer is not None:
            self._writer.close()
        path = uri.join(
            self.out_dir, f"{self.prefix}-{len(self._tmp_paths):05d}{_TMP_INFIX}{self._token}"
        )
        self._tmp_paths.append(path)
        self._writer = tf.io.TFRecordWriter(path, options=COMPRESSION)
        self._in_shard = 0

    def write(self, example: tf.train.Example) -> None:
        if self._writer is None or self._in_shard >= self.records_per_shard:
            self._open_next()
        self._writer.write(example.SerializeToString(deterministic=True))
        self._in_shard += 1
        self.count += 1

    def write_record(self, image: bytes, labels: Sequence[str], image_id: Optional[str] = None):
        self.write(make_example(image, labels, image_id))

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        for path in self._tmp_paths:
            if tf.io.gfile.exists(path):
                tf.io.gfile.remove(path)
        self._tmp_paths = []

    def close(self) -> List[str]:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        total = len(self._tmp_paths)
        final = []
        for i, tmp in enumerate(self._tmp_paths):
            dst = uri.join(
                self.out_dir, f"{self.prefix}-{i:05d}-of-{total:05d}{SHARD_SUFFIX}"
            )
            tf.io.gfile.rename(tmp, dst, overwrite=False)
            final.append(dst)
        self._tmp_paths = []
        return final

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            if self.count == 0:
                self.abort()
                raise InputError(f"{self.out_dir}: no examples to write")
            self.paths = self.close()
        else:
            self.abort()


def write_records(out_dir: str, records: Iterable[Record], prefix: str = "data",
                  records_per_shard: int = 2048) -> int:
    """Writes records to shards in out_dir atomically; returns the count."""
    with ShardWriter(out_dir, prefix, records_per_shard) as writer:
        for rec in records:
            writer.write_record(rec.image, rec.labels, rec.image_id)
    return writer.count
