"""The model server under bad requests: garbage TensorProtos (hypothesis), bad images,
REST bodies, and malformed requests mixed with valid ones from many threads. Every bad
request gets a clear non-INTERNAL status; the server answers the next valid one."""
import base64
import json
import os
import shutil
import threading
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
from cnnrnn_tf.preprocessing import TOO_LARGE_MESSAGE  # noqa: E402
from tests.conftest import png_bytes  # noqa: E402
from tests.reliability_helpers import (bad_images, build_tiny_model_dir, good_image,  # noqa: E402
                                       odd_but_valid_images)

pytestmark = [pytest.mark.serving, pytest.mark.slow]
MODEL = "cnnrnn"
MAX_BATCH = 8
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
CLEAN_CODES = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION,
               grpc.StatusCode.NOT_FOUND}
GOOD = png_bytes(good_image())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from cnnrnn_tf.serving.server import ModelServer

    root = tmp_path_factory.mktemp("srv_rel")
    model = build_tiny_model_dir(root)
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
        assert status in (400, 404, 412), (status, answer)
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
