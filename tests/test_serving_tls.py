"""Serving security and other-language clients: gRPC over TLS and mutual TLS, token auth,
the one-line failures of `cnnrnn client`, the README's curl line, and the protoset.

Certificates are made here with openssl (self-signed, CN=localhost). The model is the
session's tiny MODEL_DIR (tests/conftest.py); servers that only have to answer the
transport (mutual TLS) serve an empty base path, whose NOT_FOUND answer proves the call
got through.
"""
import base64
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading

import pytest

pytest.importorskip("tensorflow_serving.apis")
grpc = pytest.importorskip("grpc")

from cnnrnn_tf.errors import InputError  # noqa: E402
from tests.conftest import jpeg_bytes, synthetic_image  # noqa: E402

pytestmark = [pytest.mark.serving, pytest.mark.slow]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVING_DIR = os.path.join(ROOT, "serving")
MODEL = "cnnrnn"
TOKEN = "s3cret-token"
# Quiet child processes: TensorFlow's C++ start-up lines and Python warnings are not the
# CLI's answer (the quiet-CLI work owns those); what is counted is the CLI's own stderr.
CHILD_ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONWARNINGS="ignore",
                 PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, ".wt"),
                                             os.environ.get("PYTHONPATH", "")]))


def _openssl(*args):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


def self_signed(folder, name, cn, san):
    key, cert = str(folder / f"{name}.key"), str(folder / f"{name}.crt")
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={cn}",
             "-addext", f"subjectAltName={san}", "-keyout", key, "-out", cert)
    return cert, key


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """server.crt/key for localhost and 127.0.0.1; client.crt/key, its own CA."""
    folder = tmp_path_factory.mktemp("certs")
    server = self_signed(folder, "server", "localhost", "DNS:localhost,IP:127.0.0.1")
    client = self_signed(folder, "client", "cnnrnn-client", "DNS:cnnrnn-client")
    other = self_signed(folder, "other", "other", "DNS:other")
    token = folder / "token.txt"
    token.write_text(TOKEN + "\n")
    return dict(server=server, client=client, other=other, token=str(token), folder=folder)


@pytest.fixture(scope="module")
def base_path(tmp_path_factory, tiny_model_dir):
    base = tmp_path_factory.mktemp("tls_models") / MODEL
    shutil.copytree(os.path.join(tiny_model_dir, "saved_model"), base / "1")
    return base


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tls_images") / "photo.jpg"
    path.write_bytes(jpeg_bytes(synthetic_image(["red", "blue"], seed=3)))
    return str(path)


@pytest.fixture(scope="module")
def token_server(base_path):
    """Plain-text gRPC + REST, with token auth."""
    from cnnrnn_tf.serving.server import ModelServer

    srv = ModelServer(str(base_path), MODEL, port=0, rest_port=0, poll_seconds=5,
                      auth_token=TOKEN).start()
    yield srv
    srv.stop(grace=1)


@pytest.fixture(scope="module")
def mtls_server(certs, tmp_path_factory):
    """TLS requiring client certificates signed by client.crt; no model (NOT_FOUND)."""
    from cnnrnn_tf.serving import security
    from cnnrnn_tf.serving.server import ModelServer

    cert, key = certs["server"]
    creds = security.server_credentials(cert, key, certs["client"][0])
    srv = ModelServer(str(tmp_path_factory.mktemp("empty_base")), MODEL, port=0, rest_port=None,
                      credentials=creds).start()
    yield srv
    srv.stop(grace=1)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tls_serve(base_path, certs):
    """`cnnrnn serve --tls-cert --tls-key --auth-token-file` as a process: (its gRPC port,
    the process)."""
    cert, key = certs["server"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "cnnrnn_tf.cli", "serve", "--model-base-path", str(base_path),
         "--model-name", MODEL, "--port", "0", "--rest-port", "0", "--poll-seconds", "5",
         "--tls-cert", cert, "--tls-key", key, "--auth-token-file", certs["token"]],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT, env=CHILD_ENV)
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    try:
        try:
            line = lines.get(timeout=180)
        except queue.Empty:
            pytest.fail("cnnrnn serve --tls-cert printed no address within 180 s")
        assert "gRPC with TLS, token auth 127.0.0.1:" in line, line
        yield int(line.split("127.0.0.1:")[1].split()[0]), proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def client_status(address, **kw):
    """GetModelStatus through ServingClient: its answer, or the ServingError."""
    from cnnrnn_tf.serving.client import ServingClient, ServingError

    try:
        with ServingClient(address, MODEL, timeout=20, retries=0, **kw) as client:
            return client.status()
    except ServingError as exc:
        return exc


def tls(certs, client=None, roots="server"):
    from cnnrnn_tf.serving import security

    cert, key = certs[client] if client else (None, None)
    return security.channel_credentials(certs[roots][0], cert, key)


# --------------------------------------------------------------------------- the CLI
def run_clients(argvs, timeout=240):
    """Runs several `cnnrnn client` processes at once -> [(exit status, stdout, stderr)]."""
    procs = [subprocess.Popen([sys.executable, "-m", "cnnrnn_tf.cli", "client", *argv],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=ROOT, env=CHILD_ENV) for argv in argvs]
    results = []
    for proc in procs:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        results.append((proc.returncode, out, err))
    return results


