"""A gRPC client for TF Serving (or ``cnnrnn serve``) over the official stubs.

    from cnnrnn_tf.serving.client import ServingClient

    with ServingClient("localhost:8500", "cnnrnn") as client:
        for result in client.predict_files(["a.png", "b.jpg"]):
            print(result)   # {"image": "a.png", "labels": [{"label": ..., "score": ...}]}

The results are the JSON lines of ``cnnrnn predict --json``.

* ``signature="serving_default"`` sends serialized tf.Examples (``image/encoded``)
  under the input ``examples``; ``"predict_images"`` sends the raw PNG/JPEG bytes
  under ``images``. Both answer ``labels`` / ``scores`` / ``label_count``.
* Batching: ``predict`` / ``predict_files`` send ``batch_size`` images per call.
* Deadline: every call gets ``timeout`` seconds (a gRPC deadline).
* Retries are gRPC's own (a ``retryPolicy`` in the channel's service config,
  ``grpc.service_config`` with ``grpc.enable_retries``), on the codes with which TF
  Serving says "try again later": UNAVAILABLE (server not up yet, restarting,
  connection refused or dropped, TF Serving's batch queue full) and
  RESOURCE_EXHAUSTED (the server's concurrent-RPC limit). ``retries`` extra
  attempts (gRPC caps attempts at 5, so at most 4 retries), exponential backoff
  with gRPC's jitter from ``backoff_seconds`` up to ``max_backoff_seconds``, all
  within the one ``timeout`` deadline. Never retried: INVALID_ARGUMENT,
  NOT_FOUND (unknown model or version, or no version loaded: TF Serving's answer),
  FAILED_PRECONDITION, ... (the same request would fail again) and
  DEADLINE_EXCEEDED (the deadline is the caller's budget; the server may still be
  computing, and retrying a slow server adds load exactly when it is overloaded).
  Pass ``retry_codes`` to change the set. A request larger than gRPC's message
  limit is refused locally (InputError) before it is sent.
* Errors: bad local input (a missing file, bytes that are not an image) raises
  :class:`~cnnrnn_tf.errors.InputError` naming the input before anything is
  sent; every other failed call raises :class:`ServingError` with the gRPC code
  and the server's details.
"""
from __future__ import annotations

import json
import time
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import grpc

from cnnrnn_tf.errors import CnnRnnError, InputError
from cnnrnn_tf.serving.contract import (INPUT_NAMES, MAX_MESSAGE_BYTES, PREDICT_IMAGES,
                                        SERVING_DEFAULT)
from cnnrnn_tf.serving.security import connection_hint

SIGNATURES = (SERVING_DEFAULT, PREDICT_IMAGES)
RETRY_CODES = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})
MAX_ATTEMPTS = 5  # gRPC's cap on retryPolicy.maxAttempts
SERVICES = ("tensorflow.serving.PredictionService", "tensorflow.serving.ModelService")
# Codes that mean "the request was wrong", as opposed to "the server or network failed".
# UNAUTHENTICATED / PERMISSION_DENIED: a missing or wrong token; the same call fails again.
REQUEST_ERROR_CODES = frozenset({
    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED,
})
_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM")


class ServingError(CnnRnnError):
    """A gRPC call that failed: ``code`` (grpc.StatusCode) and the server's ``details``."""

    def __init__(self, code: grpc.StatusCode, details: str, target: str = "", method: str = "",
                 attempts: int = 1):
        self.code = code
        self.details = details or ""
        self.target = target
        self.method = method
        self.attempts = attempts
        tries = f" (up to {attempts} attempts)" if attempts > 1 else ""
        super().__init__(f"{target} {method}{tries}: {code.name}: {self.details}".strip())

    @property
    def is_request_error(self) -> bool:
        """True when the server refused the request itself (fix the request, not the server)."""
        return self.code in REQUEST_ERROR_CODES


def service_config(retries: int, backoff_seconds: float = 0.2, max_backoff_seconds: float = 5.0,
                   retry_codes: Iterable[grpc.StatusCode] = RETRY_CODES) -> str:
    """The gRPC service config (JSON) with the retry policy for TF Serving's two services."""
    codes = sorted(code.name for code in retry_codes)
    method: Dict = {"name": [{"service": name} for name in SERVICES]}
    if retries > 0 and codes:
        if not backoff_seconds > 0 or not max_backoff_seconds > 0:
            raise InputError("retry backoff: must be > 0 seconds")
        method["retryPolicy"] = {
            "maxAttempts": min(MAX_ATTEMPTS, int(retries) + 1),
            "initialBackoff": f"{backoff_seconds:.3f}s",
            "maxBackoff": f"{max(max_backoff_seconds, backoff_seconds):.3f}s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": codes,
        }
    return json.dumps({"methodConfig": [method]})


