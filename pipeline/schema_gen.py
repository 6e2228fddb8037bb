"""CuratedSchemaGen: the curated schema, its label domain derived when the pipeline runs.

The label domain differs per data set. Deriving it at compile time would need the
data (storage, credentials) on the machine that compiles, and would freeze it into
the compiled file, so a run over other data (``data_root`` overridden at submission)
would fail on its first new label. This component derives it inside the pipeline
instead: from the ``train`` split's statistics (StatisticsGen's rank histogram of
``image/labels``, which lists every distinct value while there are at most as many
values as histogram buckets), else by reading the labels of the ``train`` split's
records. It writes :func:`cnnrnn_pipeline.curated_schema.curated_schema` of those labels.

ExampleValidator then still catches, on every split:

* a label of ``eval`` or ``test`` that ``train`` never has
  (``ENUM_TYPE_UNEXPECTED_STRING_VALUES``);
* a missing ``image/encoded`` or ``image/labels`` (``FEATURE_TYPE_LOW_FRACTION_PRESENT``),
  an empty label list or a second image (value-count anomalies);
* a feature of the wrong type.

What it no longer catches is a wrong label in ``train`` itself: ``train`` defines the
domain. Give ``--schema`` (a curated schema with a fixed domain) to check that too.
"""
# (no `from __future__ import annotations`: TFX reads the component's type hints as objects)
from typing import List

from tfx import v1 as tfx
from tfx.dsl.io import fileio
from tfx.types import artifact_utils

from cnnrnn_tf import schema as tfexample_schema
from cnnrnn_tf import uri
from cnnrnn_pipeline.curated_schema import SCHEMA_FILE, schema_text

NODE_ID = "CuratedSchemaGen"
TRAIN_SPLIT = "train"


def labels_from_statistics(statistics, split: str = TRAIN_SPLIT):
    """The sorted distinct labels of ``split`` from StatisticsGen's output, or None when
    the statistics do not list them all (more distinct labels than histogram buckets)."""
    from tfx.components.statistics_gen import stats_artifact_utils

    view = stats_artifact_utils.load_statistics(statistics, split)
    feature = view.get_default_slice_or_die().get_feature(tfexample_schema.LABELS_KEY)
    if feature is None:
        return []
    string_stats = feature.proto().string_stats
    buckets = string_stats.rank_histogram.buckets
    if string_stats.unique > len(buckets):
        return None
    return sorted(b.label for b in buckets)


def labels_from_records(examples, split: str = TRAIN_SPLIT) -> List[str]:
    """The sorted distinct labels of ``split``'s records (every record's labels read)."""
    from cnnrnn_tf.inputs.dataset import scan_labels

    folder = artifact_utils.get_split_uri([examples], split)
    files = sorted(fileio.glob(uri.join(folder, "*")))
    stats = scan_labels(files, require_labels=False, use_counts_file=False)
    return sorted(stats.label_counts)


@tfx.dsl.components.component
def CuratedSchemaGen(  # noqa: N802 (component names are classes)
    statistics: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.ExampleStatistics],
    examples: tfx.dsl.components.InputArtifact[tfx.types.standard_artifacts.Examples],
    schema: tfx.dsl.components.OutputArtifact[tfx.types.standard_artifacts.Schema],
):
    """Writes ``schema.pbtxt``: the curated schema, label domain from the train split."""
    labels = labels_from_statistics(statistics)
    if labels is None:
        labels = labels_from_records(examples)
    fileio.makedirs(schema.uri)
    with fileio.open(uri.join(schema.uri, SCHEMA_FILE), "w") as f:
        f.write(schema_text(labels))
