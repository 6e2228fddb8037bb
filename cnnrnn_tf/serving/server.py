"""A local development model server that speaks TF Serving's gRPC and REST APIs.

TF Serving (``tensorflow_model_server``) is the production server; this one
exists so that the exported SavedModel, the client and the deployment files can
be developed and tested on a machine where the model server binary cannot be
installed. It uses TF Serving's own protos and mirrors its behaviour:

* gRPC ``PredictionService.Predict`` and ``GetModelMetadata``, and
  ``ModelService.GetModelStatus`` (Classify/Regress/MultiInference answer
  UNIMPLEMENTED);
* REST ``POST /v1/models/<name>[/versions/<v>]:predict`` (row ``instances`` and
  columnar ``inputs`` forms, binary values as ``{"b64": ...}``),
  ``GET /v1/models/<name>[/versions/<v>]`` (status) and ``.../metadata``;
* one model, read from ``<model_base_path>/<version>/saved_model.pb`` (the
  layout of TF Serving's ``--model_base_path`` and of the TFX Pusher).

Version policy: the newest ``num_versions`` (default 2: latest and the one
before it) integer versions on disk are loaded; a request without a version gets
the newest loaded one, a request with ``model_spec.version`` may name any loaded
one. The base path is polled every ``poll_seconds``; a new version is loaded in
the background once its files have stayed unchanged for one poll interval and
``saved_model.pb`` is present, then swapped in atomically (requests in flight
finish on the version they started on). A version that fails to load (or whose
warmup requests fail) is logged once and skipped, and retried only when its
files change. Versions that disappear from disk are unloaded, except that the
last loaded version is kept while the folder holds no version at all.

Status codes are TF Serving's, read from its source (``predict_util.cc``,
``basic_manager.cc``, ``get_model_status_impl.cc``, ``util/json_tensor.cc``,
``http_rest_api_handler.cc``; the table is in ``serving/README.md``):
INVALID_ARGUMENT for a request that cannot run (input names, dtype, rank,
undecodable image, empty batch, batch over ``max_batch_size``, bad
``output_filter``, malformed JSON); FAILED_PRECONDITION over gRPC for an unknown
signature (TF Serving's ``Serving signature key "x" not found.``), INVALID_ARGUMENT
over REST (its ``Serving signature name: "x" not found in signature def``);
NOT_FOUND for an unknown model name or version and while no version is loaded.
REST answers them with TF Serving's ``ToHTTPStatusCode`` (``HTTP_STATUS``) and the
body ``{"error": "<message>"}``.

Limits (``ServerLimits``; documented in RELIABILITY.md): the REST body size is
checked from ``Content-Length`` before anything is read (413); REST sockets have an
idle timeout and requests a time budget; both protocols run on ``workers`` threads
with at most ``max_queued`` requests waiting (gRPC: ``maximum_concurrent_rpcs``,
answered RESOURCE_EXHAUSTED by gRPC itself; REST: answered 503 at once).

The base path may be a URI (``s3://``, ``gs://``, ``ram://``): discovery, polling
and loading go through ``tf.io.gfile``.
"""
from __future__ import annotations

import base64
import json
import logging
import re
import threading
import socket
import time
import urllib.parse
import warnings
from concurrent import futures
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional, Tuple

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
)

from cnnrnn_tf import uri
from cnnrnn_tf.serving import security
from cnnrnn_tf.errors import InputError

log = logging.getLogger("cnnrnn_tf.serving")

DEFAULT_SIGNATURE = "serving_default"
WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000  # TF Serving's limit
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
State = get_model_status_pb2.ModelVersionStatus.State

# TF Serving's model_servers/http_server.cc ToHTTPStatusCode, case by case.
HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}
_CODE_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}


class RequestError(Exception):
    """A request the server refuses: a gRPC status code and a one-line message."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _tf_error_message(exc: tf.errors.OpError) -> str:
    """TF's op error without the graph noise: the lines that say what went wrong."""
    keep = []
    for line in str(exc.message).splitlines():
        line = re.sub(r"\s*\[Op:[^\]]*\]\s*$", "", line).strip()
        if (not line or line.startswith(("Graph execution error", "Detected at node",
                                         "<stack traces", "[[{{node")) or line == "\t"):
            continue
        keep.append(line)
    return "; ".join(keep) or type(exc).__name__


def _dtype_name(enum_value: int) -> str:
    try:
        return tf.dtypes.as_dtype(enum_value).name
    except TypeError:
        return f"dtype {enum_value}"


@dataclass(frozen=True)
class ServerLimits:
    """What one client can make the server spend (documented in RELIABILITY.md).

    ``workers``: threads per protocol (gRPC and REST each); ``max_queued``: requests
    (REST: connections) waiting for a worker beyond those, refused when full (gRPC
    RESOURCE_EXHAUSTED from ``maximum_concurrent_rpcs``, REST 503);
    ``max_concurrent_rpcs``: gRPC's cap (default ``workers + max_queued``);
    ``max_body_bytes``: REST body, refused with 413 from ``Content-Length`` before it is
    read; ``max_message_bytes``: gRPC message in either direction (RESOURCE_EXHAUSTED);
    ``socket_timeout``: REST idle time per socket read/write (an idle keep-alive
    connection is closed after it); ``request_timeout``: REST time budget of a request
    (queueing and reading the body included; over it the model is not run, 504), as TF
    Serving's ``--rest_api_timeout_in_ms``.
    """

    workers: int = 8
    max_queued: int = 32
    max_concurrent_rpcs: Optional[int] = None
    max_body_bytes: int = 64 * 1024 * 1024
    max_message_bytes: int = MAX_MESSAGE_BYTES
    socket_timeout: float = 30.0
    request_timeout: float = 30.0

    def __post_init__(self):
        for name in ("workers", "max_body_bytes", "max_message_bytes"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"server limit {name}={getattr(self, name)}: must be >= 1")
        if self.max_queued < 0:
            raise InputError(f"server limit max_queued={self.max_queued}: must be >= 0")
        if self.max_concurrent_rpcs is not None and self.max_concurrent_rpcs < 1:
            raise InputError(f"server limit max_concurrent_rpcs={self.max_concurrent_rpcs}: "
                             "must be >= 1")
        for name in ("socket_timeout", "request_timeout"):
            if not getattr(self, name) > 0:
                raise InputError(f"server limit {name}={getattr(self, name)}: must be > 0")

    @property
    def grpc_concurrency(self) -> int:
        if self.max_concurrent_rpcs is not None:
            return int(self.max_concurrent_rpcs)
        return int(self.workers) + int(self.max_queued)