def parse_server(text: str) -> str:
    """'HOST:PORT' (or '[v6]:PORT') -> the same string, or InputError."""
    host, sep, port = (text or "").rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"--server {text!r}: expected HOST:PORT, e.g. localhost:8500")
    return text


def checked_image_bytes(data: bytes, name: str) -> bytes:
    """Refuses empty or non-image bytes locally, naming the input (the server would too)."""
    if not isinstance(data, (bytes, bytearray)) or not data:
        raise InputError(f"{name}: empty image")
    if not bytes(data[:8]).startswith(_IMAGE_MAGIC):
        raise InputError(f"{name}: not a PNG/JPEG/GIF/BMP image")
    return bytes(data)


class ServingClient:
    """PredictionService / ModelService client for one model.

    ``server``: "host:port" of TF Serving's gRPC port (8500) or of ``cnnrnn serve``.
    ``version``: a specific model version, or None for the newest the server has.
    ``channel``: an existing grpc.Channel to use instead of opening one (it keeps its own
    retry configuration; ``retries`` and the backoff arguments apply to channels this
    client opens).
    ``credentials``: grpc.ChannelCredentials for TLS (:func:`security.channel_credentials`);
    ``server_name`` overrides the name the server's certificate is checked against
    (``grpc.ssl_target_name_override``). ``metadata``: (name, value) pairs sent with every
    call, e.g. ``[("authorization", "Bearer TOKEN")]``.
    """

    def __init__(self, server: str, model_name: str, signature: str = "serving_default",
                 version: Optional[int] = None, timeout: float = 10.0, retries: int = 3,
                 backoff_seconds: float = 0.2, max_backoff_seconds: float = 5.0,
                 retry_codes: Iterable[grpc.StatusCode] = RETRY_CODES,
                 channel: Optional[grpc.Channel] = None,
                 credentials: Optional[grpc.ChannelCredentials] = None,
                 server_name: Optional[str] = None,
                 metadata: Sequence[Tuple[str, str]] = ()):
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        if signature not in SIGNATURES:
            raise InputError(f"signature {signature!r}: choose one of {', '.join(SIGNATURES)}")
        if not model_name:
            raise InputError("model name: empty")
        if timeout is not None and timeout <= 0:
            raise InputError(f"timeout {timeout}: must be > 0 seconds")
        self.server = parse_server(server) if channel is None else server
        self.model_name = model_name
        self.signature = signature
        self.version = version
        self.timeout = timeout
        self.retries = max(0, int(retries))
        self.backoff_seconds = backoff_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self.retry_codes = frozenset(retry_codes)
        self.service_config = service_config(self.retries, backoff_seconds, max_backoff_seconds,
                                             self.retry_codes)
        self.tls = credentials is not None
        self.call_metadata = tuple(metadata or ())
        self._own_channel = channel is None
        options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                   ("grpc.enable_retries", 1),
                   ("grpc.service_config", self.service_config),
                   # ours, not one a DNS TXT record might carry
                   ("grpc.service_config_disable_resolution", 1)]
        if server_name:
            if not self.tls:
                raise InputError("server name override: only with TLS credentials")
            options.append(("grpc.ssl_target_name_override", server_name))
        if channel is not None:
            self._channel = channel
        elif self.tls:
            self._channel = grpc.secure_channel(self.server, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(self.server, options=options)
        self._predict = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)

    # ---- plumbing
    def close(self) -> None:
        if self._own_channel:
            self._channel.close()

    def __enter__(self) -> "ServingClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _model_spec(self, spec, signature: Optional[str] = None) -> None:
        spec.name = self.model_name
        if self.version is not None:
            spec.version.value = int(self.version)
        if signature:
            spec.signature_name = signature

    def _call(self, method: str, stub_method, request):
        """One RPC with a deadline (gRPC retries ``retry_codes`` inside it, per the channel's
        service config); a failure -> ServingError."""
        try:
            return stub_method(request, timeout=self.timeout, metadata=self.call_metadata or None)
        except grpc.RpcError as exc:
            code, details = grpc.StatusCode.UNKNOWN, str(exc)
            if callable(getattr(exc, "code", None)):  # a call error (not a bare RpcError)
                code, details = exc.code(), exc.details()
            hint = connection_hint(code, details, self.tls)
            details = f"{hint}; {details}" if hint else details
            retried = self._own_channel and code in self.retry_codes and self.retries > 0
            attempts = min(MAX_ATTEMPTS, self.retries + 1) if retried else 1
            raise ServingError(code, details, self.server, method, attempts) from None

    # ---- requests
    def build_request(self, images: Sequence[bytes], names: Optional[Sequence[str]] = None):
        """The PredictRequest for a batch of image bytes (checked, named in errors)."""
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        from cnnrnn_tf import schema

        names = list(names) if names is not None else [f"image {i}" for i in range(len(images))]
        values = [checked_image_bytes(data, name) for data, name in zip(images, names)]
        if not values:
            raise InputError("no images to send")
        if self.signature == "serving_default":
            values = [schema.make_example(v, [], name).SerializeToString()
                      for v, name in zip(values, names)]
        request = predict_pb2.PredictRequest()
        self._model_spec(request.model_spec, self.signature)
        request.inputs[INPUT_NAMES[self.signature]].CopyFrom(
            tf.make_tensor_proto(values, dtype=tf.string, shape=[len(values)]))
        size = request.ByteSize()
        if size > MAX_MESSAGE_BYTES:
            raise InputError(f"a batch of {len(values)} images is {size} bytes, over gRPC's "
                             f"message limit of {MAX_MESSAGE_BYTES} bytes; send fewer images "
                             "per call (--batch-size)")
        return request

    def predict_raw(self, request):
        """Sends a PredictRequest as is; returns the PredictResponse."""
        return self._call("Predict", self._predict.Predict, request)

    def predict_bytes(self, images: Sequence[bytes],
                      names: Optional[Sequence[str]] = None) -> List[Dict]:
        """One Predict call for a batch -> the result dicts, in order."""
        import tensorflow as tf

        from cnnrnn_tf.serving.contract import format_result

        names = list(names) if names is not None else [f"image {i}" for i in range(len(images))]
        response = self.predict_raw(self.build_request(images, names))
        missing = {"labels", "scores", "label_count"} - set(response.outputs)
        if missing:
            raise ServingError(grpc.StatusCode.INTERNAL,
                               f"the response lacks the outputs {sorted(missing)} (signature "
                               f"{self.signature!r} of model {self.model_name!r})",
                               self.server, "Predict")
        labels = tf.make_ndarray(response.outputs["labels"])
        scores = tf.make_ndarray(response.outputs["scores"])
        counts = tf.make_ndarray(response.outputs["label_count"])
        if len(labels) != len(names):
            raise ServingError(grpc.StatusCode.INTERNAL,
                               f"sent {len(names)} images, got {len(labels)} results",
                               self.server, "Predict")
        return [format_result(name, [l.decode("utf-8", "replace") for l in row[:n]], srow[:n])
                for name, row, srow, n in zip(names, labels, scores, counts)]

    def predict(self, items: Iterable[Tuple[str, bytes]], batch_size: int = 32) -> Iterator[Dict]:
        """(name, bytes) pairs -> result dicts in order, ``batch_size`` images per call."""
        if batch_size < 1:
            raise InputError(f"batch size {batch_size}: must be >= 1")
        names: List[str] = []
        batch: List[bytes] = []
        for name, data in items:
            names.append(name)
            batch.append(data)
            if len(batch) == batch_size:
                yield from self.predict_bytes(batch, names)
                names, batch = [], []
        if batch:
            yield from self.predict_bytes(batch, names)

    def predict_files(self, paths: Sequence[str], batch_size: int = 32) -> Iterator[Dict]:
        """Image files -> result dicts. Every file is read and checked before the first call."""
        from cnnrnn_tf.io_utils import read_bytes

        items = [(p, checked_image_bytes(read_bytes(p, "image file"), p)) for p in paths]
        return self.predict(items, batch_size)

    # ---- model information
    def metadata(self):
        """The model's SignatureDefMap (GetModelMetadata, field ``signature_def``)."""
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._model_spec(request.model_spec)
        response = self._call("GetModelMetadata", self._predict.GetModelMetadata, request)
        out = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(out)
        return out

    def status(self) -> List[Dict]:
        """GetModelStatus: [{"version", "state", "error_code", "error_message"}], newest first."""
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest()
        self._model_spec(request.model_spec)
        response = self._call("GetModelStatus", self._models.GetModelStatus, request)
        state = get_model_status_pb2.ModelVersionStatus.State
        return [{"version": s.version, "state": state.Name(s.state),
                 "error_code": s.status.error_code, "error_message": s.status.error_message}
                for s in response.model_version_status]

    def wait_until_available(self, timeout: float = 60.0, interval: float = 0.2) -> int:
        """Blocks until a version is AVAILABLE; returns it (ServingError after ``timeout``)."""
        end = time.monotonic() + timeout
        last: Optional[ServingError] = None
        while time.monotonic() < end:
            try:
                ready = [s["version"] for s in self.status() if s["state"] == "AVAILABLE"]
                if ready:
                    return max(ready)
            except ServingError as exc:
                last = exc
            time.sleep(interval)
        raise last or ServingError(grpc.StatusCode.DEADLINE_EXCEEDED,
                                   f"model {self.model_name!r} not available after {timeout} s",
                                   self.server, "GetModelStatus")
