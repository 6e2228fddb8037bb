"""The gRPC PredictionService and ModelService over the prediction core."""
from __future__ import annotations

import logging
import grpc

from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from cnnrnn_tf.serving.server.status import RequestError
from cnnrnn_tf.serving.server.core import PredictionCore

log = logging.getLogger("cnnrnn_tf.serving")


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
