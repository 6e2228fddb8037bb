"""The ``cnnrnn serve`` and ``cnnrnn client`` commands (argument parsing only; imports are lazy).

    cnnrnn serve --model-base-path DIR|s3://...|gs://... --model-name NAME [--port 8500]
                 [--rest-port 8501] [--max-batch-size N] [--poll-seconds S] [--host 127.0.0.1]
                 [--num-versions 2] [--workers 8] [--max-queued 32] [--max-concurrent-rpcs N]
                 [--max-body-bytes 64MiB] [--max-message-bytes 256MiB] [--socket-timeout 30]
                 [--request-timeout 30] [--tls-cert FILE --tls-key FILE [--tls-client-ca FILE]]
                 [--auth-token-file FILE]
    cnnrnn client --server HOST:PORT --model NAME [--signature serving_default|predict_images]
                  [--version V] [--json] [--timeout S] [--batch-size N] [--retries N]
                  [--tls [--root-certs FILE] [--tls-cert FILE --tls-key FILE]
                   [--tls-server-name NAME]] [--auth-header NAME=VALUE ...] IMAGE...

Exit status of ``client``: 0 ok; 2 bad input (a file, a flag, or a request the
server refused: INVALID_ARGUMENT, NOT_FOUND (also: no version loaded, as TF
Serving answers it), FAILED_PRECONDITION, OUT_OF_RANGE, and UNAUTHENTICATED /
PERMISSION_DENIED: a missing or wrong token, which the same call would get again);
1 the server or the network failed (UNAVAILABLE or RESOURCE_EXHAUSTED after gRPC's
retries, DEADLINE_EXCEEDED, INTERNAL, ...; a TLS handshake failure is UNAVAILABLE).
"""
from __future__ import annotations

import argparse
import json
import sys

from cnnrnn_tf.serving.contract import MAX_MESSAGE_BYTES

_SERVING_EXTRA = "pip install 'cnnrnn-tf[serving]'"


def _need_serving_extra() -> None:
    from cnnrnn_tf.errors import InputError

    try:
        import grpc  # noqa: F401
        import tensorflow_serving.apis  # noqa: F401
    except ImportError as exc:
        raise InputError(f"the serving extra is not installed ({exc}); install it with "
                         f"{_SERVING_EXTRA}") from None


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} must be between 0 and 65535")
    return value


def _quiet_grpc_core() -> None:
    """gRPC's C core logs TLS handshake failures on stderr itself; the client reports them in
    its one error line instead (CNNRNN_DEBUG=1 or GRPC_VERBOSITY keeps gRPC's own logs).
    ``serve`` keeps them: there they are the operator's log of refused connections."""
    import os

    if os.environ.get("CNNRNN_DEBUG") != "1":
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")


def _check_local_files(*flags_and_paths) -> None:
    """Missing local files named by flags, reported before gRPC or TensorFlow is imported."""
    import os

    from cnnrnn_tf.errors import InputError

    for flag, path in flags_and_paths:
        if path and "://" not in path and not os.path.isfile(path):
            what = "not a file" if os.path.exists(path) else "no such file"
            raise InputError(f"{flag} {path}: {what}")


