"""The TFX pipeline of cnnrnn_tf (installed as ``cnnrnn_pipeline``; needs the [pipeline] extra).

* :mod:`cnnrnn_pipeline.pipeline`: ``create_pipeline(...)``, a pure function that wires
  the components: ImportExampleGen (train / eval / test, :mod:`cnnrnn_pipeline.example_gen`)
  -> StatisticsGen -> CuratedSchemaGen (label domain from train, :mod:`cnnrnn_pipeline.schema_gen`;
  or ImportSchemaGen of ``--schema``) -> ExampleValidator -> AnomalyGate -> Transform
  (label vocabulary) -> Trainer -> Evaluator (TFMA on eval, against the latest blessed
  model) -> Pusher, and TestEvaluator (TFMA on test, for the report).
* :mod:`cnnrnn_pipeline.local_runner`: LocalDagRunner + SQLite MLMD + Beam DirectRunner.
* :mod:`cnnrnn_pipeline.kubeflow_v2_runner`: compile, offline, to a bare PipelineSpec YAML
  (Kubeflow Pipelines 2.x) or a PipelineJob JSON (Vertex AI), finished by
  :mod:`cnnrnn_pipeline.kfp_compile` (defaults, root, secrets) and
  :mod:`cnnrnn_pipeline.resources` (``--resources``).
* :mod:`cnnrnn_pipeline.submit`: ``cnnrnn pipeline submit`` (kfp.Client / aiplatform.PipelineJob).
* :mod:`cnnrnn_pipeline.cli`: ``cnnrnn pipeline run`` / ``compile`` / ``submit``.
"""
