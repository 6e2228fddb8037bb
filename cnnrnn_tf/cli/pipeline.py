"""``cnnrnn pipeline run`` and ``compile``: the TFX pipeline (the [pipeline] extra), from
:mod:`cnnrnn_pipeline.cli`; its training flags are TrainConfig's (:mod:`cnnrnn_tf.cli.train`)."""
from __future__ import annotations

from cnnrnn_tf.cli.args import Parser, _float_where, non_negative_int, positive_int
from cnnrnn_tf.cli.pipeline_flags import add_compile_flags, add_submit_parser
from cnnrnn_tf.cli.train import add_config_flags
from cnnrnn_tf.errors import InputError


def _pipeline_module():
    try:
        import cnnrnn_pipeline.cli as pipeline_cli
    except ImportError as exc:
        raise InputError(
            f"the TFX pipeline is not installed ({exc}); install it with "
            "pip install 'cnnrnn-tf[pipeline]' (see BUILD.md)") from None
    return pipeline_cli


def cmd_pipeline_run(args) -> int:
    return _pipeline_module().run_command(args)


def cmd_pipeline_compile(args) -> int:
    return _pipeline_module().compile_command(args)


def cmd_pipeline_submit(args) -> int:
    return _pipeline_module().submit_command(args)


def register(sub) -> None:
    # The pipeline's ExampleGen always makes train / eval / test (cnnrnn_pipeline.example_gen).
    data_help = (
        "folder of shards ({where}): train/ val/ test/ inside (val/ is the eval split), or "
        "train/ test/ (eval is then carved out of train, 1 in 10 by a hash of image/id, "
        "and the run says so), or one folder hash-split 8:1:1 into train/eval/test; the "
        "layout is detected when the pipeline runs")
    pipe = sub.add_parser("pipeline", help="the TFX pipeline (needs the [pipeline] extra)")
    psub = pipe.add_subparsers(dest="pipeline_command", metavar="ACTION", parser_class=Parser)
    psub.required = True
    # --min-of1 0 is valid: it blesses any model.
    unit_interval = _float_where(lambda v: 0.0 <= v <= 1.0, "between 0 and 1 (inclusive)")
    p = psub.add_parser("run", help="run the pipeline locally (LocalDagRunner, Beam)")
    p.add_argument("--data", required=True,
                   help=data_help.format(where="local, s3:// or gs://"))
    p.add_argument("--pipeline-root", required=True, help="artifacts (local, s3:// or gs://)")
    p.add_argument("--serving-dir", required=True, help="pushes to SERVING_DIR/MODEL_NAME/VERSION")
    p.add_argument("--model-name", default="cnnrnn",
                   help="the served model's name (SERVING_DIR/MODEL_NAME/VERSION)")
    p.add_argument("--metadata-path", default=None, metavar="FILE",
                   help="the local ML Metadata SQLite file (default PIPELINE_ROOT/metadata.sqlite;"
                        " required when PIPELINE_ROOT is s3:// or gs://)")
    p.add_argument("--schema", default=None, metavar="URI",
                   help="a curated schema.pbtxt (default: derived from the training labels)")
    p.add_argument("--train-config", default=None, metavar="FILE",
                   help="a TrainConfig JSON; the training flags below override its fields")
    add_config_flags(p.add_argument_group("training (as cnnrnn train; over --train-config)"))
    p.add_argument("--train-steps", type=positive_int, default=None,
                   help="the Trainer's training steps (default: from the epochs)")
    p.add_argument("--eval-steps", type=positive_int, default=None,
                   help="the Trainer's validation steps (default: the whole eval split)")
    p.add_argument("--min-of1", type=unit_interval, default=0.1,
                   help="the Evaluator blesses (and the Pusher pushes) only above this OF1 "
                        "(0 blesses any model)")
    p.add_argument("--infra-validator", choices=("docker", "kubernetes"), default=None,
                   help="add TFX's InfraValidator (TF Serving in Docker or Kubernetes) "
                        "before the Pusher; off by default")
    p.add_argument("--beam-arg", action="append", default=[], metavar="ARG",
                   help="a Beam pipeline argument, e.g. --beam-arg=--direct_num_workers=2")
    p.set_defaults(func=cmd_pipeline_run)
    p = psub.add_parser("compile", help="compile the pipeline for an orchestrator")
    p.add_argument("--runner", choices=("kubeflow-v2",), required=True,
                   help="the orchestrator to compile for")
    p.add_argument("--image", required=True, help="container image with this package installed")
    p.add_argument("--output", required=True,
                   help="the file to write: .yaml (kfp) or .json (vertex)")
    p.add_argument("--pipeline-root", required=True, help="gs:// or s3:// URI")
    p.add_argument("--data", required=True,
                   help=data_help.format(where="gs:// or s3://; the data_root runtime parameter"))
    p.add_argument("--serving-dir", required=True,
                   help="gs:// or s3:// serving base (in the push_destination runtime parameter)")
    p.add_argument("--model-name", default="cnnrnn",
                   help="the served model's name (SERVING_DIR/MODEL_NAME/VERSION)")
    p.add_argument("--gpus", type=non_negative_int, default=0,
                   help="GPUs the Trainer requests (shorthand for --resources Trainer=gpu:N)")
    p.add_argument("--gpu-type", default=None,
                   help="accelerator name (default nvidia.com/gpu on kfp, NVIDIA_TESLA_T4 on vertex)")
    p.add_argument("--train-config", default=None, metavar="FILE",
                   help="a TrainConfig JSON; the training flags below override its fields")
    add_config_flags(p.add_argument_group("training (as cnnrnn train; over --train-config)"))
    p.add_argument("--schema", default=None, metavar="URI",
                   help="a curated schema.pbtxt the workers read (default: the label domain is "
                        "derived from the train split when the pipeline runs)")
    p.add_argument("--train-steps", type=positive_int, default=None,
                   help="default of the train_args runtime parameter")
    p.add_argument("--min-of1", type=unit_interval, default=0.1,
                   help="blessing threshold (in the eval_config runtime parameter)")
    p.add_argument("--infra-validator", choices=("docker", "kubernetes"), default=None,
                   help="add TFX's InfraValidator before the Pusher; off by default")
    p.add_argument("--beam-arg", action="append", default=[], metavar="ARG",
                   help="a Beam pipeline argument for the Beam-based components")
    add_compile_flags(p)
    p.set_defaults(func=cmd_pipeline_compile)
    add_submit_parser(psub, cmd_pipeline_submit)
