"""The model server under bad requests: garbage TensorProtos (hypothesis), bad images,
REST bodies, and malformed requests mixed with valid ones from many threads; and its
limits: a body claiming 2 GB, a full worker pool on both protocols, idle sockets, requests
queued past their timeout. Every bad request gets a clear non-INTERNAL status; the server
answers the next valid one."""
import base64
import json
import os
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

pytest.importorskip("tensorflow_serving.apis")
grpc = pytest.importorskip("grpc")

import tensorflow as tf  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2  # noqa: E402
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa: E402

from cnnrnn_tf import schema  # noqa: E402
from cnnrnn_tf.inputs.images import TOO_LARGE_MESSAGE  # noqa: E402
from tests.conftest import png_bytes  # noqa: E402
from tests.reliability_helpers import bad_images, good_image, odd_but_valid_images  # noqa: E402

pytestmark = [pytest.mark.serving, pytest.mark.slow]
MODEL = "cnnrnn"
MAX_BATCH = 8
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
CLEAN_CODES = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION,
               grpc.StatusCode.NOT_FOUND}
GOOD = png_bytes(good_image())


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir):
    from cnnrnn_tf.serving.server import ModelServer

    root = tmp_path_factory.mktemp("srv_rel")
    model = tiny_model_dir
    base = root / "models" / MODEL
    shutil.copytree(os.path.join(model, "saved_model"), base / "1")
    srv = ModelServer(str(base), MODEL, port=0, rest_port=0, max_batch_size=MAX_BATCH,
                      poll_seconds=5, max_workers=8).start()
    yield srv
    srv.stop(grace=1)


@pytest.fixture(scope="module")
def predict(server):
    channel = grpc.insecure_channel(server.grpc_address)
    yield prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict
    channel.close()


def request_with(proto, signature="predict_images", alias="images"):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = signature
    request.inputs[alias].CopyFrom(proto)
    return request


def images_request(values, signature="predict_images"):
    return request_with(tf.make_tensor_proto(values, dtype=tf.string), signature,
                        "images" if signature == "predict_images" else "examples")


def assert_still_serving(predict):
    out = predict(images_request([GOOD]), timeout=60)
    assert tf.make_ndarray(out.outputs["labels"]).shape[0] == 1


def assert_clean_refusal(predict, request):
    with pytest.raises(grpc.RpcError) as info:
        predict(request, timeout=60)
    assert info.value.code() in CLEAN_CODES, (info.value.code(), info.value.details())
    assert info.value.details() and "\n" not in info.value.details()
    return info.value


# ------------------------------------------------------------------ images
@pytest.mark.parametrize("name", sorted(bad_images()))
def test_bad_image_bytes_in_both_signatures(predict, name):
    data = bad_images()[name]
    err = assert_clean_refusal(predict, images_request([GOOD, data]))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    if name.startswith("huge"):
        assert TOO_LARGE_MESSAGE in err.details()
    example = schema.make_example(data or b"x", []).SerializeToString()
    assert_clean_refusal(predict, images_request([example], "serving_default"))
    assert_still_serving(predict)


def test_unusual_valid_images_are_served(predict):
    odd = list(odd_but_valid_images().values())
    for start in range(0, len(odd), MAX_BATCH):
        out = predict(images_request(odd[start:start + MAX_BATCH]), timeout=60)
        assert tf.make_ndarray(out.outputs["labels"]).shape[0] == len(odd[start:start + MAX_BATCH])


# ------------------------------------------------------------------ garbage TensorProtos
DTYPES = [tf.string, tf.float32, tf.int32, tf.int64, tf.uint8, tf.bool, tf.half]
tensor_protos = st.builds(
    lambda dtype, dims, content, strings, unknown_rank, floats: _proto(
        dtype, dims, content, strings, unknown_rank, floats),
    st.one_of(st.sampled_from([d.as_datatype_enum for d in DTYPES]), st.integers(0, 40)),
    st.lists(st.one_of(st.integers(-3, 12), st.just(10 ** 9), st.just(2 ** 40)), max_size=3),
    st.binary(max_size=64),
    st.lists(st.binary(max_size=40), max_size=10),
    st.booleans(),
    st.lists(st.floats(allow_nan=True), max_size=5),
)


def _proto(dtype, dims, content, strings, unknown_rank, floats):
    proto = tensor_pb2.TensorProto(dtype=dtype)
    proto.tensor_shape.CopyFrom(tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims],
        unknown_rank=unknown_rank))
    if content:
        proto.tensor_content = content
    proto.string_val.extend(strings)
    proto.float_val.extend(floats)
    return proto