def _check_serve_flags(args) -> None:
    from cnnrnn_tf.errors import InputError

    if bool(args.tls_cert) != bool(args.tls_key):
        raise InputError("--tls-cert and --tls-key: give both (the server's certificate and "
                         "its key) or neither")
    if args.tls_client_ca and not args.tls_cert:
        raise InputError("--tls-client-ca: only with --tls-cert and --tls-key")
    _check_local_files(("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key),
                       ("--tls-client-ca", args.tls_client_ca),
                       ("--auth-token-file", args.auth_token_file))


def _serve_security(args):
    """(server credentials or None, token or None) from the serve flags, checked."""
    from cnnrnn_tf.serving import security

    credentials = (security.server_credentials(args.tls_cert, args.tls_key, args.tls_client_ca)
                   if args.tls_cert else None)
    token = security.read_token(args.auth_token_file) if args.auth_token_file else None
    return credentials, token


def _client_security(args):
    """(channel credentials or None, metadata pairs) from the client flags, checked."""
    from cnnrnn_tf.serving import security

    metadata = security.parse_auth_headers(args.auth_header)
    if not security.tls_requested(args):
        return None, metadata
    return security.channel_credentials(args.root_certs, args.tls_cert, args.tls_key), metadata


def cmd_serve(args) -> int:
    _check_serve_flags(args)
    _need_serving_extra()
    credentials, token = _serve_security(args)
    import logging
    import signal
    import threading

    from cnnrnn_tf.serving.server import ModelServer, ServerLimits

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    limits = ServerLimits(workers=args.workers, max_queued=args.max_queued,
                          max_concurrent_rpcs=args.max_concurrent_rpcs,
                          max_body_bytes=args.max_body_bytes,
                          max_message_bytes=args.max_message_bytes,
                          socket_timeout=args.socket_timeout,
                          request_timeout=args.request_timeout)
    server = ModelServer(args.model_base_path, args.model_name, port=args.port,
                         rest_port=args.rest_port or None, host=args.host,
                         max_batch_size=args.max_batch_size, poll_seconds=args.poll_seconds,
                         num_versions=args.num_versions, limits=limits,
                         credentials=credentials, auth_token=token)
    stop = threading.Event()
    previous = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda signum, frame: stop.set())
        server.start()
        versions = sorted(server.manager.versions) or "none yet"
        rest = f", REST {server.rest_url} (plain HTTP)" if server.rest_url else ""
        grpc_kind = ("gRPC with TLS" + (" (client certificates required)"
                                        if args.tls_client_ca else "")) if credentials else "gRPC"
        if token is not None:
            grpc_kind += ", token auth"
        print(f"serving model {args.model_name!r} (versions {versions}) from "
              f"{server.manager.base_path}: {grpc_kind} {server.grpc_address}{rest} "
              "(Ctrl-C to stop)", flush=True)
        while not stop.wait(0.5):
            pass
        print("shutting down", file=sys.stderr, flush=True)
    finally:
        server.stop(grace=args.grace_seconds)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def cmd_client(args) -> int:
    _check_local_files(("--root-certs", args.root_certs), ("--tls-cert", args.tls_cert),
                       ("--tls-key", args.tls_key))
    _quiet_grpc_core()
    try:  # flag errors first: this imports grpc, not TensorFlow
        credentials, metadata = _client_security(args)
    except ImportError:
        _need_serving_extra()
        raise
    _need_serving_extra()
    from cnnrnn_tf.cli.args import check_local_inputs

    check_local_inputs(argparse.Namespace(images=args.images,
                                          local_inputs=(("images", "image file"),)))
    from cnnrnn_tf.serving.client import ServingClient, ServingError

    try:
        with ServingClient(args.server, args.model, signature=args.signature,
                           version=args.version, timeout=args.timeout,
                           retries=args.retries, credentials=credentials,
                           server_name=args.tls_server_name, metadata=metadata) as client:
            for result in client.predict_files(args.images, batch_size=args.batch_size):
                if args.json:
                    print(json.dumps(result, ensure_ascii=False), flush=True)
                else:
                    labels = ", ".join(f"{x['label']} ({x['score']:.2f})" for x in result["labels"])
                    print(f"{result['image']}: {labels or '(no labels)'}", flush=True)
    except ServingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if exc.is_request_error else 1
    return 0


