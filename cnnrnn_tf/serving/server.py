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

Status codes (as TF Serving; see the table in ``serving/README.md``):
INVALID_ARGUMENT for a request that cannot run (input names, dtype, rank,
undecodable image, empty batch, batch over ``max_batch_size``, bad
``output_filter``); FAILED_PRECONDITION for an unknown signature (TF Serving's
``Serving signature key "x" not found.``); NOT_FOUND for an unknown model name
or version; UNAVAILABLE while no version is loaded.
"""
from __future__ import annotations

import base64
import json
import logging
import os
import re
import threading
import time
import warnings
from concurrent import futures
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

from cnnrnn_tf.errors import InputError

log = logging.getLogger("cnnrnn_tf.serving")

DEFAULT_SIGNATURE = "serving_default"
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
MAX_WARMUP_RECORDS = 1000  # TF Serving's limit
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
State = get_model_status_pb2.ModelVersionStatus.State

# TF Serving's http_server.cc ToHTTPStatusCode.
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.FAILED_PRECONDITION: 412,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.CANCELLED: 499,
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


def _fingerprint(path: str) -> Tuple:
    """What changes when any file under a version folder is added, grown or rewritten."""
    entries = []
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            try:
                st = os.stat(full)
            except OSError:
                continue
            entries.append((os.path.relpath(full, path), st.st_size, st.st_mtime_ns))
    return tuple(sorted(entries))


# --------------------------------------------------------------------------- a loaded version
class ServableVersion:
    """One loaded SavedModel version: its signature defs (as TF Serving reads them), functions."""

    def __init__(self, version: int, path: str):
        self.version = int(version)
        self.path = path
        proto = saved_model_pb2.SavedModel()
        with open(os.path.join(path, "saved_model.pb"), "rb") as f, warnings.catch_warnings():
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
        self.base_path = os.path.abspath(base_path)
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
        if not versions:
            raise RequestError(
                grpc.StatusCode.UNAVAILABLE,
                f"Servable not found for request: Latest({spec.name}): no version loaded yet "
                f"(waiting for {self.base_path}/<version>/saved_model.pb)")
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
            names = os.listdir(self.base_path)
        except OSError:
            return found
        for name in names:
            path = os.path.join(self.base_path, name)
            if name.isdigit() and os.path.isfile(os.path.join(path, "saved_model.pb")):
                found[int(name)] = path
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
        path = os.path.join(servable.path, WARMUP_FILE)
        if not os.path.exists(path) or self.predict_fn is None:
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
_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?"
                   r"(?:/labels/(?P<label>[^/:]+))?(?P<action>:predict|/metadata)?/?$")


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


def _decode_json_value(value, alias: str):
    """One JSON input value: {"b64": ...} -> bytes; lists recursively; else as is."""
    if isinstance(value, dict):
        if set(value) != {"b64"} or not isinstance(value["b64"], str):
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f'input {alias}: a JSON object value must be {{"b64": "<base64>"}}')
        try:
            return base64.b64decode(value["b64"], validate=True)
        except ValueError:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {alias}: invalid base64 in b64 value") from None
    if isinstance(value, list):
        return [_decode_json_value(v, alias) for v in value]
    if isinstance(value, str):
        return value.encode("utf-8")
    return value


def rest_predict(core: PredictionCore, name: str, version: Optional[int], body: dict) -> dict:
    """TF Serving's REST predict (row and columnar forms) on top of the gRPC code path."""
    if not isinstance(body, dict):
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "request body must be a JSON object")
    if ("instances" in body) == ("inputs" in body):
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           'Missing \'inputs\' or \'instances\' key (exactly one is required)')
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    if version is not None:
        request.model_spec.version.value = version
    signature_name = body.get("signature_name") or DEFAULT_SIGNATURE
    if not isinstance(signature_name, str):
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "signature_name must be a string")
    request.model_spec.signature_name = signature_name
    servable = core.manager.resolve(request.model_spec)
    signature = servable.signature_defs.get(signature_name)
    if signature is None or signature_name not in servable.functions:
        raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                           f'Serving signature key "{signature_name}" not found.')
    aliases = sorted(signature.inputs)
    row_form = "instances" in body
    if row_form:
        instances = body["instances"]
        if not isinstance(instances, list):
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, '"instances" must be a list')
        columns: Dict[str, list] = {a: [] for a in aliases}
        for i, instance in enumerate(instances):
            named = isinstance(instance, dict) and set(instance) != {"b64"}
            if not named and len(aliases) == 1:
                instance = {aliases[0]: instance}
            elif not named:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"instance {i}: the signature has several inputs "
                                   f"{aliases}; each instance must be an object naming them")
            for alias, value in instance.items():
                columns.setdefault(alias, []).append(value)
    else:
        inputs = body["inputs"]
        columns = inputs if isinstance(inputs, dict) and set(inputs) != {"b64"} \
            else {aliases[0] if len(aliases) == 1 else "": inputs}
    for alias, values in columns.items():
        info = signature.inputs.get(alias)
        dtype = tf.dtypes.as_dtype(info.dtype) if info is not None else tf.string
        decoded = _decode_json_value(values, alias)
        try:
            array = np.array(decoded, dtype=object if dtype == tf.string else dtype.as_numpy_dtype)
            if dtype == tf.string and array.ndim == 0:
                array = array.reshape([1])
            request.inputs[alias].CopyFrom(tf.make_tensor_proto(array, dtype=dtype))
        except (ValueError, TypeError) as exc:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {alias}: values do not form a {dtype.name} tensor "
                               f"({exc})") from None
    response = core.run_predict(servable, request)
    outputs = {alias: tf.make_ndarray(proto) for alias, proto in response.outputs.items()}
    dtypes = {alias: tf.dtypes.as_dtype(proto.dtype) for alias, proto in response.outputs.items()}
    if not row_form:
        if len(outputs) == 1:
            (alias, value), = outputs.items()
            return {"outputs": _json_value(value, alias, dtypes[alias])}
        return {"outputs": {a: _json_value(v, a, dtypes[a]) for a, v in outputs.items()}}
    batch = len(next(iter(outputs.values()))) if outputs else 0
    predictions = []
    for row in range(batch):
        if len(outputs) == 1:
            (alias, value), = outputs.items()
            predictions.append(_json_value(value[row], alias, dtypes[alias]))
        else:
            predictions.append({a: _json_value(v[row], a, dtypes[a]) for a, v in outputs.items()})
    return {"predictions": predictions}


