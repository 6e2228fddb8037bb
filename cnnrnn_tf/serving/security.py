"""TLS and token auth for the gRPC side of ``cnnrnn serve`` and ``cnnrnn client``.

TLS works as TF Serving's ``--ssl_config_file`` does: the server presents a certificate
and key (PEM); with a client CA it requires client certificates signed by it (mutual TLS).
REST stays plain HTTP, as in TF Serving.

Token auth: ``cnnrnn serve --auth-token-file FILE`` refuses every gRPC call (and REST
request) whose ``authorization`` metadata (REST: header) is not exactly
``Bearer <token>`` with UNAUTHENTICATED (REST 401), from a server interceptor, before the
model runs. The token is the file's content with surrounding whitespace stripped.

Certificate, key and token files may be local paths or URIs (``s3://``, ``gs://``);
local paths are read without importing TensorFlow, so a missing file is reported at once.
"""
from __future__ import annotations

import hmac
import logging
import re
import ssl
from typing import List, Optional, Sequence, Tuple

import grpc

from cnnrnn_tf.errors import InputError

log = logging.getLogger("cnnrnn_tf.serving")

AUTH_METADATA = "authorization"
AUTH_SCHEME = "Bearer"
_METADATA_NAME = re.compile(r"^[a-z0-9_.-]+$")
_PRINTABLE = re.compile(r"^[\x20-\x7e]*$")


def read_file(path: str, what: str) -> bytes:
    """The bytes of a local file or URI; InputError naming ``what`` and the path otherwise."""
    if not path:
        raise InputError(f"{what}: empty path")
    try:
        if "://" in path:
            import tensorflow as tf

            with tf.io.gfile.GFile(path, "rb") as f:
                data = f.read()
        else:
            with open(path, "rb") as f:
                data = f.read()
    except Exception as exc:  # OSError, tf.errors.OpError
        reason = getattr(exc, "strerror", None) or getattr(exc, "message", None) or str(exc)
        raise InputError(f"{what} {path}: cannot be read ({reason})") from None
    if not data.strip():
        raise InputError(f"{what} {path}: is empty")
    return data


def read_pem(path: str, what: str, kind: str = "CERTIFICATE") -> bytes:
    """A PEM file: certificates (``kind="CERTIFICATE"``, also CA bundles) or a private key
    (``kind="PRIVATE KEY"``); refuses a file without such a block, naming what it expected."""
    data = read_file(path, what)
    if not re.search(rb"-----BEGIN [A-Z ]*" + kind.encode() + rb"-----", data):
        raise InputError(f"{what} {path}: not a PEM {kind.lower()} (no '-----BEGIN ... "
                         f"{kind}-----' line)")
    if b"ENCRYPTED" in data and kind == "PRIVATE KEY":
        raise InputError(f"{what} {path}: an encrypted key, which gRPC cannot use; decrypt it "
                         "(openssl pkey -in KEY -out KEY.plain) and protect the file instead")
    return data


def _check_key_pair(cert_file: str, key_file: str) -> None:
    """Refuses a key that does not belong to the certificate (local files only), with the
    reason, instead of gRPC's failure at bind time."""
    if "://" in cert_file or "://" in key_file:
        return
    try:
        # A password callback: never a prompt on the terminal.
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert_file, key_file,
                                                                password=lambda: b"")
    except ssl.SSLError as exc:
        raise InputError(f"--tls-cert {cert_file} / --tls-key {key_file}: not a usable "
                         f"certificate and key pair ({exc.reason or exc})") from None


def server_credentials(cert_file: str, key_file: str,
                       client_ca_file: Optional[str] = None) -> grpc.ServerCredentials:
    """gRPC server credentials; with ``client_ca_file`` client certificates are required."""
    cert = read_pem(cert_file, "--tls-cert")
    key = read_pem(key_file, "--tls-key", "PRIVATE KEY")
    _check_key_pair(cert_file, key_file)
    if client_ca_file is None:
        return grpc.ssl_server_credentials([(key, cert)])
    ca = read_pem(client_ca_file, "--tls-client-ca")
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca,
                                       require_client_auth=True)


def channel_credentials(root_certs_file: Optional[str] = None, cert_file: Optional[str] = None,
                        key_file: Optional[str] = None) -> grpc.ChannelCredentials:
    """gRPC channel credentials: the server is checked against ``root_certs_file`` (default:
    the system's roots); ``cert_file``/``key_file`` present a client certificate."""
    if (cert_file is None) != (key_file is None):
        raise InputError("--tls-cert and --tls-key: give both (a client certificate and its "
                         "key) or neither")
    roots = read_pem(root_certs_file, "--root-certs") if root_certs_file else None
    cert = read_pem(cert_file, "--tls-cert") if cert_file else None
    key = read_pem(key_file, "--tls-key", "PRIVATE KEY") if key_file else None
    if cert_file:
        _check_key_pair(cert_file, key_file)
    return grpc.ssl_channel_credentials(root_certificates=roots, private_key=key,
                                        certificate_chain=cert)


def read_token(path: str) -> str:
    """The token in ``--auth-token-file`` (whitespace stripped): one printable line."""
    token = read_file(path, "--auth-token-file").decode("utf-8", "replace").strip()
    if "\n" in token or not _PRINTABLE.fullmatch(token):
        raise InputError(f"--auth-token-file {path}: the token must be one line of printable "
                         "ASCII")
    return token


