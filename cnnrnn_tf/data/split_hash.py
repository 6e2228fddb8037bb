"""A stable, salted hash that puts a record on one side of a split.

The key of a record is its ``image/id`` when it has one, else the record's own
bytes, so a record lands on the same side whatever shard, order or machine it is
read in, and re-serialising an example (which may reorder its features) does not
move it as long as its id stays. ``seed`` salts the hash: another seed gives
another, equally stable, split.

One hash serves both places that split: ``cnnrnn data split`` (val when the point is
below the val fraction) and the pipeline's ExampleGen (``pipeline/example_gen.py``),
which carves ``eval`` out of ``train`` (its first share, so a tenth carved there is the
val that ``cnnrnn data split --val-fraction 0.1`` writes) and splits one folder 8:1:1.
It imports only the standard library and TensorFlow's Example proto, so a Beam worker
can run it.
"""
from __future__ import annotations

import hashlib
import struct
from typing import Sequence, Tuple

from cnnrnn_tf.schema import ID_KEY

_SCALE = float(2 ** 64)


def record_key(record: bytes) -> bytes:
    """``image/id`` of a serialized tf.train.Example, or the record's bytes when it has
    no (non-empty) id or does not parse as an Example."""
    from tensorflow.core.example import example_pb2

    try:
        example = example_pb2.Example.FromString(record)
    except Exception:  # noqa: BLE001 - an unparseable record is hashed by its bytes
        return record
    feature = example.features.feature.get(ID_KEY)
    image_id = feature.bytes_list.value[0] if feature is not None and feature.bytes_list.value \
        else b""
    return key_of(image_id, record)


def key_of(image_id, record: bytes) -> bytes:
    """The hash key of a record whose ``image/id`` is already known (str or bytes): the id
    when it is non-empty, else the serialized record."""
    if isinstance(image_id, str):
        image_id = image_id.encode("utf-8")
    return image_id or record


def split_point(key: bytes, seed: int = 0) -> float:
    """A key's place in [0, 1): SHA-256 of the seed (8 bytes, big-endian) and the key, its
    first 8 bytes as a fraction. Uniform over keys, fixed for a (key, seed) pair."""
    digest = hashlib.sha256(struct.pack(">Q", int(seed)) + bytes(key)).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def split_fraction(record: bytes, seed: int = 0) -> float:
    """:func:`split_point` of a serialized record's key (:func:`record_key`)."""
    return split_point(record_key(record), seed)


def assign_split(record: bytes, shares: Sequence[Tuple[str, float]], seed: int = 0) -> str:
    """The name of the side a record falls on; ``shares`` are ``(name, weight)`` pairs
    (weights need not sum to 1: ``[("train", 8), ("eval", 1), ("test", 1)]``)."""
    if len(shares) == 1:
        return shares[0][0]
    total = float(sum(weight for _, weight in shares))
    point = split_fraction(record, seed) * total
    upper = 0.0
    for name, weight in shares:
        upper += weight
        if point < upper:
            return name
    return shares[-1][0]
