"""The converters' images read, checked and written by an Apache Beam pipeline.

:func:`write_with_beam` is what ``convert_csv`` / ``convert_coco`` /
``convert_voc`` call with ``beam=True`` (``cnnrnn data from-* --beam``). The
annotations were parsed in the driver into a list of
:class:`~cnnrnn_tf.data.writing.ImageItem`; this module

1. cuts that list into contiguous runs of ``records_per_shard`` items (the
   shards the single-process writer would write, so the shard count is known
   before the pipeline starts) and writes one small task file per shard
   (JSON lines) into a temporary folder ``OUT/.beam-tmp-<token>/``;
2. runs ``Create(shard numbers) | Reshuffle | Map(write_shard)``: each call reads
   its task file, reads and checks its images
   (:func:`~cnnrnn_tf.data.writing.read_checked_image`), writes one GZIP
   TFRecord shard and a JSON file of its counts (examples, labels, bad images).
   Only shard numbers travel through Beam, never image bytes, so no shuffle
   holds the data and a worker holds one image at a time;
3. back in the driver: reads the counts, fails (``on_bad_image="fail"``: the
   first bad image in item order, the same message as the single-process path;
   a shard stops at its first bad image, but the other shards run to their end
   before the error is reported; or when nothing was written), else renames the non-empty shards into ``OUT``
   as ``data-00000-of-0000N.tfrecord.gz`` and writes ``label_counts.json`` (and
   ``skipped.csv``). The temporary folder is removed in every case, and on an
   error whatever was published is removed again (as the single-process path).

Every file is touched through ``tf.io.gfile`` (in the workers too), so the
images, the output and the temporary folder may be ``s3://`` / ``gs://`` URIs;
Beam's own file systems are not used. Without pipeline arguments the local
DirectRunner runs in ``multi_processing`` mode with ``direct_num_workers``
worker processes; ``--runner=...`` (Dataflow, Flink, Spark) and any other
option pass through unchanged. A runner that retries a bundle rewrites the same
shard under the same name: the result does not change.

The records written are those of the single-process path; without skipped
images the shards are byte for byte the same. With skipped images a shard holds
fewer records (an empty one is dropped and the rest renumbered).
"""
from __future__ import annotations

import json
import logging
import math
import os
import uuid
from collections import Counter
from typing import Dict, List, Sequence

import tensorflow as tf

from cnnrnn_tf import uri
from cnnrnn_tf.errors import InputError
from cnnrnn_tf.io_utils import makedirs, read_text, remove_quietly, write_json, write_text_atomic
from cnnrnn_tf.schema import COMPRESSION, SHARD_SUFFIX, make_example

TMP_PREFIX = ".beam-tmp-"


def pipeline_args(beam_args: Sequence[str] = (), direct_num_workers: int = 2) -> List[str]:
    """The user's Beam arguments, after the local defaults they do not override.

    Defaults: ``--direct_running_mode=multi_processing`` (unless a ``--runner`` or
    ``--direct_running_mode`` is given) and ``--direct_num_workers=N`` (unless given, or
    the running mode is ``in_memory``, which has one worker).
    """
    args = list(beam_args)
    given = {a.split("=", 1)[0] for a in args}
    defaults = []
    if not any(a.startswith(("--runner", "--direct_running_mode")) for a in args):
        defaults.append("--direct_running_mode=multi_processing")
    if "--direct_num_workers" not in given and "--direct_running_mode=in_memory" not in args:
        defaults.append(f"--direct_num_workers={int(direct_num_workers)}")
    return defaults + args


def _import_beam():
    try:
        import apache_beam as beam
    except ImportError:
        raise InputError("--beam needs Apache Beam: pip install 'cnnrnn-tf[beam]'") from None
    return beam


def _task_path(tmp: str, shard: int) -> str:
    return uri.join(tmp, "tasks", f"shard-{shard:05d}.jsonl")


def _shard_path(tmp: str, shard: int) -> str:
    return uri.join(tmp, "shards", f"shard-{shard:05d}{SHARD_SUFFIX}")


def _stats_path(tmp: str, shard: int) -> str:
    return uri.join(tmp, "stats", f"shard-{shard:05d}.json")


def write_tasks(tmp: str, items, records_per_shard: int) -> int:
    """Writes one task file per shard (JSON lines: index, path, labels, id, where); the count."""
    num_shards = math.ceil(len(items) / records_per_shard)
    for folder in ("tasks", "shards", "stats"):
        makedirs(uri.join(tmp, folder), "temporary folder")
    for shard in range(num_shards):
        start = shard * records_per_shard
        lines = [json.dumps([start + i, *item], ensure_ascii=False)
                 for i, item in enumerate(items[start:start + records_per_shard])]
        write_text_atomic(_task_path(tmp, shard), "\n".join(lines) + "\n")
    return num_shards