def _fingerprint(path: str) -> Tuple:
    """What changes when any file under a version folder is added, grown or rewritten.

    Through tf.io.gfile, so it works on object stores (there: size and modification time
    of every object under the prefix)."""
    entries = []
    try:
        walk = list(tf.io.gfile.walk(path))
    except tf.errors.OpError:
        return ()
    for root, _, files in walk:
        for name in files:
            full = uri.join(root, name)
            try:
                st = tf.io.gfile.stat(full)
            except tf.errors.OpError:
                continue
            entries.append((full[len(path):].lstrip("/"), st.length, st.mtime_nsec))
    return tuple(sorted(entries))


# --------------------------------------------------------------------------- a loaded version
class ServableVersion:
    """One loaded SavedModel version: its signature defs (as TF Serving reads them), functions."""

    def __init__(self, version: int, path: str):
        self.version = int(version)
        self.path = path
        proto = saved_model_pb2.SavedModel()
        with tf.io.gfile.GFile(uri.join(path, "saved_model.pb"), "rb") as f, \
                warnings.catch_warnings():
            warnings.simplefilter("error")  # protobuf warns (not raises) on some corrupt files
            proto.ParseFromString(f.read())
        if not proto.meta_graphs:
            raise ValueError("saved_model.pb holds no MetaGraphDef")
        self.signature_defs = dict(proto.meta_graphs[0].signature_def)
        self._loaded = tf.saved_model.load(path)  # keeps the variables alive
        self.functions = dict(self._loaded.signatures)

    def signature_def_map(self) -> get_model_metadata_pb2.SignatureDefMap:
        out = get_model_metadata_pb2.SignatureDefMap()
        for name, sig in self.signature_defs.items():
            out.signature_def[name].CopyFrom(sig)
        return out


