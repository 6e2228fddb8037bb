"""``create_pipeline``: the TFX pipeline as a pure function of its arguments.

    ImportExampleGen (train / eval / test) -> StatisticsGen -> CuratedSchemaGen (train's labels)
                                              |                   |
                                         ExampleValidator <-------'
                                              |
                                         AnomalyGate (raises on anomalies)
                                              |
                     Transform (label vocabulary) -> Trainer (fits on train, validates on eval)
                                                        |
    latest blessed model (Resolver) --> Evaluator (eval: blessing) -> Pusher
                                        TestEvaluator (test: scored once, for the report)

Three splits, three jobs: ``train`` fits, ``eval`` selects (the Trainer's
validation and early stopping, the Evaluator's blessing), ``test`` only reports.

* ImportExampleGen runs :class:`cnnrnn_pipeline.example_gen.Executor`, which
  detects the layout of ``data_root`` when it runs and always emits ``train``,
  ``eval`` and ``test``: ``train/ val/ test/`` folders as they are; ``train/ test/``
  with eval carved out of train by hash (said in one line); one folder hash-split
  8:1:1. The GZIP ``*.tfrecord.gz`` records are copied byte for byte.
* The schema is curated, not inferred: see :mod:`cnnrnn_pipeline.curated_schema`.
  StatisticsGen describes all three splits; CuratedSchemaGen derives the label
  domain from the train split when the pipeline runs (:mod:`cnnrnn_pipeline.schema_gen`,
  or ImportSchemaGen imports the user's ``schema_path``); ExampleValidator checks
  each split against it.
* ExampleValidator records anomalies; :class:`~cnnrnn_pipeline.components.AnomalyGate`
  turns them into a failed run before Transform and Trainer.
* Transform computes only the frequency-ordered label vocabulary of ``train`` (no
  materialization); the Trainer reads the raw examples (see cnnrnn_tf.tfx_module).
* The Evaluator scores the ``eval`` split with the model's ``eval_predictions``
  signature (labels from ``eval_labels``) using
  :class:`cnnrnn_pipeline.tfma_metrics.MultiLabelMetrics`; it blesses a model whose
  OF1 (and optionally mAP) clears ``min_of1`` / ``min_map`` and whose OF1 is not
  lower than the latest blessed model's by more than ``max_of1_decrease``.
* The TestEvaluator (node id :data:`TEST_EVALUATOR`) scores the ``test`` split with
  the same metrics and no thresholds: nothing is selected on it, and its blessing
  output is unused. :func:`cnnrnn_pipeline.results.summarize` reads it back.
* The Pusher copies a blessed model to ``<serving_dir>/<model_name>/<version>/``
  (the TF Serving layout).
* Optionally (``infra_validator="docker"`` or ``"kubernetes"``) TFX's stock
  InfraValidator loads the model in a real TF Serving (a Docker container on this
  machine, or a pod in the cluster the pipeline runs in) and sends it a few eval
  examples; the Pusher then also needs its ``infra_blessing``. Off by default.
* Every path may be a URI (``s3://``, ``gs://``): the components read and write
  through TFX's ``fileio`` / ``tf.io.gfile``.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Union

import tensorflow_model_analysis as tfma
from tfx import v1 as tfx

from cnnrnn_tf import __version__, uri
from cnnrnn_tf.serving.export import EVAL_SIGNATURES
from cnnrnn_tf.tfx_module import TRAIN_CONFIG_KEY, VERSION_KEY
from cnnrnn_pipeline.components import AnomalyGate, KubeflowInfraValidator
from cnnrnn_pipeline.curated_schema import TEMPLATE  # noqa: F401 (re-exported)
from cnnrnn_pipeline.example_gen import TEST_DIR, TRAIN_DIR, VAL_DIR  # noqa: F401 (re-exported)
from cnnrnn_pipeline.example_gen import three_split_example_gen
from cnnrnn_pipeline.schema_gen import NODE_ID as SCHEMA_NODE_ID
from cnnrnn_pipeline.schema_gen import CuratedSchemaGen
from cnnrnn_pipeline.tfma_metrics import metrics_config

MODULE_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "module_file.py")
RUN_FN = "cnnrnn_tf.tfx_module.run_fn"
PREPROCESSING_FN = "cnnrnn_tf.tfx_module.preprocessing_fn"
# The split modes of <= 0.4.0; ExampleGen now detects the layout when it runs, whatever
# the mode says (see create_pipeline's ``split``).
SPLITS = ("auto", "presplit", "hash")
SHARD_PATTERN = "*.tfrecord.gz"
TEST_EVALUATOR = "TestEvaluator"
INFRA_VALIDATORS = ("docker", "kubernetes")
# The TF Serving image InfraValidator starts (tensorflow/serving:<tag>).
SERVING_IMAGE_TAG = "2.16.1"


def infra_validator_spec(kind: str):
    """InfraValidator's ServingSpec: TF Serving in local Docker or in Kubernetes."""
    if kind not in INFRA_VALIDATORS:
        raise ValueError(f"infra_validator: {kind!r} is not one of {', '.join(INFRA_VALIDATORS)}")
    platform = ({"local_docker": tfx.proto.LocalDockerConfig()} if kind == "docker" else
                {"kubernetes": tfx.proto.KubernetesConfig()})
    return tfx.proto.ServingSpec(
        tensorflow_serving=tfx.proto.TensorFlowServing(tags=[SERVING_IMAGE_TAG]), **platform)