def test_cli_client_over_tls_and_its_one_line_refusals(tls_serve, token_server, certs,
                                                        image_file):
    """Four client processes at once (each imports TensorFlow: the costly part)."""
    port, _ = tls_serve
    cert = certs["server"][0]
    common = ["--model", MODEL, "--json", "--retries", "0", "--timeout", "60"]
    tls = ["--server", f"localhost:{port}", "--tls", "--root-certs", cert]
    tls_ok, plain_to_tls, tls_to_plain, no_token = run_clients([
        [*tls, "--auth-header", f"authorization=Bearer {TOKEN}", *common, image_file],
        ["--server", f"127.0.0.1:{port}", *common, image_file],
        ["--server", token_server.grpc_address, "--tls", "--root-certs", cert, *common,
         image_file],
        [*tls, *common, image_file],
    ])
    # TLS with the self-signed certificate as the root, and the token: the image's labels.
    code, out, err = tls_ok
    assert code == 0, err
    (result,) = [json.loads(line) for line in out.splitlines()]
    assert result["image"] == image_file and isinstance(result["labels"], list)
    assert err == ""
    # Each failure: exactly one stderr line, naming the server and the cause.
    for (code, out, err), want_code, server, cause in (
            (plain_to_tls, 1, f"127.0.0.1:{port}", "a TLS server? (use --tls)"),
            (tls_to_plain, 1, token_server.grpc_address, "the server does not speak TLS"),
            (no_token, 2, f"localhost:{port}", "UNAUTHENTICATED: missing 'authorization'")):
        lines = err.splitlines()
        assert code == want_code and out == "", (code, err)
        assert len(lines) == 1 and lines[0].startswith("error: "), err
        assert server in lines[0] and cause in lines[0], lines[0]


def test_serve_command_stops_on_sigterm(tls_serve):
    """`cnnrnn serve` (the process of the test above) exits 0 on SIGTERM."""
    _, proc = tls_serve
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0


# --------------------------------------------------------------------------- the library
def test_mutual_tls_requires_a_client_certificate_signed_by_the_ca(mtls_server, certs):
    from cnnrnn_tf.serving.client import ServingError

    address = f"localhost:{mtls_server.grpc_port}"
    refused = client_status(address, credentials=tls(certs))
    assert isinstance(refused, ServingError) and refused.code == grpc.StatusCode.UNAVAILABLE
    assert "client certificate" in str(refused) and address in str(refused)
    stranger = client_status(address, credentials=tls(certs, client="other"))
    assert isinstance(stranger, ServingError) and stranger.code == grpc.StatusCode.UNAVAILABLE
    # With the CA's client certificate the call reaches the server (no model: NOT_FOUND).
    through = client_status(address, credentials=tls(certs, client="client"))
    assert isinstance(through, ServingError), through
    assert through.code == grpc.StatusCode.NOT_FOUND and "Could not find" in through.details


def test_server_name_override_and_untrusted_certificates(mtls_server, certs):
    from cnnrnn_tf.serving.client import ServingError

    ip = f"127.0.0.1:{mtls_server.grpc_port}"
    mine = tls(certs, client="client")
    named = client_status(ip, credentials=mine, server_name="localhost")
    assert isinstance(named, ServingError) and named.code == grpc.StatusCode.NOT_FOUND
    wrong_name = client_status(ip, credentials=mine, server_name="other")
    assert wrong_name.code == grpc.StatusCode.UNAVAILABLE
    assert "not for this name" in wrong_name.details, wrong_name.details
    untrusted = client_status(ip, credentials=tls(certs, client="client", roots="other"))
    assert untrusted.code == grpc.StatusCode.UNAVAILABLE and "not trusted" in untrusted.details


def test_token_auth_on_grpc(token_server):
    from cnnrnn_tf.serving.client import ServingError

    address = token_server.grpc_address
    missing = client_status(address)
    wrong = client_status(address, metadata=[("authorization", "Bearer nope")])
    bare = client_status(address, metadata=[("authorization", TOKEN)])  # the scheme is needed
    for refused in (missing, wrong, bare):
        assert isinstance(refused, ServingError), refused
        assert refused.code == grpc.StatusCode.UNAUTHENTICATED and refused.is_request_error
    assert "missing 'authorization'" in missing.details
    assert "not the server's token" in wrong.details
    ok = client_status(address, metadata=[("authorization", f"Bearer {TOKEN}")])
    assert [s["state"] for s in ok] == ["AVAILABLE"]