# --------------------------------------------------------------------------- versions on disk
class ModelManager:
    """Loads, swaps and unloads the versions of one model under its base path.

    Readers (request threads) take ``self._versions`` without a lock: it is a
    dict that is replaced, never changed in place. Only the poll thread writes.
    """

    def __init__(self, name: str, base_path: str, num_versions: int = 2,
                 poll_seconds: float = 2.0, warmup: bool = True):
        self.name = name
        self.base_path = uri.absolute(base_path).rstrip("/") or "/"
        self.num_versions = max(1, int(num_versions))
        self.poll_seconds = float(poll_seconds)
        self.warmup = warmup
        self._versions: Dict[int, ServableVersion] = {}
        self._status: Dict[int, Tuple[int, int, str]] = {}  # version -> (state, code, message)
        self._failed: Dict[int, Tuple] = {}  # version -> fingerprint that failed
        self._seen: Dict[int, Tuple] = {}  # version -> fingerprint at the last poll
        self._write_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.predict_fn = None  # set by PredictionCore: runs warmup requests

    # ---- reading
    @property
    def versions(self) -> Dict[int, ServableVersion]:
        return self._versions

    def resolve(self, spec) -> ServableVersion:
        """model_spec -> the loaded version, or RequestError as TF Serving words it."""
        if spec.name != self.name:
            what = (f"Specific({spec.name}, {spec.version.value})" if spec.HasField("version")
                    else f"Latest({spec.name})")
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {what}")
        versions = self._versions
        if spec.HasField("version"):
            found = versions.get(spec.version.value)
            if found is None:
                raise RequestError(
                    grpc.StatusCode.NOT_FOUND,
                    f"Servable not found for request: Specific({spec.name}, {spec.version.value})"
                    f" (loaded versions: {sorted(versions) or 'none'})")
            return found
        if spec.version_label:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"Unrecognized servable version label: {spec.version_label} "
                               "(this server has no version labels; use model_spec.version)")
        if not versions:  # TF Serving's basic_manager.cc: NOT_FOUND, as for an unknown model
            raise RequestError(
                grpc.StatusCode.NOT_FOUND,
                f"Servable not found for request: Latest({spec.name}) (no version loaded; "
                f"waiting for {self.base_path}/<version>/saved_model.pb)")
        return versions[max(versions)]

    def status(self, spec) -> List[get_model_status_pb2.ModelVersionStatus]:
        if spec.name != self.name:
            raise RequestError(grpc.StatusCode.NOT_FOUND,
                               f"Could not find any versions of model {spec.name}")
        status = dict(self._status)
        if spec.HasField("version"):
            if spec.version.value not in status:
                raise RequestError(grpc.StatusCode.NOT_FOUND,
                                   f"Could not find version {spec.version.value} of model "
                                   f"{spec.name}")
            status = {spec.version.value: status[spec.version.value]}
        if not status:
            raise RequestError(grpc.StatusCode.NOT_FOUND,
                               f"Could not find any versions of model {spec.name}")
        out = []
        for version in sorted(status, reverse=True):
            state, code, message = status[version]
            item = get_model_status_pb2.ModelVersionStatus(version=version, state=state)
            item.status.error_code = code
            item.status.error_message = message
            out.append(item)
        return out

    # ---- the folder
    def on_disk(self) -> Dict[int, str]:
        """Integer version folders that hold a saved_model.pb."""
        found = {}
        try:
            names = tf.io.gfile.listdir(self.base_path)
        except tf.errors.OpError:
            return found
        for name in names:
            name = name.rstrip("/")  # object stores list "folders" as "1/"
            if not name.isdigit():
                continue
            path = uri.join(self.base_path, name)
            try:
                if tf.io.gfile.exists(uri.join(path, "saved_model.pb")):
                    found[int(name)] = path
            except tf.errors.OpError:
                continue
        return found

    def poll_once(self, initial: bool = False) -> None:
        """Loads what should be loaded, swaps it in, unloads what should not."""
        with self._write_lock:
            disk = self.on_disk()
            prints = {v: _fingerprint(p) for v, p in disk.items()}
            seen, self._seen = self._seen, prints
            loaded = dict(self._versions)
            for version, fp in prints.items():  # changed files: a failed version may load now
                if version in self._failed and self._failed[version] != fp:
                    del self._failed[version]
            candidates = sorted((v for v in disk if v not in self._failed), reverse=True)
            aspired = candidates[: self.num_versions]
            for version in aspired:
                if version in loaded or self._stop.is_set():
                    continue
                if not initial and seen.get(version) != prints[version]:
                    continue  # still being written (or just appeared): next poll
                servable = self._load(version, disk[version], prints[version])
                if servable is not None:
                    loaded[version] = servable
            keep = {v: loaded[v] for v in aspired if v in loaded}
            # Until newer versions are loaded, keep older loaded ones that are still on disk.
            for version in sorted(loaded, reverse=True):
                if len(keep) >= self.num_versions:
                    break
                if version not in keep and (version in disk or not disk):
                    keep[version] = loaded[version]
            for version in set(self._versions) - set(keep):
                log.info("model %s: unloading version %d", self.name, version)
                self._status[version] = (State.END, 0, "")
            if keep.keys() != self._versions.keys() or any(
                    keep[v] is not self._versions.get(v) for v in keep):
                self._versions = keep  # the atomic swap
                log.info("model %s: serving versions %s (default %s)", self.name,
                         sorted(keep), max(keep) if keep else None)
            if not disk and self._seen != seen:
                log.warning("model %s: no version folders with saved_model.pb under %s",
                            self.name, self.base_path)

    def _load(self, version: int, path: str, fp: Tuple) -> Optional[ServableVersion]:
        self._status[version] = (State.LOADING, 0, "")
        started = time.monotonic()
        try:
            servable = ServableVersion(version, path)
            warmed = self._run_warmup(servable) if self.warmup else 0
        except Exception as exc:  # a broken version: log once, skip until its files change
            first = (_tf_error_message(exc) if isinstance(exc, tf.errors.OpError)
                     else (str(exc).strip().splitlines() or [""])[0])
            log.error("model %s: version %d at %s failed to load, skipped: %s: %s",
                      self.name, version, path, type(exc).__name__, first)
            self._failed[version] = fp
            self._status[version] = (State.END, grpc.StatusCode.UNKNOWN.value[0],
                                     f"{type(exc).__name__}: {first}")
            return None
        self._status[version] = (State.AVAILABLE, 0, "")
        log.info("model %s: loaded version %d in %.1f s%s", self.name, version,
                 time.monotonic() - started, f" ({warmed} warmup requests)" if warmed else "")
        return servable

    def _run_warmup(self, servable: ServableVersion) -> int:
        """Replays assets.extra/tf_serving_warmup_requests like TF Serving; raises on failure."""
        path = uri.join(servable.path, WARMUP_FILE)
        if self.predict_fn is None or not tf.io.gfile.exists(path):
            return 0
        count = 0
        for record in tf.data.TFRecordDataset(path).take(MAX_WARMUP_RECORDS).as_numpy_iterator():
            entry = prediction_log_pb2.PredictionLog()
            entry.ParseFromString(record)
            if entry.WhichOneof("log_type") != "predict_log":
                continue
            try:
                self.predict_fn(servable, entry.predict_log.request)
            except RequestError as exc:
                raise ValueError(f"warmup request {count} failed: {exc.code.name}: {exc.message}")
            count += 1
        return count

    # ---- the poll thread
    def start(self) -> None:
        self._thread = threading.Thread(target=self._poll_loop, name=f"poll-{self.name}",
                                        daemon=True)
        self._thread.start()

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.poll_once()
            except Exception as exc:  # never let the poll thread die
                log.error("model %s: polling %s failed: %s: %s", self.name, self.base_path,
                          type(exc).__name__, exc)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)


# --------------------------------------------------------------------------- request handling
# Values per input tensor when no --max-batch-size is set (checked on the declared shape).
MAX_REQUEST_ELEMENTS = 1 << 16