def register(sub) -> None:
    """Adds ``serve`` and ``client`` to the CLI's subparsers."""
    from cnnrnn_tf.cli.args import non_negative_int, positive_float, positive_int

    p = sub.add_parser(
        "serve", help="a local development model server with TF Serving's gRPC/REST API",
        description="Serves the newest versions under MODEL_BASE_PATH (VERSION/saved_model.pb, "
                    "as TF Serving's --model_base_path) and loads new versions as they appear. "
                    "For development; TF Serving is the production server (serving/README.md).")
    p.add_argument("--model-base-path", required=True,
                   help="the folder holding version folders 1/, 2/, ... (not a SavedModel "
                        "itself); a local path, s3://BUCKET/... or gs://BUCKET/...")
    p.add_argument("--model-name", required=True, help="the name clients put in model_spec.name")
    p.add_argument("--port", type=_port, default=8500, help="gRPC port (0: any free port)")
    p.add_argument("--rest-port", type=_port, default=8501, help="REST port (0: no REST)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (0.0.0.0 exposes the server to the network)")
    p.add_argument("--max-batch-size", type=positive_int, default=None,
                   help="refuse requests with more examples (INVALID_ARGUMENT)")
    p.add_argument("--poll-seconds", type=positive_float, default=2.0,
                   help="how often to look for new versions")
    p.add_argument("--num-versions", type=positive_int, default=2,
                   help="how many of the newest versions stay loaded")
    p.add_argument("--workers", type=positive_int, default=8,
                   help="worker threads, for gRPC and for REST each")
    p.add_argument("--max-queued", type=non_negative_int, default=32,
                   help="requests (REST: connections) waiting for a worker; more are refused "
                        "at once: gRPC RESOURCE_EXHAUSTED, REST 503")
    p.add_argument("--max-concurrent-rpcs", type=positive_int, default=None,
                   help="gRPC maximum_concurrent_rpcs (default: workers + max-queued)")
    p.add_argument("--max-body-bytes", type=positive_int, default=64 * 1024 * 1024,
                   help="largest REST request body; larger is refused with 413 from the "
                        "Content-Length header, before it is read (default 64 MiB)")
    p.add_argument("--max-message-bytes", type=positive_int, default=MAX_MESSAGE_BYTES,
                   help="largest gRPC message either way (RESOURCE_EXHAUSTED; default 256 MiB)")
    p.add_argument("--socket-timeout", type=positive_float, default=30.0,
                   help="REST: seconds a socket may stay silent (idle keep-alive connections "
                        "are closed after it)")
    p.add_argument("--request-timeout", type=positive_float, default=30.0,
                   help="REST: seconds a request may take to arrive and wait for a worker "
                        "before the model runs (504 after it), as TF Serving's "
                        "--rest_api_timeout_in_ms")
    p.add_argument("--grace-seconds", type=positive_float, default=5.0,
                   help="on SIGINT/SIGTERM, time left to requests in flight")
    p.add_argument("--tls-cert", metavar="FILE", default=None,
                   help="PEM certificate (chain) of the server: gRPC over TLS, as TF Serving's "
                        "--ssl_config_file (REST stays plain HTTP)")
    p.add_argument("--tls-key", metavar="FILE", default=None,
                   help="PEM private key of --tls-cert")
    p.add_argument("--tls-client-ca", metavar="FILE", default=None,
                   help="PEM CA bundle: require client certificates signed by it (mutual TLS)")
    p.add_argument("--auth-token-file", metavar="FILE", default=None,
                   help="refuse gRPC calls and REST requests without 'authorization: Bearer "
                        "<token>' (UNAUTHENTICATED, REST 401); the token is the file's "
                        "content, whitespace stripped")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("client", help="label sets for image files from a model server (gRPC)")
    p.add_argument("--server", required=True,
                   help="HOST:PORT of the gRPC port, e.g. localhost:8500")
    p.add_argument("--model", required=True, help="the model name on the server")
    p.add_argument("--signature", choices=("serving_default", "predict_images"),
                   default="serving_default",
                   help="serving_default sends tf.Examples, predict_images raw image bytes")
    p.add_argument("--version", type=non_negative_int, default=None,
                   help="a specific model version (default: the newest)")
    p.add_argument("--json", action="store_true", help="JSON lines, as 'cnnrnn predict --json'")
    p.add_argument("--timeout", type=positive_float, default=30.0, help="deadline per call (s)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per call")
    p.add_argument("--retries", type=non_negative_int, default=3,
                   help="retries (gRPC's retry policy, at most 4) of a call that got "
                        "UNAVAILABLE or RESOURCE_EXHAUSTED, with exponential backoff")
    p.add_argument("--tls", action="store_true",
                   help="connect over TLS (the server's certificate is checked against "
                        "--root-certs, or the system's roots)")
    p.add_argument("--root-certs", metavar="FILE", default=None,
                   help="with --tls: PEM CA bundle that signed the server's certificate")
    p.add_argument("--tls-cert", metavar="FILE", default=None,
                   help="with --tls: PEM client certificate, for servers that require one")
    p.add_argument("--tls-key", metavar="FILE", default=None,
                   help="with --tls: PEM private key of --tls-cert")
    p.add_argument("--tls-server-name", metavar="NAME", default=None,
                   help="with --tls: the name to check the server's certificate against, when "
                        "it differs from the --server host (grpc.ssl_target_name_override)")
    p.add_argument("--auth-header", metavar="NAME=VALUE", action="append", default=[],
                   help="call metadata sent with every call (repeatable), e.g. "
                        "'authorization=Bearer TOKEN' for 'cnnrnn serve --auth-token-file'")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files to send")
    p.set_defaults(func=cmd_client)
