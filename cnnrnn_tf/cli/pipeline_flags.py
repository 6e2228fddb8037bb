"""The flags of ``cnnrnn pipeline compile`` (platform, resources, secrets) and of
``cnnrnn pipeline submit``. Declared here, checked by the pipeline package when the
command runs, so ``--help`` loads neither TFX nor the clients."""
from __future__ import annotations

from cnnrnn_tf.choices import PIPELINE_PLATFORMS as PLATFORMS
from cnnrnn_tf.choices import PIPELINE_STEPS as STEPS


def add_compile_flags(p) -> None:
    p.add_argument("--platform", choices=PLATFORMS, default=None,
                   help="kfp: a bare PipelineSpec YAML for Kubeflow Pipelines 2.x; vertex: a "
                        "PipelineJob JSON for Vertex AI (default: from --output, .yaml/.yml "
                        "is kfp, .json is vertex)")
    p.add_argument("--resources", action="append", default=[],
                   metavar="STEP=cpu:N,memory:XG[,gpu:N[,gpu-type:T]]",
                   help="a step's CPU limit (vCPUs), memory limit (16G = 16 GB, 16Gi = 17.18 "
                        "GB) and GPUs, repeatable; STEP is one of " + ", ".join(STEPS) +
                        "; the GPU type defaults to nvidia.com/gpu (kfp) or NVIDIA_TESLA_T4 "
                        "(vertex)")
    p.add_argument("--secret-env", action="append", default=[], metavar="NAME=SECRET:KEY",
                   help="kfp only, repeatable: every step's pod gets the environment variable "
                        "NAME from key KEY of the Kubernetes secret SECRET (e.g. "
                        "AWS_ACCESS_KEY_ID=s3-creds:access-key)")


def add_submit_parser(psub, func) -> None:
    p = psub.add_parser("submit", help="start a run of a compiled pipeline (kfp or vertex)")
    p.add_argument("file", metavar="FILE", help="the compiled pipeline (.yaml kfp, .json vertex)")
    p.add_argument("--platform", choices=PLATFORMS, default=None,
                   help="checked against FILE (default: what FILE is)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="a runtime parameter, repeatable (data_root, push_destination, "
                        "train_args, eval_config)")
    p.add_argument("--dry-run", action="store_true",
                   help="check FILE and the flags, print what would be sent, contact nothing")
    p.add_argument("--wait", action="store_true",
                   help="follow the run; exit non-zero unless it succeeds")
    p.add_argument("--no-cache", action="store_true", help="run every step, no cached results")
    p.add_argument("--service-account", default=None, metavar="SA",
                   help="the run's service account (Kubernetes on kfp, IAM on vertex)")
    kfp = p.add_argument_group("kfp")
    kfp.add_argument("--host", default=None, metavar="URL",
                     help="the KFP API endpoint (default $KF_PIPELINES_ENDPOINT); the token "
                          "comes from kfp's usual places")
    kfp.add_argument("--namespace", default=None, metavar="NS",
                     help="the Kubernetes namespace of a multi-user KFP")
    kfp.add_argument("--experiment", default=None, metavar="NAME",
                     help="the experiment to add the run to (default: Default)")
    kfp.add_argument("--run-name", default=None, metavar="NAME",
                     help="the run's name (default: FILE's name)")
    kfp.add_argument("--pipeline-root", default=None, metavar="URI",
                     help="default: the package's defaultPipelineRoot")
    kfp.add_argument("--secret-env", action="append", default=[], metavar="NAME=SECRET:KEY",
                     help="as compile --secret-env, added to the package before it is sent")
    vertex = p.add_argument_group("vertex")
    vertex.add_argument("--project", default=None, metavar="P", help="the Google Cloud project")
    vertex.add_argument("--region", default=None, metavar="R", help="e.g. us-central1")
    vertex.add_argument("--labels", default=None, metavar="K=V,...",
                        help="labels of the PipelineJob")
    vertex.add_argument("--network", default=None, metavar="N",
                        help="the VPC network to peer (projects/NUMBER/global/networks/NAME)")
    p.set_defaults(func=func)
