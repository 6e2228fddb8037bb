"""The pipeline's ExampleGen: always the splits ``train``, ``eval`` and ``test``.

Three splits, three jobs: the Trainer fits on ``train``, selection (the
Trainer's validation, the Evaluator's blessing) reads ``eval``, and ``test`` is
scored once, for the report. The layout of ``input_base`` is detected when the
component *runs* (not when the pipeline is built or compiled), so a compiled
pipeline whose ``data_root`` is overridden at submission works with any of:

* ``train/ val/ test/`` folders: read as they are (``val/`` becomes ``eval``);
* ``train/ test/`` folders (the layout of cnnrnn_tf <= 0.4.0): ``eval`` is
  carved out of ``train`` (1 in :data:`CARVE_EVAL_EVERY` by hash), and the run
  says so in one log line;
* one folder of ``*.tfrecord.gz`` shards: hash-split 8:1:1.

A stock ImportExampleGen cannot do the second: it either reads input splits as
they are or hash-splits one input. :class:`Executor` is a custom executor for
TFX's ``FileBasedExampleGen`` (``custom_executor_spec``; ImportExampleGen's base
class), so the step keeps ImportExampleGen's node id, its driver (which
fingerprints every shard of all three layouts for the cache: :data:`INPUT_CONFIG`)
and its place in the Kubeflow V2 compiler.

Records are copied byte for byte (never re-serialised). The side of a record is
:func:`cnnrnn_tf.data.split_hash.assign_split`: a hash of its ``image/id`` (else of
its bytes) salted with :data:`SPLIT_SEED`, so the same data always gives the same
splits. A split left empty (e.g. three examples hash-split 8:1:1) fails the run
with one line naming it. Every path may be a URI (``s3://``, ``gs://``): the
layout is read through ``tf.io.gfile`` and the records through Beam's file systems.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any, Dict, List, Sequence, Tuple

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from tfx.components.example_gen import write_split
from tfx.components.util import examples_utils
from tfx.dsl.components.base import base_beam_executor, executor_spec
from tfx.dsl.io import fileio
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, standard_component_specs

from cnnrnn_tf import schema, uri
from cnnrnn_tf.errors import InputError
from cnnrnn_tf.data.split_hash import assign_split

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "eval", "test")
# Folder names inside input_base; VAL_DIR becomes the split "eval".
TRAIN_DIR, VAL_DIR, TEST_DIR = "train", "val", "test"
LAYOUTS = ("train-val-test", "train-test", "single")
SPLIT_SEED = 0
# train/ + test/: every CARVE_EVAL_EVERY-th train example (by hash) goes to eval.
CARVE_EVAL_EVERY = 10
# The carved sides first: a record whose hash point is below 0.1 goes to eval, as
# `cnnrnn data split --val-fraction 0.1` puts it in val (cnnrnn_tf.data.split_hash).
SINGLE_SHARES = (("eval", 1), ("test", 1), ("train", 8))
CARVE_SHARES = (("eval", 1), ("train", CARVE_EVAL_EVERY - 1))
# The driver fingerprints these patterns (missing ones count as 0 files), so any change
# to the shards of any layout re-runs ExampleGen; the executor ignores the patterns.
INPUT_CONFIG = example_gen_pb2.Input(splits=[
    example_gen_pb2.Input.Split(name="single", pattern=schema.SHARD_GLOB),
    *(example_gen_pb2.Input.Split(name=d, pattern=f"{d}/{schema.SHARD_GLOB}")
      for d in (TRAIN_DIR, VAL_DIR, TEST_DIR))])
COUNTS_DIR = ".split_counts"
COUNTS_PROPERTY = "split_counts"


@dataclasses.dataclass(frozen=True)
class Source:
    """One folder of shards and the ``(split, weight)`` shares its records go to."""
    folder: str
    files: Tuple[str, ...]
    shares: Tuple[Tuple[str, int], ...]


@dataclasses.dataclass(frozen=True)
class Layout:
    name: str                       # one of LAYOUTS
    sources: Tuple[Source, ...]

    def describe(self, data: str) -> str:
        """One line saying how ``data`` becomes the three splits."""
        if self.name == "train-val-test":
            return f"{data}: train/, val/ and test/ are the splits train, eval and test"
        if self.name == "train-test":
            return (f"{data} has train/ and test/ but no val/: eval is carved out of train "
                    f"(1 in {CARVE_EVAL_EVERY} examples, by a hash of image/id, seed "
                    f"{SPLIT_SEED}); test/ is the test split")
        return (f"{data}: one folder of shards, hash-split 8:1:1 into train, eval and test "
                f"(by image/id, seed {SPLIT_SEED})")


def detect_layout(data: str) -> Layout:
    """The layout of a data folder (a path or URI); InputError with one line when it has none."""
    import tensorflow as tf

    if not data:
        raise InputError("--data: no folder given")
    uri.ensure_filesystem(data)
    try:
        exists = tf.io.gfile.exists(data)
        is_dir = exists and tf.io.gfile.isdir(data)
        present = {d: is_dir and tf.io.gfile.isdir(uri.join(data, d))
                   for d in (TRAIN_DIR, VAL_DIR, TEST_DIR)}
    except tf.errors.OpError as exc:
        raise uri.storage_error(data, exc, "--data cannot be read") from None
    if not exists:
        raise InputError(f"--data {data}: folder does not exist")
    if not is_dir:
        raise InputError(f"--data {data}: not a folder")
    if any(present.values()):
        for needed in (TRAIN_DIR, TEST_DIR):
            if not present[needed]:
                have = "/, ".join(d for d, ok in present.items() if ok)
                raise InputError(f"--data {data}: has {have}/ but no {needed}/ folder")
        shards = {d: tuple(schema.list_shards(uri.join(data, d)))  # InputError naming the folder
                  for d, ok in present.items() if ok}
        if present[VAL_DIR]:
            return Layout("train-val-test", (
                Source(TRAIN_DIR, shards[TRAIN_DIR], (("train", 1),)),
                Source(VAL_DIR, shards[VAL_DIR], (("eval", 1),)),
                Source(TEST_DIR, shards[TEST_DIR], (("test", 1),))))
        return Layout("train-test", (
            Source(TRAIN_DIR, shards[TRAIN_DIR], CARVE_SHARES),
            Source(TEST_DIR, shards[TEST_DIR], (("test", 1),))))
    try:
        files = tuple(schema.list_shards(data))
    except InputError:
        raise InputError(
            f"--data {data}: neither train/ and test/ folders (val/ optional) nor "
            f"{schema.SHARD_GLOB} shards in this folder") from None
    return Layout("single", (Source("", files, SINGLE_SHARES),))


def training_folder(data: str, layout: Layout) -> str:
    """The folder whose labels make the schema's label domain (train/, or the one folder)."""
    return data if layout.name == "single" else uri.join(data, TRAIN_DIR)


