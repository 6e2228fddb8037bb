"""``cnnrnn pipeline submit FILE``: starts a run of a compiled pipeline.

The platform follows from the file: a bare PipelineSpec YAML goes to Kubeflow Pipelines
through ``kfp.Client().create_run_from_pipeline_package``, a PipelineJob JSON to Vertex AI
through ``google.cloud.aiplatform.PipelineJob``. Everything is checked before anything is
contacted: the package loads with the platform's own loader, ``--param`` names exist in
it, the flags belong to its platform. ``--dry-run`` stops there and prints what would be
sent (for kfp the run's ``runtime_config``, built by kfp's own job-config code).

An unreachable host, an HTTP error, an unknown parameter or a file of the other platform
is one line on stderr: the KFP host is tried with one TCP connection first, so urllib3's
retries never start against a closed port, and the clients' warnings are silenced.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Dict, List, Optional
from urllib.parse import urlparse

from cnnrnn_tf.errors import InputError
from cnnrnn_pipeline.kfp_compile import (PLATFORMS, executor_labels, kfp_yaml,
                                         merge_platform_spec, parse_secret_env)

KFP_FLAGS = ("host", "namespace", "experiment", "run_name", "pipeline_root", "secret_env")
VERTEX_FLAGS = ("project", "region", "labels", "network")
# Long enough for any training run; --wait follows the run until it ends.
WAIT_SECONDS = 7 * 24 * 3600
CONNECT_TIMEOUT = 5.0


@dataclass
class Package:
    path: str
    platform: str
    pipeline_spec: dict
    platform_spec: dict = field(default_factory=dict)

    @property
    def parameters(self) -> Dict[str, dict]:
        return self.pipeline_spec.get("root", {}).get("inputDefinitions", {}).get(
            "parameters", {})

    @property
    def default_pipeline_root(self) -> Optional[str]:
        return self.pipeline_spec.get("defaultPipelineRoot")


def load_package(path: str, platform: Optional[str] = None) -> Package:
    """Loads ``path`` as its platform's client would; InputError for anything else."""
    if platform is not None and platform not in PLATFORMS:
        raise InputError(f"--platform {platform!r}: not one of {', '.join(PLATFORMS)}")
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file")
    ext = os.path.splitext(path)[1].lower()
    if ext in (".yaml", ".yml"):
        package = _load_kfp(path)
    elif ext == ".json":
        package = _load_vertex(path)
    else:
        raise InputError(f"{path}: not a compiled pipeline (.yaml for kfp, .json for vertex)")
    if platform is not None and platform != package.platform:
        raise InputError(f"--platform {platform}: {path} is a {package.platform} pipeline "
                         f"(compile it with --platform {platform})")
    return package


def _load_kfp(path: str) -> Package:
    import yaml
    from google.protobuf import json_format
    from kfp.client import client as kfp_client

    with open(path) as f:
        try:
            first = next(iter(yaml.safe_load_all(f)), None)
        except yaml.YAMLError as exc:
            raise InputError(f"{path}: not YAML ({str(exc).splitlines()[0]})") from None
    if isinstance(first, dict) and "pipelineSpec" in first:
        raise InputError(f"{path}: a Vertex PipelineJob, not a bare PipelineSpec; compile "
                         "with --platform kfp (or name it .json and submit it to vertex)")
    try:
        doc = kfp_client._extract_pipeline_yaml(path)  # kfp's own package loader
    except Exception as exc:  # noqa: BLE001 - ParseError, ValueError: one line
        raise InputError(f"{path}: kfp cannot load it ({str(exc).splitlines()[0]})") from None
    return Package(path, "kfp", json_format.MessageToDict(doc.pipeline_spec),
                   json_format.MessageToDict(doc.platform_spec))


def _load_vertex(path: str) -> Package:
    with open(path) as f:
        try:
            job = json.load(f)
        except ValueError as exc:
            raise InputError(f"{path}: not JSON ({exc})") from None
    if not isinstance(job, dict) or "pipelineSpec" not in job:
        raise InputError(f"{path}: not a Vertex PipelineJob JSON (no pipelineSpec); a bare "
                         "PipelineSpec for kfp is compiled to .yaml")
    return Package(path, "vertex", job["pipelineSpec"])