def write_shard(shard: int, tmp: str, on_bad_image: str) -> int:
    """One Beam element: reads shard ``shard``'s task file, writes its shard and counts.

    Returns the number of records written. Under ``on_bad_image="fail"`` it stops at
    the shard's first bad image (the driver reports it).
    """
    from cnnrnn_tf.data import writing  # the module attribute, so tests can patch it

    items = []
    for line in read_text(_task_path(tmp, shard), "task file").splitlines():
        if line:
            index, path, labels, image_id, where = json.loads(line)
            items.append((index, writing.ImageItem(path, tuple(labels), image_id, where)))
    labels: Counter = Counter()
    bad = []
    count = 0
    final = _shard_path(tmp, shard)
    partial = f"{final}.tmp-{uuid.uuid4().hex[:8]}"
    with tf.io.TFRecordWriter(partial, options=COMPRESSION) as writer:
        for index, item in items:
            try:
                image = writing.read_checked_image(item.path, item.where)
            except writing.BadImageError as exc:
                bad.append(writing.BadImage.from_error(index, item, exc))
                if on_bad_image == "fail":
                    break
                continue
            example = make_example(image, item.labels, item.image_id)
            writer.write(example.SerializeToString(deterministic=True))
            labels.update(item.labels)
            count += 1
    tf.io.gfile.rename(partial, final, overwrite=True)  # a retried bundle: the same bytes
    write_json(_stats_path(tmp, shard), {
        "count": count, "label_counts": dict(labels), "bad": [list(b) for b in bad]})
    return count


def run_pipeline(tmp: str, num_shards: int, on_bad_image: str, args: Sequence[str]) -> None:
    """Runs ``Create(range(num_shards)) | Reshuffle | Map(write_shard)`` and waits."""
    beam = _import_beam()
    from apache_beam.options.pipeline_options import PipelineOptions

    options = PipelineOptions(list(args))
    try:
        with beam.Pipeline(options=options) as pipeline:
            _ = (pipeline
                 | "Shards" >> beam.Create(list(range(num_shards)))
                 | "Spread" >> beam.Reshuffle()
                 | "WriteShard" >> beam.Map(write_shard, tmp, on_bad_image))
    except Exception as exc:
        # A worker's error reaches the driver as a whole traceback in the message (its
        # last line is the error itself): keep that line first, the rest as the cause.
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise RuntimeError(f"the Beam pipeline failed: {lines[-1] if lines else exc!r}") from exc


def _read_stats(tmp: str, num_shards: int) -> List[Dict]:
    from cnnrnn_tf.io_utils import read_json

    stats = []
    for shard in range(num_shards):
        path = _stats_path(tmp, shard)
        if not tf.io.gfile.exists(path):
            raise RuntimeError(f"the Beam pipeline finished without writing {path}")
        stats.append(read_json(path, "shard counts"))
    return stats


def write_with_beam(items, out_dir: str, *, records_per_shard: int, on_bad_image: str = "fail",
                    beam_args: Sequence[str] = (), direct_num_workers: int = 2):
    """Writes ``items`` (ImageItems) as shards in ``out_dir`` with Beam; see the module docstring.

    Returns a :class:`~cnnrnn_tf.data.writing.WriteResult`.
    """
    from cnnrnn_tf.data import writing

    _import_beam()  # fail before anything is written
    writing.check_no_shards(out_dir)
    args = pipeline_args(beam_args, direct_num_workers)
    with writing.output_guard(out_dir) as published:
        makedirs(out_dir, "output folder")
        tmp = uri.join(out_dir, f"{TMP_PREFIX}{uuid.uuid4().hex[:8]}")
        try:
            num_shards = write_tasks(tmp, items, records_per_shard)
            run_pipeline(tmp, num_shards, on_bad_image, args)
            stats = _read_stats(tmp, num_shards)
            bad = sorted((writing.BadImage(*b) for s in stats for b in s["bad"]),
                         key=lambda b: b.index)
            if bad and on_bad_image == "fail":
                more = f" (and {len(bad) - 1} more bad image files)" if len(bad) > 1 else ""
                raise writing.BadImageError(bad[0].message + more, bad[0].path, bad[0].reason)
            keep = [shard for shard in range(num_shards) if stats[shard]["count"]]
            if not keep:
                raise InputError(writing.all_bad_message(bad))
            shards = []
            for i, shard in enumerate(keep):
                dst = uri.join(out_dir, f"data-{i:05d}-of-{len(keep):05d}{SHARD_SUFFIX}")
                tf.io.gfile.rename(_shard_path(tmp, shard), dst, overwrite=False)
                published.append(dst)
                shards.append(dst)
            labels: Counter = Counter()
            for s in stats:
                labels.update(s["label_counts"])
            result = writing.WriteResult(
                sum(s["count"] for s in stats), dict(sorted(labels.items())), tuple(shards),
                tuple(bad))
            sidecars = writing.write_sidecar_files(out_dir, result)
            published.extend(sidecars)
        finally:
            remove_quietly(tmp)
    return result._replace(report=sidecars[0] if bad else "")


def quiet_beam_logging() -> None:
    """Beam's DirectRunner logs every worker's start-up warnings, and a failed element's
    traceback several times over; the CLI reports the error once (CNNRNN_DEBUG=1: all)."""
    if not os.environ.get("CNNRNN_DEBUG"):
        logging.getLogger("apache_beam").setLevel(logging.CRITICAL)