class _AssignSplit(beam.DoFn):
    """Tags each record with the index of its split in SPLIT_NAMES (for beam.Partition)."""

    def __init__(self, shares: Sequence[Tuple[str, int]], seed: int):
        self._shares = tuple(shares)
        self._seed = seed

    def process(self, record: bytes):
        yield SPLIT_NAMES.index(assign_split(record, self._shares, self._seed)), record


def split_records(pipeline: beam.Pipeline, layout: Layout,
                  seed: int = SPLIT_SEED) -> Dict[str, beam.PCollection]:
    """``{split: PCollection of serialized records}`` for the three SPLIT_NAMES."""
    parts: Dict[str, List[beam.PCollection]] = {name: [] for name in SPLIT_NAMES}
    for source in layout.sources:
        label = source.folder or "single"
        records = (pipeline
                   | f"Files[{label}]" >> beam.Create(list(source.files))
                   | f"Read[{label}]" >> beam.io.ReadAllFromTFRecord(
                       compression_type=CompressionTypes.AUTO))
        targets = {name for name, _ in source.shares}
        if len(targets) == 1:
            parts[next(iter(targets))].append(records)
            continue
        by_split = (records
                    | f"Assign[{label}]" >> beam.ParDo(_AssignSplit(source.shares, seed))
                    | f"Partition[{label}]" >> beam.Partition(lambda tagged, n: tagged[0],
                                                              len(SPLIT_NAMES)))
        for index, name in enumerate(SPLIT_NAMES):
            if name in targets:
                parts[name].append(by_split[index] | f"Untag[{label}/{name}]" >> beam.Values())
    return {name: (pcolls[0] if len(pcolls) == 1 else
                   pcolls | f"Merge[{name}]" >> beam.Flatten())
            for name, pcolls in parts.items()}


