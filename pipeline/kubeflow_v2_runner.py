"""Compiles the pipeline for Kubeflow Pipelines 2.x (YAML) or Vertex AI Pipelines (JSON), offline.

Every component runs in ``image`` (build it from pipeline/Dockerfile: TFX 1.16 +
this package), so the Trainer's ``run_fn`` and the Evaluator's metrics module
come from the installed package. The data, pipeline root and serving dir must be
URIs the pipeline's workers can read (``gs://`` on Vertex, ``s3://`` on a Kubeflow
whose artifact store is MinIO or S3).

Runtime parameters (root ``inputDefinitions``, each with its ``defaultValue`` in the
kfp YAML; in Vertex's JSON the values are in ``runtimeConfig.parameters``; override any
of them when submitting the run):

* ``data_root`` (string): the data folder ImportExampleGen reads.
* ``push_destination`` (string, a ``PushDestination`` as JSON):
  ``{"filesystem": {"baseDirectory": "<serving_dir>/<model_name>"}}``.
* ``train_args`` (string, a ``TrainArgs`` as JSON): ``{"splits": ["train"], "numSteps": N}``.
* ``eval_config`` (string, a TFMA ``EvalConfig`` as JSON): holds the blessing
  threshold (``lowerBound`` of the OF1 ``valueThreshold``).

TFX 1.16 accepts a RuntimeParameter only in place of a whole component parameter,
so the serving dir, the train steps and the threshold travel inside those three
JSON values (:func:`runtime_parameter_values` builds them from plain arguments).

Compiling reads no storage: the label domain is derived inside the pipeline
(:mod:`cnnrnn_pipeline.schema_gen`) unless a schema URI is given, which ImportSchemaGen
reads when the step runs. ``resources`` sets each step's CPU, memory and GPU
(:mod:`cnnrnn_pipeline.resources`); ``gpus`` is the Trainer's shorthand, ``gpu_type``
the accelerator name (default ``nvidia.com/gpu`` on KFP, ``NVIDIA_TESLA_T4`` on Vertex AI).
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional

from tfx import v1 as tfx
from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner

from cnnrnn_pipeline.pipeline import (create_pipeline, eval_config, proto_json,
                                      push_destination, train_args)

PARAMETERS = ("data_root", "push_destination", "train_args", "eval_config")


def runtime_parameter_values(data_root: str, serving_dir: str, model_name: str,
                             train_steps: Optional[int], min_of1: Optional[float]) -> Dict[str, str]:
    """The values of the runtime parameters for plain arguments (what the JSON holds)."""
    return {
        "data_root": data_root,
        "push_destination": proto_json(push_destination(serving_dir, model_name)),
        "train_args": proto_json(train_args(train_steps)),
        "eval_config": proto_json(eval_config(min_of1)),
    }


def compile_pipeline(output_file: str, image: str, *, pipeline_name: str, pipeline_root: str,
                     data_root: str, serving_dir: str, schema_path: Optional[str] = None,
                     model_name: str = "cnnrnn", train_steps: Optional[int] = None,
                     min_of1: Optional[float] = None, gpus: int = 0,
                     gpu_type: Optional[str] = None,
                     beam_pipeline_args: Optional[List[str]] = None,
                     platform: Optional[str] = None, resources=None, secret_env=None,
                     **pipeline_kwargs) -> str:
    """Writes the pipeline for ``platform`` (default: from ``output_file``'s extension, see
    :mod:`cnnrnn_pipeline.kfp_compile`) to ``output_file`` (a local path); returns its path.

    Reads no storage. ``resources``: ``{step: resources.Resources}``; ``gpus`` /
    ``gpu_type`` are the Trainer's shorthand. ``secret_env``: ``[(env, secret, key)]`` (kfp).
    """
    from cnnrnn_pipeline import kfp_compile
    from cnnrnn_pipeline.resources import with_trainer_gpus

    platform = kfp_compile.platform_for_output(output_file, platform)
    steps = with_trainer_gpus(resources or {}, gpus, gpu_type)
    values = runtime_parameter_values(data_root, serving_dir, model_name, train_steps, min_of1)
    params = {name: tfx.dsl.experimental.RuntimeParameter(name=name, ptype=str,
                                                          default=values[name])
              for name in PARAMETERS}
    runner = kubeflow_v2_dag_runner.KubeflowV2DagRunner(
        config=kubeflow_v2_dag_runner.KubeflowV2DagRunnerConfig(
            default_image=image, use_pipeline_spec_2_1=platform == "kfp"),
        output_dir=os.path.dirname(os.path.abspath(output_file)),
        output_filename=os.path.basename(output_file))
    pipeline = create_pipeline(
        pipeline_name=pipeline_name, pipeline_root=pipeline_root,
        data_root=params["data_root"], serving_dir=serving_dir, model_name=model_name,
        schema_path=schema_path, beam_pipeline_args=beam_pipeline_args,
        runtime_parameters={k: params[k] for k in PARAMETERS if k != "data_root"},
        for_kubeflow_v2=True,
        **pipeline_kwargs)
    job = runner.run(pipeline, parameter_values=values, write_out=False)
    kfp_compile.finish(job, output_file, platform, values=values, pipeline_root=pipeline_root,
                       resources=steps, secret_env=secret_env)
    return output_file