def parse_params(values: List[str], package: Package) -> Dict[str, str]:
    """``--param NAME=VALUE`` values, each name checked against the package."""
    out = {}
    for value in values or ():
        name, sep, text = value.partition("=")
        if not sep or not name:
            raise InputError(f"--param {value}: expected NAME=VALUE")
        if name not in package.parameters:
            raise InputError(f"--param {name}: {package.path} has no parameter {name} "
                             f"(it has {', '.join(sorted(package.parameters))})")
        out[name] = text
    return out


def check_flags(args, platform: str) -> None:
    """Refuses the other platform's flags, and a vertex submission without its project."""
    other = VERTEX_FLAGS if platform == "kfp" else KFP_FLAGS
    for name in other:
        if getattr(args, name, None):
            flag = "--" + name.replace("_", "-")
            raise InputError(f"{flag}: a {'vertex' if platform == 'kfp' else 'kfp'} flag, "
                             f"but {args.file} is a {platform} pipeline")
    if platform == "vertex":
        for name in ("project", "region"):
            if not getattr(args, name, None):
                raise InputError(f"--{name}: required to submit to Vertex AI")


def parse_labels(text: Optional[str]) -> Dict[str, str]:
    out = {}
    for item in (text or "").split(","):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"--labels {text}: expected K=V,K=V")
        out[key] = value
    return out


@contextmanager
def quiet_clients():
    """Silences the clients' warnings and urllib3's retry log lines."""
    loggers = [logging.getLogger(n) for n in ("urllib3", "kfp", "google", "")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.CRITICAL)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def check_reachable(host: str) -> None:
    """One TCP connection to ``host``'s address; InputError naming it when none is made."""
    parsed = urlparse(host if "://" in host else "https://" + host)
    if not parsed.hostname:
        raise InputError(f"--host {host}: not a URL (e.g. http://localhost:8080)")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=CONNECT_TIMEOUT).close()
    except OSError as exc:
        raise InputError(f"--host {host}: cannot connect to {parsed.hostname}:{port} "
                         f"({exc.strerror or exc}); nothing was submitted") from None


def kfp_request(package: Package, args, params: Dict[str, str], package_path: str) -> dict:
    """What the kfp client sends, built offline by kfp's own job-config code."""
    from kfp.client import client as kfp_client

    root = getattr(args, "pipeline_root", None) or package.default_pipeline_root
    config = kfp_client.Client._create_job_config(  # self is unused there
        None, params=params, pipeline_package_path=package_path, pipeline_id=None,
        version_id=None, enable_caching=False if args.no_cache else None, pipeline_root=root)
    return {"host": args.host, "namespace": args.namespace,
            "experiment": args.experiment or "Default",
            "run_name": args.run_name or os.path.basename(package.path),
            "service_account": args.service_account,
            "runtime_config": config.runtime_config.to_dict(),
            "pipeline": package.pipeline_spec.get("pipelineInfo", {}).get("name"),
            "secret_env": secret_env_names(package.platform_spec)}


def secret_env_names(platform_spec: dict) -> List[str]:
    """The environment variables the platform spec fills from Kubernetes secrets."""
    executors = (platform_spec or {}).get("platforms", {}).get("kubernetes", {}).get(
        "deploymentSpec", {}).get("executors", {})
    return sorted({pair["envVar"] for config in executors.values()
                   for secret in config.get("secretAsEnv", []) for pair in secret["keyToEnv"]})


@contextmanager
def kfp_package_file(package: Package, secret_env):
    """The file to send: ``package.path``, or a copy with ``--secret-env`` added."""
    if not secret_env:
        yield package.path
        return
    package.platform_spec = merge_platform_spec(
        package.platform_spec, executor_labels(package.pipeline_spec), secret_env)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, os.path.basename(package.path))
        with open(path, "w") as f:
            f.write(kfp_yaml(package.pipeline_spec, package.platform_spec))
        yield path


