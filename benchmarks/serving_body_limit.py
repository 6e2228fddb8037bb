"""How fast ``cnnrnn serve`` refuses REST bodies that claim to be huge, and what it costs.

Starts the server in this process on a free loopback port (an empty base path is enough:
the body limit is checked from the ``Content-Length`` header before routing), sends
requests whose headers claim ``--claim-bytes`` (default 2 GiB) and no body, and prints
the status and the time to the answer of each, the growth of the process's peak RSS, and
whether the server still answers afterwards.

    python benchmarks/serving_body_limit.py [--claim-bytes 2147483648] [--requests 5]
"""
from __future__ import annotations

import argparse
import resource
import socket
import tempfile
import time


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--claim-bytes", type=int, default=2 ** 31)
    parser.add_argument("--requests", type=int, default=5, choices=range(1, 101))
    args = parser.parse_args(argv)
    from cnnrnn_tf.serving.server import ModelServer

    with tempfile.TemporaryDirectory() as base, \
            ModelServer(base, "cnnrnn", port=0, rest_port=0) as server:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for _ in range(args.requests):
            sock = socket.create_connection(("127.0.0.1", server.rest_port), timeout=10)
            start = time.monotonic()
            sock.sendall(b"POST /v1/models/cnnrnn:predict HTTP/1.1\r\nHost: localhost\r\n"
                         b"Content-Length: %d\r\n\r\n" % args.claim_bytes)
            status = sock.recv(65536).split(b" ", 2)[1].decode()
            print(f"Content-Length {args.claim_bytes}: HTTP {status} after "
                  f"{(time.monotonic() - start) * 1000:.1f} ms")
            sock.close()
        grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
        sock = socket.create_connection(("127.0.0.1", server.rest_port), timeout=10)
        sock.sendall(b"GET /v1/models/cnnrnn HTTP/1.1\r\nHost: localhost\r\n\r\n")
        after = sock.recv(65536).split(b"\r\n", 1)[0].decode()
        sock.close()
        print(f"peak RSS growth: {grown} KiB; then GET /v1/models/cnnrnn: {after} "
              "(404: no version in the empty base path, i.e. still serving)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
