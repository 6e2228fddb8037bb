"""Carving a validation split out of a training folder: ``cnnrnn data split``.

For data that comes as train + test only (MS-COCO's train and val, for
example: convert COCO val as the test split, then carve val from COCO train),
:func:`split_train_val` reads a data folder and writes ``OUT/train`` and
``OUT/val``.

* Each record's side is a stable hash (:func:`val_point`): SHA-256 of the seed
  (8 bytes, big-endian) followed by the record's ``image/id``, or by the
  record's bytes when it has no id. Its first 8 bytes, read as a fraction of
  2**64, put the record in val when below ``val_fraction``. So the same input
  and seed always give the same split, whatever the shard layout or order, and
  records that share an id stay on one side.
* Records are copied byte for byte (never parsed and serialised again), in
  input order, into GZIP ``*.tfrecord.gz`` shards (``train-00000-of-00001``,
  ``val-...``), with a ``label_counts.json`` beside them.
* Nothing half-written: both sides are written under temporary shard names and
  renamed only once every record was read; on any error nothing is left
  behind. A side that would be empty, a fraction outside (0, 1), an output
  folder that already holds shards, and a corrupt or non-TFRecord input file
  are refused with one line naming it. A training label without any val
  example is logged as one warning line.
* Every path may be a URI (``s3://``, ``gs://``, ``ram://``).
"""
from __future__ import annotations

import logging
import math
from collections import Counter
from typing import Dict, Iterator, Tuple

import numpy as np
import tensorflow as tf

from cnnrnn_tf import uri
from cnnrnn_tf.data.writing import (
    DEFAULT_RECORDS_PER_SHARD,
    LABEL_COUNTS_FILE,
    ConversionSummary,
    check_no_shards,
    output_guard,
    write_label_counts,
)
from cnnrnn_tf.errors import InputError
from cnnrnn_tf.data.split_hash import key_of
from cnnrnn_tf.data.split_hash import split_point as val_point  # noqa: F401 (exported)
from cnnrnn_tf.schema import COMPRESSION, ShardWriter, list_shards, parse_example_proto

log = logging.getLogger(__name__)

SIDES: Tuple[str, str] = ("train", "val")
_READ_BATCH = 256


def _check_fraction(val_fraction) -> float:
    ok = (isinstance(val_fraction, (int, float, np.integer, np.floating))
          and not isinstance(val_fraction, bool)
          and math.isfinite(float(val_fraction)) and 0.0 < float(val_fraction) < 1.0)
    if not ok:
        raise InputError(f"--val-fraction: must be between 0 and 1 (exclusive), "
                         f"got {val_fraction!r}")
    return float(val_fraction)


class _RawShardWriter(ShardWriter):
    """A ShardWriter that writes serialized records as they are (no re-serialisation)."""

    def write_serialized(self, serialized: bytes) -> None:
        if self._writer is None or self._in_shard >= self.records_per_shard:
            self._open_next()
        self._writer.write(serialized)
        self._in_shard += 1
        self.count += 1


def _read(files) -> Iterator[Tuple[str, int, bytes]]:
    """(shard, index, serialized record) for every record; a bad file -> InputError naming it."""
    for path in files:
        index = 0
        try:
            dataset = tf.data.TFRecordDataset(path, compression_type=COMPRESSION)
            for batch in dataset.batch(_READ_BATCH).as_numpy_iterator():  # fewer eager steps
                for serialized in batch:
                    yield path, index, serialized
                    index += 1
        except tf.errors.OpError as exc:
            detail = (exc.message or type(exc).__name__).strip().splitlines()[0][:200]
            raise InputError(f"{path}: corrupt or not a GZIP TFRecord shard (after {index} "
                             f"records: {detail})") from None


def split_train_val(
    data_dir: str,
    out_dir: str,
    val_fraction: float,
    *,
    seed: int = 0,
    records_per_shard: int = DEFAULT_RECORDS_PER_SHARD,
) -> Dict[str, ConversionSummary]:
    """Splits the records of ``data_dir`` into ``out_dir/train`` and ``out_dir/val``.

    About ``val_fraction`` of the records go to val, chosen by :func:`val_point`
    with ``seed`` (see the module docstring). Records are copied byte for byte.

    Returns:
        {"train": ConversionSummary, "val": ConversionSummary}.

    Raises:
        InputError: a fraction outside (0, 1), a split that leaves a side empty,
            an input folder without shards, a corrupt shard or a record that is
            not a tf.train.Example, an output folder that already holds shards.
    """
    val_fraction = _check_fraction(val_fraction)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2 ** 64:
        raise InputError(f"--seed: must be a non-negative integer, got {seed!r}")
    data_dir, out_dir = str(data_dir), str(out_dir)
    uri.ensure_filesystem(data_dir)
    uri.ensure_filesystem(out_dir)
    files = list_shards(data_dir)
    dirs = {side: uri.join(out_dir, side) for side in SIDES}
    for side_dir in dirs.values():
        check_no_shards(side_dir)
    writers = {side: _RawShardWriter(dirs[side], prefix=side, records_per_shard=records_per_shard)
               for side in SIDES}
    label_counts: Dict[str, Counter] = {side: Counter() for side in SIDES}
    with output_guard(out_dir, *dirs.values()) as written:
        try:
            with writers["train"], writers["val"]:
                for path, index, serialized in _read(files):
                    record = parse_example_proto(serialized, f"{path} record {index}")
                    key = key_of(record.image_id, serialized)
                    side = "val" if val_point(key, seed) < val_fraction else "train"
                    writers[side].write_serialized(serialized)
                    label_counts[side].update(dict.fromkeys(record.labels, 1))
                _check_sides(data_dir, val_fraction, writers)
        finally:  # shards published before a failure are removed again by output_guard
            for writer in writers.values():
                written.extend(getattr(writer, "paths", ()))
        summaries = {}
        for side in SIDES:
            writer = writers[side]
            counts_file = uri.join(dirs[side], LABEL_COUNTS_FILE)
            write_label_counts(counts_file, writer.count, label_counts[side], writer.paths)
            written.append(counts_file)
            summaries[side] = ConversionSummary(dirs[side], writer.count, 0,
                                                dict(sorted(label_counts[side].items())),
                                                tuple(writer.paths))
    missing = sorted(set(label_counts["train"]) - set(label_counts["val"]))
    if missing:
        shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10
                                           else "")
        log.warning("%s: val has no example of %d training label%s (%s); a larger "
                    "--val-fraction gives val more of them", dirs["val"], len(missing),
                    "s" if len(missing) != 1 else "", shown)
    return summaries


def _check_sides(data_dir: str, val_fraction: float, writers) -> None:
    total = sum(w.count for w in writers.values())
    for side, writer in writers.items():
        if writer.count == 0:
            raise InputError(
                f"--val-fraction {val_fraction:g}: puts none of the {total} records of {data_dir} "
                f"in {side}; choose a {'larger' if side == 'val' else 'smaller'} fraction")