class PredictionCore:
    """Predict / metadata / status, transport-independent (gRPC and REST share it)."""

    def __init__(self, manager: ModelManager, max_batch_size: Optional[int] = None):
        self.manager = manager
        self.max_batch_size = max_batch_size
        manager.predict_fn = self.run_predict

    def predict(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        return self.run_predict(self.manager.resolve(request.model_spec), request)

    def run_predict(self, servable: ServableVersion, request) -> predict_pb2.PredictResponse:
        name = request.model_spec.signature_name or DEFAULT_SIGNATURE
        if name not in servable.functions or name not in servable.signature_defs:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                               f'Serving signature key "{name}" not found.')
        signature = servable.signature_defs[name]
        inputs = self._inputs(signature, request.inputs)
        wanted = list(request.output_filter) or list(signature.outputs)
        for alias in wanted:
            if alias not in signature.outputs:
                raise RequestError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"output tensor alias not found in signature: {alias} Outputs expected to "
                    f"be in the set {{{','.join(sorted(signature.outputs))}}}.")
        try:
            outputs = servable.functions[name](**inputs)
        except tf.errors.OpError as exc:
            raise RequestError(_CODE_BY_VALUE.get(exc.error_code, grpc.StatusCode.UNKNOWN),
                               _tf_error_message(exc)) from None
        except UnicodeDecodeError:
            # TF quoted the (binary) input in its error and failed to decode its own message;
            # seen for bytes that are not a serialized tf.Example.
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"Could not parse the input of signature {name} "
                               f"({', '.join(sorted(inputs))}): for 'examples', each value must "
                               "be a serialized tf.Example") from None
        response = predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name or self.manager.name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = name
        for alias in wanted:
            response.outputs[alias].CopyFrom(tf.make_tensor_proto(outputs[alias].numpy()))
        return response

    def _inputs(self, signature, tensors) -> Dict[str, tf.Tensor]:
        expected = set(signature.inputs)
        sent = set(tensors)
        if len(sent) != len(expected):
            raise RequestError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input size does not match signature: {len(sent)}!={len(expected)} "
                f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(expected))}}}). "
                f"Sent extra: {{{','.join(sorted(sent - expected))}}}. "
                f"Missing but required: {{{','.join(sorted(expected - sent))}}}.")
        out, batch = {}, None
        for index, alias in enumerate(sorted(sent)):
            if alias not in signature.inputs:
                raise RequestError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"input tensor alias not found in signature: {alias}. Inputs expected to be "
                    f"in the set {{{','.join(sorted(expected))}}}.")
            info, proto = signature.inputs[alias], tensors[alias]
            if proto.dtype != info.dtype:
                raise RequestError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"Expects arg[{index}] ({alias}) to be {_dtype_name(info.dtype)} but "
                    f"{_dtype_name(proto.dtype)} is provided")
            # Check the declared shape before materialising it: a 12-byte TensorProto can
            # claim a billion strings (make_ndarray would pad a list to that length).
            dims = [d.size for d in proto.tensor_shape.dim]
            if any(d < 0 for d in dims):
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"tensor parsing error: {alias} (negative dimension {dims})")
            elements = int(np.prod(dims, dtype=np.float64)) if dims else 1
            limit = self.max_batch_size or MAX_REQUEST_ELEMENTS
            if elements > limit:
                raise RequestError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"Task size {elements} is larger than maximum input batch size {limit}")
            try:
                array = tf.make_ndarray(proto)
            except Exception:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"tensor parsing error: {alias}") from None
            want_rank = len(info.tensor_shape.dim)
            if not info.tensor_shape.unknown_rank and array.ndim != want_rank:
                raise RequestError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"input {alias} must have rank {want_rank} (a batch of "
                    f"{_dtype_name(info.dtype)} values), got shape {list(array.shape)}")
            size = array.shape[0] if array.ndim else 1
            if batch is not None and size != batch:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"inputs have different batch sizes ({batch} and {size})")
            batch = size
            out[alias] = tf.constant(array, dtype=tf.dtypes.as_dtype(info.dtype))
        if batch == 0:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               "empty batch: the request holds no examples")
        if self.max_batch_size and batch and batch > self.max_batch_size:
            raise RequestError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Task size {batch} is larger than maximum input batch size {self.max_batch_size}")
        return out

    def metadata(self, request) -> get_model_metadata_pb2.GetModelMetadataResponse:
        fields = list(request.metadata_field)
        if not fields:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               "GetModelMetadataRequest must specify at least one metadata_field")
        for field in fields:
            if field != "signature_def":
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"Metadata field {field} is not supported")
        servable = self.manager.resolve(request.model_spec)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = self.manager.name
        response.model_spec.version.value = servable.version
        response.metadata["signature_def"].Pack(servable.signature_def_map())
        return response

    def status(self, request) -> get_model_status_pb2.GetModelStatusResponse:
        response = get_model_status_pb2.GetModelStatusResponse()
        response.model_version_status.extend(self.manager.status(request.model_spec))
        return response


# --------------------------------------------------------------------------- gRPC
def _grpc_method(kind: str):
    def wrap(fn):
        def method(self, request, context):
            remaining = context.time_remaining()
            if not context.is_active() or (remaining is not None and remaining <= 0):
                # The caller gave up while the RPC waited for a worker: do not run it.
                self._log_error(kind, request, grpc.StatusCode.DEADLINE_EXCEEDED,
                                "deadline passed while queued; not run")
                context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                              "Deadline exceeded while the request waited for a worker")
            try:
                return fn(self, request)
            except RequestError as exc:
                self._log_error(kind, request, exc.code, exc.message)
                context.abort(exc.code, exc.message)
            except Exception as exc:  # a bug: answer INTERNAL, keep serving
                self._log_error(kind, request, grpc.StatusCode.INTERNAL,
                                f"{type(exc).__name__}: {exc}")
                context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")
        method.__name__ = fn.__name__
        return method
    return wrap


class _ErrorLog:
    @staticmethod
    def _log_error(kind, request, code, message):
        spec = getattr(request, "model_spec", None)
        where = f"{spec.name}/{spec.version.value if spec.HasField('version') else 'latest'}" \
            if spec is not None else "?"
        log.warning("gRPC %s %s -> %s: %s", kind, where, code.name, message)


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer, _ErrorLog):
    def __init__(self, core: PredictionCore):
        self.core = core

    @_grpc_method("Predict")
    def Predict(self, request):  # noqa: N802 (gRPC method names)
        return self.core.predict(request)

    @_grpc_method("GetModelMetadata")
    def GetModelMetadata(self, request):  # noqa: N802
        return self.core.metadata(request)


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer, _ErrorLog):
    def __init__(self, core: PredictionCore):
        self.core = core

    @_grpc_method("GetModelStatus")
    def GetModelStatus(self, request):  # noqa: N802
        return self.core.status(request)


# --------------------------------------------------------------------------- REST
# TF Serving's http_rest_api_util.cc: the paths its REST handler takes (case-insensitive),
# and the two it parses; any other /v1/ path is INVALID_ARGUMENT "Malformed request".
_REST_PREFIX = re.compile(r"(?i)/v1/.*")
_PREDICT_PATH = re.compile(
    r"(?i)/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
    r":(classify|regress|predict)")
_STATUS_PATH = re.compile(
    r"(?i)/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
    r"(?:\/(metadata))?")
_INT64_MAX = 2 ** 63 - 1


def _invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


def _debug_json(value) -> str:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text if len(text) <= 120 else text[:117] + "..."


def _json_type(value) -> str:
    """rapidjson's type names, as TF Serving's json_tensor.cc prints them."""
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def _is_b64(value) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _is_named(value) -> bool:
    return isinstance(value, dict) and not _is_b64(value)


