"""TF Serving's REST JSON codec: the row and column request formats to tensors, and back."""
from __future__ import annotations

import base64
import json
from typing import Dict, List, Optional, Tuple

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

from cnnrnn_tf.serving.server.status import DEFAULT_SIGNATURE, RequestError
from cnnrnn_tf.serving.server.core import PredictionCore


_INT64_MAX = 2 ** 63 - 1


def _invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


def _debug_json(value) -> str:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text if len(text) <= 120 else text[:117] + "..."


def _json_type(value) -> str:
    """rapidjson's type names, as TF Serving's json_tensor.cc prints them."""
    if value is None:
        return "Null"
    if value is True:
        return "True"
    if value is False:
        return "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def _is_b64(value) -> bool:
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def _is_named(value) -> bool:
    return isinstance(value, dict) and not _is_b64(value)


def _dense_shape(value) -> List[int]:
    """json_tensor.cc GetDenseTensorShape: the shape read along the first elements."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _leaf(value, dtype: tf.DType):
    """One JSON leaf -> a Python value of ``dtype``, or TF Serving's error for it."""
    def type_error():
        return _invalid(f"JSON Value: {_debug_json(value)} Type: {_json_type(value)} is not "
                        f"of expected type: {dtype.name}")

    if dtype == tf.string:
        if isinstance(value, dict):
            if not _is_b64(value):
                raise _invalid(f"JSON Value: {_debug_json(value)} not formatted correctly "
                               "for base64 data")
            text = value["b64"]
            try:  # absl::Base64Unescape accepts unpadded input; so do we
                return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
            except ValueError:
                raise _invalid("Unable to base64 decode") from None
        if isinstance(value, str):
            return value.encode("utf-8")
        raise type_error()
    if isinstance(value, (dict, list, str)) or value is None:
        raise type_error()
    if dtype == tf.bool:
        if not isinstance(value, bool):
            raise type_error()
        return value
    if isinstance(value, bool):
        raise type_error()
    if dtype.is_integer and not isinstance(value, int):
        raise type_error()
    if not (dtype.is_integer or dtype.is_floating):
        raise _invalid(f"JSON input of type {dtype.name} is not supported")
    return value


def _fill(value, shape: List[int], level: int, dtype: tf.DType, out: list) -> None:
    """json_tensor.cc FillTensorProto: a dense tensor's values, checked level by level."""
    if not isinstance(value, list):
        if level != len(shape):
            raise _invalid(f"JSON Value: {_debug_json(value)} found at incorrect level: "
                           f"{level + 1} in the JSON DOM. Expected at level: {len(shape)}")
        out.append(_leaf(value, dtype))
        return
    if level >= len(shape):
        raise _invalid(f"Encountered list at unexpected level: {level} expected < {len(shape)}")
    if len(value) != shape[level]:
        raise _invalid(f"Encountered list at unexpected size: {len(value)} at level: {level} "
                       f"expected size: {shape[level]}")
    for item in value:
        _fill(item, shape, level + 1, dtype, out)


def _tensor(values: list, shape: List[int], dtype: tf.DType, alias: str):
    try:
        if dtype == tf.string:
            array = np.empty(len(values), dtype=object)
            array[:] = values
            array = array.reshape(shape)
        else:
            array = np.array(values, dtype=dtype.as_numpy_dtype).reshape(shape)
        return tf.make_tensor_proto(array, dtype=dtype)
    except (ValueError, TypeError, OverflowError) as exc:
        raise _invalid(f"input {alias}: values do not form a {dtype.name} tensor "
                       f"({exc})") from None


def _json_to_tensors(body: dict, inputs) -> Tuple[Dict[str, object], bool]:
    """json_tensor.cc FillPredictRequestFromJson: ``instances`` / ``inputs`` -> TensorProtos.

    Returns the protos by alias and whether the request was in row form."""
    if not inputs:
        raise _invalid("Failed to get input map for signature")
    names = sorted(inputs)
    dtypes = {a: tf.dtypes.as_dtype(inputs[a].dtype) for a in names}
    has_instances, has_inputs = "instances" in body, "inputs" in body
    if has_instances and has_inputs:
        raise _invalid(f"JSON Value: {_debug_json(body)} Not formatted correctly expecting only "
                       "one of 'inputs' or 'instances' keys to exist ")
    if has_instances:
        instances = body["instances"]
        if not isinstance(instances, list):
            raise _invalid(f"JSON Value: {_debug_json(body)} Expecting 'instances' to be an "
                           "list/array")
        if not instances:
            raise _invalid(f"JSON Value: {_debug_json(body)} No values in 'instances' array")
        if not isinstance(instances[0], dict) and len(names) > 1:
            raise _invalid("instances is a plain list, but expecting list of objects as "
                           "multiple input tensors required as per tensorinfo_map")
        objects = _is_named(instances[0])
        values: Dict[str, list] = {}
        shapes: Dict[str, List[int]] = {}

        def add(item, name, index, key_text):
            if name not in inputs:
                raise _invalid(f"Failed to process element: {index}{key_text} of 'instances' "
                               f"list. Error: INVALID_ARGUMENT: JSON object: does not have "
                               f"named input: {name}")
            shape = _dense_shape(item)
            out: list = []
            try:
                _fill(item, shape, 0, dtypes[name], out)
            except RequestError as exc:
                raise _invalid(f"Failed to process element: {index}{key_text} of 'instances' "
                               f"list. Error: INVALID_ARGUMENT: {exc.message}") from None
            if name in shapes and shapes[name] != shape:
                raise _invalid(f"Failed to process element: {index}{key_text} of 'instances' "
                               f"list. Error: INVALID_ARGUMENT: Expecting shape {shapes[name]} "
                               f"but got: {shape}")
            shapes[name] = shape
            values.setdefault(name, []).extend(out)

        for index, item in enumerate(instances):
            if objects:
                if not _is_named(item):
                    raise _invalid(f"Expecting object but got list at item {index} of input "
                                   "list")
                for key, value in item.items():
                    add(value, key, index, f" key: {key}")
                if set(item) != set(names):
                    raise _invalid(f"Failed to process element: {index} of 'instances' list. "
                                   f"JSON object: {_debug_json(item)} keys must be equal to: "
                                   f"{','.join(names)}")
            else:
                if _is_named(item):
                    raise _invalid(f"Expecting value/list but got object at item {index} of "
                                   "input list")
                add(item, names[0], index, "")
        return {n: _tensor(values[n], [len(instances)] + shapes[n], dtypes[n], n)
                for n in values}, True
    if has_inputs:
        value = body["inputs"]
        if not _is_named(value):
            if len(names) > 1:
                raise _invalid("inputs is a plain value/list, but expecting an object as "
                               "multiple input tensors required as per tensorinfo_map")
            columns = {names[0]: value}
        else:
            columns = {}
            for name in names:
                if name not in value:
                    raise _invalid(f"Missing named input: {name} in 'inputs' object.")
                columns[name] = value[name]
        protos = {}
        for name, item in columns.items():
            shape = _dense_shape(item)
            out: list = []
            _fill(item, shape, 0, dtypes[name], out)
            protos[name] = _tensor(out, shape, dtypes[name], name)
        return protos, False
    raise _invalid("Missing 'inputs' or 'instances' key")


