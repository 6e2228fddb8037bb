"""Compiles the pipeline to a Kubeflow Pipelines V2 / Vertex AI Pipelines JSON (no cluster needed).

Every component runs in ``image`` (build it from pipeline/Dockerfile: TFX 1.16 +
this package), so the Trainer's ``run_fn`` and the Evaluator's metrics module
come from the installed package. The data, pipeline root and serving dir must be
paths the pipeline's workers can read (``gs://...`` on Vertex). The curated
schema is the one baked into the image (:data:`IMAGE_SCHEMA`) unless
``schema_path`` names another (e.g. one ``curated_schema.write_schema`` wrote to GCS).
"""
from __future__ import annotations

import os
from typing import List, Optional

from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner

from cnnrnn_pipeline.pipeline import create_pipeline

# Where pipeline/Dockerfile copies the checked-in schema inside the image.
IMAGE_SCHEMA = "/opt/cnnrnn/schema.pbtxt"


def compile_pipeline(output_file: str, image: str, *, pipeline_name: str = "cnnrnn",
                     pipeline_root: str = "gs://BUCKET/cnnrnn/pipeline_root",
                     data_root: str = "gs://BUCKET/cnnrnn/data",
                     serving_dir: str = "gs://BUCKET/cnnrnn/serving",
                     schema_path: str = IMAGE_SCHEMA,
                     beam_pipeline_args: Optional[List[str]] = None,
                     **pipeline_kwargs) -> str:
    """Writes the pipeline JSON to ``output_file``; returns its path."""
    runner = kubeflow_v2_dag_runner.KubeflowV2DagRunner(
        config=kubeflow_v2_dag_runner.KubeflowV2DagRunnerConfig(default_image=image),
        output_dir=os.path.dirname(os.path.abspath(output_file)),
        output_filename=os.path.basename(output_file))
    runner.run(create_pipeline(
        pipeline_name=pipeline_name, pipeline_root=pipeline_root, data_root=data_root,
        serving_dir=serving_dir, schema_path=schema_path,
        beam_pipeline_args=beam_pipeline_args, **pipeline_kwargs))
    return output_file