def _dense_shape(value) -> List[int]:
    """json_tensor.cc GetDenseTensorShape: the shape read along the first elements."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _leaf(value, dtype: tf.DType):
    """One JSON leaf -> a Python value of ``dtype``, or TF Serving's error for it."""
    def type_error():
        return _invalid(f"JSON Value: {_debug_json(value)} Type: {_json_type(value)} is not "
                        f"of expected type: {dtype.name}")

    if dtype == tf.string:
        if isinstance(value, dict):
            if not _is_b64(value):
                raise _invalid(f"JSON Value: {_debug_json(value)} not formatted correctly "
                               "for base64 data")
            text = value["b64"]
            try:  # absl::Base64Unescape accepts unpadded input; so do we
                return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
            except ValueError:
                raise _invalid("Unable to base64 decode") from None
        if isinstance(value, str):
            return value.encode("utf-8")
        raise type_error()
    if isinstance(value, (dict, list, str)) or value is None:
        raise type_error()
    if dtype == tf.bool:
        if not isinstance(value, bool):
            raise type_error()
        return value
    if isinstance(value, bool):
        raise type_error()
    if dtype.is_integer and not isinstance(value, int):
        raise type_error()
    if not (dtype.is_integer or dtype.is_floating):
        raise _invalid(f"JSON input of type {dtype.name} is not supported")
    return value


def _fill(value, shape: List[int], level: int, dtype: tf.DType, out: list) -> None:
    """json_tensor.cc FillTensorProto: a dense tensor's values, checked level by level."""
    if not isinstance(value, list):
        if level != len(shape):
            raise _invalid(f"JSON Value: {_debug_json(value)} found at incorrect level: "
                           f"{level + 1} in the JSON DOM. Expected at level: {len(shape)}")
        out.append(_leaf(value, dtype))
        return
    if level >= len(shape):
        raise _invalid(f"Encountered list at unexpected level: {level} expected < {len(shape)}")
    if len(value) != shape[level]:
        raise _invalid(f"Encountered list at unexpected size: {len(value)} at level: {level} "
                       f"expected size: {shape[level]}")
    for item in value:
        _fill(item, shape, level + 1, dtype, out)


