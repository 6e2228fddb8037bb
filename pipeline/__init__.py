"""The TFX pipeline of cnnrnn_tf (installed as ``cnnrnn_pipeline``; needs the [pipeline] extra).

* :mod:`cnnrnn_pipeline.pipeline`: ``create_pipeline(...)``, a pure function that wires
  the components: ImportExampleGen (train / eval / test, :mod:`cnnrnn_pipeline.example_gen`)
  -> StatisticsGen -> ImportSchemaGen -> ExampleValidator -> AnomalyGate -> Transform
  (label vocabulary) -> Trainer -> Evaluator (TFMA on eval, against the latest blessed
  model) -> Pusher, and TestEvaluator (TFMA on test, for the report).
* :mod:`cnnrnn_pipeline.local_runner`: LocalDagRunner + SQLite MLMD + Beam DirectRunner.
* :mod:`cnnrnn_pipeline.kubeflow_v2_runner`: compile to a Kubeflow V2 / Vertex JSON.
* :mod:`cnnrnn_pipeline.cli`: ``cnnrnn pipeline run`` / ``cnnrnn pipeline compile``.
"""
