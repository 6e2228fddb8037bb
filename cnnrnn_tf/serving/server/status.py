"""TF Serving's answers: its status codes and their HTTP statuses, and the request error
the server raises with them."""
from __future__ import annotations

import re

import grpc
import tensorflow as tf
from tensorflow_serving.apis import get_model_status_pb2

from cnnrnn_tf.serving.contract import MAX_MESSAGE_BYTES, SERVING_DEFAULT  # noqa: F401


State = get_model_status_pb2.ModelVersionStatus.State
DEFAULT_SIGNATURE = SERVING_DEFAULT
WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000  # TF Serving's limit


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