def _tensor(values: list, shape: List[int], dtype: tf.DType, alias: str):
    try:
        if dtype == tf.string:
            array = np.empty(len(values), dtype=object)
            array[:] = values
            array = array.reshape(shape)
        else:
            array = np.array(values, dtype=dtype.as_numpy_dtype).reshape(shape)
        return tf.make_tensor_proto(array, dtype=dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise _invalid(f"input {alias}: values do not form a {dtype.name} tensor "
                       f"({exc})") from None


def _json_to_tensors(body: dict, inputs) -> Tuple[Dict[str, object], bool]:
    """json_tensor.cc FillPredictRequestFromJson: ``instances`` / ``inputs`` -> TensorProtos.

    Returns the protos by alias and whether the request was in row form."""
    if not inputs:
        raise _invalid("Failed to get input map for signature")
    names = sorted(inputs)
    dtypes = {a: tf.dtypes.as_dtype(inputs[a].dtype) for a in names}
    has_instances, has_inputs = "instances" in body, "inputs" in body
    if has_instances and has_inputs:
        raise _invalid(f"JSON Value: {_debug_json(body)} Not formatted correctly expecting only "
                       "one of 'inputs' or 'instances' keys to exist ")
    if has_instances:
        instances = body["instances"]
        if not isinstance(instances, list):
            raise _invalid(f"JSON Value: {_debug_json(body)} Expecting 'instances' to be an "
                           "list/array")
        if not instances:
            raise _invalid(f"JSON Value: {_debug_json(body)} No values in 'instances' array")
        if not isinstance(instances[0], dict) and len(names) > 1:
            raise _invalid("instances is a plain list, but expecting list of objects as "
                           "multiple input tensors required as per tensorinfo_map")
        objects = _is_named(instances[0])
        values: Dict[str, list] = {}
        shapes: Dict[str, List[int]] = {}

        def add(item, name, index, key_text):
            if name not in inputs:
                raise _invalid(f"Failed to process element: {index}{key_text} of 'instances' "
                               f"list. Error: INVALID_ARGUMENT: JSON object: does not have "
                               f"named input: {name}")
            shape = _dense_shape(item)
            out: list = []
            try:
                _fill(item, shape, 0, dtypes[name], out)
            except RequestError as exc:
                raise _invalid(f"Failed to process element: {index}{key_text} of 'instances' "
                               f"list. Error: INVALID_ARGUMENT: {exc.message}") from None
            if name in shapes and shapes[name] != shape:
                raise _invalid(f"Failed to process element: {index}{key_text} of 'instances' "
                               f"list. Error: INVALID_ARGUMENT: Expecting shape {shapes[name]} "
                               f"but got: {shape}")
            shapes[name] = shape
            values.setdefault(name, []).extend(out)

        for index, item in enumerate(instances):
            if objects:
                if not _is_named(item):
                    raise _invalid(f"Expecting object but got list at item {index} of input "
                                   "list")
                for key, value in item.items():
                    add(value, key, index, f" key: {key}")
                if set(item) != set(names):
                    raise _invalid(f"Failed to process element: {index} of 'instances' list. "
                                   f"JSON object: {_debug_json(item)} keys must be equal to: "
                                   f"{','.join(names)}")
            else:
                if _is_named(item):
                    raise _invalid(f"Expecting value/list but got object at item {index} of "
                                   "input list")
                add(item, names[0], index, "")
        return {n: _tensor(values[n], [len(instances)] + shapes[n], dtypes[n], n)
                for n in values}, True
    if has_inputs:
        value = body["inputs"]
        if not _is_named(value):
            if len(names) > 1:
                raise _invalid("inputs is a plain value/list, but expecting an object as "
                               "multiple input tensors required as per tensorinfo_map")
            columns = {names[0]: value}
        else:
            columns = {}
            for name in names:
                if name not in value:
                    raise _invalid(f"Missing named input: {name} in 'inputs' object.")
                columns[name] = value[name]
        protos = {}
        for name, item in columns.items():
            shape = _dense_shape(item)
            out: list = []
            _fill(item, shape, 0, dtypes[name], out)
            protos[name] = _tensor(out, shape, dtypes[name], name)
        return protos, False
    raise _invalid("Missing 'inputs' or 'instances' key")


def _json_value(value, alias: str, dtype: tf.DType):
    """One output value -> JSON, as TF Serving writes it (strings UTF-8, *_bytes as b64)."""
    if isinstance(value, np.ndarray):
        return [_json_value(v, alias, dtype) for v in value]
    if isinstance(value, bytes):
        if alias.endswith("_bytes"):
            return {"b64": base64.b64encode(value).decode("ascii")}
        return value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        return value.item()
    return value


def _tensors_to_json(response: predict_pb2.PredictResponse, row_form: bool) -> dict:
    """json_tensor.cc MakeJsonFromTensors: row form ``{"predictions": [...]}`` (one output:
    a list of its values; several: a list of objects), columnar ``{"outputs": ...}`` (one
    output: its value; several: an object)."""
    outputs = {a: tf.make_ndarray(p) for a, p in response.outputs.items()}
    dtypes = {a: tf.dtypes.as_dtype(p.dtype) for a, p in response.outputs.items()}
    if not outputs:
        raise _invalid("Cannot convert empty tensor map to JSON")
    if not row_form:
        if len(outputs) == 1:
            (alias, value), = outputs.items()
            return {"outputs": _json_value(value, alias, dtypes[alias])}
        return {"outputs": {a: _json_value(v, a, dtypes[a]) for a, v in outputs.items()}}
    batch = None
    for alias, value in outputs.items():
        if value.ndim == 0:
            raise _invalid(f"Tensor name: {alias} has no shape information ")
        if batch is not None and value.shape[0] != batch:
            raise _invalid(f"Tensor name: {alias} has inconsistent batch size: "
                           f"{value.shape[0]} expecting: {batch}")
        batch = value.shape[0]
    predictions = []
    for row in range(batch):
        if len(outputs) == 1:
            (alias, value), = outputs.items()
            predictions.append(_json_value(value[row], alias, dtypes[alias]))
        else:
            predictions.append({a: _json_value(v[row], a, dtypes[a]) for a, v in outputs.items()})
    return {"predictions": predictions}


def _model_spec(name: str, version: Optional[int], label: Optional[str] = None):
    spec = predict_pb2.PredictRequest().model_spec
    spec.name = name
    if version is not None:
        spec.version.value = version
    if label:
        spec.version_label = label
    return spec


def rest_predict(core: PredictionCore, name: str, version: Optional[int], body,
                 label: Optional[str] = None) -> dict:
    """TF Serving's REST predict on the gRPC code path, in TF Serving's order of checks:
    the body (a JSON object, ``signature_name`` a string), the servable (NOT_FOUND), the
    signature (INVALID_ARGUMENT over REST), then ``instances`` / ``inputs``."""
    if not isinstance(body, dict):
        raise _invalid(f"JSON Value: {_debug_json(body)} Is not object")
    signature_name = body.get("signature_name", "")
    if not isinstance(signature_name, str):
        raise _invalid(f"JSON Value: {_debug_json(body)} not formatted correctly. "
                       "'signature_name' key must be a string value.")
    request = predict_pb2.PredictRequest()
    request.model_spec.CopyFrom(_model_spec(name, version, label))
    request.model_spec.signature_name = signature_name
    servable = core.manager.resolve(request.model_spec)
    key = signature_name or DEFAULT_SIGNATURE
    signature = servable.signature_defs.get(key)
    if signature is None or key not in servable.functions:
        raise _invalid(f'Serving signature name: "{key}" not found in signature def')
    protos, row_form = _json_to_tensors(body, signature.inputs)
    for alias, proto in protos.items():
        request.inputs[alias].CopyFrom(proto)
    return _tensors_to_json(core.run_predict(servable, request), row_form)


class _Refusal(Exception):
    """An HTTP-level refusal (no gRPC code): the status, the message; the connection closes."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _make_rest_handler(core: PredictionCore, limits: ServerLimits,
                       auth_token: Optional[str] = None):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "cnnrnn-dev-model-server"
        timeout = limits.socket_timeout  # StreamRequestHandler: settimeout on the socket

        def __init__(self, request, client_address, server, accepted=None):
            self._accepted = accepted
            super().__init__(request, client_address, server)

        def log_message(self, fmt, *args):  # errors are logged once in _fail
            return

        def log_error(self, fmt, *args):  # socket timeouts of idle keep-alive connections
            log.debug("REST %s: " + fmt, self.client_address, *args)

        def _answer(self, status: int, obj: dict) -> None:
            data = json.dumps(obj, ensure_ascii=False).encode("utf-8")
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if self.close_connection:
                    self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(data)
            except OSError:  # the client went away
                self.close_connection = True

        def _fail(self, status: int, code_name: str, message: str) -> None:
            log.warning("REST %s %s -> %s %s: %s", self.command, self.path[:200], status,
                        code_name, message)
            self._answer(status, {"error": message})

        def _read_body(self, deadline: float) -> bytes:
            """The body, refused from its headers when too large, before a byte is read."""
            encoding = (self.headers.get("Transfer-Encoding") or "").strip().lower()
            if encoding not in ("", "identity"):
                raise _Refusal(411, f"Transfer-Encoding {encoding} is not supported; "
                                    "send the body with a Content-Length")
            text = self.headers.get("Content-Length")
            if text is None:
                return b""
            try:
                length = int(text)
                if length < 0:
                    raise ValueError
            except ValueError:
                raise _Refusal(400, f"Content-Length {text[:40]!r} is not a byte count") from None
            if length > limits.max_body_bytes:
                raise _Refusal(413, f"Request body of {length} bytes is larger than the "
                                    f"limit of {limits.max_body_bytes} bytes "
                                    "(cnnrnn serve --max-body-bytes)")
            chunks, left = [], length
            while left:
                try:
                    chunk = self.rfile.read(min(left, 1 << 20))
                except (socket.timeout, OSError):
                    raise _Refusal(408, f"request body not received (no data for "
                                        f"{limits.socket_timeout:g} s)") from None
                if not chunk:
                    raise _Refusal(400, f"request body ended after {length - left} of "
                                        f"{length} bytes")
                chunks.append(chunk)
                left -= len(chunk)
                if left and time.monotonic() > deadline:  # a slow sender
                    raise _Refusal(408, f"request body not received within the request "
                                        f"timeout of {limits.request_timeout:g} s")
            return b"".join(chunks)

        def _dispatch(self) -> None:
            started = self._accepted if self._accepted is not None else time.monotonic()
            self._accepted = None  # later requests on this connection start when they arrive
            deadline = started + limits.request_timeout
            method = self.command
            path = urllib.parse.urlsplit(self.path).path
            with self.server.busy():
                try:
                    raw = self._read_body(deadline)
                except _Refusal as exc:
                    self.close_connection = True  # the body was not read
                    self._fail(exc.status, "refused", exc.message)
                    return
                try:
                    if not _REST_PREFIX.fullmatch(path):
                        # TF Serving's HTTP server has no handler outside /v1/: 404.
                        raise RequestError(grpc.StatusCode.NOT_FOUND,
                                           f"Not found: {method} {path}")
                    refusal = security.auth_refusal_for(self.headers.get("Authorization"),
                                                        auth_token)
                    if refusal:
                        raise RequestError(grpc.StatusCode.UNAUTHENTICATED, refusal)
                    answer = self._handle(method, path, raw, deadline)
                    self._answer(200, answer)
                except RequestError as exc:
                    self._fail(HTTP_STATUS.get(exc.code, 500), exc.code.name, exc.message)
                except Exception as exc:  # a bug: 500, keep serving
                    self._fail(500, "INTERNAL", f"{type(exc).__name__}: {exc}")

        def _handle(self, method: str, path: str, raw: bytes, deadline: float) -> dict:
            malformed = _invalid(f"Malformed request: {method} {path}")
            if method == "POST":
                match = _PREDICT_PATH.fullmatch(path)
            elif method == "GET":
                match = _STATUS_PATH.fullmatch(path)
            else:
                raise malformed
            if not match:
                raise malformed
            name, version_text, label, verb = match.groups()
            name = urllib.parse.unquote(name or "")
            label = urllib.parse.unquote(label) if label else None
            version = None
            if version_text:
                version = int(version_text)
                if version > _INT64_MAX:
                    raise _invalid(f"Failed to convert version: {version_text} to numeric.")
            if method == "POST":
                if verb.lower() != "predict":
                    raise RequestError(grpc.StatusCode.UNIMPLEMENTED,
                                       f"{verb} is not implemented by this server (its "
                                       "signatures are predict signatures; use :predict)")
                if not raw:
                    raise _invalid("JSON Parse error: The document is empty")
                try:
                    body = json.loads(raw.decode("utf-8"))
                except (ValueError, UnicodeDecodeError) as exc:
                    raise _invalid(f"JSON Parse error: {exc}") from None
                if time.monotonic() > deadline:
                    raise RequestError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                       f"Deadline exceeded: the request waited longer than "
                                       f"the request timeout of {limits.request_timeout:g} s "
                                       "before it could run (server busy)")
                return rest_predict(core, name, version, body, label)
            if not name:
                raise _invalid("Missing model name in request.")
            spec = _model_spec(name, version, label)
            if verb:  # /metadata
                request = get_model_metadata_pb2.GetModelMetadataRequest(
                    metadata_field=["signature_def"])
                request.model_spec.CopyFrom(spec)
                response = core.metadata(request)
                sigs = get_model_metadata_pb2.SignatureDefMap()
                response.metadata["signature_def"].Unpack(sigs)
                return {"model_spec": json_format.MessageToDict(
                            response.model_spec, preserving_proto_field_name=True,
                            including_default_value_fields=True),
                        "metadata": {"signature_def": json_format.MessageToDict(
                            sigs, preserving_proto_field_name=True,
                            including_default_value_fields=True)}}
            if label:
                core.manager.resolve(spec)  # answers the label error as predict does
            request = get_model_status_pb2.GetModelStatusRequest()
            request.model_spec.CopyFrom(spec)
            return json_format.MessageToDict(core.status(request),
                                             preserving_proto_field_name=True,
                                             including_default_value_fields=True)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _dispatch  # noqa: N815

    return Handler


class _RestServer(ThreadingHTTPServer):
    """HTTP server with a bounded pool: ``workers`` threads, ``max_queued`` connections
    waiting; a connection beyond that is answered 503 at once by the accepting thread."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address, handler, limits: ServerLimits):
        self.limits = limits
        self._slots = threading.BoundedSemaphore(limits.workers + limits.max_queued)
        self._pool = futures.ThreadPoolExecutor(limits.workers, thread_name_prefix="rest")
        self._lock = threading.Lock()
        self._open: set = set()
        self._busy = 0
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            self._refuse(request, client_address)
            return
        with self._lock:
            self._open.add(request)
        try:
            self._pool.submit(self._work, request, client_address, time.monotonic())
        except RuntimeError:  # shutting down
            self._done(request)

    def _work(self, request, client_address, accepted):
        try:
            self.RequestHandlerClass(request, client_address, self, accepted)
        except Exception:  # noqa: BLE001 (a broken connection; keep serving)
            log.debug("REST connection %s failed", client_address, exc_info=True)
        finally:
            self._done(request)

    def _done(self, request):
        with self._lock:
            self._open.discard(request)
        self.shutdown_request(request)
        self._slots.release()

    def _refuse(self, sock, client_address):
        message = (f"server busy: {self.limits.workers} workers and {self.limits.max_queued} "
                   "waiting connections in use (cnnrnn serve --workers / --max-queued)")
        log.warning("REST %s -> 503 UNAVAILABLE: %s", client_address[0], message)
        data = json.dumps({"error": message}).encode("utf-8")
        try:
            sock.settimeout(0.2)
            try:  # take the request head off the socket, so closing it does not reset
                sock.recv(65536)
            except OSError:
                pass
            sock.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json"
                         b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(data) + data)
        except OSError:
            pass
        finally:
            self.shutdown_request(sock)

    class _Busy:
        def __init__(self, server):
            self.server = server

        def __enter__(self):
            with self.server._lock:
                self.server._busy += 1

        def __exit__(self, *exc):
            with self.server._lock:
                self.server._busy -= 1

    def busy(self):
        """Marks a request in progress (idle keep-alive connections are not)."""
        return self._Busy(self)

    def close_all(self, grace: float) -> None:
        """After ``shutdown()``: waits up to ``grace`` s for requests in progress, then
        closes every connection (idle keep-alive ones at once)."""
        end = time.monotonic() + grace
        while time.monotonic() < end:
            with self._lock:
                if not self._busy:
                    break
            time.sleep(0.02)
        with self._lock:
            sockets = list(self._open)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.server_close()


