"""AnomalyGate: stops the run when ExampleValidator found anomalies.

ExampleValidator in TFX 1.16 only *records* anomalies (the ``anomalies``
artifact, ``SchemaDiff.pb`` per split, plus a ``blessed`` custom property); it
has no option to fail, and nothing downstream reads it. This tiny Python
component reads the anomalies of every split and raises with a one-line message
naming them; Transform and Trainer are wired after it (``add_upstream_node``),
so a run over bad examples stops before them and the Pusher never runs.

The anomalies are read through TFX's ``fileio`` (so an ``s3://`` or ``gs://``
pipeline root works like a local one). A split whose ``SchemaDiff.pb`` is missing
is itself an error: a gate that cannot read what the validator wrote must not
pass the data on. ExampleValidator's ``blessed`` custom property (0 when it
found anomalies) is checked as well, so the two can never disagree silently.
"""
from typing import List, TypedDict

from tensorflow_metadata.proto.v0 import anomalies_pb2
from tfx import types
from tfx import v1 as tfx
from tfx.components.infra_validator import executor as infra_validator_executor
from tfx.dsl.components.base import base_component, base_driver, executor_spec
from tfx.dsl.io import fileio
from tfx.types import artifact_utils, standard_artifacts, standard_component_specs

from cnnrnn_tf import uri

ANOMALIES_FILE = "SchemaDiff.pb"
MESSAGE_PREFIX = "data anomalies"


def describe_anomalies(artifact) -> List[str]:
    """One line per anomaly: ``split 'eval': image/labels: <short description> (<description>)``."""
    lines = []
    for split in artifact_utils.decode_split_names(artifact.split_names):
        path = uri.join(artifact_utils.get_split_uri([artifact], split), ANOMALIES_FILE)
        if not fileio.exists(path):
            lines.append(f"split {split!r}: {ANOMALIES_FILE} missing ({path}): "
                         "ExampleValidator's result cannot be read")
            continue
        anomalies = anomalies_pb2.Anomalies()
        with fileio.open(path, "rb") as f:
            anomalies.ParseFromString(f.read())
        for feature, info in sorted(anomalies.anomaly_info.items()):
            lines.append(f"split {split!r}: {feature}: {info.short_description} "
                         f"({info.description})")
        if anomalies.HasField("dataset_anomaly_info"):
            info = anomalies.dataset_anomaly_info
            lines.append(f"split {split!r}: dataset: {info.short_description} "
                         f"({info.description})")
    if not lines:
        lines += [f"split {split!r}: ExampleValidator did not bless it (blessed=0)"
                  for split in _unblessed_splits(artifact)]
    return lines


def _unblessed_splits(artifact) -> List[str]:
    """Splits whose ``blessed`` custom property (``{split: 0 | 1}``, TFX 1.16) is 0."""
    if not artifact.has_custom_property("blessed"):
        return []
    value = artifact.get_json_value_custom_property("blessed")
    if isinstance(value, dict):
        return sorted(split for split, ok in value.items() if not int(ok))
    return ["all"] if value is not None and not int(value) else []


class GateOutputs(TypedDict):
    clean: int


@tfx.dsl.components.component
def AnomalyGate(  # noqa: N802 (component names are classes)
    anomalies: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ExampleAnomalies],
) -> GateOutputs:
    """Raises RuntimeError naming the anomalies, if any; returns ``clean=1`` otherwise."""
    lines = describe_anomalies(anomalies)
    if lines:
        raise RuntimeError(f"{MESSAGE_PREFIX}: " + "; ".join(lines))
    return {"clean": 1}


class KubeflowInfraValidator(base_component.BaseComponent):
    """TFX's stock InfraValidator (same spec, driver and executor) under another class.

    TFX 1.16's KubeflowV2DagRunner refuses any ``isinstance(node, InfraValidator)``
    ("The component type ... is not supported", step_builder.py), although the executor
    itself runs in a container like any other. This class is not a subclass, so the
    compiler builds it as an ordinary container step running
    ``tfx.components.infra_validator.executor.Executor``. Its node id is
    ``InfraValidator``. With ``kubernetes`` serving it starts the TF Serving pod from
    inside its own pod: the pipeline's service account needs pod create/delete rights.
    """

    SPEC_CLASS = standard_component_specs.InfraValidatorSpec
    EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(infra_validator_executor.Executor)
    DRIVER_CLASS = base_driver.BaseDriver

    def __init__(self, model, serving_spec, examples=None, request_spec=None,
                 validation_spec=None):
        spec = standard_component_specs.InfraValidatorSpec(
            model=model, examples=examples,
            blessing=types.Channel(type=standard_artifacts.InfraBlessing),
            serving_spec=serving_spec, validation_spec=validation_spec,
            request_spec=request_spec)
        super().__init__(spec=spec)
        self.with_id("InfraValidator")