def _json_value(value, alias: str, dtype: tf.DType):
    """One output value -> JSON, as TF Serving writes it (strings UTF-8, *_bytes as b64)."""
    if isinstance(value, np.ndarray):
        return [_json_value(v, alias, dtype) for v in value]
    if isinstance(value, bytes):
        if alias.endswith("_bytes"):
            return {"b64": base64.b64encode(value).decode("ascii")}
        return value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        return value.item()
    return value


def _tensors_to_json(response: predict_pb2.PredictResponse, row_form: bool) -> dict:
    """json_tensor.cc MakeJsonFromTensors: row form ``{"predictions": [...]}`` (one output:
    a list of its values; several: a list of objects), columnar ``{"outputs": ...}`` (one
    output: its value; several: an object)."""
    outputs = {a: tf.make_ndarray(p) for a, p in response.outputs.items()}
    dtypes = {a: tf.dtypes.as_dtype(p.dtype) for a, p in response.outputs.items()}
    if not outputs:
        raise _invalid("Cannot convert empty tensor map to JSON")
    if not row_form:
        if len(outputs) == 1:
            (alias, value), = outputs.items()
            return {"outputs": _json_value(value, alias, dtypes[alias])}
        return {"outputs": {a: _json_value(v, a, dtypes[a]) for a, v in outputs.items()}}
    batch = None
    for alias, value in outputs.items():
        if value.ndim == 0:
            raise _invalid(f"Tensor name: {alias} has no shape information ")
        if batch is not None and value.shape[0] != batch:
            raise _invalid(f"Tensor name: {alias} has inconsistent batch size: "
                           f"{value.shape[0]} expecting: {batch}")
        batch = value.shape[0]
    predictions = []
    for row in range(batch):
        if len(outputs) == 1:
            (alias, value), = outputs.items()
            predictions.append(_json_value(value[row], alias, dtypes[alias]))
        else:
            predictions.append({a: _json_value(v[row], a, dtypes[a]) for a, v in outputs.items()})
    return {"predictions": predictions}


def _model_spec(name: str, version: Optional[int], label: Optional[str] = None):
    spec = predict_pb2.PredictRequest().model_spec
    spec.name = name
    if version is not None:
        spec.version.value = version
    if label:
        spec.version_label = label
    return spec


def rest_predict(core: PredictionCore, name: str, version: Optional[int], body,
                 label: Optional[str] = None) -> dict:
    """TF Serving's REST predict on the gRPC code path, in TF Serving's order of checks:
    the body (a JSON object, ``signature_name`` a string), the servable (NOT_FOUND), the
    signature (INVALID_ARGUMENT over REST), then ``instances`` / ``inputs``."""
    if not isinstance(body, dict):
        raise _invalid(f"JSON Value: {_debug_json(body)} Is not object")
    signature_name = body.get("signature_name", "")
    if not isinstance(signature_name, str):
        raise _invalid(f"JSON Value: {_debug_json(body)} not formatted correctly. "
                       "'signature_name' key must be a string value.")
    request = predict_pb2.PredictRequest()
    request.model_spec.CopyFrom(_model_spec(name, version, label))
    request.model_spec.signature_name = signature_name
    servable = core.manager.resolve(request.model_spec)
    key = signature_name or DEFAULT_SIGNATURE
    signature = servable.signature_defs.get(key)
    if signature is None or key not in servable.functions:
        raise _invalid(f'Serving signature name: "{key}" not found in signature def')
    protos, row_form = _json_to_tensors(body, signature.inputs)
    for alias, proto in protos.items():
        request.inputs[alias].CopyFrom(proto)
    return _tensors_to_json(core.runner.run(servable, request), row_form)
