"""TF Serving deployment files: the model config and the batching parameters.

    python -m cnnrnn_tf.serving.deploy models-config --model cnnrnn=/models/cnnrnn   # models.config
    python -m cnnrnn_tf.serving.deploy batching           # batching_parameters.txt
    python -m cnnrnn_tf.serving.deploy check serving/   # parse-checks the files (what the tests do)
    python -m cnnrnn_tf.serving.deploy check serving/ --saved-model SERVING_DIR/cnnrnn/3
                                        # ... and refuses a SavedModel newer than the image

``models_config`` writes TF Serving's ``ModelServerConfig`` text proto (the
``--model_config_file``), built with TF Serving's own proto so it always parses.
The batching parameters (``--batching_parameters_file``) are a
``tensorflow.serving.BatchingParameters`` text proto; that message is not in the
``tensorflow-serving-api`` wheel, so :func:`batching_parameters_class` rebuilds
it from its definition in TF Serving's ``session_bundle_config.proto`` (the
long-standing fields 1-7) to parse-check the file. ``monitoring.config``
(``--monitoring_config_file``, TF Serving's Prometheus endpoint) is rebuilt the same way
from ``monitoring_config.proto``.

The serving image must run a TensorFlow at least as new as the one that exported the
model: a SavedModel records its TensorFlow version (``saved_model.pb``, MetaInfoDef
``tensorflow_version``), and a TF Serving built on an older TensorFlow can fail to load
ops or attributes it does not know. :func:`image_version_problem` compares that version
with the ``tensorflow/serving:<version>[-gpu]`` tags of the manifests, on major.minor
(TF Serving releases follow TensorFlow's minor releases; patch releases do not change
the op set). ``cnnrnn export`` warns, ``deploy check --saved-model`` refuses.
"""
from __future__ import annotations

import argparse
import functools
import re
import sys
from typing import Dict, List, Optional, Sequence, Tuple

from cnnrnn_tf.errors import InputError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# The image the manifests in serving/ pin (tests keep the two equal); what ``cnnrnn
# export`` compares with when it is given no manifests folder.
SERVING_IMAGE = "tensorflow/serving:2.16.1"
SERVING_REPOSITORY = "tensorflow/serving"
MANIFESTS = ("docker-compose.yml", "kubernetes.yaml", "docker-compose.gpu.yml",
             "kubernetes.gpu.yaml")
MONITORING_PATH = "/monitoring/prometheus/metrics"
_VERSION = re.compile(r"^v?(\d+)\.(\d+)(?:\.(\d+))?")


def models_config(models: Dict[str, str], num_versions: int = 2) -> str:
    """``{name: base_path}`` -> the ModelServerConfig text proto (``--model_config_file``).

    Each model serves its newest ``num_versions`` versions (TF Serving's
    ``latest`` policy), like ``cnnrnn serve --num-versions``.
    """
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    if not models:
        raise InputError("models config: no models given")
    if num_versions < 1:
        raise InputError(f"num_versions {num_versions}: must be >= 1")
    config = model_server_config_pb2.ModelServerConfig()
    for name, base_path in models.items():
        if not _NAME.match(name or ""):
            raise InputError(f"model name {name!r}: use letters, digits, '_', '.', '-'")
        if not base_path or not (base_path.startswith("/") or "://" in base_path):
            raise InputError(f"model {name}: base path {base_path!r} must be absolute "
                             "(a path in the server's file system, or gs:// / s3://)")
        entry = config.model_config_list.config.add()
        entry.name = name
        entry.base_path = base_path
        entry.model_platform = "tensorflow"
        entry.model_version_policy.latest.num_versions = num_versions
    return text_format.MessageToString(config)


