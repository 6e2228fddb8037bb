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
* Retries: UNAVAILABLE (server not up yet, restarting, no version loaded yet,
  connection refused or dropped) is retried ``retries`` times with exponential
  backoff and jitter (``backoff_seconds * 2**attempt``, capped at
  ``max_backoff_seconds``). DEADLINE_EXCEEDED is NOT retried by default: the
  deadline is the caller's time budget for the call, the server may still be
  computing the timed-out request, and retrying a slow server adds load exactly
  when it is overloaded; pass ``retry_codes`` to change this (Predict is
  idempotent, so retrying is safe, only not free).
* Errors: bad local input (a missing file, bytes that are not an image) raises
  :class:`~cnnrnn_tf.errors.InputError` naming the input before anything is
  sent; every other failed call raises :class:`ServingError` with the gRPC code
  and the server's details.
"""
from __future__ import annotations

import random
import time
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import grpc

from cnnrnn_tf.errors import CnnRnnError, InputError

SIGNATURES = ("serving_default", "predict_images")
INPUT_NAMES = {"serving_default": "examples", "predict_images": "images"}
RETRY_CODES = frozenset({grpc.StatusCode.UNAVAILABLE})
# Codes that mean "the request was wrong", as opposed to "the server or network failed".
REQUEST_ERROR_CODES = frozenset({
    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.OUT_OF_RANGE,
})
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
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
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        super().__init__(f"{target} {method}{tries}: {code.name}: {self.details}".strip())

    @property
    def is_request_error(self) -> bool:
        """True when the server refused the request itself (fix the request, not the server)."""
        return self.code in REQUEST_ERROR_CODES


def parse_server(text: str) -> str:
    """'HOST:PORT' (or '[v6]:PORT') -> the same string, or InputError."""
    host, sep, port = (text or "").rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InputError(f"--server {text!r}: expected HOST:PORT, e.g. localhost:8500")
    return text


def check_image_bytes(data: bytes, name: str) -> bytes:
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
    ``channel``: an existing grpc.Channel to use instead of opening one.
    """

    def __init__(self, server: str, model_name: str, signature: str = "serving_default",
                 version: Optional[int] = None, timeout: float = 10.0, retries: int = 3,
                 backoff_seconds: float = 0.2, max_backoff_seconds: float = 5.0,
                 retry_codes: Iterable[grpc.StatusCode] = RETRY_CODES,
                 channel: Optional[grpc.Channel] = None,
                 sleep: Callable[[float], None] = time.sleep):
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
        self._sleep = sleep
        self._own_channel = channel is None
        self._channel = channel or grpc.insecure_channel(
            self.server, options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                                  ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)])
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
        """One RPC with a deadline; retries ``retry_codes`` with exponential backoff."""
        attempt = 0
        while True:
            try:
                return stub_method(request, timeout=self.timeout)
            except grpc.RpcError as exc:
                code, details = grpc.StatusCode.UNKNOWN, str(exc)
                if callable(getattr(exc, "code", None)):  # a call error (not a bare RpcError)
                    code, details = exc.code(), exc.details()
                if code in self.retry_codes and attempt < self.retries:
                    delay = min(self.max_backoff_seconds, self.backoff_seconds * 2 ** attempt)
                    self._sleep(delay * random.uniform(0.5, 1.0))
                    attempt += 1
                    continue
                raise ServingError(code, details, self.server, method, attempt + 1) from None

    # ---- requests
    def build_request(self, images: Sequence[bytes], names: Optional[Sequence[str]] = None):
        """The PredictRequest for a batch of image bytes (checked, named in errors)."""
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        from cnnrnn_tf import schema

        names = list(names) if names is not None else [f"image {i}" for i in range(len(images))]
        values = [check_image_bytes(data, name) for data, name in zip(images, names)]
        if not values:
            raise InputError("no images to send")
        if self.signature == "serving_default":
            values = [schema.make_example(v, [], name).SerializeToString()
                      for v, name in zip(values, names)]
        request = predict_pb2.PredictRequest()
        self._model_spec(request.model_spec, self.signature)
        request.inputs[INPUT_NAMES[self.signature]].CopyFrom(
            tf.make_tensor_proto(values, dtype=tf.string, shape=[len(values)]))
        return request

    def predict_raw(self, request):
        """Sends a PredictRequest as is; returns the PredictResponse."""
        return self._call("Predict", self._predict.Predict, request)

    def predict_bytes(self, images: Sequence[bytes],
                      names: Optional[Sequence[str]] = None) -> List[Dict]:
        """One Predict call for a batch -> the result dicts, in order."""
        import tensorflow as tf

        from cnnrnn_tf.predictor import format_result

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
        from cnnrnn_tf.predictor import read_image_file

        items = [(p, check_image_bytes(read_image_file(p), p)) for p in paths]
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