def test_bad_security_flags_answer_one_line(certs, tmp_path, capsys):
    from cnnrnn_tf.cli.app import main

    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    cert, key = certs["server"]
    _, other_key = certs["other"]
    serve = ["serve", "--model-base-path", str(tmp_path), "--model-name", MODEL, "--port", "0",
             "--rest-port", "0"]
    client = ["client", "--server", "localhost:1", "--model", MODEL, "x.png"]
    for argv, words in (
            (serve + ["--auth-token-file", str(empty)], "--auth-token-file"),
            (serve + ["--auth-token-file", str(tmp_path / "none")], "no such file"),
            (serve + ["--tls-cert", cert], "--tls-key"),
            (serve + ["--tls-cert", cert, "--tls-key", other_key], "not a usable certificate"),
            (serve + ["--tls-cert", str(empty), "--tls-key", key], "--tls-cert"),
            (serve + ["--tls-client-ca", cert], "--tls-client-ca"),
            (client + ["--root-certs", cert], "only with --tls"),
            (client + ["--tls", "--tls-cert", cert], "--tls-key"),
            (client + ["--tls", "--root-certs", key], "not a PEM certificate"),
            (client + ["--tls", "--tls-cert", cert, "--tls-key", cert], "not a PEM private key"),
            (client + ["--auth-header", "authorization"], "NAME=VALUE"),
            (client + ["--auth-header", "x-bin=1"], "x-bin")):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and words in err[0], (argv, err)


def test_auth_header_parsing():
    from cnnrnn_tf.serving.security import parse_auth_headers, token_matches

    assert parse_auth_headers(["Authorization=Bearer a=b", "x-team=ml"]) == [
        ("authorization", "Bearer a=b"), ("x-team", "ml")]
    with pytest.raises(InputError, match="printable"):
        parse_auth_headers(["authorization=Bearer \n"])
    assert token_matches("Bearer t", "t") and token_matches(" Bearer t ", "t")
    assert not token_matches("t", "t") and not token_matches(None, "t")
    assert not token_matches("Bearer tt", "t") and not token_matches("bearer t", "t")


# --------------------------------------------------------------------------- other languages
def readme_lines(prefix):
    with open(os.path.join(SERVING_DIR, "README.md"), encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip().startswith(prefix)]


def test_readme_curl_lines_against_the_server(token_server, certs, image_file, tmp_path):
    """The README's two curl lines, run as written (only the port changed), from a folder
    holding photo.jpg and token.txt, against a server with token auth."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    plain, with_token = readme_lines("curl -sS -X POST")
    assert "localhost:8501" in plain and "Authorization: Bearer" in with_token
    shutil.copy(image_file, tmp_path / "photo.jpg")
    shutil.copy(certs["token"], tmp_path / "token.txt")
    port = f"localhost:{token_server.rest_port}"
    answers = []
    for line in (plain, with_token):
        done = subprocess.run(["bash", "-c", line.replace("localhost:8501", port)],
                              cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        answers.append(json.loads(done.stdout))
    refused, answer = answers
    assert list(refused) == ["error"] and "authorization" in refused["error"]
    (prediction,) = answer["predictions"]
    assert set(prediction) == {"labels", "scores", "label_count"}


def _protoset_pool():
    from google.protobuf import descriptor_pb2, descriptor_pool

    files = descriptor_pb2.FileDescriptorSet()
    with open(os.path.join(SERVING_DIR, "tf_serving.protoset"), "rb") as f:
        files.ParseFromString(f.read())
    pool = descriptor_pool.DescriptorPool()
    for proto in files.file:  # dependencies first, as protoc --include_imports writes them
        pool.Add(proto)
    return pool


def test_protoset_is_current_and_drives_a_predict_call(token_server, image_file):
    """The checked-in protoset equals what the script writes now, holds both services, and
    the README's grpcurl request body, built from it alone (as grpcurl does), is answered."""
    import importlib.util

    from google.protobuf import json_format

    from cnnrnn_tf.serving.deploy import message_class

    spec = importlib.util.spec_from_file_location(
        "make_descriptor_set", os.path.join(SERVING_DIR, "make_descriptor_set.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    with open(os.path.join(SERVING_DIR, "tf_serving.protoset"), "rb") as f:
        assert f.read() == script.serialized(), "stale: run python serving/make_descriptor_set.py"
    pool = _protoset_pool()
    service = pool.FindServiceByName("tensorflow.serving.PredictionService")
    assert {m.name for m in service.methods} >= {"Predict", "GetModelMetadata"}
    assert pool.FindServiceByName("tensorflow.serving.ModelService")

    (line,) = [x for x in readme_lines("grpcurl ") if "PredictionService/Predict" in x]
    assert "-protoset serving/tf_serving.protoset" in line
    body = re.search(r"-d '([^']+)'", line).group(1)
    with open(image_file, "rb") as f:
        body = body.replace("BASE64_IMAGE", base64.b64encode(f.read()).decode())
    request = json_format.Parse(body, message_class(pool, "tensorflow.serving.PredictRequest")())
    response_class = message_class(pool, "tensorflow.serving.PredictResponse")
    channel = grpc.insecure_channel(token_server.grpc_address)
    call = channel.unary_unary("/tensorflow.serving.PredictionService/Predict",
                               request_serializer=lambda m: m.SerializeToString(),
                               response_deserializer=response_class.FromString)
    response = call(request, timeout=60, metadata=[("authorization", f"Bearer {TOKEN}")])
    channel.close()
    answer = json_format.MessageToDict(response)
    assert {"labels", "scores", "label_count"} <= set(answer["outputs"])