def push_destination(serving_dir: str, model_name: str):
    return tfx.proto.PushDestination(filesystem=tfx.proto.PushDestination.Filesystem(
        base_directory=uri.join(serving_dir, model_name)))


def train_args(train_steps: Optional[int] = None):
    return tfx.proto.TrainArgs(splits=["train"], num_steps=train_steps)


def proto_json(message) -> str:
    """A proto as the JSON string a RuntimeParameter for it holds."""
    from google.protobuf import json_format

    return json.dumps(json_format.MessageToDict(message), sort_keys=True)


def eval_config(min_of1: Optional[float] = None, min_map: Optional[float] = None,
                max_of1_decrease: Optional[float] = 1e-10) -> tfma.EvalConfig:
    """TFMA config: the multi-label metrics over the model's eval signatures."""
    label_signature, prediction_signature = EVAL_SIGNATURES
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(signature_name=prediction_signature,
                                    preprocessing_function_names=[label_signature],
                                    label_key="label_multi_hot")],
        slicing_specs=[tfma.SlicingSpec()],
        metrics_specs=[metrics_config(min_of1, min_map, max_of1_decrease)],
    )


def create_pipeline(
    pipeline_name: str,
    pipeline_root: str,
    data_root: Union[str, Any],
    serving_dir: str,
    module_file: Optional[str] = None,
    train_config: Optional[Dict[str, Any]] = None,
    train_steps: Optional[int] = None,
    eval_steps: Optional[int] = None,
    beam_pipeline_args: Optional[List[str]] = None,
    metadata_connection_config=None,
    split: Optional[str] = None,
    schema_path: Optional[str] = None,
    model_name: str = "cnnrnn",
    min_of1: Optional[float] = 0.0,
    min_map: Optional[float] = None,
    max_of1_decrease: Optional[float] = 1e-10,
    enable_cache: bool = True,
    infra_validator: Optional[str] = None,
    trainer_resources=None,
    runtime_parameters: Optional[Dict[str, Any]] = None,
    for_kubeflow_v2: bool = False,
) -> tfx.dsl.Pipeline:
    """Builds the pipeline; reads and writes nothing.

    ``module_file``: None (default) hands Transform and Trainer the installed
    functions by name (``cnnrnn_tf.tfx_module.preprocessing_fn`` / ``run_fn``);
    a path (e.g. :data:`MODULE_FILE`, the shim) makes TFX package that file's
    *folder* as a wheel and pip-install it at run time, and every edit in that
    folder then invalidates the Transform and Trainer cache. The library version
    is in both components' ``custom_config``, so upgrading cnnrnn_tf re-runs them.
    ``train_config``: a ``cnnrnn_tf.config.TrainConfig`` dict (validated by run_fn).
    ``split``: kept for callers of <= 0.4.0 and only checked to be one of
    :data:`SPLITS`: the layout of ``data_root`` (train/ val/ test/, train/ test/,
    or one folder) is detected when ExampleGen runs, so a compiled pipeline follows
    the data it is given.
    ``schema_path``: a curated schema to import (ImportSchemaGen); None (default)
    derives the label domain from the train split when the pipeline runs
    (:class:`~cnnrnn_pipeline.schema_gen.CuratedSchemaGen`), so compiling reads no data.
    ``min_of1`` / ``min_map`` / ``max_of1_decrease``: the Evaluator's blessing
    thresholds (None switches one off).
    ``infra_validator``: None (default), ``"docker"`` or ``"kubernetes"``: adds TFX's
    InfraValidator (TF Serving) between the Evaluator and the Pusher.
    ``trainer_resources``: a Kubeflow V2 ResourceSpec for the Trainer (GPU request),
    set with ``with_platform_config``; only the Kubeflow V2 runner reads it.
    ``runtime_parameters``: ``{"push_destination" | "train_args" | "eval_config":
    RuntimeParameter}`` (Kubeflow V2 only): those components take the parameter
    instead of the constant built from the arguments; ``data_root`` may be one too.
    ``for_kubeflow_v2``: use :class:`~cnnrnn_pipeline.components.KubeflowInfraValidator`
    (the stock executor under a class the Kubeflow V2 compiler accepts).
    """
    if split is not None and split not in SPLITS:
        raise ValueError(f"split: {split!r} is not one of {', '.join(SPLITS)}")
    runtime_parameters = dict(runtime_parameters or {})
    example_gen, statistics_gen, schema_gen, example_validator, anomaly_gate = \
        _data_components(data_root, schema_path)
    examples, schema = example_gen.outputs["examples"], schema_gen.outputs["schema"]
    transform, trainer = _training_components(
        examples, schema, anomaly_gate, module_file,
        train_args=runtime_parameters.get("train_args") or train_args(train_steps),
        eval_steps=eval_steps, train_config=train_config)
    if trainer_resources is not None:
        trainer.with_platform_config(trainer_resources)
    model_resolver, evaluator, test_evaluator = _evaluation_components(
        examples, trainer.outputs["model"],
        runtime_parameters.get("eval_config") or eval_config(min_of1, min_map, max_of1_decrease))
    validators = _infra_validators(infra_validator, for_kubeflow_v2, trainer.outputs["model"],
                                   examples)
    pusher = tfx.components.Pusher(
        model=trainer.outputs["model"],
        model_blessing=evaluator.outputs["blessing"],
        infra_blessing=validators[0].outputs["blessing"] if validators else None,
        push_destination=(runtime_parameters.get("push_destination")
                          or push_destination(serving_dir, model_name)),
    )
    return tfx.dsl.Pipeline(
        pipeline_name=pipeline_name,
        pipeline_root=pipeline_root,
        components=[example_gen, statistics_gen, schema_gen, example_validator, anomaly_gate,
                    transform, trainer, model_resolver, evaluator, test_evaluator, *validators,
                    pusher],
        enable_cache=enable_cache,
        metadata_connection_config=metadata_connection_config,
        beam_pipeline_args=list(beam_pipeline_args or []),
    )


