"""What a local run did, read back from MLMD: per component state, metrics, blessing, push.

``metrics`` are the Evaluator's on the ``eval`` split (the one blessing selects on);
``test_metrics`` the TestEvaluator's on the ``test`` split, which nothing selects on.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Dict, List, Optional

from ml_metadata import metadata_store
from ml_metadata.proto import metadata_store_pb2

STATE_NAMES = {v: k for k, v in metadata_store_pb2.Execution.State.items()}


@dataclasses.dataclass
class NodeRun:
    state: str                              # COMPLETE, CACHED, FAILED, RUNNING ...
    outputs: Dict[str, List[metadata_store_pb2.Artifact]]


def open_store(sqlite_path: str) -> metadata_store.MetadataStore:
    config = metadata_store_pb2.ConnectionConfig()
    config.sqlite.filename_uri = sqlite_path
    config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    return metadata_store.MetadataStore(config)


def latest_run(store, pipeline_name: str) -> Dict[str, NodeRun]:
    """{node id: NodeRun} of the newest run of the pipeline (empty if none)."""
    runs = [c for c in store.get_contexts_by_type("pipeline_run")]
    pipeline = store.get_context_by_type_and_name("pipeline", pipeline_name)
    if pipeline is None or not runs:
        return {}
    in_pipeline = {c.id for c in store.get_children_contexts_by_context(pipeline.id)} | {
        c.id for c in runs}
    runs = [c for c in runs if c.id in in_pipeline]
    run = max(runs, key=lambda c: (c.create_time_since_epoch, c.id))
    run_execs = {e.id: e for e in store.get_executions_by_context(run.id)}
    result: Dict[str, NodeRun] = {}
    prefix = pipeline_name + "."
    for node in store.get_contexts_by_type("node"):
        if not node.name.startswith(prefix):
            continue
        execs = [e for e in store.get_executions_by_context(node.id) if e.id in run_execs]
        if not execs:
            continue
        execution = max(execs, key=lambda e: e.id)
        outputs: Dict[str, List[metadata_store_pb2.Artifact]] = {}
        events = [ev for ev in store.get_events_by_execution_ids([execution.id])
                  if ev.type in (metadata_store_pb2.Event.OUTPUT,
                                 metadata_store_pb2.Event.DECLARED_OUTPUT)]
        artifacts = {a.id: a for a in store.get_artifacts_by_id([ev.artifact_id for ev in events])}
        for ev in events:
            key = ev.path.steps[0].key if ev.path.steps else ""
            outputs.setdefault(key, []).append(artifacts[ev.artifact_id])
        result[node.name[len(prefix):]] = NodeRun(
            STATE_NAMES.get(execution.last_known_state, str(execution.last_known_state)),
            outputs)
    return result


def _custom(artifact, name):
    value = artifact.custom_properties.get(name)
    if value is None:
        return None
    return value.WhichOneof("value") and getattr(value, value.WhichOneof("value"))


@dataclasses.dataclass
class RunSummary:
    states: Dict[str, str]
    metrics: Dict[str, float]               # Evaluator, eval split (selection)
    blessed: Optional[bool]
    pushed_path: Optional[str]
    test_metrics: Dict[str, float] = dataclasses.field(default_factory=dict)  # test split
    split_counts: Dict[str, int] = dataclasses.field(default_factory=dict)    # ExampleGen


def evaluation_metrics(node: Optional[NodeRun]) -> Dict[str, float]:
    """The overall-slice metrics (``{"OF1": ..., "OF1_diff": ..., "example_count": ...}``)
    of an Evaluator's ``evaluation`` output; empty when it has none."""
    metrics: Dict[str, float] = {}
    if not node or not node.outputs.get("evaluation"):
        return metrics
    import tensorflow_model_analysis as tfma

    result = tfma.load_eval_result(node.outputs["evaluation"][0].uri)
    for slice_key, by_output in result.slicing_metrics:
        if slice_key == ():
            for name, value in by_output.get("", {}).get("", {}).items():
                if "doubleValue" in value:
                    metrics[name] = float(value["doubleValue"])
    return metrics


def summarize(sqlite_path: str, pipeline_name: str) -> RunSummary:
    """States of the newest run, the Evaluator's (eval) and the TestEvaluator's (test)
    metrics, the blessing, the pushed path and ExampleGen's split sizes."""
    from cnnrnn_pipeline.example_gen import COUNTS_PROPERTY, SPLIT_NAMES
    from cnnrnn_pipeline.pipeline import TEST_EVALUATOR

    store = open_store(sqlite_path)
    nodes = latest_run(store, pipeline_name)
    blessed = pushed = None
    evaluator = nodes.get("Evaluator")
    metrics = evaluation_metrics(evaluator)
    test_metrics = evaluation_metrics(nodes.get(TEST_EVALUATOR))
    split_counts: Dict[str, int] = {}
    example_gen = nodes.get("ImportExampleGen")
    if example_gen and example_gen.outputs.get("examples"):
        counts = _custom(example_gen.outputs["examples"][0], COUNTS_PROPERTY)
        if counts is not None:
            counts = _json(counts)
            split_counts = {k: int(counts[k]) for k in SPLIT_NAMES if k in counts}
    if evaluator and evaluator.outputs.get("blessing"):
        blessed = bool(_custom(evaluator.outputs["blessing"][0], "blessed"))
    pusher = nodes.get("Pusher")
    if pusher and pusher.outputs.get("pushed_model"):
        artifact = pusher.outputs["pushed_model"][0]
        if _custom(artifact, "pushed"):
            pushed = _custom(artifact, "pushed_destination")
            pushed = pushed[len("file://"):] if pushed and pushed.startswith("file://") else pushed
    return RunSummary({k: v.state for k, v in nodes.items()}, metrics, blessed, pushed,
                      test_metrics, split_counts)


def _json(value) -> dict:
    """A JSON custom property as MLMD stores it (a Struct, possibly under ``__value__``)."""
    from google.protobuf import json_format

    if hasattr(value, "DESCRIPTOR"):
        value = json_format.MessageToDict(value)
    if isinstance(value, dict) and set(value) == {"__value__"}:
        value = value["__value__"]
    return value if isinstance(value, dict) else {}


def saved_model_exists(path: Optional[str]) -> bool:
    return bool(path) and os.path.exists(os.path.join(path, "saved_model.pb"))