@settings(max_examples=60, **SETTINGS)
@given(proto=tensor_protos,
       where=st.sampled_from([("predict_images", "images"), ("serving_default", "examples"),
                              ("label_scores", "examples"), ("predict_images", "x")]))
def test_random_tensor_protos_never_break_the_server(predict, proto, where):
    request = request_with(proto, *where)
    try:
        out = predict(request, timeout=60)
    except grpc.RpcError as exc:
        assert exc.code() in CLEAN_CODES, (exc.code(), exc.details())
        assert "\n" not in exc.details()
    else:  # only a well-formed batch of real images can succeed
        assert out.outputs
    assert_still_serving(predict)


def test_tiny_proto_claiming_a_billion_strings_is_refused_fast(predict):
    import time

    proto = _proto(tf.string.as_datatype_enum, [10 ** 9], b"", [GOOD], False, [])
    start = time.time()
    err = assert_clean_refusal(predict, request_with(proto))
    assert "larger than maximum input batch size" in err.details()
    assert time.time() - start < 10
    assert_still_serving(predict)


# ------------------------------------------------------------------ REST
def _post(server, body: bytes):
    req = urllib.request.Request(f"{server.rest_url}/v1/models/{MODEL}:predict", data=body,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["b64", "images", "examples", "instances", "inputs", "x"]), inner,
        max_size=3), max_leaves=8)


@settings(max_examples=40, **SETTINGS)
@given(body=st.one_of(
    st.binary(max_size=40),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"signature_name": st.sampled_from(["predict_images", "nope", 3]),
                           "instances": json_values}).map(lambda v: json.dumps(v).encode())))
def test_random_rest_bodies(server, body):
    status, answer = _post(server, body)
    if status != 200:
        assert status in (400, 404), (status, answer)  # TF Serving: FAILED_PRECONDITION is 400
        assert isinstance(answer.get("error"), str) and "\n" not in answer["error"]
    ok = json.dumps({"signature_name": "predict_images",
                     "instances": [{"b64": base64.b64encode(GOOD).decode()}]}).encode()
    assert _post(server, ok)[0] == 200


# ------------------------------------------------------------------ concurrency
def test_bad_and_good_requests_from_many_threads(server, predict):
    good_want = tf.make_ndarray(predict(images_request([GOOD, GOOD]), timeout=60).outputs["labels"])
    bads = [images_request([b"garbage"]), images_request([bad_images()["huge.png"]]),
            images_request([bad_images()["truncated.jpg"]]),
            request_with(_proto(tf.string.as_datatype_enum, [10 ** 9], b"", [b"x"], False, [])),
            images_request([GOOD] * (MAX_BATCH + 1)),
            request_with(tf.make_tensor_proto([1.0], dtype=tf.float32))]
    failures, codes = [], []

    def worker(i):
        try:
            for j in range(6):
                if (i + j) % 2:
                    with pytest.raises(grpc.RpcError) as info:
                        predict(bads[(i + j) % len(bads)], timeout=60)
                    codes.append(info.value.code())
                else:
                    out = predict(images_request([GOOD, GOOD]), timeout=60)
                    np.testing.assert_array_equal(tf.make_ndarray(out.outputs["labels"]),
                                                  good_want)
                    codes.append(grpc.StatusCode.OK)
        except BaseException as exc:  # noqa: BLE001
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not failures, failures
    assert codes.count(grpc.StatusCode.OK) == 24
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT}
    assert_still_serving(predict)