def parse_models_config(text: str):
    """Parses a ModelServerConfig text proto (raises text_format.ParseError)."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())


_BATCHING_FIELDS = (  # session_bundle_config.proto, message BatchingParameters
    ("max_batch_size", 1, "Int64Value"),
    ("batch_timeout_micros", 2, "Int64Value"),
    ("max_enqueued_batches", 3, "Int64Value"),
    ("num_batch_threads", 4, "Int64Value"),
    ("thread_pool_name", 5, "StringValue"),
    ("allowed_batch_sizes", 6, "repeated int64"),
    ("pad_variable_length_inputs", 7, "bool"),
)


def message_class(pool, full_name: str):
    """The message class of ``full_name`` in a descriptor pool (any protobuf version)."""
    from google.protobuf import message_factory

    descriptor = pool.FindMessageTypeByName(full_name)
    if hasattr(message_factory, "GetMessageClass"):  # protobuf >= 4.21
        return message_factory.GetMessageClass(descriptor)
    return message_factory.MessageFactory(pool).GetPrototype(descriptor)


@functools.lru_cache(maxsize=None)
def batching_parameters_class():
    """The ``tensorflow.serving.BatchingParameters`` message class, built from its definition."""
    from google.protobuf import descriptor_pb2, descriptor_pool, wrappers_pb2

    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    proto = descriptor_pb2.FileDescriptorProto(
        name="cnnrnn_tf/serving/session_bundle_config_subset.proto",
        package="tensorflow.serving", syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"])
    message = proto.message_type.add(name="BatchingParameters")
    F = descriptor_pb2.FieldDescriptorProto
    for name, number, kind in _BATCHING_FIELDS:
        field = message.field.add(name=name, number=number, label=F.LABEL_OPTIONAL)
        if kind == "repeated int64":
            field.type, field.label = F.TYPE_INT64, F.LABEL_REPEATED
        elif kind == "bool":
            field.type = F.TYPE_BOOL
        else:
            field.type, field.type_name = F.TYPE_MESSAGE, f".google.protobuf.{kind}"
    pool.Add(proto)
    return message_class(pool, "tensorflow.serving.BatchingParameters")


def batching_parameters(max_batch_size: int = 32, batch_timeout_micros: int = 2000,
                        max_enqueued_batches: int = 100, num_batch_threads: int = 4,
                        allowed_batch_sizes: Optional[Sequence[int]] = (1, 2, 4, 8, 16, 32)) -> str:
    """The ``--batching_parameters_file`` text proto, checked as TF Serving checks it."""
    from google.protobuf import text_format

    sizes = list(allowed_batch_sizes or [])
    if sizes and (sizes != sorted(set(sizes)) or sizes[-1] != max_batch_size):
        raise InputError(f"allowed_batch_sizes {sizes}: must increase and end with "
                         f"max_batch_size {max_batch_size}")
    params = batching_parameters_class()()
    params.max_batch_size.value = max_batch_size
    params.batch_timeout_micros.value = batch_timeout_micros
    params.max_enqueued_batches.value = max_enqueued_batches
    params.num_batch_threads.value = num_batch_threads
    params.allowed_batch_sizes.extend(sizes)
    return text_format.MessageToString(params)


def parse_batching_parameters(text: str):
    """Parses a batching parameters file (raises text_format.ParseError), and checks
    TF Serving's rule: allowed_batch_sizes increase and end with max_batch_size."""
    from google.protobuf import text_format

    params = text_format.Parse(text, batching_parameters_class()())
    sizes = list(params.allowed_batch_sizes)
    if sizes and (sizes != sorted(set(sizes)) or sizes[-1] != params.max_batch_size.value):
        raise InputError(f"allowed_batch_sizes {sizes}: must increase and end with "
                         f"max_batch_size {params.max_batch_size.value}")
    return params


@functools.lru_cache(maxsize=None)
def monitoring_config_class():
    """``tensorflow.serving.MonitoringConfig`` (monitoring_config.proto), which the
    ``tensorflow-serving-api`` wheel lacks, built from its definition."""
    from google.protobuf import descriptor_pb2, descriptor_pool

    pool = descriptor_pool.DescriptorPool()
    proto = descriptor_pb2.FileDescriptorProto(
        name="cnnrnn_tf/serving/monitoring_config_subset.proto",
        package="tensorflow.serving", syntax="proto3")
    F = descriptor_pb2.FieldDescriptorProto
    prometheus = proto.message_type.add(name="PrometheusConfig")
    prometheus.field.add(name="enable", number=1, label=F.LABEL_OPTIONAL, type=F.TYPE_BOOL)
    prometheus.field.add(name="path", number=2, label=F.LABEL_OPTIONAL, type=F.TYPE_STRING)
    monitoring = proto.message_type.add(name="MonitoringConfig")
    monitoring.field.add(name="prometheus_config", number=1, label=F.LABEL_OPTIONAL,
                         type=F.TYPE_MESSAGE, type_name=".tensorflow.serving.PrometheusConfig")
    pool.Add(proto)
    return message_class(pool, "tensorflow.serving.MonitoringConfig")


def parse_monitoring_config(text: str):
    """Parses a ``--monitoring_config_file`` (raises text_format.ParseError)."""
    from google.protobuf import text_format

    return text_format.Parse(text, monitoring_config_class()())


def _read(folder: str, name: str) -> str:
    import tensorflow as tf

    path = folder.rstrip("/") + "/" + name
    try:
        with tf.io.gfile.GFile(path, "r") as f:
            return f.read()
    except tf.errors.NotFoundError:
        raise InputError(f"{path}: no such file") from None


def check_folder(folder: str) -> None:
    """Parse-checks serving/: models.config, batching_parameters.txt, monitoring.config,
    the YAML manifests (CPU and GPU), and that they pin a tensorflow/serving image."""
    import yaml

    parse_models_config(_read(folder, "models.config"))
    parse_batching_parameters(_read(folder, "batching_parameters.txt"))
    parse_monitoring_config(_read(folder, "monitoring.config"))
    for name in MANIFESTS:
        docs = list(yaml.safe_load_all(_read(folder, name)))
        if not list(_images(docs)):
            raise InputError(f"{folder}/{name}: no {SERVING_REPOSITORY} image in it")


# --------------------------------------------------------------------------- versions
def parse_version(text: str) -> Optional[Tuple[int, int, int]]:
    """"2.16.1", "2.16.1-gpu", "2.17.0-rc1", "v2.16" -> (2, 16, 1)...; None if no version."""
    match = _VERSION.match(text or "")
    if not match:
        return None
    return int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)