def submit_kfp(package: Package, args, params: Dict[str, str]) -> int:
    secret_env = parse_secret_env(args.secret_env or [])
    host = args.host or os.environ.get("KF_PIPELINES_ENDPOINT")
    if not host and not args.dry_run:
        raise InputError("--host: no KFP endpoint given (or set KF_PIPELINES_ENDPOINT)")
    args.host = host
    with kfp_package_file(package, secret_env) as path, quiet_clients():
        request = kfp_request(package, args, params, path)
        if args.dry_run:
            print(json.dumps({"dry_run": True, "platform": "kfp", **request}, indent=2,
                             sort_keys=True, default=str))
            return 0
        check_reachable(host)
        return _run_kfp(host, path, args, request)


def _run_kfp(host: str, path: str, args, request: dict) -> int:
    import kfp
    from kfp.client import set_volume_credentials

    credentials = set_volume_credentials.ServiceAccountTokenVolumeCredentials()
    kwargs = ({"credentials": credentials}
              if os.path.exists(credentials._token_path) else {})
    try:
        client = kfp.Client(host=host, namespace=args.namespace or "kubeflow", **kwargs)
        result = client.create_run_from_pipeline_package(
            path, arguments=request["runtime_config"].get("parameters") or {},
            run_name=request["run_name"], experiment_name=request["experiment"],
            namespace=args.namespace, pipeline_root=request["runtime_config"]["pipeline_root"],
            enable_caching=False if args.no_cache else None,
            service_account=args.service_account)
        print(f"submitted run {result.run_id} to {host}", flush=True)
        if not args.wait:
            return 0
        run = client.wait_for_run_completion(result.run_id, WAIT_SECONDS)
    except Exception as exc:  # noqa: BLE001 - HTTP/API errors become one line
        raise InputError(f"--host {host}: {_one_line(exc)}") from None
    state = str(getattr(run, "state", "")).upper()
    print(f"run {result.run_id}: {state}", flush=True)
    return 0 if state == "SUCCEEDED" else 1


def submit_vertex(package: Package, args, params: Dict[str, str]) -> int:
    labels = parse_labels(args.labels)
    with quiet_clients():
        from google.cloud import aiplatform

        credentials = None
        if args.dry_run:
            from google.auth.credentials import AnonymousCredentials

            credentials = AnonymousCredentials()
        try:
            job = aiplatform.PipelineJob(
                display_name=os.path.splitext(os.path.basename(package.path))[0],
                template_path=package.path, parameter_values=params,
                enable_caching=False if args.no_cache else None, labels=labels or None,
                project=args.project, location=args.region, credentials=credentials)
        except Exception as exc:  # noqa: BLE001 - a refused template: one line
            from google.auth.exceptions import DefaultCredentialsError

            if isinstance(exc, DefaultCredentialsError):
                raise InputError("vertex: no Google credentials (gcloud auth application-default "
                                 "login, or GOOGLE_APPLICATION_CREDENTIALS); nothing was "
                                 "submitted") from None
            raise InputError(f"{package.path}: aiplatform refuses it ({_one_line(exc)})") from None
        if args.dry_run:
            from google.protobuf import json_format

            body = json_format.MessageToDict(job._gca_resource._pb)
            body.pop("pipelineSpec", None)
            print(json.dumps({"dry_run": True, "platform": "vertex", "project": args.project,
                              "region": args.region, "service_account": args.service_account,
                              "network": args.network, "job": body}, indent=2, sort_keys=True))
            return 0
        try:
            job.submit(service_account=args.service_account, network=args.network)
            print(f"submitted {job.resource_name}", flush=True)
            if not args.wait:
                return 0
            job.wait()
        except Exception as exc:  # noqa: BLE001 - API errors become one line
            raise InputError(f"vertex ({args.project}, {args.region}): {_one_line(exc)}") from None
        state = job.state.name if job.state is not None else "UNKNOWN"
    print(f"{job.resource_name}: {state}", flush=True)
    return 0 if state == "PIPELINE_STATE_SUCCEEDED" else 1


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text[:300] + "...") if len(text) > 300 else (text or type(exc).__name__)


def submit_command(args) -> int:
    package = load_package(args.file, getattr(args, "platform", None))
    check_flags(args, package.platform)
    params = parse_params(getattr(args, "param", None) or [], package)
    if package.platform == "kfp":
        return submit_kfp(package, args, params)
    return submit_vertex(package, args, params)

