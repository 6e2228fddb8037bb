"""Serving: the dev model server over TF Serving's protos, the client, the CLI, deployment files.

The requests here are built only from the official protos and stubs
(predict_pb2, get_model_metadata_pb2, get_model_status_pb2, the *_pb2_grpc stubs,
tf.make_tensor_proto), so they check the server against TF Serving's API, not
against our own client.
"""
import base64
import json
import logging
import os
import shutil
import threading
import time
import urllib.error
import urllib.request
from contextlib import nullcontext

import numpy as np
import pytest

pytest.importorskip("tensorflow_serving.apis")
grpc = pytest.importorskip("grpc")

import tensorflow as tf  # noqa: E402
import yaml  # noqa: E402
from google.protobuf import text_format  # noqa: E402
from tensorflow_serving.apis import (  # noqa: E402
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from cnnrnn_tf import schema  # noqa: E402
from cnnrnn_tf.errors import InputError  # noqa: E402

pytestmark = [pytest.mark.serving, pytest.mark.slow]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVING_DIR = os.path.join(ROOT, "serving")
MODEL = "cnnrnn"
MAX_BATCH = 8


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir):
    """(a folder of this module's own, the session's tiny MODEL_DIR: its saved_model/ is
    what gets served)."""
    return tmp_path_factory.mktemp("serving"), tiny_model_dir


@pytest.fixture(scope="module")
def images(trained):
    from tests.conftest import synthetic_records

    root, _ = trained
    records = synthetic_records(5, seed=7)
    paths = []
    for i, rec in enumerate(records):
        path = root / f"img{i}.png"
        path.write_bytes(rec.image)
        paths.append(str(path))
    return [r.image for r in records], paths


@pytest.fixture(scope="module")
def base_path(trained):
    """<base>/1 = the export plus TF Serving warmup requests (which the server replays)."""
    from cnnrnn_tf.serving.warmup import write_warmup_requests

    root, out = trained
    base = root / "models" / MODEL
    shutil.copytree(os.path.join(out, "saved_model"), base / "1")
    write_warmup_requests(str(base / "1"), num_records=1, image_size=32)
    return base


@pytest.fixture(scope="module")
def server(base_path):
    from cnnrnn_tf.serving.server import ModelServer

    srv = ModelServer(str(base_path), MODEL, port=0, rest_port=0, max_batch_size=MAX_BATCH,
                      poll_seconds=0.2, max_workers=8).start()
    yield srv
    srv.stop(grace=1)


@pytest.fixture(scope="module")
def reference(trained):
    """The same SavedModel loaded in process: what every answer must equal."""
    _, out = trained
    return tf.saved_model.load(os.path.join(out, "saved_model"))


@pytest.fixture(scope="module")
def stubs(server):
    channel = grpc.insecure_channel(server.grpc_address)
    yield (prediction_service_pb2_grpc.PredictionServiceStub(channel),
           model_service_pb2_grpc.ModelServiceStub(channel))
    channel.close()


def examples_of(images):
    return [schema.make_example(img, []).SerializeToString() for img in images]


def predict_request(signature, values, name=MODEL, version=None, alias=None, dtype=tf.string):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    alias = alias or ("images" if signature == "predict_images" else "examples")
    request.inputs[alias].CopyFrom(tf.make_tensor_proto(values, dtype=dtype))
    return request


def valid_request(images):
    return predict_request("serving_default", examples_of(images[:2]))


def assert_same_as_reference(response, reference, signature, values):
    alias = "images" if signature == "predict_images" else "examples"
    want = reference.signatures[signature](**{alias: tf.constant(values)})
    assert set(response.outputs) == set(want)
    np.testing.assert_array_equal(tf.make_ndarray(response.outputs["labels"]),
                                  want["labels"].numpy())
    np.testing.assert_array_equal(tf.make_ndarray(response.outputs["label_count"]),
                                  want["label_count"].numpy())
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["scores"]),
                               want["scores"].numpy(), atol=1e-6)


# --------------------------------------------------------------------------- gRPC
def test_predict_matches_in_process_model(server, stubs, reference, images):
    predict, _ = stubs
    raw, _ = images
    for signature, values in (("serving_default", examples_of(raw)), ("predict_images", raw)):
        response = predict.Predict(predict_request(signature, values), timeout=30)
        assert_same_as_reference(response, reference, signature, values)
        assert response.model_spec.name == MODEL
        assert response.model_spec.version.value == 1
        assert response.model_spec.signature_name == signature
        assert tf.make_ndarray(response.outputs["labels"]).shape[0] == len(raw)
    # label_scores and output_filter, as TF Serving supports them
    request = predict_request("label_scores", examples_of(raw))
    probs = tf.make_ndarray(predict.Predict(request, timeout=30).outputs["probabilities"])
    want = reference.signatures["label_scores"](examples=tf.constant(examples_of(raw)))
    np.testing.assert_allclose(probs, want["probabilities"].numpy(), atol=1e-6)
    request = predict_request("predict_images", raw[:1])
    request.output_filter.append("labels")
    assert set(predict.Predict(request, timeout=30).outputs) == {"labels"}
    # no signature_name: serving_default
    request = predict_request("", examples_of(raw[:1]))
    assert predict.Predict(request, timeout=30).model_spec.signature_name == "serving_default"