def saved_model_tf_version(saved_model_dir: str) -> str:
    """The TensorFlow version recorded in ``saved_model.pb`` (MetaInfoDef tensorflow_version)."""
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    path = saved_model_dir.rstrip("/") + "/saved_model.pb"
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            data = f.read()
    except tf.errors.OpError as exc:
        raise InputError(f"{path}: cannot be read ({exc.message})") from None
    proto = saved_model_pb2.SavedModel()
    try:
        proto.ParseFromString(data)
    except Exception:  # google.protobuf.message.DecodeError
        raise InputError(f"{path}: not a SavedModel") from None
    versions = [m.meta_info_def.tensorflow_version for m in proto.meta_graphs]
    if not versions or not versions[0]:
        raise InputError(f"{path}: records no TensorFlow version")
    return versions[0]


def _images(node):
    """Every ``tensorflow/serving[:tag]`` image named under an ``image`` key."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "image" and isinstance(value, str) and \
                    value.split(":")[0].split("@")[0].endswith(SERVING_REPOSITORY):
                yield value
            else:
                yield from _images(value)
    elif isinstance(node, list):
        for item in node:
            yield from _images(item)


def serving_images(folder: str) -> Dict[str, List[str]]:
    """{manifest file: [tensorflow/serving images]} for the YAML manifests in ``folder``."""
    import tensorflow as tf
    import yaml

    found = {}
    try:
        names = sorted(tf.io.gfile.listdir(folder))
    except tf.errors.OpError:
        raise InputError(f"{folder}: not a folder of serving manifests") from None
    for name in names:
        if name.endswith((".yml", ".yaml")):
            images = list(_images(list(yaml.safe_load_all(_read(folder, name)))))
            if images:
                found[f"{folder.rstrip('/')}/{name}"] = images
    if not found:
        raise InputError(f"{folder}: no *.yml / *.yaml file names a {SERVING_REPOSITORY} image")
    return found


def image_version_problem(saved_model_dir: str, manifests: Optional[str] = None,
                          tf_version: Optional[str] = None) -> Optional[str]:
    """One line when a serving image is older (major.minor) than the TensorFlow that exported
    ``saved_model_dir``; None when every image is recent enough (or has no version tag,
    e.g. ``:latest`` or a digest). ``manifests``: a folder of manifests (default: the image
    this release pins, :data:`SERVING_IMAGE`)."""
    exported = tf_version or saved_model_tf_version(saved_model_dir)
    want = parse_version(exported)
    if want is None:
        return None
    images = serving_images(manifests) if manifests else {"the pinned image": [SERVING_IMAGE]}
    for where, names in images.items():
        for image in names:
            tag = image.split("@")[0].rpartition(":")[2] if ":" in image.split("@")[0] else ""
            have = parse_version(tag)
            if have is not None and have[:2] < want[:2]:
                return (f"{saved_model_dir} was exported with TensorFlow {exported}, newer than "
                        f"the serving image {image} ({where}); TF Serving {have[0]}.{have[1]} "
                        "may fail to load it: use tensorflow/serving:"
                        f"{want[0]}.{want[1]}.x or newer, or export with TensorFlow "
                        f"{have[0]}.{have[1]}")
    return None


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cnnrnn_tf.serving.deploy",
                                     description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("models-config", help="print a ModelServerConfig text proto")
    p.add_argument("--model", action="append", required=True, metavar="NAME=BASE_PATH")
    p.add_argument("--num-versions", type=int, default=2)
    p = sub.add_parser("batching", help="print a BatchingParameters text proto")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--batch-timeout-micros", type=int, default=2000)
    p.add_argument("--num-batch-threads", type=int, default=4)
    p = sub.add_parser("check", help="parse-check a serving/ folder")
    p.add_argument("folder")
    p.add_argument("--saved-model", action="append", default=[], metavar="DIR",
                   help="also refuse this SavedModel when it was exported with a newer "
                        "TensorFlow than the folder's tensorflow/serving images (repeatable)")
    args = parser.parse_args(argv)
    try:
        if args.what == "models-config":
            models = {}
            for item in args.model:
                name, sep, path = item.partition("=")
                if not sep:
                    raise InputError(f"--model {item!r}: expected NAME=BASE_PATH")
                models[name] = path
            sys.stdout.write(models_config(models, args.num_versions))
        elif args.what == "batching":
            sizes = [s for s in (1, 2, 4, 8, 16, 32, 64, 128) if s < args.max_batch_size]
            sys.stdout.write(batching_parameters(
                args.max_batch_size, args.batch_timeout_micros,
                num_batch_threads=args.num_batch_threads,
                allowed_batch_sizes=sizes + [args.max_batch_size]))
        else:
            check_folder(args.folder)
            for saved_model in args.saved_model:
                problem = image_version_problem(saved_model, args.folder)
                if problem:
                    raise InputError(problem)
            print(f"{args.folder}: ok")
    except (InputError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # text_format.ParseError, yaml.YAMLError
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
