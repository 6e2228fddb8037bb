"""``cnnrnn pipeline run`` and ``cnnrnn pipeline compile`` (called by cnnrnn_tf.cli)."""
from __future__ import annotations

import os
from typing import Optional

from cnnrnn_tf import schema
from cnnrnn_tf.config import TrainConfig
from cnnrnn_tf.errors import InputError

PIPELINE_NAME = "cnnrnn"
# The Evaluator's value threshold: a model whose OF1 is below this (e.g. one that
# predicts no labels at all) is not blessed, so the Pusher does not push it.
DEFAULT_MIN_OF1 = 0.1


def detect_split(data: str) -> str:
    """"presplit" (train/ and test/ folders of shards) or "hash" (one folder of shards)."""
    if not data:
        raise InputError("--data: no folder given")
    if not os.path.exists(data):
        raise InputError(f"--data {data}: folder does not exist")
    if not os.path.isdir(data):
        raise InputError(f"--data {data}: not a folder")
    train, test = os.path.join(data, "train"), os.path.join(data, "test")
    if os.path.isdir(train) or os.path.isdir(test):
        for sub in (train, test):
            if not os.path.isdir(sub):
                raise InputError(f"--data {data}: has {os.path.basename(train if sub == test else test)}/"
                                 f" but no {os.path.basename(sub)}/ folder")
            schema.list_shards(sub)  # raises InputError naming the folder
        return "presplit"
    try:
        schema.list_shards(data)
    except InputError:
        raise InputError(
            f"--data {data}: neither train/ and test/ folders nor {schema.SHARD_GLOB} "
            "shards in this folder") from None
    return "hash"


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


def format_summary(summary) -> str:
    names = ("mAP", "CF1", "OF1", "CP", "CR", "OP", "OR")
    lines = []
    if summary.metrics:
        shown = [n for n in names if n in summary.metrics]
        lines.append("Evaluator (eval split"
                     + (f", {int(summary.metrics['example_count'])} examples"
                        if "example_count" in summary.metrics else "") + "):")
        lines.append("  ".join(f"{n:>6}" for n in shown))
        lines.append("  ".join(f"{100 * summary.metrics[n]:6.1f}" for n in shown))
        diffs = [n for n in shown if n + "_diff" in summary.metrics]
        if diffs:
            lines.append("change vs the latest blessed model: " + ", ".join(
                f"{n} {100 * summary.metrics[n + '_diff']:+.1f}" for n in diffs))
    lines.append(f"blessed: {'yes' if summary.blessed else 'no'}")
    lines.append(f"pushed: {summary.pushed_path or 'nothing (the model was not blessed)'}")
    cached = sorted(k for k, v in summary.states.items() if v == "CACHED")
    if cached:
        lines.append("from cache: " + ", ".join(cached))
    return "\n".join(lines)


def run_command(args) -> int:
    split = detect_split(args.data)
    if not args.pipeline_root:
        raise InputError("--pipeline-root: no folder given")
    if not args.serving_dir:
        raise InputError("--serving-dir: no folder given")
    model_name = getattr(args, "model_name", None) or "cnnrnn"
    if os.sep in model_name or model_name in (".", ".."):
        raise InputError(f"--model-name {model_name!r}: must be a plain folder name")
    from cnnrnn_pipeline import local_runner, results

    pipeline_root = os.path.abspath(args.pipeline_root)
    try:
        local_runner.run(
            PIPELINE_NAME, pipeline_root, os.path.abspath(args.data),
            os.path.abspath(args.serving_dir), split=split, model_name=model_name,
            train_config=TrainConfig().to_dict(),
            min_of1=getattr(args, "min_of1", DEFAULT_MIN_OF1),
            train_steps=getattr(args, "train_steps", None),
            eval_steps=getattr(args, "eval_steps", None),
            beam_pipeline_args=list(getattr(args, "beam_arg", None) or []))
    except Exception as exc:  # noqa: BLE001 - anomalies become a one-line input error
        message = _anomaly_message(exc)
        if message:
            raise InputError(f"{args.data}: {message}; nothing was trained or pushed") from None
        raise
    summary = results.summarize(local_runner.metadata_path(pipeline_root), PIPELINE_NAME)
    print(format_summary(summary), flush=True)
    return 0


def compile_command(args) -> int:
    if args.runner != "kubeflow-v2":
        raise InputError(f"--runner {args.runner!r}: only kubeflow-v2 is supported")
    if not args.image:
        raise InputError("--image: no container image given")
    if not args.output:
        raise InputError("--output: no file given")
    folder = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(folder):
        raise InputError(f"--output {args.output}: folder {folder} does not exist")
    from cnnrnn_pipeline.kubeflow_v2_runner import compile_pipeline

    # --pipeline-root / --data / --serving-dir / --model-name are optional (gs:// paths
    # the workers can read); without them the JSON holds gs://BUCKET placeholders.
    paths = {key: getattr(args, key) for key in ("pipeline_root", "data_root", "serving_dir")
             if getattr(args, key, None)}
    if getattr(args, "data", None):
        paths["data_root"] = args.data
    compile_pipeline(args.output, args.image, pipeline_name=PIPELINE_NAME,
                     model_name=getattr(args, "model_name", None) or "cnnrnn",
                     train_config=TrainConfig().to_dict(), **paths)
    print(f"wrote {args.output}")
    return 0