def test_metadata_and_status(stubs):
    predict, models = stubs
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = MODEL
    response = predict.GetModelMetadata(request, timeout=30)
    assert response.model_spec.name == MODEL and response.model_spec.version.value == 1
    sigs = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(sigs)
    assert {"serving_default", "predict_images", "label_scores"} <= set(sigs.signature_def)
    default = sigs.signature_def["serving_default"]
    assert list(default.inputs) == ["examples"]
    assert default.inputs["examples"].dtype == tf.string.as_datatype_enum
    assert set(default.outputs) == {"labels", "scores", "label_count"}
    assert list(sigs.signature_def["predict_images"].inputs) == ["images"]

    request = get_model_metadata_pb2.GetModelMetadataRequest()  # no metadata_field
    request.model_spec.name = MODEL
    with pytest.raises(grpc.RpcError) as info:
        predict.GetModelMetadata(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = MODEL
    status = models.GetModelStatus(request, timeout=30).model_version_status
    assert [(s.version, s.state) for s in status] == [
        (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE)]
    assert status[0].status.error_code == 0
    request.model_spec.name = "nope"
    with pytest.raises(grpc.RpcError) as info:
        models.GetModelStatus(request, timeout=30)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def _bad_requests(images):
    raw = images[:2]
    over = predict_request("predict_images", [raw[0]] * (MAX_BATCH + 1))
    no_input = predict_pb2.PredictRequest()
    no_input.model_spec.name = MODEL
    bad_filter = predict_request("predict_images", raw)
    bad_filter.output_filter.append("nope")
    label = predict_request("predict_images", raw)
    label.model_spec.version_label = "stable"
    no_image_feature = tf.train.Example(features=tf.train.Features(feature={
        "image/id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"x"]))}))
    code = grpc.StatusCode
    return [
        ("wrong input name", predict_request("serving_default", raw, alias="images"),
         code.INVALID_ARGUMENT),
        ("no input", no_input, code.INVALID_ARGUMENT),
        ("wrong dtype (float)", predict_request("predict_images", [1.0, 2.0], dtype=tf.float32),
         code.INVALID_ARGUMENT),
        ("wrong rank", predict_request("predict_images", [raw]), code.INVALID_ARGUMENT),
        ("non-image bytes", predict_request("predict_images", [raw[0], b"not an image"]),
         code.INVALID_ARGUMENT),
        ("not a tf.Example", predict_request("serving_default", [b"\xff\x00garbage"]),
         code.INVALID_ARGUMENT),
        ("tf.Example without image/encoded",
         predict_request("serving_default", [no_image_feature.SerializeToString()]),
         code.INVALID_ARGUMENT),
        ("empty batch", predict_request("predict_images", np.array([], dtype=object)),
         code.INVALID_ARGUMENT),
        ("batch over the limit", over, code.INVALID_ARGUMENT),
        ("unknown output in output_filter", bad_filter, code.INVALID_ARGUMENT),
        ("version label", label, code.INVALID_ARGUMENT),
        ("unknown model", predict_request("predict_images", raw, name="nope"), code.NOT_FOUND),
        ("unknown version", predict_request("predict_images", raw, version=7), code.NOT_FOUND),
        ("unknown signature", predict_request("nope", raw), code.FAILED_PRECONDITION),
    ]


def test_malformed_requests_get_tf_serving_codes_and_server_keeps_serving(
        stubs, images, caplog):
    predict, _ = stubs
    raw, _ = images
    cases = _bad_requests(raw)
    with caplog.at_level(logging.WARNING, logger="cnnrnn_tf.serving"):
        for what, request, code in cases:
            with pytest.raises(grpc.RpcError) as info:
                predict.Predict(request, timeout=30)
            assert info.value.code() == code, (what, info.value.details())
            assert info.value.details(), what
            assert "\n" not in info.value.details(), what
            # ... and the next valid request is answered.
            ok = predict.Predict(valid_request(raw), timeout=30)
            assert tf.make_ndarray(ok.outputs["labels"]).shape[0] == 2
    errors = [r for r in caplog.records if r.name == "cnnrnn_tf.serving"
              and r.levelno == logging.WARNING]
    assert len(errors) == len(cases)  # one log line per refused request
    with pytest.raises(grpc.RpcError) as info:
        predict.Predict(cases[0][1], timeout=30)
    assert "examples" in info.value.details()  # names the expected input


def test_concurrent_valid_and_invalid_requests(stubs, reference, images):
    predict, _ = stubs
    raw, _ = images
    values = examples_of(raw[:3])
    want = reference.signatures["serving_default"](examples=tf.constant(values))
    bad = predict_request("predict_images", [b"garbage"])
    results, failures = [], []

    def worker(i):
        try:
            for j in range(3):
                if (i + j) % 2:
                    with pytest.raises(grpc.RpcError) as info:
                        predict.Predict(bad, timeout=60)
                    results.append(info.value.code())
                else:
                    response = predict.Predict(predict_request("serving_default", values),
                                               timeout=60)
                    np.testing.assert_array_equal(
                        tf.make_ndarray(response.outputs["labels"]), want["labels"].numpy())
                    results.append(grpc.StatusCode.OK)
        except BaseException as exc:  # noqa: BLE001 (report from the thread)
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not failures, failures
    assert sorted(r.name for r in results) == ["INVALID_ARGUMENT"] * 9 + ["OK"] * 9


def test_no_version_loaded_is_not_found(tmp_path):
    """TF Serving's manager answers NOT_FOUND (404) while no version is loaded; the client
    does not retry it and counts it as a request error (exit 2)."""
    from cnnrnn_tf.serving.client import ServingClient, ServingError
    from cnnrnn_tf.serving.server import ModelServer

    (tmp_path / "empty").mkdir()
    with ModelServer(str(tmp_path / "empty"), MODEL, port=0, rest_port=0,
                     poll_seconds=0.2) as srv:
        channel = grpc.insecure_channel(srv.grpc_address)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Predict(predict_request("predict_images", [b"x"]), timeout=10)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert "Servable not found for request: Latest(cnnrnn)" in info.value.details()
        channel.close()
        status, body = _http("POST", f"{srv.rest_url}/v1/models/{MODEL}:predict",
                             {"instances": [{"b64": "eA=="}]})
        assert status == 404 and list(body) == ["error"]
        assert _http("GET", f"{srv.rest_url}/v1/models/{MODEL}")[0] == 404
        client = ServingClient(srv.grpc_address, MODEL, retries=2, backoff_seconds=0.01)
        with pytest.raises(ServingError) as err:
            client.predict_bytes([b"\x89PNG\r\n\x1a\nxx"], ["x.png"])
        assert err.value.code == grpc.StatusCode.NOT_FOUND and err.value.attempts == 1
        assert err.value.is_request_error
        client.close()
    for bad in (str(tmp_path / "missing"), str(base_path_of_savedmodel(tmp_path))):
        with pytest.raises(InputError):
            ModelServer(bad, MODEL, port=0, rest_port=None)


def test_new_version_waits_for_its_files_to_settle_and_broken_ones_are_skipped(tmp_path):
    from cnnrnn_tf.serving.server import ModelManager, RequestError

    manager = ModelManager(MODEL, str(tmp_path), poll_seconds=3600)
    spec = predict_pb2.PredictRequest().model_spec
    spec.name = MODEL
    (tmp_path / "4").mkdir()
    (tmp_path / "4" / "saved_model.pb").write_bytes(b"half a file")
    manager.poll_once()  # first sight: not loaded until the files stayed the same for a poll
    with pytest.raises(RequestError):
        manager.status(spec)
    manager.poll_once()  # unchanged: loaded, fails, logged and skipped
    (status,) = manager.status(spec)
    assert status.version == 4 and status.state == get_model_status_pb2.ModelVersionStatus.END
    assert status.status.error_message
    manager.poll_once()  # not retried while its files stay the same
    assert manager.status(spec)[0].state == get_model_status_pb2.ModelVersionStatus.END
    with pytest.raises(RequestError) as info:
        manager.resolve(spec)
    assert info.value.code == grpc.StatusCode.NOT_FOUND


def base_path_of_savedmodel(tmp_path):
    folder = tmp_path / "sm"
    folder.mkdir()
    (folder / "saved_model.pb").write_bytes(b"")
    return folder


# --------------------------------------------------------------------------- REST
def _http(method, url, body=None, raw=None):
    data = json.dumps(body).encode() if body is not None else raw
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_rest_predict_and_status(server, reference, images):
    raw, _ = images
    url = f"{server.rest_url}/v1/models/{MODEL}"
    status, body = _http("GET", url)
    assert status == 200
    assert body["model_version_status"][0]["version"] == "1"
    assert body["model_version_status"][0]["state"] == "AVAILABLE"

    b64 = [{"b64": base64.b64encode(img).decode()} for img in raw[:3]]
    want = reference.signatures["predict_images"](images=tf.constant(raw[:3]))
    want_labels = [[l.decode() for l in row] for row in want["labels"].numpy()]
    status, body = _http("POST", f"{url}:predict",
                         {"signature_name": "predict_images", "instances": b64})
    assert status == 200, body
    assert [p["labels"] for p in body["predictions"]] == want_labels
    np.testing.assert_allclose([p["scores"] for p in body["predictions"]],
                               want["scores"].numpy(), atol=1e-5)
    ex = [{"examples": {"b64": base64.b64encode(e).decode()}} for e in examples_of(raw[:3])]
    status, body = _http("POST", f"{url}/versions/1:predict", {"instances": ex})
    assert status == 200 and [p["labels"] for p in body["predictions"]] == want_labels
    status, body = _http("POST", f"{url}:predict",
                         {"signature_name": "predict_images", "inputs": {"images": b64}})
    assert status == 200 and body["outputs"]["labels"] == want_labels

    for path, payload, code in (
            (f"{url}:predict", {"signature_name": "predict_images",
                                "instances": [{"b64": base64.b64encode(b"nope").decode()}]}, 400),
            (f"{url}:predict", {"signature_name": "predict_images", "instances": []}, 400),
            (f"{url}:predict", {"instances": [{"b64": "!!"}]}, 400),
            (f"{url}:predict", {"nothing": 1}, 400),
            (f"{server.rest_url}/v1/models/nope:predict", {"instances": b64}, 404),
            (f"{url}/versions/9:predict", {"instances": b64}, 404)):
        status, body = _http("POST", path, payload)
        assert status == code and body["error"], (path, payload, body)
    assert _http("GET", f"{server.rest_url}/v1/models/nope")[0] == 404
    status, body = _http("GET", f"{url}/metadata")
    assert status == 200 and "predict_images" in body["metadata"]["signature_def"]["signature_def"]
    status, body = _http("POST", f"{url}:predict", {"instances": ex[:1]})
    assert status == 200  # still serving


# --------------------------------------------------------------------------- TF Serving fidelity
def _b64(data):
    return {"b64": base64.b64encode(data).decode()}


def _status_rows(raw):
    """One row per error path: (what, gRPC request or None, gRPC code, REST method, REST
    path under /v1/models/cnnrnn or absolute, REST body (dict, bytes or None), HTTP status,
    a part of the message, or (gRPC part, REST part)). Codes and messages from TF Serving's source: predict_util.cc,
    basic_manager.cc, get_model_status_impl.cc, util/json_tensor.cc, http_rest_api_handler.cc,
    http_rest_api_util.cc, http_server.cc (ToHTTPStatusCode)."""
    code = grpc.StatusCode
    img = [_b64(r) for r in raw[:2]]
    label = predict_request("predict_images", raw[:1])
    label.model_spec.version_label = "stable"
    return [
        ("unknown model", predict_request("predict_images", raw[:1], name="nope"),
         code.NOT_FOUND, "POST", "/v1/models/nope:predict",
         {"signature_name": "predict_images", "instances": img}, 404,
         "Servable not found for request: Latest(nope)"),
        ("unknown version", predict_request("predict_images", raw[:1], version=7),
         code.NOT_FOUND, "POST", "/versions/7:predict",
         {"signature_name": "predict_images", "instances": img}, 404,
         "Servable not found for request: Specific(cnnrnn, 7)"),
        ("version label", label, code.INVALID_ARGUMENT, "POST", "/labels/stable:predict",
         {"signature_name": "predict_images", "instances": img}, 400,
         "Unrecognized servable version label"),
        ("unknown signature (gRPC FAILED_PRECONDITION, REST INVALID_ARGUMENT)",
         predict_request("nope", raw[:1], alias="images"), code.FAILED_PRECONDITION, "POST",
         ":predict", {"signature_name": "nope", "instances": img}, 400, '"nope" not found'),
        ("wrong input name", predict_request("serving_default", raw[:1], alias="images"),
         code.INVALID_ARGUMENT, "POST", ":predict", {"instances": [{"images": img[0]}]}, 400,
         "images"),
        ("wrong dtype", predict_request("predict_images", [1.5], dtype=tf.float32),
         code.INVALID_ARGUMENT, "POST", ":predict",
         {"signature_name": "predict_images", "instances": [1.5]}, 400,
         ("Expects arg[0] (images) to be string but float32 is provided",
          "JSON Value: 1.5 Type: Number is not of expected type: string")),
        ("wrong shape (rank 2)", predict_request("predict_images", [raw[:2]]),
         code.INVALID_ARGUMENT, "POST", ":predict",
         {"signature_name": "predict_images", "instances": [img]}, 400, "rank 1"),
        ("ragged instances", None, None, "POST", ":predict",
         {"signature_name": "predict_images", "instances": [img, img[:1]]}, 400,
         "Expecting shape [2] but got: [1]"),
        ("bad image", predict_request("predict_images", [raw[0], b"not an image"]),
         code.INVALID_ARGUMENT, "POST", ":predict",
         {"signature_name": "predict_images", "instances": [img[0], _b64(b"not an image")]},
         400, "image"),
        ("too large a batch", predict_request("predict_images", [raw[0]] * (MAX_BATCH + 1)),
         code.INVALID_ARGUMENT, "POST", ":predict",
         {"signature_name": "predict_images", "instances": [img[0]] * (MAX_BATCH + 1)}, 400,
         "larger than maximum input batch size"),
        ("malformed JSON", None, None, "POST", ":predict", b"instances = [1, 2]", 400,
         "JSON Parse error"),
        ("empty body", None, None, "POST", ":predict", b"", 400,
         "JSON Parse error: The document is empty"),
        ("JSON not an object", None, None, "POST", ":predict", b"[1]", 400, "Is not object"),
        ("both instances and inputs", None, None, "POST", ":predict",
         {"instances": img, "inputs": img}, 400,
         "expecting only one of 'inputs' or 'instances' keys"),
        ("neither instances nor inputs", None, None, "POST", ":predict", {"x": 1}, 400,
         "Missing 'inputs' or 'instances' key"),
        ("empty instances", None, None, "POST", ":predict", {"instances": []}, 400,
         "No values in 'instances' array"),
        ("b64 not base64", None, None, "POST", ":predict",
         {"signature_name": "predict_images", "instances": [{"b64": "!!"}]}, 400,
         "Unable to base64 decode"),
        ("b64 object with another key", None, None, "POST", ":predict",
         {"signature_name": "predict_images", "inputs": [{"b64": "eA==", "x": 1}]}, 400,
         "not formatted correctly for base64 data"),
        ("b64 value not a string", None, None, "POST", ":predict",
         {"signature_name": "predict_images", "inputs": [{"b64": 3}]}, 400,
         "not formatted correctly for base64 data"),
        ("signature_name not a string", None, None, "POST", ":predict",
         {"signature_name": 3, "instances": img}, 400,
         "'signature_name' key must be a string value."),
        ("instances keys differ from the inputs", None, None, "POST", ":predict",
         {"instances": [{"examples": img[0], "x": img[0]}]}, 400, "does not have named input: x"),
        ("status of an unknown model", None, None, "GET", "/v1/models/nope", None, 404,
         "Could not find any versions of model nope"),
        ("status of an unknown version", None, None, "GET", "/versions/9", None, 404,
         "Could not find version 9 of model cnnrnn"),
        ("metadata of an unknown version", None, None, "GET", "/versions/9/metadata", None,
         404, "Servable not found"),
        ("no model name", None, None, "GET", "/v1/models", None, 400, "Missing model name"),
        ("malformed path", None, None, "GET", "/v1/foo", None, 400, "Malformed request"),
        ("GET on :predict", None, None, "GET", ":predict", None, 400, "Malformed request"),
        ("POST on /metadata", None, None, "POST", "/metadata", {}, 400, "Malformed request"),
        ("a path outside /v1/", None, None, "GET", "/healthz", None, 404, ""),
        ("version over int64", None, None, "POST", "/versions/99999999999999999999:predict",
         {"instances": img}, 400, "Failed to convert version"),
    ]


def test_status_table_as_tf_serving(server, stubs, images):
    """Every error path answers TF Serving's gRPC code and HTTP status, with its REST body
    {"error": "<one line>"}, and the server answers the next valid request."""
    predict, _ = stubs
    raw, _ = images
    url = f"{server.rest_url}/v1/models/{MODEL}"
    ok_body = {"signature_name": "predict_images", "instances": [_b64(raw[0])]}
    for what, request, code, method, path, body, http_status, part in _status_rows(raw):
        grpc_part, part = part if isinstance(part, tuple) else (part, part)
        if request is not None:
            with pytest.raises(grpc.RpcError) as info:
                predict.Predict(request, timeout=30)
            assert info.value.code() == code, (what, info.value.details())
            assert "\n" not in info.value.details(), what
            if code != grpc.StatusCode.FAILED_PRECONDITION:
                assert grpc_part in info.value.details(), (what, info.value.details())
            else:
                assert info.value.details() == 'Serving signature key "nope" not found.'
        full = path if path.startswith("/v1/") or path.startswith("/healthz") else url + path
        full = server.rest_url + full if full.startswith("/") else full
        kwargs = {"raw": body} if isinstance(body, bytes) else {"body": body}
        status, answer = _http(method, full, **kwargs)
        assert status == http_status, (what, status, answer)
        assert list(answer) == ["error"] and isinstance(answer["error"], str), (what, answer)
        assert part in answer["error"] and "\n" not in answer["error"], (what, answer)
        assert _http("POST", f"{url}:predict", ok_body)[0] == 200, what


def test_rest_formats_status_and_metadata_as_tf_serving(server, reference, images):
    """json_tensor.cc: row form with one output -> a list of its values, with several -> a
    list of objects; columnar with one output -> its value, with several -> an object."""
    raw, _ = images
    url = f"{server.rest_url}/v1/models/{MODEL}"
    examples = examples_of(raw[:3])
    probs = reference.signatures["label_scores"](examples=tf.constant(examples))["probabilities"]
    one = {"signature_name": "label_scores", "instances": [_b64(e) for e in examples]}
    status, body = _http("POST", f"{url}:predict", one)
    assert status == 200 and list(body) == ["predictions"]
    np.testing.assert_allclose(body["predictions"], probs.numpy(), atol=1e-5)
    status, body = _http("POST", f"{url}:predict",
                         {"signature_name": "label_scores", "inputs": [_b64(e) for e in examples]})
    assert status == 200 and list(body) == ["outputs"]
    np.testing.assert_allclose(body["outputs"], probs.numpy(), atol=1e-5)  # a bare value
    want = reference.signatures["serving_default"](examples=tf.constant(examples))
    status, body = _http("POST", f"{url}:predict",
                         {"inputs": {"examples": [_b64(e) for e in examples]}})
    assert status == 200 and set(body["outputs"]) == {"labels", "scores", "label_count"}
    assert body["outputs"]["label_count"] == want["label_count"].numpy().tolist()
    status, body = _http("POST", f"{url}:predict", {"instances": [_b64(e) for e in examples]})
    assert status == 200 and len(body["predictions"]) == 3
    assert all(set(p) == {"labels", "scores", "label_count"} for p in body["predictions"])
    assert [p["label_count"] for p in body["predictions"]] == want["label_count"].numpy().tolist()

    expected_status = {"model_version_status": [{
        "version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    assert _http("GET", url) == (200, expected_status)
    assert _http("GET", f"{url}/versions/1") == (200, expected_status)
    for path in ("/metadata", "/versions/1/metadata"):
        status, body = _http("GET", url + path)
        assert status == 200 and set(body) == {"model_spec", "metadata"}
        assert body["model_spec"] == {"name": MODEL, "signature_name": "", "version": "1"}
        sigs = body["metadata"]["signature_def"]["signature_def"]
        assert {"serving_default", "predict_images", "label_scores"} <= set(sigs)
        examples_info = sigs["serving_default"]["inputs"]["examples"]
        assert examples_info["dtype"] == "DT_STRING"
        assert examples_info["tensor_shape"]["dim"] == [{"size": "-1", "name": ""}]
        assert sigs["serving_default"]["method_name"] == "tensorflow/serving/predict"


def _fake_prediction_server(script):
    """A gRPC server with TF Serving's Predict method that answers the codes in ``script``
    in turn (None: a valid empty response) and counts the calls."""
    calls = []

    def handle(request, context):
        calls.append(dict(context.invocation_metadata()).get("grpc-previous-rpc-attempts"))
        code = script[min(len(calls), len(script)) - 1]
        if code is not None:
            context.abort(code, f"scripted {code.name}")
        return predict_pb2.PredictResponse()

    handler = grpc.method_handlers_generic_handler("tensorflow.serving.PredictionService", {
        "Predict": grpc.unary_unary_rpc_method_handler(
            handle, request_deserializer=predict_pb2.PredictRequest.FromString,
            response_serializer=predict_pb2.PredictResponse.SerializeToString)})
    from concurrent import futures

    srv = grpc.server(futures.ThreadPoolExecutor(2))
    srv.add_generic_rpc_handlers((handler,))
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    return srv, f"127.0.0.1:{port}", calls


@pytest.mark.parametrize("script, retried", [
    ([grpc.StatusCode.UNAVAILABLE] * 2 + [None], True),
    ([grpc.StatusCode.RESOURCE_EXHAUSTED, None], True),
    ([grpc.StatusCode.NOT_FOUND], False),
    ([grpc.StatusCode.INVALID_ARGUMENT], False),
    ([grpc.StatusCode.FAILED_PRECONDITION], False),
    ([grpc.StatusCode.INTERNAL], False),
])
def test_client_retries_only_what_tf_serving_says_to_retry(script, retried):
    """gRPC's own retry policy (service config) retries UNAVAILABLE / RESOURCE_EXHAUSTED,
    never a request error; the server sees each attempt (grpc-previous-rpc-attempts)."""
    from cnnrnn_tf.serving.client import ServingClient, ServingError

    srv, address, calls = _fake_prediction_server(script)
    try:
        client = ServingClient(address, MODEL, retries=3, backoff_seconds=0.01, timeout=20)
        request = predict_request("serving_default", [b"x"])
        if retried:
            client.predict_raw(request)
            assert len(calls) == len(script)
            assert calls[1:] == [str(i) for i in range(1, len(script))]
        else:
            with pytest.raises(ServingError) as err:
                client.predict_raw(request)
            assert err.value.code == script[0] and len(calls) == 1
            assert err.value.is_request_error == (script[0] != grpc.StatusCode.INTERNAL)
        calls.clear()
        no_retry = ServingClient(address, MODEL, retries=0, timeout=20)
        with pytest.raises(ServingError) if script[0] else nullcontext():
            no_retry.predict_raw(request)
        assert len(calls) == 1
        client.close()
        no_retry.close()
    finally:
        srv.stop(0)


def test_service_config_is_grpcs_retry_policy():
    from cnnrnn_tf.serving.client import service_config

    config = json.loads(service_config(9, 0.5, 4.0))
    (method,) = config["methodConfig"]
    assert {n["service"] for n in method["name"]} == {
        "tensorflow.serving.PredictionService", "tensorflow.serving.ModelService"}
    assert method["retryPolicy"] == {
        "maxAttempts": 5, "initialBackoff": "0.500s", "maxBackoff": "4.000s",
        "backoffMultiplier": 2, "retryableStatusCodes": ["RESOURCE_EXHAUSTED", "UNAVAILABLE"]}
    assert "retryPolicy" not in json.loads(service_config(0))["methodConfig"][0]


def _copy_tree(src, dst):
    for root, _, files in tf.io.gfile.walk(src):
        rel = os.path.relpath(root, src)
        target = dst if rel == "." else f"{dst}/{rel}"
        tf.io.gfile.makedirs(target)
        for name in files:
            tf.io.gfile.copy(os.path.join(root, name), f"{target}/{name}", overwrite=True)


def test_model_base_path_on_a_uri_filesystem(trained, images):
    """Discovery, polling and loading through tf.io.gfile, on TF's ram:// file system (the
    same code path serves s3:// and gs://)."""
    from cnnrnn_tf.serving.server import ModelServer

    _, out = trained
    raw, _ = images
    base = f"ram://serving-{os.getpid()}/models/{MODEL}"
    _copy_tree(os.path.join(out, "saved_model"), f"{base}/1")
    with ModelServer(base, MODEL, port=0, rest_port=None, poll_seconds=0.2,
                     warmup=False) as srv:
        assert sorted(srv.manager.versions) == [1] and srv.manager.base_path == base
        channel = grpc.insecure_channel(srv.grpc_address)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_request("predict_images", raw[:2])
        assert stub.Predict(request, timeout=60).model_spec.version.value == 1
        _copy_tree(os.path.join(out, "saved_model"), f"{base}/2")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and 2 not in srv.manager.versions:
            time.sleep(0.2)
        assert stub.Predict(request, timeout=60).model_spec.version.value == 2
        channel.close()
    with pytest.raises(InputError, match="does not exist"):
        ModelServer(f"ram://serving-{os.getpid()}/missing", MODEL, port=0, rest_port=None)
    with pytest.raises(InputError, match="unknown URI scheme"):
        ModelServer("ftp://host/models", MODEL, port=0, rest_port=None)


# --------------------------------------------------------------------------- client + CLI
def test_client_library(server, reference, images):
    from cnnrnn_tf.serving.client import ServingClient, ServingError

    raw, paths = images
    want = reference.signatures["predict_images"](images=tf.constant(raw))
    with ServingClient(server.grpc_address, MODEL, signature="predict_images") as client:
        results = list(client.predict_files(paths, batch_size=2))
        assert [r["image"] for r in results] == paths
        for result, row, count in zip(results, want["labels"].numpy(),
                                      want["label_count"].numpy()):
            assert [x["label"] for x in result["labels"]] == [l.decode() for l in row[:count]]
        assert "serving_default" in client.metadata().signature_def
        assert client.status()[0]["state"] == "AVAILABLE"
        with pytest.raises(InputError, match="missing.png"):
            list(client.predict_files([paths[0], paths[0] + ".missing.png"]))
        fast = ServingClient(server.grpc_address, MODEL, timeout=1e-4)
        with pytest.raises(ServingError) as err:
            fast.predict_bytes(raw[:1])
        assert err.value.code == grpc.StatusCode.DEADLINE_EXCEEDED  # never retried
        assert err.value.attempts == 1 and not err.value.is_request_error
        fast.close()
    with ServingClient(server.grpc_address, "nope") as client:
        with pytest.raises(ServingError) as err:
            client.predict_bytes(raw[:1])
        assert err.value.code == grpc.StatusCode.NOT_FOUND and err.value.is_request_error
        assert "nope" in str(err.value)


def test_cli_client_matches_cli_predict(server, trained, images, capsys):
    from cnnrnn_tf.cli.app import main

    _, out = trained
    _, paths = images
    assert main(["predict", "--model", out, "--json"] + paths) == 0
    local = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    for signature in ("serving_default", "predict_images"):
        assert main(["client", "--server", server.grpc_address, "--model", MODEL, "--json",
                     "--signature", signature, "--batch-size", "2"] + paths) == 0
        remote = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [r["image"] for r in remote] == paths
        for a, b in zip(local, remote):
            assert [x["label"] for x in a["labels"]] == [x["label"] for x in b["labels"]]
            np.testing.assert_allclose([x["score"] for x in a["labels"]],
                                       [x["score"] for x in b["labels"]], atol=1e-4)
    assert main(["client", "--server", server.grpc_address, "--model", "nope"] + paths) == 2
    assert "NOT_FOUND" in capsys.readouterr().err
    assert main(["client", "--server", server.grpc_address, "--model", MODEL,
                 paths[0] + ".missing"]) == 2
    assert "error: " in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["client", "--server", server.grpc_address, "--model", MODEL, "--signature",
              "label_scores", paths[0]])
    assert exit_info.value.code == 2


# --------------------------------------------------------------------------- new versions
def test_new_version_is_served_without_restart(server, stubs, trained, base_path, images):
    predict, models = stubs
    _, out = trained
    raw, _ = images
    # A broken version 3 (logged and skipped) and a good version 2, copied in place.
    (base_path / "3").mkdir()
    (base_path / "3" / "saved_model.pb").write_bytes(b"this is not a SavedModel")
    shutil.copytree(os.path.join(out, "saved_model"), base_path / "2")
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = MODEL
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        response = predict.Predict(valid_request(raw), timeout=60)  # never interrupted
        if response.model_spec.version.value == 2:
            break
        time.sleep(0.2)
    assert response.model_spec.version.value == 2
    states = {s.version: s for s in models.GetModelStatus(request, timeout=30).model_version_status}
    available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert states[2].state == available and states[1].state == available  # latest 2 kept
    assert states[3].state == get_model_status_pb2.ModelVersionStatus.END
    assert states[3].status.error_message
    old = predict.Predict(predict_request("predict_images", raw[:1], version=1), timeout=30)
    assert old.model_spec.version.value == 1
    with pytest.raises(grpc.RpcError) as info:
        predict.Predict(predict_request("predict_images", raw[:1], version=3), timeout=30)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


# --------------------------------------------------------------------------- files
def test_warmup_file(base_path, stubs):
    from tensorflow_serving.apis import prediction_log_pb2

    from cnnrnn_tf.serving.warmup import read_warmup_requests, write_warmup_requests

    path = os.path.join(base_path, "1", "assets.extra", "tf_serving_warmup_requests")
    records = read_warmup_requests(path)
    assert [r.predict_log.request.model_spec.signature_name for r in records] == [
        "serving_default", "predict_images"]
    assert all(isinstance(r, prediction_log_pb2.PredictionLog) for r in records)
    predict, _ = stubs
    for record in records:  # every warmup request is a valid request
        request = record.predict_log.request
        request.model_spec.name = MODEL
        response = predict.Predict(request, timeout=30)
        assert tf.make_ndarray(response.outputs["label_count"]).shape == (1,)
    with pytest.raises(InputError):
        write_warmup_requests(str(base_path), num_records=1)  # not a SavedModel folder


def test_deployment_files_parse():
    from tensorflow_serving.config import model_server_config_pb2

    from cnnrnn_tf.serving import deploy

    with open(os.path.join(SERVING_DIR, "models.config")) as f:
        config = text_format.Parse(f.read(), model_server_config_pb2.ModelServerConfig())
    (entry,) = config.model_config_list.config
    assert (entry.name, entry.base_path, entry.model_platform) == (MODEL, "/models/cnnrnn",
                                                                   "tensorflow")
    assert text_format.MessageToString(config) == deploy.models_config({MODEL: "/models/cnnrnn"})
    with open(os.path.join(SERVING_DIR, "batching_parameters.txt")) as f:
        batching = deploy.parse_batching_parameters(f.read())
    assert batching.max_batch_size.value == 32 and list(batching.allowed_batch_sizes)[-1] == 32
    with pytest.raises(text_format.ParseError):
        deploy.parse_batching_parameters("max_batch_sise { value: 3 }")
    with pytest.raises(InputError):
        deploy.parse_batching_parameters("max_batch_size { value: 8 } allowed_batch_sizes: 4")
    with pytest.raises(InputError):
        deploy.models_config({"cnnrnn": "relative/path"})

    with open(os.path.join(SERVING_DIR, "docker-compose.yml")) as f:
        compose = yaml.safe_load(f)
    (service,) = compose["services"].values()
    assert service["image"].startswith("tensorflow/serving")
    assert {"8500:8500", "8501:8501"} <= set(service["ports"])
    flags = " ".join(service["command"])
    for flag in ("--model_config_file=", "--enable_batching=true", "--batching_parameters_file="):
        assert flag in flags
    assert any(v.endswith(":/models:ro") for v in service["volumes"])

    with open(os.path.join(SERVING_DIR, "kubernetes.yaml")) as f:
        docs = {d["kind"]: d for d in yaml.safe_load_all(f)}
    assert {"ConfigMap", "Deployment", "Service"} <= set(docs)
    data = docs["ConfigMap"]["data"]
    assert text_format.Parse(data["models.config"],
                             model_server_config_pb2.ModelServerConfig()) == config
    assert deploy.parse_batching_parameters(data["batching_parameters.txt"]) == batching
    (container,) = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == f"/v1/models/{MODEL}"
    assert {p["containerPort"] for p in container["ports"]} == {8500, 8501}
    assert {p["port"] for p in docs["Service"]["spec"]["ports"]} == {8500, 8501}
    deploy.check_folder(SERVING_DIR)


def _yaml_docs(name):
    with open(os.path.join(SERVING_DIR, name)) as f:
        return list(yaml.safe_load_all(f))


def test_monitoring_config_is_passed_everywhere():
    from cnnrnn_tf.serving import deploy

    with open(os.path.join(SERVING_DIR, "monitoring.config")) as f:
        monitoring = deploy.parse_monitoring_config(f.read())
    assert monitoring.prometheus_config.enable
    assert monitoring.prometheus_config.path == deploy.MONITORING_PATH
    with pytest.raises(text_format.ParseError):
        deploy.parse_monitoring_config("prometheus_config { enabled: true }")
    flag = "--monitoring_config_file=/config/monitoring.config"
    for name in ("docker-compose.yml", "docker-compose.gpu.yml"):
        (service,) = _yaml_docs(name)[0]["services"].values()
        assert flag in service["command"]
        assert "./monitoring.config:/config/monitoring.config:ro" in service["volumes"]
    for name in ("kubernetes.yaml", "kubernetes.gpu.yaml"):
        docs = {d["kind"]: d for d in _yaml_docs(name)}
        assert deploy.parse_monitoring_config(docs["ConfigMap"]["data"]["monitoring.config"]) \
            == monitoring
        template = docs["Deployment"]["spec"]["template"]
        assert flag in template["spec"]["containers"][0]["args"]
        assert template["metadata"]["annotations"]["prometheus.io/path"] == deploy.MONITORING_PATH


def test_gpu_manifests_differ_from_the_cpu_ones_only_in_the_gpu_parts():
    from cnnrnn_tf.serving import deploy

    (cpu,) = _yaml_docs("docker-compose.yml")[0]["services"].values()
    (gpu,) = _yaml_docs("docker-compose.gpu.yml")[0]["services"].values()
    assert cpu["image"] == deploy.SERVING_IMAGE and gpu["image"] == deploy.SERVING_IMAGE + "-gpu"
    (device,) = gpu.pop("deploy")["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert {k: v for k, v in gpu.items() if k != "image"} == \
        {k: v for k, v in cpu.items() if k != "image"}

    cpu_docs, gpu_docs = _yaml_docs("kubernetes.yaml"), _yaml_docs("kubernetes.gpu.yaml")
    assert [d["kind"] for d in cpu_docs] == [d["kind"] for d in gpu_docs]
    for a, b in zip(cpu_docs, gpu_docs):
        if a["kind"] != "Deployment":
            assert a == b
            continue
        spec_a, spec_b = a["spec"]["template"]["spec"], b["spec"]["template"]["spec"]
        (tolerate,) = spec_b.pop("tolerations")
        assert tolerate["key"] == "nvidia.com/gpu"
        (container_a,), (container_b,) = spec_a["containers"], spec_b["containers"]
        assert container_b["resources"]["limits"].pop("nvidia.com/gpu") == 1
        assert container_a.pop("image") == deploy.SERVING_IMAGE
        assert container_b.pop("image") == deploy.SERVING_IMAGE + "-gpu"
        assert a == b


def _with_tf_version(src, dst, version):
    """A copy of saved_model.pb whose MetaInfoDef records another TensorFlow version."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(src, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    for meta_graph in proto.meta_graphs:
        meta_graph.meta_info_def.tensorflow_version = version
    os.makedirs(dst)
    with open(os.path.join(dst, "saved_model.pb"), "wb") as f:
        f.write(proto.SerializeToString())
    return dst


def test_serving_image_must_be_at_least_the_exporting_tensorflow(
        tiny_model_dir, tmp_path, monkeypatch, capsys):
    from cnnrnn_tf.serving import export
    from cnnrnn_tf.cli.app import main
    from cnnrnn_tf.serving import deploy

    exported = os.path.join(tiny_model_dir, "saved_model")
    assert deploy.saved_model_tf_version(exported) == tf.__version__
    assert deploy.image_version_problem(exported, SERVING_DIR) is None  # 2.16.x on 2.16.1
    assert main_deploy(["check", SERVING_DIR, "--saved-model", exported], capsys) == (0, [])
    newer = _with_tf_version(exported, str(tmp_path / "newer"), "2.17.0")
    patch = _with_tf_version(exported, str(tmp_path / "patch"), "2.16.9")
    assert deploy.image_version_problem(patch, SERVING_DIR) is None
    code, err = main_deploy(["check", SERVING_DIR, "--saved-model", newer], capsys)
    assert code == 2 and len(err) == 1, err
    for words in ("TensorFlow 2.17.0", "tensorflow/serving:2.16.1", "tensorflow/serving:2.17"):
        assert words in err[0], err
    assert deploy.parse_version("2.16.1-gpu") == (2, 16, 1)
    assert deploy.parse_version("latest") is None
    assert deploy.parse_version("2.18.0rc1") == (2, 18, 0)
    # cnnrnn export compares what it wrote with the pinned image, or --serving-manifests.
    monkeypatch.setattr(export, "export_saved_model", lambda *args, **kw: newer)
    assert main(["export", "--model", tiny_model_dir, "--out", str(tmp_path / "x")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: ") and "2.17.0" in err[0], err
    old = tmp_path / "old_manifests"
    old.mkdir()
    (old / "compose.yml").write_text("services: {s: {image: 'tensorflow/serving:2.15.1'}}\n")
    monkeypatch.setattr(export, "export_saved_model", lambda *args, **kw: patch)
    assert main(["export", "--model", tiny_model_dir, "--out", str(tmp_path / "x"),
                 "--serving-manifests", str(old)]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tensorflow/serving:2.15.1" in err[0], err
    assert main(["export", "--model", tiny_model_dir, "--out", str(tmp_path / "x"),
                 "--serving-manifests", str(tmp_path / "patch")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no *.yml" in err[0], err


def main_deploy(argv, capsys):
    from cnnrnn_tf.serving import deploy

    code = deploy.main(argv)
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("flags", [["--max-queued", "-1"], ["--max-body-bytes", "0"],
                                   ["--socket-timeout", "0"], ["--request-timeout", "nan"],
                                   ["--max-concurrent-rpcs", "0"], ["--workers", "x"]])
def test_serve_limit_flags_refuse_bad_values(flags, tmp_path, capsys):
    from cnnrnn_tf.cli.app import main

    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--model-base-path", str(tmp_path), "--model-name", MODEL] + flags)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flags[0] in err[0], err


def test_server_limits_defaults_and_checks():
    from cnnrnn_tf.serving.server import ServerLimits

    limits = ServerLimits()
    assert (limits.workers, limits.max_queued, limits.grpc_concurrency) == (8, 32, 40)
    assert limits.max_body_bytes == 64 * 1024 * 1024 and limits.request_timeout == 30.0
    assert ServerLimits(max_concurrent_rpcs=3).grpc_concurrency == 3
    for bad in (dict(workers=0), dict(max_queued=-1), dict(socket_timeout=0),
                dict(max_concurrent_rpcs=0), dict(max_body_bytes=0)):
        with pytest.raises(InputError):
            ServerLimits(**bad)
