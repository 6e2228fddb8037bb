"""The REST transport: TF Serving's /v1/ paths on http.server, with its limits."""
from __future__ import annotations

import logging
import json
import re
import threading
import socket
import time
import urllib.parse
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Optional
import grpc
from google.protobuf import json_format

from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2

from cnnrnn_tf.serving import security
from cnnrnn_tf.serving.server.status import HTTP_STATUS, RequestError
from cnnrnn_tf.serving.server.limits import ServerLimits
from cnnrnn_tf.serving.server.rest_json import _INT64_MAX, _invalid, _model_spec, rest_predict

log = logging.getLogger("cnnrnn_tf.serving")


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


class _Refusal(Exception):
    """An HTTP-level refusal (no gRPC code): the status, the message; the connection closes."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class RestHandler(BaseHTTPRequestHandler):
    """TF Serving's REST API on http.server; :func:`_make_rest_handler` binds its core,
    limits and token."""

    core: "PredictionCore"
    limits: "ServerLimits"
    auth_token: Optional[str] = None
    protocol_version = "HTTP/1.1"
    server_version = "cnnrnn-dev-model-server"

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
        if length > self.limits.max_body_bytes:
            raise _Refusal(413, f"Request body of {length} bytes is larger than the "
                                f"limit of {self.limits.max_body_bytes} bytes "
                                "(cnnrnn serve --max-body-bytes)")
        chunks, left = [], length
        while left:
            try:
                chunk = self.rfile.read(min(left, 1 << 20))
            except (socket.timeout, OSError):
                raise _Refusal(408, f"request body not received (no data for "
                                    f"{self.limits.socket_timeout:g} s)") from None
            if not chunk:
                raise _Refusal(400, f"request body ended after {length - left} of "
                                    f"{length} bytes")
            chunks.append(chunk)
            left -= len(chunk)
            if left and time.monotonic() > deadline:  # a slow sender
                raise _Refusal(408, f"request body not received within the request "
                                    f"timeout of {self.limits.request_timeout:g} s")
        return b"".join(chunks)

    def _dispatch(self) -> None:
        started = self._accepted if self._accepted is not None else time.monotonic()
        self._accepted = None  # later requests on this connection start when they arrive
        deadline = started + self.limits.request_timeout
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
                                                    self.auth_token)
                if refusal:
                    raise RequestError(grpc.StatusCode.UNAUTHENTICATED, refusal)
                answer = self._handle(method, path, raw, deadline)
                self._answer(200, answer)
            except RequestError as exc:
                self._fail(HTTP_STATUS.get(exc.code, 500), exc.code.name, exc.message)
            except Exception as exc:  # a bug: 500, keep serving
                self._fail(500, "INTERNAL", f"{type(exc).__name__}: {exc}")

    def _handle(self, method: str, path: str, raw: bytes, deadline: float) -> dict:
        name, version, label, verb = self._route(method, path)
        if method == "POST":
            if verb.lower() != "predict":
                raise RequestError(grpc.StatusCode.UNIMPLEMENTED,
                                   f"{verb} is not implemented by this server (its "
                                   "signatures are predict signatures; use :predict)")
            return rest_predict(self.core, name, version, self._json_body(raw, deadline), label)
        if not name:
            raise _invalid("Missing model name in request.")
        spec = _model_spec(name, version, label)
        if verb:  # /metadata
            return self._metadata(spec)
        if label:
            self.core.manager.resolve(spec)  # answers the label error as predict does
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.CopyFrom(spec)
        return json_format.MessageToDict(self.core.status(request),
                                         preserving_proto_field_name=True,
                                         including_default_value_fields=True)

    @staticmethod
    def _route(method: str, path: str):
        """(model name, version or None, label or None, verb) of a /v1/models/... path."""
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
        return name, version, label, verb

    def _json_body(self, raw: bytes, deadline: float):
        if not raw:
            raise _invalid("JSON Parse error: The document is empty")
        try:
            body = json.loads(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise _invalid(f"JSON Parse error: {exc}") from None
        if time.monotonic() > deadline:
            raise RequestError(grpc.StatusCode.DEADLINE_EXCEEDED,
                               f"Deadline exceeded: the request waited longer than "
                               f"the request timeout of {self.limits.request_timeout:g} s "
                               "before it could run (server busy)")
        return body

    def _metadata(self, spec) -> dict:
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.CopyFrom(spec)
        response = self.core.metadata(request)
        sigs = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(sigs)
        as_dict = dict(preserving_proto_field_name=True, including_default_value_fields=True)
        return {"model_spec": json_format.MessageToDict(response.model_spec, **as_dict),
                "metadata": {"signature_def": json_format.MessageToDict(sigs, **as_dict)}}

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _dispatch  # noqa: N815


def _make_rest_handler(core: "PredictionCore", limits: "ServerLimits",
                       auth_token: Optional[str] = None):
    """A :class:`RestHandler` class bound to ``core``, ``limits`` and ``auth_token``."""
    return type("Handler", (RestHandler,), dict(
        core=core, limits=limits, auth_token=auth_token,
        timeout=limits.socket_timeout))  # StreamRequestHandler: settimeout on the socket


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
