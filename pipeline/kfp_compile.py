"""The two compiled forms: a bare PipelineSpec YAML for Kubeflow Pipelines, a PipelineJob
JSON for Vertex AI, and the checks on the flags that choose them.

* ``kfp``: what ``kfp.Client().create_run_from_pipeline_package(FILE)`` loads (kfp 2.5
  accepts ``.yaml``/``.yml`` holding a bare PipelineSpec; TFX 1.16 writes one with
  ``use_pipeline_spec_2_1``). TFX keeps the runtime parameters' values only in the
  PipelineJob's ``runtimeConfig``, which a bare spec lacks, so every root parameter gets
  its value as ``defaultValue`` in ``inputDefinitions``; TFX never writes
  ``defaultPipelineRoot``, so it is set to the pipeline root (else KFP falls back to the
  cluster's default root, typically ``minio://``, which TFX's file layer cannot read).
  ``--secret-env`` adds KFP's Kubernetes platform spec as a second YAML document
  (``secretAsEnv`` on every executor), as ``kfp-kubernetes``' ``use_secret_as_env`` does.
* ``vertex``: TFX's PipelineJob JSON as it is (``displayName``, ``pipelineSpec``,
  ``runtimeConfig``), which ``aiplatform.PipelineJob(template_path=...)`` loads.

Both get each step's ``--resources`` in its executor's container spec
(:mod:`cnnrnn_pipeline.resources`).
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from typing import Dict, Iterable, List, Optional, Tuple

from cnnrnn_tf.choices import PIPELINE_PLATFORMS as PLATFORMS
from cnnrnn_tf.errors import InputError

EXTENSIONS = {".yaml": "kfp", ".yml": "kfp", ".json": "vertex"}
SECRET_ENV_FORMAT = "NAME=SECRET:KEY"


def platform_for_output(output: str, platform: Optional[str]) -> str:
    """The platform of ``--output`` (its extension), checked against ``--platform``."""
    if platform is not None and platform not in PLATFORMS:
        raise InputError(f"--platform {platform!r}: not one of {', '.join(PLATFORMS)}")
    ext = os.path.splitext(output)[1].lower()
    inferred = EXTENSIONS.get(ext)
    if inferred is None:
        raise InputError(f"--output {output}: name it .yaml (kfp: a bare PipelineSpec) or "
                         ".json (vertex: a PipelineJob)")
    if platform is not None and platform != inferred:
        wanted = ".yaml" if platform == "kfp" else ".json"
        raise InputError(f"--platform {platform} contradicts --output {output} "
                         f"({ext} is {inferred}); name the file {wanted}")
    return inferred


def parse_secret_env(values: Iterable[str]) -> List[Tuple[str, str, str]]:
    """``NAME=SECRET:KEY`` values -> ``[(env var, secret name, key)]``; InputError on a bad one."""
    out, seen = [], set()
    for value in values or ():
        match = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)=([a-z0-9][-a-z0-9.]*):([-._a-zA-Z0-9]+)",
                             value)
        if not match:
            raise InputError(f"--secret-env {value}: expected {SECRET_ENV_FORMAT} (an "
                             "environment variable name, a Kubernetes secret name, a key "
                             "of that secret)")
        if match.group(1) in seen:
            raise InputError(f"--secret-env {value}: {match.group(1)} is given twice")
        seen.add(match.group(1))
        out.append(match.groups())
    return out


def kubernetes_platform_spec(executor_labels: Iterable[str],
                             secret_env: List[Tuple[str, str, str]]) -> dict:
    """KFP's platform spec that puts the secrets' keys into every executor's environment."""
    by_secret: Dict[str, List[dict]] = {}
    for env, secret, key in secret_env:
        by_secret.setdefault(secret, []).append({"secretKey": key, "envVar": env})
    config = {"secretAsEnv": [{"secretName": s, "keyToEnv": keys}
                              for s, keys in sorted(by_secret.items())]}
    return {"platforms": {"kubernetes": {"deploymentSpec": {"executors": {
        label: json.loads(json.dumps(config)) for label in sorted(executor_labels)}}}}}


def merge_platform_spec(platform_spec: dict, executor_labels: Iterable[str],
                        secret_env: List[Tuple[str, str, str]]) -> dict:
    """``platform_spec`` (as loaded; may be empty) with the secrets added to every executor."""
    extra = kubernetes_platform_spec(executor_labels, secret_env)
    merged = json.loads(json.dumps(platform_spec or {}))
    executors = merged.setdefault("platforms", {}).setdefault("kubernetes", {}).setdefault(
        "deploymentSpec", {}).setdefault("executors", {})
    for label, config in extra["platforms"]["kubernetes"]["deploymentSpec"]["executors"].items():
        executors.setdefault(label, {}).setdefault("secretAsEnv", []).extend(config["secretAsEnv"])
    return merged


def set_root_defaults(pipeline_spec: dict, values: Dict[str, str], pipeline_root: str) -> None:
    """Every root parameter's value as its ``defaultValue``; ``defaultPipelineRoot``."""
    params = pipeline_spec["root"].setdefault("inputDefinitions", {}).setdefault("parameters", {})
    for name, value in values.items():
        params.setdefault(name, {"parameterType": "STRING"})
        params[name]["defaultValue"] = value
        params[name]["isOptional"] = True
    pipeline_spec["defaultPipelineRoot"] = pipeline_root


def write_atomically(path: str, text: str) -> None:
    """Writes ``path`` (local) through a temporary file in its folder, then renames it."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", dir=folder)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # as open() would make it, not mkstemp's 0600
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def kfp_yaml(pipeline_spec: dict, platform_spec: Optional[dict] = None) -> str:
    """The package text: the PipelineSpec, then (if any) the platform spec, as YAML documents."""
    import yaml

    docs = [pipeline_spec] + ([platform_spec] if platform_spec else [])
    header = ("# A Kubeflow Pipelines package (bare PipelineSpec) written by "
              "`cnnrnn pipeline compile --platform kfp`.\n")
    return header + yaml.safe_dump_all(docs, sort_keys=True)


def executor_labels(pipeline_spec: dict) -> List[str]:
    return sorted(pipeline_spec["deploymentSpec"]["executors"])


def finish(job: dict, output: str, platform: str, *, values: Dict[str, str],
           pipeline_root: str, resources=None,
           secret_env: Optional[List[Tuple[str, str, str]]] = None) -> None:
    """Completes TFX's compiled PipelineJob dict ``job`` for ``platform`` and writes ``output``."""
    from cnnrnn_pipeline.resources import apply_resources

    spec = job["pipelineSpec"]
    apply_resources(spec, resources or {}, platform)
    if platform == "vertex":
        if secret_env:
            raise InputError("--secret-env: KFP only (Vertex AI pipelines take no Kubernetes "
                             "secrets; give the service account access instead)")
        write_atomically(output, json.dumps(job, sort_keys=True))
        return
    set_root_defaults(spec, values, pipeline_root)
    platform_spec = (kubernetes_platform_spec(executor_labels(spec), secret_env)
                     if secret_env else None)
    write_atomically(output, kfp_yaml(spec, platform_spec))