# ------------------------------------------------------------------ limits
def _raw_http(port, head: bytes, timeout=10.0):
    """Sends ``head`` as is; returns (status, JSON body, seconds until the answer)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    start = time.monotonic()
    try:
        sock.sendall(head)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        header, _, body = data.partition(b"\r\n\r\n")
        length = int([line.split(b":", 1)[1] for line in header.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")][0])
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        return int(header.split()[1]), json.loads(body), time.monotonic() - start
    finally:
        sock.close()


GOOD_REST = json.dumps({"signature_name": "predict_images",
                        "instances": [{"b64": base64.b64encode(GOOD).decode()}]}).encode()


def test_body_claiming_2gb_is_refused_at_once_from_the_header(server, predict):
    head = (f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nHost: localhost\r\n"
            "Content-Type: application/json\r\nContent-Length: 2147483648\r\n\r\n").encode()
    for _ in range(3):
        status, body, seconds = _raw_http(server.rest_port, head)
        assert status == 413 and list(body) == ["error"], body
        assert "2147483648 bytes is larger than the limit" in body["error"]
        assert seconds < 5
    for bad, word in ((b"Content-Length: -5\r\n", "byte count"),
                      (b"Transfer-Encoding: chunked\r\n", "Content-Length")):
        status, body, _ = _raw_http(server.rest_port, b"POST /v1/models/%s:predict HTTP/1.1\r\n"
                                    b"Host: x\r\n%s\r\n" % (MODEL.encode(), bad))
        assert status in (400, 411) and word in body["error"], body
    assert _post(server, GOOD_REST)[0] == 200  # still serving, both protocols
    assert_still_serving(predict)


@pytest.fixture(scope="module")
def tight(server):
    """One worker, one waiting place, one concurrent RPC, 1 s socket timeout (shared: each
    test below leaves it idle)."""
    from cnnrnn_tf.serving.server import ModelServer, ServerLimits

    limits = ServerLimits(workers=1, max_queued=1, max_concurrent_rpcs=1, socket_timeout=1.0,
                          request_timeout=0.5)
    srv = ModelServer(server.manager.base_path, MODEL, port=0, rest_port=0,
                      poll_seconds=60, limits=limits).start()
    yield srv
    srv.stop(grace=0)


def _until_ok(fn, seconds=20):
    end = time.monotonic() + seconds
    while True:
        try:
            result = fn()
            if result[0] == 200:
                return result
        except OSError:
            pass
        assert time.monotonic() < end, "server did not recover"
        time.sleep(0.1)


def test_full_rest_pool_answers_503_and_idle_sockets_time_out(tight):
    status_head = f"GET /v1/models/{MODEL} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    idle = [socket.create_connection(("127.0.0.1", tight.rest_port)) for _ in range(2)]
    time.sleep(0.3)  # one holds the worker, one the waiting place
    status, body, seconds = _raw_http(tight.rest_port, status_head)
    assert status == 503 and "server busy" in body["error"] and seconds < 3, body
    start = time.monotonic()
    idle[0].settimeout(15)
    assert idle[0].recv(1) == b""  # closed by the server after --socket-timeout
    assert 0.5 < time.monotonic() - start < 10
    for sock in idle:
        sock.close()
    assert _until_ok(lambda: _raw_http(tight.rest_port, status_head))[0] == 200


def test_rest_request_queued_past_its_timeout_is_not_run(tight):
    idle = socket.create_connection(("127.0.0.1", tight.rest_port))  # holds the worker ~1 s
    time.sleep(0.2)
    head = (f"POST /v1/models/{MODEL}:predict HTTP/1.1\r\nHost: x\r\nContent-Type: "
            f"application/json\r\nContent-Length: {len(GOOD_REST)}\r\n\r\n").encode() + GOOD_REST
    status, body, seconds = _raw_http(tight.rest_port, head, timeout=20)
    assert status == 504 and "request timeout of 0.5 s" in body["error"], body
    idle.close()
    assert _until_ok(lambda: _raw_http(tight.rest_port, head))[0] == 200


def test_full_grpc_server_is_resource_exhausted_and_the_client_retries(tight):
    from cnnrnn_tf.serving.client import ServingClient, ServingError

    entered, release = threading.Event(), threading.Event()
    original = tight.core.predict

    def slow(request):
        entered.set()
        release.wait(30)
        return original(request)

    tight.core.predict = slow
    channel = grpc.insecure_channel(tight.grpc_address)
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    try:
        busy = stub.Predict.future(images_request([GOOD]), timeout=60)
        assert entered.wait(30)
        with pytest.raises(grpc.RpcError) as info:  # maximum_concurrent_rpcs=1
            stub.Predict(images_request([GOOD]), timeout=30)
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        with ServingClient(tight.grpc_address, MODEL, signature="predict_images",
                           retries=0) as client:
            with pytest.raises(ServingError) as err:
                client.predict_bytes([GOOD])
            assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert not err.value.is_request_error  # cnnrnn client: exit 1
        # gRPC's retry policy (backoff >= 1 s scale) waits until the busy call is done.
        with ServingClient(tight.grpc_address, MODEL, signature="predict_images", retries=4,
                           backoff_seconds=1.0, timeout=60) as client:
            threading.Timer(0.3, release.set).start()
            start = time.monotonic()
            assert len(client.predict_bytes([GOOD])) == 1
            assert time.monotonic() - start >= 0.3
        assert tf.make_ndarray(busy.result(60).outputs["labels"]).shape[0] == 1
    finally:
        release.set()
        tight.core.predict = original
    # gRPC frees the RPC's slot just after its response is sent: a call made the instant
    # the busy one returned may still find the server full; soon after it is answered.
    end = time.monotonic() + 10
    while True:
        try:
            assert_still_serving(stub.Predict)
            break
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and time.monotonic() < end
            time.sleep(0.05)
    channel.close()