class Executor(base_beam_executor.BaseBeamExecutor):
    """An ExampleGen executor with run-time layout detection (see the module doc).

    Reads ``input_base``; ignores ``input_config`` / ``output_config`` (the driver uses
    :data:`INPUT_CONFIG` only to fingerprint the shards). Writes ``Split-train``,
    ``Split-eval`` and ``Split-test`` as GZIP TFRecords and records the example count
    of each split in the custom property ``split_counts`` (JSON).
    """

    def Do(self, input_dict: Dict[str, List[Any]], output_dict: Dict[str, List[Any]],
           exec_properties: Dict[str, Any]) -> None:
        self._log_startup(input_dict, output_dict, exec_properties)
        data = exec_properties[standard_component_specs.INPUT_BASE_KEY]
        layout = detect_layout(data)
        # One line in the step's log; a warning when eval is carved out of train.
        (log.warning if layout.name == "train-test" else log.info)(
            "ExampleGen: %s", layout.describe(data))
        examples = artifact_utils.get_single_instance(
            output_dict[standard_component_specs.EXAMPLES_KEY])
        examples.split_names = artifact_utils.encode_split_names(list(SPLIT_NAMES))
        counts_prefix = uri.join(examples.uri, COUNTS_DIR, "counts")
        with self._make_beam_pipeline() as pipeline:
            splits = split_records(pipeline, layout)
            counts = []
            for name, records in splits.items():
                _ = records | f"WriteSplit[{name}]" >> write_split.WriteSplit(
                    artifact_utils.get_split_uri([examples], name),
                    example_gen_pb2.FORMAT_TFRECORDS_GZIP, exec_properties)
                counts.append(records
                              | f"Count[{name}]" >> beam.combiners.Count.Globally()
                              | f"Line[{name}]" >> beam.Map(
                                  lambda n, name=name: json.dumps([name, n])))
            _ = (counts | "Counts" >> beam.Flatten()
                 | "WriteCounts" >> beam.io.WriteToText(counts_prefix, shard_name_template=""))
        with fileio.open(counts_prefix, "r") as f:
            split_counts = dict(json.loads(line) for line in f if line.strip())
        try:  # the counts travel on as a custom property; the file is scratch
            fileio.rmtree(uri.join(examples.uri, COUNTS_DIR))
        except Exception as exc:  # noqa: BLE001 - a leftover scratch file harms nothing
            log.warning("ExampleGen: could not remove %s (%s)", COUNTS_DIR, exc)
        examples_utils.set_payload_format(examples, exec_properties.get(
            standard_component_specs.OUTPUT_DATA_FORMAT_KEY) or example_gen_pb2.FORMAT_TF_EXAMPLE)
        examples_utils.set_file_format(
            examples, write_split.to_file_format_str(example_gen_pb2.FORMAT_TFRECORDS_GZIP))
        examples.set_json_value_custom_property(
            COUNTS_PROPERTY, {name: int(split_counts.get(name, 0)) for name in SPLIT_NAMES})
        empty = [name for name in SPLIT_NAMES if not split_counts.get(name)]
        if empty:
            raise InputError(
                f"--data {data}: the {' and '.join(empty)} split(s) would be empty "
                f"({layout.describe(data)}; counts {split_counts}): add examples, or give "
                "train/, val/ and test/ folders")
        log.info("ExampleGen: %s", ", ".join(f"{n} {split_counts[n]}" for n in SPLIT_NAMES))


EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)


def three_split_example_gen(data_root):
    """TFX's ImportExampleGen over ``data_root`` (a path, URI or RuntimeParameter) with
    :class:`Executor`: the splits ``train``, ``eval``, ``test`` whatever the layout."""
    from tfx.components.example_gen.component import FileBasedExampleGen

    # FileBasedExampleGen is ImportExampleGen's base (same spec and driver) and takes a
    # custom executor; the node keeps ImportExampleGen's id, so runs, caches and
    # compiled pipelines of <= 0.4.0 name the same step.
    return FileBasedExampleGen(
        input_base=data_root, input_config=INPUT_CONFIG, custom_executor_spec=EXECUTOR_SPEC,
    ).with_id("ImportExampleGen")