def _data_components(data_root, schema_path: Optional[str]):
    """ExampleGen (train / eval / test, the layout detected when it runs), statistics, the
    schema (imported, or its label domain derived from the train split), the validator and
    the gate that stops the run on its anomalies."""
    example_gen = three_split_example_gen(data_root)
    statistics_gen = tfx.components.StatisticsGen(examples=example_gen.outputs["examples"])
    if schema_path:
        schema_gen = tfx.components.ImportSchemaGen(schema_file=schema_path)
    else:
        schema_gen = CuratedSchemaGen(statistics=statistics_gen.outputs["statistics"],
                                      examples=example_gen.outputs["examples"]).with_id(
                                          SCHEMA_NODE_ID)
    example_validator = tfx.components.ExampleValidator(
        statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"])
    anomaly_gate = AnomalyGate(anomalies=example_validator.outputs["anomalies"])
    return example_gen, statistics_gen, schema_gen, example_validator, anomaly_gate


def _training_components(examples, schema, anomaly_gate, module_file: Optional[str], *,
                         train_args, eval_steps: Optional[int], train_config):
    """Transform (the vocabulary) and the Trainer (train on train, validate on eval), both
    after the anomaly gate."""
    user_code = ({"module_file": module_file} if module_file else
                 {"preprocessing_fn": PREPROCESSING_FN})
    transform = tfx.components.Transform(
        examples=examples, schema=schema, materialize=False, disable_statistics=True,
        custom_config={VERSION_KEY: __version__}, **user_code)
    transform.add_upstream_node(anomaly_gate)
    user_code = {"module_file": module_file} if module_file else {"run_fn": RUN_FN}
    trainer = tfx.components.Trainer(
        **user_code,
        examples=examples,
        transform_graph=transform.outputs["transform_graph"],
        schema=schema,
        train_args=train_args,
        eval_args=tfx.proto.EvalArgs(splits=["eval"], num_steps=eval_steps),
        custom_config={TRAIN_CONFIG_KEY: dict(train_config or {}), VERSION_KEY: __version__},
    )
    trainer.add_upstream_node(anomaly_gate)
    return transform, trainer


def _evaluation_components(examples, model, blessing_config):
    """The latest blessed model (the baseline), the Evaluator that blesses on eval, and the
    TestEvaluator that scores test once (no thresholds, no baseline, nothing reads its
    blessing)."""
    model_resolver = tfx.dsl.Resolver(
        strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
        model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
        model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
    ).with_id("latest_blessed_model_resolver")
    evaluator = tfx.components.Evaluator(
        examples=examples, model=model, baseline_model=model_resolver.outputs["model"],
        example_splits=["eval"], eval_config=blessing_config)
    test_evaluator = tfx.components.Evaluator(
        examples=examples, model=model, example_splits=["test"],
        eval_config=eval_config(None, None, None)).with_id(TEST_EVALUATOR)
    return model_resolver, evaluator, test_evaluator


def _infra_validators(infra_validator: Optional[str], for_kubeflow_v2: bool, model, examples):
    """[] or TFX's InfraValidator (TF Serving in Docker or Kubernetes) before the Pusher."""
    if not infra_validator:
        return []
    validator_class = KubeflowInfraValidator if for_kubeflow_v2 else tfx.components.InfraValidator
    return [validator_class(
        model=model, examples=examples, serving_spec=infra_validator_spec(infra_validator),
        request_spec=tfx.proto.RequestSpec(
            tensorflow_serving=tfx.proto.TensorFlowServingRequestSpec(
                signature_names=["serving_default"]),
            split_name="eval", num_examples=4))]