def parse_auth_headers(items: Sequence[str]) -> List[Tuple[str, str]]:
    """``NAME=VALUE`` strings -> gRPC metadata pairs (names lower-cased, as gRPC requires)."""
    pairs = []
    for item in items or ():
        name, sep, value = (item or "").partition("=")
        name = name.strip().lower()
        if not sep or not name:
            raise InputError(f"--auth-header {item!r}: expected NAME=VALUE, e.g. "
                             "'authorization=Bearer TOKEN'")
        if not _METADATA_NAME.match(name) or name.endswith("-bin") or name.startswith("grpc-"):
            raise InputError(f"--auth-header {name!r}: a metadata name is lower-case letters, "
                             "digits, '-', '_', '.'; not 'grpc-...' nor binary '...-bin'")
        if not _PRINTABLE.fullmatch(value):
            raise InputError(f"--auth-header {name}: the value must be printable ASCII")
        pairs.append((name, value))
    return pairs


def token_matches(value: Optional[str], token: str) -> bool:
    """True when an ``authorization`` value is ``Bearer <token>`` (constant-time compare)."""
    expected = f"{AUTH_SCHEME} {token}".encode()
    return value is not None and hmac.compare_digest(value.strip().encode(), expected)


def auth_refusal(value: Optional[str]) -> str:
    """The message for a refused call: says whether the token was missing or wrong."""
    if value is None:
        return (f"missing '{AUTH_METADATA}' metadata: this server requires "
                f"'{AUTH_METADATA}: {AUTH_SCHEME} <token>'")
    return f"the '{AUTH_METADATA}' token is not the server's token"


def auth_refusal_for(value: Optional[str], token: Optional[str]) -> Optional[str]:
    """None when ``token`` is None (no auth) or ``value`` carries it; else the refusal."""
    if token is None or token_matches(value, token):
        return None
    return auth_refusal(value)


def server_interceptors(token: Optional[str]) -> List[grpc.ServerInterceptor]:
    """The interceptors for ``grpc.server(interceptors=...)``: token auth when a token is set."""
    return [TokenAuthInterceptor(token)] if token is not None else []


def add_port(server: grpc.Server, address: str,
             credentials: Optional[grpc.ServerCredentials]) -> int:
    """Binds ``address`` with TLS when ``credentials`` are given, plain text otherwise."""
    if credentials is None:
        return server.add_insecure_port(address)
    return server.add_secure_port(address, credentials)


class TokenAuthInterceptor(grpc.ServerInterceptor):
    """Refuses calls whose ``authorization`` metadata is not ``Bearer <token>``
    (UNAUTHENTICATED), before any servicer runs. One log line per refused call."""

    def __init__(self, token: str):
        if not token:
            raise InputError("auth token: empty")
        self._token = token

    def intercept_service(self, continuation, handler_call_details):
        metadata = dict(handler_call_details.invocation_metadata or ())
        value = metadata.get(AUTH_METADATA)
        if token_matches(value, self._token):
            return continuation(handler_call_details)
        message = auth_refusal(value)
        log.warning("gRPC %s -> UNAUTHENTICATED: %s", handler_call_details.method, message)

        def refuse(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

        return grpc.unary_unary_rpc_method_handler(refuse)


def connection_hint(code: grpc.StatusCode, details: str, tls: bool) -> str:
    """A short cause for a failed connection, added to the client's error line: a TLS
    handshake failure, a plain-text client against a TLS server, or the reverse."""
    if code != grpc.StatusCode.UNAVAILABLE:
        return ""
    text = (details or "").lower()
    if "connection refused" in text or "connect: " in text and "refused" in text:
        return ""  # nothing listens there: the details say so already
    if tls:
        if "wrong_version_number" in text or "record" in text and "ssl" in text:
            return "TLS handshake failed: the server does not speak TLS (drop --tls?)"
        if "certificate_verify_failed" in text or "certificate verify failed" in text:
            return ("TLS handshake failed: the server's certificate is not trusted (pass its CA "
                    "with --root-certs) or does not match the name (--tls-server-name)")
        if "peer name" in text or "not in peer certificate" in text:
            return ("TLS handshake failed: the server's certificate is not for this name "
                    "(--tls-server-name NAME checks another)")
        if "socket closed" in text or "connection reset" in text or "handshake" in text \
                or "ssl" in text:
            return ("TLS handshake failed: the server closed the connection (does it require "
                    "a client certificate? --tls-cert/--tls-key)")
        return ""
    if "socket closed" in text or "connection reset" in text or "end of file" in text \
            or "handshake" in text:
        return "the connection was closed before any answer: a TLS server? (use --tls)"
    return ""


def tls_requested(args) -> bool:
    """Checks the client's TLS flags: the sub-options need ``--tls``."""
    extra = [flag for flag, value in (("--root-certs", args.root_certs),
                                      ("--tls-cert", args.tls_cert),
                                      ("--tls-key", args.tls_key),
                                      ("--tls-server-name", args.tls_server_name)) if value]
    if extra and not args.tls:
        raise InputError(f"{', '.join(extra)}: only with --tls")
    return bool(args.tls)
