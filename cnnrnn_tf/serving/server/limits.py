"""The server's limits: message and body sizes, timeouts, connections and batch size."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from cnnrnn_tf.errors import InputError
from cnnrnn_tf.serving.server.status import MAX_MESSAGE_BYTES


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
