"""``cnnrnn pipeline run`` and ``cnnrnn pipeline compile`` (called by cnnrnn_tf.cli)."""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Dict, Optional

from cnnrnn_tf import uri
from cnnrnn_tf.config import TrainConfig, config_overrides
from cnnrnn_tf.errors import InputError

PIPELINE_NAME = "cnnrnn"
# The Evaluator's value threshold: a model whose OF1 is below this (e.g. one that
# predicts no labels at all) is not blessed, so the Pusher does not push it.
DEFAULT_MIN_OF1 = 0.1


def detect_layout(data: str):
    """The layout of ``--data`` (:class:`cnnrnn_pipeline.example_gen.Layout`), or InputError.

    Any of ``train/ val/ test/``, ``train/ test/`` (eval is then carved out of train,
    and this says so in one line on stderr) or one folder of shards; ``data`` may be
    a URI. The pipeline's ExampleGen detects the layout again when it runs.
    """
    from cnnrnn_pipeline.example_gen import detect_layout as detect

    layout = detect(data)
    if layout.name == "train-test":
        print(f"note: {layout.describe(data)}", file=sys.stderr, flush=True)
    return layout


def check_paths(load: bool = True, **flags: Optional[str]) -> Dict[str, str]:
    """``{flag: path}`` made absolute (URIs unchanged); InputError for an empty one or an
    unknown scheme. ``load``: also load the file system of every scheme used
    (tensorflow-io for s3://); compiling, which touches no storage, skips that."""
    out = {}
    for flag, path in flags.items():
        name = "--" + flag.replace("_", "-")
        if not path:
            raise InputError(f"{name}: no folder given")
        try:
            out[flag] = uri.absolute(path)
        except InputError as exc:
            raise InputError(f"{name} {exc}") from None
    if load:
        uri.ensure_filesystems(*out.values())
    return out


def check_bucket(path: str, flag: str) -> None:
    """For a URI: its bucket exists and the credentials may list it (nothing is written)."""
    if not uri.is_remote(path) or uri.scheme(path) == "ram":
        return
    import tensorflow as tf

    bucket = path[:path.index("://") + 3] + path.split("://", 1)[1].split("/", 1)[0] + "/"
    try:  # (tensorflow-io's S3 needs the trailing slash to see a bucket as a folder)
        if not tf.io.gfile.isdir(bucket):
            hint = ("the bucket name, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_REGION and "
                    "AWS_ENDPOINT_URL" if uri.scheme(path) == "s3" else
                    "the bucket name and the application default credentials")
            raise InputError(f"--{flag} {path}: bucket {bucket} does not exist or cannot be "
                             f"reached (check {hint})")
        tf.io.gfile.listdir(bucket)
    except tf.errors.OpError as exc:
        raise uri.storage_error(path, exc, f"--{flag}: bucket {bucket} cannot be listed") from None


def train_config_from_args(args) -> TrainConfig:
    """``--train-config FILE`` (a TrainConfig JSON; may be a URI), then the training flags
    that were given on top of it (``cnnrnn train``'s names and meanings)."""
    fields: Dict[str, Any] = {}
    path = getattr(args, "train_config", None)
    if path:
        import tensorflow as tf

        uri.ensure_filesystem(path)
        try:
            with tf.io.gfile.GFile(path, "r") as f:
                fields = json.load(f)
        except tf.errors.OpError as exc:
            raise uri.storage_error(path, exc, "--train-config cannot be read") from None
        except ValueError as exc:
            raise InputError(f"--train-config {path}: not JSON ({exc})") from None
        if not isinstance(fields, dict):
            raise InputError(f"--train-config {path}: expected a JSON object of TrainConfig fields")
    fields.update(config_overrides(args))
    try:
        return TrainConfig.from_dict(fields)
    except InputError as exc:
        raise InputError(f"--train-config {path}: {exc}" if path else str(exc)) from None
    except (TypeError, ValueError) as exc:
        raise InputError(f"--train-config {path}: {exc}" if path else f"training flags: {exc}") from None


