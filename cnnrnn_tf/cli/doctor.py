"""``cnnrnn doctor``: what this environment (a laptop, a Colab runtime, the pipeline image, a
Kubeflow pod) offers the project, in one screen or one JSON object.

It reports the versions of the stack (TensorFlow, Keras, TFX and the optional parts), the
GPUs TensorFlow sees, whether ``s3://`` and ``gs://`` paths can be opened, and the CPU count
(including a container's CPU limit). Every check is local and cheap: the file systems are
checked by their registration with ``tf.io.gfile`` (``s3://`` after importing tensorflow-io,
as :func:`cnnrnn_tf.uri.ensure_filesystem` does), never by contacting a bucket, so the
command runs offline, without credentials, in a ``docker build`` step.
``--require`` turns a missing part into a non-zero exit: the pipeline image's Dockerfile
runs ``cnnrnn doctor --require tfx --require s3 --require gs --require pipeline`` as its
smoke test.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import platform
import sys
from typing import Callable, Dict, Iterable, List, Optional

# What --require accepts, and what a missing one is called in the error line.
REQUIREMENTS = {
    "gpu": "a GPU visible to TensorFlow",
    "tfx": "TFX",
    "pipeline": "the cnnrnn_pipeline package",
    "s3": "s3:// in tf.io.gfile",
    "gs": "gs:// in tf.io.gfile",
}
# Environment variables whose presence (never their values) the report names.
S3_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION",
                "S3_ENDPOINT")
GS_VARIABLES = ("GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT")
HOW_CHECKED = ("file systems: scheme registered in tf.io.gfile.get_registered_schemes() "
               "(s3:// after importing tensorflow_io); no bucket or network contacted")


def distribution_version(name: str) -> Optional[str]:
    """The installed version of a distribution (read from its metadata, without importing
    it: importing TFX takes seconds); None when it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def tensorflow_info() -> Dict[str, object]:
    import tensorflow as tf

    build = dict(tf.sysconfig.get_build_info())
    return {"version": tf.__version__, "cuda_build": bool(build.get("is_cuda_build")),
            "cuda_version": build.get("cuda_version"), "cudnn_version": build.get("cudnn_version")}


def keras_version() -> str:
    import keras

    return keras.__version__


def gpus() -> List[Dict[str, object]]:
    """The GPUs TensorFlow sees: device name, and the model and compute capability where
    TensorFlow reports them."""
    import tensorflow as tf

    out = []
    for device in tf.config.list_physical_devices("GPU"):
        entry: Dict[str, object] = {"device": device.name}
        try:
            details = tf.config.experimental.get_device_details(device)
        except Exception:  # details are optional; the device itself is what counts
            details = {}
        if details.get("device_name"):
            entry["name"] = details["device_name"]
        if details.get("compute_capability"):
            entry["compute_capability"] = ".".join(map(str, details["compute_capability"]))
        out.append(entry)
    return out


def _import_tensorflow_io() -> Optional[str]:
    """None when tensorflow_io imports (it registers s3:// with TensorFlow); else why not."""
    try:
        import tensorflow_io  # noqa: F401
    except ImportError:
        return "tensorflow-io is not installed (pip install 'cnnrnn-tf[s3]')"
    except Exception as exc:  # a build for another TensorFlow fails while loading its .so
        first = (str(exc).strip().splitlines() or [""])[0]
        return f"tensorflow-io does not load: {type(exc).__name__}: {first}"
    return None


def filesystems(registered: Optional[Callable[[], Iterable[str]]] = None,
                import_s3: Callable[[], Optional[str]] = _import_tensorflow_io,
                env: Optional[Dict[str, str]] = None) -> Dict[str, Dict[str, object]]:
    """Whether ``s3://`` and ``gs://`` are registered with ``tf.io.gfile``, how that was
    decided, and which of their usual variables are set (names only, never values)."""
    if registered is None:
        import tensorflow as tf

        registered = tf.io.gfile.get_registered_schemes
    env = os.environ if env is None else env
    s3_problem = import_s3()
    schemes = set(registered())
    out = {}
    for scheme, variables, source in (("s3", S3_VARIABLES, "tensorflow-io"),
                                      ("gs", GS_VARIABLES, "built into TensorFlow")):
        ok = scheme in schemes
        if ok:
            how = f"registered ({source})"
        elif scheme == "s3" and s3_problem:
            how = f"not registered: {s3_problem}"
        else:
            how = f"not registered in this TensorFlow build ({source})"
        out[scheme] = {"registered": ok, "detail": how,
                       "variables_set": [name for name in variables if env.get(name)]}
    return out


