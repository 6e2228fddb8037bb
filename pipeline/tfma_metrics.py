"""Multi-label metrics for the TFX Evaluator (TFMA): mAP, CP, CR, CF1, OP, OR, OF1.

One ``tfma.metrics.Metric`` whose Beam combiner keeps every example's label
vector, predicted set and scores (all dense, vocabulary order, from the model's
``eval_labels`` / ``eval_predictions`` signatures) and calls
:func:`cnnrnn_tf.metrics.multilabel_metrics` at the end, so the Evaluator's
numbers are, by construction, the library's numbers (mAP is not decomposable:
the combiner has to see every score). Memory: 3 floats per label per eval image.

Use in an EvalConfig::

    tfma.MetricConfig(class_name="MultiLabelMetrics", module="cnnrnn_pipeline.tfma_metrics")

with ``ModelSpec(signature_name="eval_predictions",
preprocessing_function_names=["eval_labels"], label_key="label_multi_hot")``.
It emits one metric per name in :data:`METRIC_NAMES`; thresholds go in
``MetricsSpec.thresholds`` keyed by those names.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional

import apache_beam as beam
import numpy as np
import tensorflow_model_analysis as tfma
from tensorflow_model_analysis.metrics import metric_types

from cnnrnn_tf.metrics import multilabel_metrics

METRIC_NAMES = ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1")
PREDICTED_KEY = "predicted_multi_hot"
SCORES_KEY = "probabilities"


class MultiLabelMetrics(tfma.metrics.Metric):
    """mAP and the class / overall precision, recall and F1 of the predicted sets."""

    def __init__(self, name: str = "multilabel"):
        super().__init__(_multilabel_computations, name=name)


def _multilabel_computations(name: str = "multilabel", model_names=None, **_):
    computations = []
    for model_name in model_names or [""]:
        # Unweighted; example_weighted=None makes the keys match the ones TFMA
        # builds for ``MetricsSpec.thresholds`` (so thresholds can name "OF1").
        keys = [metric_types.MetricKey(name=m, model_name=model_name, example_weighted=None)
                for m in METRIC_NAMES]
        computations.append(metric_types.MetricComputation(
            keys=keys,
            preprocessors=[metric_types.StandardMetricInputsPreprocessor(
                include_default_inputs=True)],
            combiner=_MultiLabelCombiner(model_name, keys)))
    return computations


class _MultiLabelCombiner(beam.CombineFn):
    """Accumulates [label, predicted, score] rows; computes the metrics at the end."""

    def __init__(self, model_name: str, keys: List[metric_types.MetricKey]):
        self._model_name = model_name
        self._keys = keys

    def create_accumulator(self) -> List[np.ndarray]:
        return []

    def add_input(self, acc: List[np.ndarray], element) -> List[np.ndarray]:
        labels = element.get_labels(self._model_name)
        predictions = element.get_predictions(self._model_name)
        if not isinstance(predictions, dict) or PREDICTED_KEY not in predictions:
            raise ValueError(
                f"MultiLabelMetrics needs the model's eval_predictions signature "
                f"(outputs {PREDICTED_KEY!r}, {SCORES_KEY!r}); got {type(predictions)}")
        row = np.stack([np.asarray(labels, np.float32).reshape(-1),
                        np.asarray(predictions[PREDICTED_KEY], np.float32).reshape(-1),
                        np.asarray(predictions[SCORES_KEY], np.float32).reshape(-1)])
        acc.append(row)
        return acc

    def merge_accumulators(self, accs: Iterable[List[np.ndarray]]) -> List[np.ndarray]:
        merged: List[np.ndarray] = []
        for acc in accs:
            merged.extend(acc)
        return merged

    def extract_output(self, acc: List[np.ndarray]) -> Dict[metric_types.MetricKey, Any]:
        if not acc:
            return {}
        rows = np.stack(acc)  # [n, 3, K]
        y_true = rows[:, 0]
        if not y_true.any():
            return {}
        result = multilabel_metrics(y_true, rows[:, 1], rows[:, 2])
        return {key: float(result[key.name]) for key in self._keys}


def metrics_config(min_of1: Optional[float] = None, min_map: Optional[float] = None,
                   max_decrease: Optional[float] = 1e-10):
    """The MetricsSpec: the metrics plus OF1/mAP value thresholds and a change threshold.

    ``min_of1`` / ``min_map``: lower bounds on the candidate's OF1 / mAP.
    ``max_decrease``: the candidate's OF1 may be at most this much below the
    baseline's (the latest blessed model); None: no comparison.
    """
    thresholds = {}
    for metric, lower in (("OF1", min_of1), ("mAP", min_map)):
        threshold = tfma.MetricThreshold()
        if lower is not None:
            threshold.value_threshold.lower_bound.value = float(lower)
        if metric == "OF1" and max_decrease is not None:
            threshold.change_threshold.direction = tfma.MetricDirection.HIGHER_IS_BETTER
            threshold.change_threshold.absolute.value = -float(max_decrease)
        if threshold.ByteSize():
            thresholds[metric] = threshold
    return tfma.MetricsSpec(
        metrics=[tfma.MetricConfig(class_name="MultiLabelMetrics",
                                   module="cnnrnn_pipeline.tfma_metrics"),
                 tfma.MetricConfig(class_name="ExampleCount")],
        thresholds=thresholds)