# --------------------------------------------------------------------------- the server
class ModelServer:
    """gRPC (+ optional REST) server for one model's versions under ``model_base_path``.

    ``port=0`` / ``rest_port=0`` bind a free port (read ``grpc_port`` / ``rest_port``
    after ``start()``); ``rest_port=None`` disables REST. ``model_base_path`` may be a
    URI (``s3://``, ``gs://``, ``ram://``). ``limits`` (a :class:`ServerLimits`) bounds
    what clients can make it spend; ``max_workers`` is ``limits.workers`` when no
    ``limits`` are given. ``credentials`` (:func:`security.server_credentials`) put gRPC
    behind TLS; ``auth_token`` makes gRPC and REST refuse requests without
    ``authorization: Bearer <token>`` (UNAUTHENTICATED, REST 401). REST stays plain HTTP.
    """

    def __init__(self, model_base_path: str, model_name: str, port: int = 8500,
                 rest_port: Optional[int] = 8501, host: str = "127.0.0.1",
                 max_batch_size: Optional[int] = None, poll_seconds: float = 2.0,
                 num_versions: int = 2, max_workers: int = 8, warmup: bool = True,
                 limits: Optional[ServerLimits] = None,
                 credentials: Optional[grpc.ServerCredentials] = None,
                 auth_token: Optional[str] = None):
        uri.ensure_filesystem(model_base_path)
        base = uri.absolute(model_base_path)
        try:
            is_dir = tf.io.gfile.isdir(base)
            is_model = is_dir and tf.io.gfile.exists(uri.join(base, "saved_model.pb"))
        except tf.errors.OpError as exc:
            raise uri.storage_error(model_base_path, exc) from None
        if not is_dir:
            raise InputError(f"{model_base_path}: model base path does not exist (or is not a "
                             "folder); it must hold version folders such as 1/saved_model.pb")
        if is_model:
            raise InputError(
                f"{model_base_path}: is a SavedModel folder itself; --model-base-path takes the "
                "folder that holds the version folders (BASE/1/saved_model.pb), as TF Serving's "
                "--model_base_path")
        if not model_name or "/" in model_name or ":" in model_name:
            raise InputError(f"model name {model_name!r}: must be non-empty, without '/' or ':'")
        self.host = host
        self.manager = ModelManager(model_name, base, num_versions, poll_seconds, warmup)
        self.core = PredictionCore(self.manager, max_batch_size)
        self.limits = limits or ServerLimits(workers=max_workers)
        self._port = port
        self._rest_port = rest_port
        self.credentials = credentials
        self.auth_token = auth_token
        self.grpc_port: Optional[int] = None
        self.rest_port: Optional[int] = None
        self._grpc = None
        self._http = None
        self._http_thread = None

    @property
    def grpc_address(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def rest_url(self) -> Optional[str]:
        return f"http://{self.host}:{self.rest_port}" if self.rest_port else None

    def start(self) -> "ModelServer":
        disk = self.manager.on_disk()
        self.manager.poll_once(initial=True)
        if disk and not self.manager.versions:
            raise InputError(f"{self.manager.base_path}: no version could be loaded "
                             f"(tried {sorted(disk, reverse=True)[: self.manager.num_versions]}; "
                             "see the log above)")
        if not disk:
            log.warning("model %s: no version under %s yet; answering NOT_FOUND (as TF "
                        "Serving) until one appears", self.manager.name, self.manager.base_path)
        limits = self.limits
        options = [("grpc.max_receive_message_length", limits.max_message_bytes),
                   ("grpc.max_send_message_length", limits.max_message_bytes),
                   ("grpc.so_reuseport", 0)]
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=limits.workers,
                                                        thread_name_prefix="grpc"),
                             options=options,
                             interceptors=security.server_interceptors(self.auth_token),
                             maximum_concurrent_rpcs=limits.grpc_concurrency)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionServicer(self.core), server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(self.core), server)
        try:
            self.grpc_port = security.add_port(server, f"{self.host}:{self._port}",
                                               self.credentials)
        except RuntimeError:
            self.grpc_port = 0
        if not self.grpc_port:
            raise InputError(f"cannot listen on {self.host}:{self._port} for gRPC (port in use?); "
                             "choose another --port")
        if self._rest_port is not None:
            try:
                self._http = _RestServer((self.host, self._rest_port),
                                         _make_rest_handler(self.core, limits, self.auth_token),
                                         limits)
            except OSError as exc:
                raise InputError(f"cannot listen on {self.host}:{self._rest_port} for REST "
                                 f"({exc.strerror}); choose another --rest-port") from None
            self.rest_port = self._http.server_address[1]
            self._http_thread = threading.Thread(target=self._http.serve_forever,
                                                 name="rest", daemon=True)
            self._http_thread.start()
        server.start()
        self._grpc = server
        self.manager.start()
        return self

    def stop(self, grace: float = 2.0) -> None:
        """Stops taking requests, lets those in flight finish (up to ``grace`` s), stops polling."""
        if self._http is not None:
            self._http.shutdown()
            self._http.close_all(grace)
            self._http = None
        if self._grpc is not None:
            self._grpc.stop(grace).wait()
            self._grpc = None
        self.manager.stop()

    def __enter__(self) -> "ModelServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
