"""Paths that may be URIs: local folders, ``s3://``, ``gs://`` (and TF's ``ram://`` in tests).

Every file access of the project goes through ``tf.io.gfile``; this module holds the few
string and set-up helpers around it:

* :func:`join`, :func:`dirname`, :func:`basename`, :func:`absolute` treat ``scheme://`` paths as
  URIs (``os.path.abspath("gs://b/x")`` would give ``<cwd>/gs:/b/x``).
* :func:`ensure_filesystem` makes ``s3://`` usable in TensorFlow: it imports ``tensorflow-io``
  (which registers TF's S3 file system) and maps the standard AWS variables to the ones that
  file system reads, so a user sets ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
  ``AWS_REGION`` and, for MinIO or any S3-compatible server, ``AWS_ENDPOINT_URL`` once.
  ``gs://`` is built into TensorFlow and uses Google's application default credentials.
* :func:`beam_s3_options` gives Apache Beam's ``--s3_*`` options from the same variables.
* :func:`exit_process` ends a process that used tensorflow-io's S3 file system with its own
  exit status (that file system can abort at interpreter exit, after all work succeeded).
"""
from __future__ import annotations

import functools
import os
import posixpath
import re
import sys
from typing import Dict, List, Mapping, Optional

from cnnrnn_tf.errors import InputError

_SCHEME = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")
# Schemes TensorFlow can open here: built in (gs, ram) or through tensorflow-io (s3).
KNOWN_SCHEMES = ("s3", "gs", "ram", "file")


def scheme(path) -> str:
    """``"s3"`` for ``s3://b/k``; ``""`` for a local path."""
    m = _SCHEME.match(str(path))
    return m.group(1).lower() if m else ""


def is_remote(path) -> bool:
    """True for a URI that is not a local file (``s3://``, ``gs://``, ``ram://``...)."""
    return scheme(path) not in ("", "file")


def join(base, *parts) -> str:
    """``os.path.join`` for local paths, ``/``-joins for URIs (never normalises ``//``)."""
    base = str(base)
    if not is_remote(base):
        return os.path.join(base, *[str(p) for p in parts])
    out = base
    for part in parts:
        part = str(part)
        out = out + part if out.endswith("/") else out + "/" + part
    return out


def dirname(path) -> str:
    path = str(path)
    if not is_remote(path):
        return os.path.dirname(path)
    head = _SCHEME.match(path).group(0)
    rest = path[len(head):].rstrip("/")
    return head + posixpath.dirname(rest) if "/" in rest else head + rest


def basename(path) -> str:
    path = str(path).rstrip("/")
    return posixpath.basename(path) if is_remote(path) else os.path.basename(path)


def absolute(path) -> str:
    """A local path made absolute; a URI unchanged (and checked to have a known scheme)."""
    path = str(path)
    if scheme(path) == "file":
        return path[len("file://"):]
    if is_remote(path):
        check_scheme(path)
        return path
    return os.path.abspath(path)


def check_scheme(path) -> None:
    s = scheme(path)
    if s and s not in KNOWN_SCHEMES:
        raise InputError(f"{path}: unknown URI scheme {s + '://'!r} "
                         f"(use a local path, s3:// or gs://)")


def s3_environment(env: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """The variables TensorFlow's S3 file system (tensorflow-io) reads, from the AWS standard ones.

    ``AWS_ENDPOINT_URL`` (http://host:port for MinIO / a local S3 server) becomes
    ``S3_ENDPOINT`` with ``S3_USE_HTTPS`` / ``S3_VERIFY_SSL`` following its scheme;
    ``AWS_DEFAULT_REGION`` fills ``AWS_REGION``. Variables already set win.
    """
    env = os.environ if env is None else env
    out: Dict[str, str] = {}
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint and not env.get("S3_ENDPOINT"):
        out["S3_ENDPOINT"] = endpoint
        https = not endpoint.lower().startswith("http://")
        out.setdefault("S3_USE_HTTPS", "1" if https else "0")
        out.setdefault("S3_VERIFY_SSL", "1" if https else "0")
    if not env.get("AWS_REGION"):
        out["AWS_REGION"] = env.get("AWS_DEFAULT_REGION") or "us-east-1"
    return {k: v for k, v in out.items() if k not in env}


def ensure_filesystem(path) -> None:
    """Makes ``path``'s scheme usable by ``tf.io.gfile``; InputError for an unusable one.

    For ``s3://`` and ``gs://`` it also checks once per process that the bucket exists and
    answers, so a wrong bucket, credentials or endpoint fail before any work starts.
    """
    check_scheme(path)
    s = scheme(path)
    if s == "s3":
        os.environ.update(s3_environment())
        try:
            import tensorflow_io  # noqa: F401  registers the s3:// file system with TensorFlow
        except ImportError:
            raise InputError(f"{path}: s3:// paths need the tensorflow-io package "
                             "(pip install 'cnnrnn-tf[s3]')") from None
    if s in ("s3", "gs"):
        bucket = str(path)[len(s) + 3:].split("/", 1)[0]
        if not bucket:
            raise InputError(f"{path}: no bucket name in this URI")
        root = f"{s}://{bucket}/"
        problem = _bucket_problem(root)
        if problem is not None:
            _bucket_problem.cache_clear()  # not cached: the user may fix it and retry
            raise storage_error(path, problem[1], f"bucket {root} {problem[0]}")


@functools.lru_cache(maxsize=64)
def _bucket_problem(root: str):
    """None when the bucket answers; else (what, exception). Cached per process."""
    import tensorflow as tf

    try:
        if tf.io.gfile.isdir(root):
            return None
        return "does not exist or cannot be reached", FileNotFoundError("no such bucket")
    except tf.errors.OpError as exc:
        return "cannot be reached", exc


def ensure_filesystems(*paths) -> None:
    for path in paths:
        if path:
            ensure_filesystem(path)


def beam_s3_options(env: Optional[Mapping[str, str]] = None) -> List[str]:
    """Apache Beam's S3 options (``apache-beam[aws]``) from the AWS standard variables."""
    env = os.environ if env is None else env
    out = []
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        out.append(f"--s3_endpoint_url={endpoint}")
        if endpoint.lower().startswith("http://"):
            out.append("--s3_disable_ssl")  # a bare flag: Beam refuses a value
    for var, flag in (("AWS_ACCESS_KEY_ID", "s3_access_key_id"),
                      ("AWS_SECRET_ACCESS_KEY", "s3_secret_access_key"),
                      ("AWS_SESSION_TOKEN", "s3_session_token")):
        if env.get(var):
            out.append(f"--{flag}={env[var]}")
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if region:
        out.append(f"--s3_region_name={region}")
    return out


def storage_error(path, exc: BaseException, action: str = "cannot be accessed") -> InputError:
    """A one-line InputError for a failed object-store access, saying what to check."""
    detail = str(getattr(exc, "message", "") or exc).strip().splitlines()
    detail = detail[0][:200] if detail else type(exc).__name__
    hint = ""
    s = scheme(path)
    if s == "s3":
        hint = ("; check the bucket name, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, "
                "AWS_REGION and AWS_ENDPOINT_URL")
    elif s == "gs":
        hint = "; check the bucket name and the application default credentials"
    return InputError(f"{path}: {action} ({detail}){hint}")


def exit_process(status: int) -> None:
    """Exits with ``status``; after tensorflow-io's S3 file system was used, without the
    interpreter's teardown, which can abort in that library ("pure virtual method called")."""
    if "tensorflow_io" in sys.modules:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(int(status))
    sys.exit(int(status))
