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
and loading go through ``tf.io.gfile``."""
from __future__ import annotations

import logging
import threading
from concurrent import futures
from typing import Optional

import grpc
import tensorflow as tf
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from cnnrnn_tf import uri
from cnnrnn_tf.errors import InputError
from cnnrnn_tf.serving import security
from cnnrnn_tf.serving.contract import SAVED_MODEL_PB
from cnnrnn_tf.serving.server.core import PredictionCore, SignatureRunner
from cnnrnn_tf.serving.server.grpc_api import ModelServicer, PredictionServicer
from cnnrnn_tf.serving.server.limits import ServerLimits
from cnnrnn_tf.serving.server.rest_http import _RestServer, _make_rest_handler
from cnnrnn_tf.serving.server.versions import ModelManager

log = logging.getLogger("cnnrnn_tf.serving")



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
            is_model = is_dir and tf.io.gfile.exists(uri.join(base, SAVED_MODEL_PB))
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
        runner = SignatureRunner(model_name, max_batch_size)
        self.manager = ModelManager(model_name, base, num_versions, poll_seconds, warmup,
                                    run_request=runner.run)
        self.core = PredictionCore(self.manager, runner)
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