def _model_name(args) -> str:
    model_name = getattr(args, "model_name", None) or "cnnrnn"
    if "/" in model_name or os.sep in model_name or model_name in (".", ".."):
        raise InputError(f"--model-name {model_name!r}: must be a plain folder name")
    return model_name


def _anomaly_message(exc: BaseException) -> Optional[str]:
    from cnnrnn_pipeline.components import MESSAGE_PREFIX

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        for line in str(exc).splitlines():
            if MESSAGE_PREFIX in line:
                return line[line.index(MESSAGE_PREFIX):]
        exc = exc.__cause__ or exc.__context__
    return None


def _metrics_table(metrics, title: str):
    names = ("mAP", "CF1", "OF1", "CP", "CR", "OP", "OR")
    shown = [n for n in names if n in metrics]
    count = (f", {int(metrics['example_count'])} examples" if "example_count" in metrics
             else "")
    return [f"{title}{count}):", "  ".join(f"{n:>6}" for n in shown),
            "  ".join(f"{100 * metrics[n]:6.1f}" for n in shown)]


def format_summary(summary) -> str:
    lines = []
    counts = getattr(summary, "split_counts", None) or {}
    if counts:
        lines.append("splits: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if summary.metrics:
        lines += _metrics_table(summary.metrics, "Evaluator (eval split: blessing")
        diffs = [n for n in ("mAP", "CF1", "OF1", "CP", "CR", "OP", "OR")
                 if n in summary.metrics and n + "_diff" in summary.metrics]
        if diffs:
            lines.append("change vs the latest blessed model: " + ", ".join(
                f"{n} {100 * summary.metrics[n + '_diff']:+.1f}" for n in diffs))
    test = getattr(summary, "test_metrics", None) or {}
    if test:
        lines += _metrics_table(test, "TestEvaluator (test split: scored once, nothing "
                                      "selected on it")
    lines.append(f"blessed: {'yes' if summary.blessed else 'no'}")
    lines.append(f"pushed: {summary.pushed_path or 'nothing (the model was not blessed)'}")
    cached = sorted(k for k, v in summary.states.items() if v == "CACHED")
    if cached:
        lines.append("from cache: " + ", ".join(cached))
    return "\n".join(lines)


def run_command(args) -> int:
    paths = check_paths(data=args.data, pipeline_root=args.pipeline_root,
                        serving_dir=args.serving_dir)
    metadata_file = getattr(args, "metadata_path", None)
    if metadata_file:
        if uri.is_remote(metadata_file):
            raise InputError(f"--metadata-path {metadata_file}: must be a local file "
                             "(ML Metadata is SQLite; it cannot live in an object store)")
        metadata_file = os.path.abspath(metadata_file)
    elif uri.is_remote(paths["pipeline_root"]):
        raise InputError(f"--pipeline-root {paths['pipeline_root']} is remote: give "
                         "--metadata-path FILE, a local SQLite file for ML Metadata")
    model_name = _model_name(args)
    config = train_config_from_args(args)
    for flag in ("pipeline_root", "serving_dir"):
        check_bucket(paths[flag], flag.replace("_", "-"))
    detect_layout(paths["data"])
    schema_uri = getattr(args, "schema", None)
    if schema_uri:
        uri.ensure_filesystem(schema_uri)
    from cnnrnn_pipeline import local_runner, results

    pipeline_root = paths["pipeline_root"]
    metadata_file = metadata_file or local_runner.metadata_path(pipeline_root)
    try:
        local_runner.run(
            PIPELINE_NAME, pipeline_root, paths["data"], paths["serving_dir"],
            model_name=model_name, train_config=config.to_dict(),
            min_of1=getattr(args, "min_of1", DEFAULT_MIN_OF1),
            train_steps=getattr(args, "train_steps", None),
            eval_steps=getattr(args, "eval_steps", None),
            beam_pipeline_args=list(getattr(args, "beam_arg", None) or []),
            metadata_file=metadata_file, schema_uri=schema_uri,
            infra_validator=getattr(args, "infra_validator", None))
    except Exception as exc:  # noqa: BLE001 - anomalies become a one-line input error
        message = _anomaly_message(exc)
        if message:
            raise InputError(f"{args.data}: {message}; nothing was trained or pushed") from None
        raise
    summary = results.summarize(metadata_file, PIPELINE_NAME)
    print(format_summary(summary), flush=True)
    return 0


def compile_command(args) -> int:
    """Compiles offline: reads no data, bucket or schema, and needs no credentials."""
    if args.runner != "kubeflow-v2":
        raise InputError(f"--runner {args.runner!r}: only kubeflow-v2 is supported")
    if not args.image:
        raise InputError("--image: no container image given")
    if not args.output:
        raise InputError("--output: no file given")
    if uri.is_remote(args.output):
        raise InputError(f"--output {args.output}: must be a local file")
    folder = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(folder):
        raise InputError(f"--output {args.output}: folder {folder} does not exist")
    from cnnrnn_pipeline.kfp_compile import parse_secret_env, platform_for_output
    from cnnrnn_pipeline.resources import parse_resources

    platform = platform_for_output(args.output, getattr(args, "platform", None))
    gpus = int(getattr(args, "gpus", 0) or 0)
    resources = parse_resources(getattr(args, "resources", None) or [], gpus,
                                getattr(args, "gpu_type", None))
    from cnnrnn_tf.choices import PIPELINE_STEPS as STEPS

    for step in resources:  # (the compiled pipeline checks again: the steps it has)
        if step not in STEPS:
            raise InputError(f"--resources {step}=...: no step {step} in this pipeline "
                             f"(steps: {', '.join(STEPS)})")
    secret_env = parse_secret_env(getattr(args, "secret_env", None) or [])
    if secret_env and platform != "kfp":
        raise InputError("--secret-env: KFP only (Vertex AI pipelines take no Kubernetes "
                         "secrets; give the service account access instead)")
    paths = check_paths(False, data=getattr(args, "data", None),
                        pipeline_root=getattr(args, "pipeline_root", None),
                        serving_dir=getattr(args, "serving_dir", None))
    schema = getattr(args, "schema", None)
    if schema:
        schema = check_paths(False, schema=schema)["schema"]
    for flag, path in dict(paths, **({"schema": schema} if schema else {})).items():
        if not uri.is_remote(path):
            print(f"warning: --{flag.replace('_', '-')} {path} is a local path; the pipeline's "
                  "workers must be able to read it (use gs:// or s3://)", file=sys.stderr)
    model_name = _model_name(args)
    config = train_config_from_args(args)
    from cnnrnn_pipeline.kubeflow_v2_runner import compile_pipeline

    compile_pipeline(args.output, args.image, pipeline_name=PIPELINE_NAME,
                     pipeline_root=paths["pipeline_root"], data_root=paths["data"],
                     serving_dir=paths["serving_dir"], schema_path=schema,
                     model_name=model_name, train_config=config.to_dict(),
                     train_steps=getattr(args, "train_steps", None),
                     min_of1=getattr(args, "min_of1", DEFAULT_MIN_OF1),
                     infra_validator=getattr(args, "infra_validator", None),
                     beam_pipeline_args=list(getattr(args, "beam_arg", None) or []),
                     platform=platform, resources=resources, secret_env=secret_env)
    print(f"wrote {args.output} ({platform}; the label domain is derived from the train "
          f"split when the pipeline runs)" if not schema else
          f"wrote {args.output} ({platform}; schema {schema})")
    return 0


def submit_command(args) -> int:
    from cnnrnn_pipeline.submit import submit_command as submit

    return submit(args)