def _cgroup_cpu_limit() -> Optional[float]:
    """The container's CPU limit in CPUs (cgroup v2 ``cpu.max`` or v1 CFS quota); None when
    there is none or it cannot be read."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as f:
            quota = int(f.read())
        with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as f:
            period = int(f.read())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def cpus() -> Dict[str, object]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {"count": os.cpu_count(), "usable": usable, "cgroup_limit": _cgroup_cpu_limit()}


def collect() -> Dict[str, object]:
    """The whole report as one JSON-ready dict (imports TensorFlow)."""
    from cnnrnn_tf import __version__

    return {
        "cnnrnn_tf": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "tensorflow": tensorflow_info(),
        "keras": keras_version(),
        "tfx": distribution_version("tfx"),
        "tensorflow_io": distribution_version("tensorflow-io"),
        "apache_beam": distribution_version("apache-beam"),
        "cnnrnn_pipeline": importlib.util.find_spec("cnnrnn_pipeline") is not None,
        "gpus": gpus(),
        "filesystems": filesystems(),
        "cpus": cpus(),
        "checked": HOW_CHECKED,
    }


def _installed(version) -> str:
    return version if version else "not installed"


def format_report(report: Dict[str, object]) -> str:
    """The human-readable report: one ``name: value`` line per field."""
    tf_info = report["tensorflow"]
    cuda = (f"CUDA build {tf_info['cuda_version']}, cuDNN {tf_info['cudnn_version']}"
            if tf_info["cuda_build"] else "CPU-only build")
    gpu_list = report["gpus"]
    gpu_text = ", ".join(
        " ".join(str(g[k]) for k in ("device", "name") if k in g)
        + (f" (compute {g['compute_capability']})" if "compute_capability" in g else "")
        for g in gpu_list) if gpu_list else "none seen"
    cpu = report["cpus"]
    limit = cpu["cgroup_limit"]
    cpu_text = (f"{cpu['count']} (usable by this process: {cpu['usable']}; container limit: "
                + (f"{limit:g}" if limit else "none") + ")")
    lines = [
        ("cnnrnn-tf", report["cnnrnn_tf"]),
        ("python", f"{report['python']} ({report['platform']})"),
        ("tensorflow", f"{tf_info['version']} ({cuda})"),
        ("keras", report["keras"]),
        ("tfx", _installed(report["tfx"])),
        ("tensorflow-io", _installed(report["tensorflow_io"])),
        ("apache-beam", _installed(report["apache_beam"])),
        ("cnnrnn_pipeline", "installed" if report["cnnrnn_pipeline"] else "not installed"),
        ("gpus", f"{len(gpu_list)}: {gpu_text}" if gpu_list else "0 (none seen)"),
    ]
    for scheme, fs in report["filesystems"].items():
        names = ", ".join(fs["variables_set"]) or "none"
        lines.append((f"{scheme}://", f"{'yes' if fs['registered'] else 'no'}, {fs['detail']}; "
                                      f"variables set: {names}"))
    lines += [("cpus", cpu_text), ("checked", report["checked"])]
    width = max(len(name) for name, _ in lines) + 1
    return "\n".join(f"{name + ':':<{width}} {value}" for name, value in lines)


def missing(report: Dict[str, object], required: Iterable[str]) -> List[str]:
    """The names in ``required`` (keys of REQUIREMENTS) that ``report`` lacks, in order."""
    present = {
        "gpu": bool(report["gpus"]),
        "tfx": bool(report["tfx"]),
        "pipeline": bool(report["cnnrnn_pipeline"]),
        "s3": report["filesystems"]["s3"]["registered"],
        "gs": report["filesystems"]["gs"]["registered"],
    }
    return [name for name in dict.fromkeys(required) if not present[name]]


def doctor_command(args) -> int:
    report = collect()
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print(format_report(report))
    lacking = missing(report, args.require or ())
    if lacking:
        sys.stdout.flush()
        print("error: doctor: required but not available: "
              + "; ".join(f"{name} ({REQUIREMENTS[name]})" for name in lacking), file=sys.stderr)
        return 1
    return 0


def register(sub) -> None:
    """Adds ``doctor`` to the CLI's subparsers."""
    p = sub.add_parser(
        "doctor", help="versions, GPUs, s3:// and gs:// support and CPUs of this environment",
        description="Prints the TensorFlow, Keras and TFX versions, the GPUs TensorFlow sees, "
                    "whether s3:// and gs:// are registered with tf.io.gfile (checked locally, "
                    "no bucket contacted) and the CPU count.")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("--require", action="append", choices=tuple(REQUIREMENTS), default=[],
                   metavar="PART",
                   help="exit 1 with one error line when PART is missing; repeatable; one of "
                        + ", ".join(REQUIREMENTS) + " (the pipeline image's smoke test "
                        "requires tfx, pipeline, s3 and gs)")
    p.set_defaults(func=doctor_command)