def _make_rest_handler(core: PredictionCore):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "cnnrnn-dev-model-server"

        def log_message(self, fmt, *args):  # errors are logged once in _answer
            return

        def _answer(self, status: int, obj: dict) -> None:
            data = json.dumps(obj, ensure_ascii=False).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _fail(self, code: grpc.StatusCode, message: str) -> None:
            log.warning("REST %s %s -> %s: %s", self.command, self.path, code.name, message)
            self._answer(HTTP_STATUS.get(code, 500), {"error": message})

        def _route(self):
            match = _PATH.match(self.path.split("?", 1)[0])
            if not match:
                raise RequestError(grpc.StatusCode.NOT_FOUND,
                                   f"Malformed request: {self.command} {self.path}")
            if match.group("label"):
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"Unrecognized servable version label: {match.group('label')}")
            version = match.group("version")
            return match.group("name"), (int(version) if version else None), match.group("action")

        def _spec(self, name, version):
            spec = predict_pb2.PredictRequest().model_spec
            spec.name = name
            if version is not None:
                spec.version.value = version
            return spec

        def do_GET(self):  # noqa: N802
            try:
                name, version, action = self._route()
                if action == ":predict":
                    raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                       "predict needs POST with a JSON body")
                if action == "/metadata":
                    request = get_model_metadata_pb2.GetModelMetadataRequest(
                        metadata_field=["signature_def"])
                    request.model_spec.CopyFrom(self._spec(name, version))
                    response = core.metadata(request)
                    sigs = get_model_metadata_pb2.SignatureDefMap()
                    response.metadata["signature_def"].Unpack(sigs)
                    self._answer(200, {
                        "model_spec": json_format.MessageToDict(
                            response.model_spec, preserving_proto_field_name=True),
                        "metadata": {"signature_def": json_format.MessageToDict(
                            sigs, preserving_proto_field_name=True)}})
                    return
                request = get_model_status_pb2.GetModelStatusRequest()
                request.model_spec.CopyFrom(self._spec(name, version))
                self._answer(200, json_format.MessageToDict(
                    core.status(request), preserving_proto_field_name=True,
                    including_default_value_fields=True))
            except RequestError as exc:
                self._fail(exc.code, exc.message)
            except Exception as exc:
                self._fail(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")

        def do_POST(self):  # noqa: N802
            try:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length > 0 else b""
                name, version, action = self._route()
                if action != ":predict":
                    raise RequestError(grpc.StatusCode.NOT_FOUND,
                                       f"Malformed request: POST {self.path} (use ...:predict)")
                try:
                    body = json.loads(raw.decode("utf-8") or "null")
                except (ValueError, UnicodeDecodeError) as exc:
                    raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                       f"JSON Parse error: {exc}") from None
                self._answer(200, rest_predict(core, name, version, body))
            except RequestError as exc:
                self._fail(exc.code, exc.message)
            except Exception as exc:
                self._fail(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")

    return Handler


# --------------------------------------------------------------------------- the server
class ModelServer:
    """gRPC (+ optional REST) server for one model's versions under ``model_base_path``.

    ``port=0`` / ``rest_port=0`` bind a free port (read ``grpc_port`` / ``rest_port``
    after ``start()``); ``rest_port=None`` disables REST.
    """

    def __init__(self, model_base_path: str, model_name: str, port: int = 8500,
                 rest_port: Optional[int] = 8501, host: str = "127.0.0.1",
                 max_batch_size: Optional[int] = None, poll_seconds: float = 2.0,
                 num_versions: int = 2, max_workers: int = 8, warmup: bool = True):
        base = os.path.abspath(model_base_path)
        if not os.path.isdir(base):
            raise InputError(f"{model_base_path}: model base path does not exist (or is not a "
                             "folder); it must hold version folders such as 1/saved_model.pb")
        if os.path.exists(os.path.join(base, "saved_model.pb")):
            raise InputError(
                f"{model_base_path}: is a SavedModel folder itself; --model-base-path takes the "
                "folder that holds the version folders (BASE/1/saved_model.pb), as TF Serving's "
                "--model_base_path")
        if not model_name or "/" in model_name or ":" in model_name:
            raise InputError(f"model name {model_name!r}: must be non-empty, without '/' or ':'")
        self.host = host
        self.manager = ModelManager(model_name, base, num_versions, poll_seconds, warmup)
        self.core = PredictionCore(self.manager, max_batch_size)
        self._port = port
        self._rest_port = rest_port
        self._max_workers = max_workers
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
            log.warning("model %s: no version under %s yet; answering UNAVAILABLE until one "
                        "appears", self.manager.name, self.manager.base_path)
        options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.so_reuseport", 0)]
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=self._max_workers,
                                                        thread_name_prefix="grpc"),
                             options=options)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionServicer(self.core), server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(self.core), server)
        try:
            self.grpc_port = server.add_insecure_port(f"{self.host}:{self._port}")
        except RuntimeError:
            self.grpc_port = 0
        if not self.grpc_port:
            raise InputError(f"cannot listen on {self.host}:{self._port} for gRPC (port in use?); "
                             "choose another --port")
        if self._rest_port is not None:
            try:
                self._http = ThreadingHTTPServer((self.host, self._rest_port),
                                                 _make_rest_handler(self.core))
            except OSError as exc:
                raise InputError(f"cannot listen on {self.host}:{self._rest_port} for REST "
                                 f"({exc.strerror}); choose another --rest-port") from None
            self._http.daemon_threads = True
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
            self._http.server_close()
            self._http = None
        if self._grpc is not None:
            self._grpc.stop(grace).wait()
            self._grpc = None
        self.manager.stop()

    def __enter__(self) -> "ModelServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
