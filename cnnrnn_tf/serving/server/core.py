"""One prediction: a PredictRequest checked against its signature and run on a version."""
from __future__ import annotations

from typing import Dict, Optional

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, predict_pb2

from cnnrnn_tf.serving.server.status import DEFAULT_SIGNATURE, RequestError, _CODE_BY_VALUE, _dtype_name, _tf_error_message
from cnnrnn_tf.serving.server.versions import ModelManager, ServableVersion


# --------------------------------------------------------------------------- request handling
# Values per input tensor when no --max-batch-size is set (checked on the declared shape).
MAX_REQUEST_ELEMENTS = 1 << 16


class SignatureRunner:
    """Runs a PredictRequest on one loaded version: the signature's inputs checked (names,
    dtypes, shapes, the batch limit), its function called, the outputs filtered. Requests
    and the warmup replay of a new version (ModelManager.run_request) both go through it."""

    def __init__(self, model_name: str, max_batch_size: Optional[int] = None):
        self.model_name = model_name
        self.max_batch_size = max_batch_size

    def run(self, servable: ServableVersion, request) -> predict_pb2.PredictResponse:
        name = request.model_spec.signature_name or DEFAULT_SIGNATURE
        if name not in servable.functions or name not in servable.signature_defs:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                               f'Serving signature key "{name}" not found.')
        signature = servable.signature_defs[name]
        inputs = self._inputs(signature, request.inputs)
        wanted = list(request.output_filter) or list(signature.outputs)
        for alias in wanted:
            if alias not in signature.outputs:
                raise RequestError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"output tensor alias not found in signature: {alias} Outputs expected to "
                    f"be in the set {{{','.join(sorted(signature.outputs))}}}.")
        try:
            outputs = servable.functions[name](**inputs)
        except tf.errors.OpError as exc:
            raise RequestError(_CODE_BY_VALUE.get(exc.error_code, grpc.StatusCode.UNKNOWN),
                               _tf_error_message(exc)) from None
        except UnicodeDecodeError:
            # TF quoted the (binary) input in its error and failed to decode its own message;
            # seen for bytes that are not a serialized tf.Example.
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"Could not parse the input of signature {name} "
                               f"({', '.join(sorted(inputs))}): for 'examples', each value must "
                               "be a serialized tf.Example") from None
        response = predict_pb2.PredictResponse()
        response.model_spec.name = request.model_spec.name or self.model_name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = name
        for alias in wanted:
            response.outputs[alias].CopyFrom(tf.make_tensor_proto(outputs[alias].numpy()))
        return response

    def _inputs(self, signature, tensors) -> Dict[str, tf.Tensor]:
        expected = set(signature.inputs)
        sent = set(tensors)
        if len(sent) != len(expected):
            raise RequestError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"input size does not match signature: {len(sent)}!={len(expected)} "
                f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(expected))}}}). "
                f"Sent extra: {{{','.join(sorted(sent - expected))}}}. "
                f"Missing but required: {{{','.join(sorted(expected - sent))}}}.")
        out, batch = {}, None
        for index, alias in enumerate(sorted(sent)):
            if alias not in signature.inputs:
                raise RequestError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"input tensor alias not found in signature: {alias}. Inputs expected to be "
                    f"in the set {{{','.join(sorted(expected))}}}.")
            info, proto = signature.inputs[alias], tensors[alias]
            if proto.dtype != info.dtype:
                raise RequestError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"Expects arg[{index}] ({alias}) to be {_dtype_name(info.dtype)} but "
                    f"{_dtype_name(proto.dtype)} is provided")
            # Check the declared shape before materialising it: a 12-byte TensorProto can
            # claim a billion strings (make_ndarray would pad a list to that length).
            dims = [d.size for d in proto.tensor_shape.dim]
            if any(d < 0 for d in dims):
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"tensor parsing error: {alias} (negative dimension {dims})")
            elements = int(np.prod(dims, dtype=np.float64)) if dims else 1
            limit = self.max_batch_size or MAX_REQUEST_ELEMENTS
            if elements > limit:
                raise RequestError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"Task size {elements} is larger than maximum input batch size {limit}")
            try:
                array = tf.make_ndarray(proto)
            except Exception:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"tensor parsing error: {alias}") from None
            want_rank = len(info.tensor_shape.dim)
            if not info.tensor_shape.unknown_rank and array.ndim != want_rank:
                raise RequestError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"input {alias} must have rank {want_rank} (a batch of "
                    f"{_dtype_name(info.dtype)} values), got shape {list(array.shape)}")
            size = array.shape[0] if array.ndim else 1
            if batch is not None and size != batch:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"inputs have different batch sizes ({batch} and {size})")
            batch = size
            out[alias] = tf.constant(array, dtype=tf.dtypes.as_dtype(info.dtype))
        if batch == 0:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               "empty batch: the request holds no examples")
        if self.max_batch_size and batch and batch > self.max_batch_size:
            raise RequestError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Task size {batch} is larger than maximum input batch size {self.max_batch_size}")
        return out

class PredictionCore:
    """Predict / metadata / status, transport-independent (gRPC and REST share it)."""

    def __init__(self, manager: ModelManager, runner: SignatureRunner):
        self.manager = manager
        self.runner = runner

    def predict(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        return self.runner.run(self.manager.resolve(request.model_spec), request)

    def metadata(self, request) -> get_model_metadata_pb2.GetModelMetadataResponse:
        fields = list(request.metadata_field)
        if not fields:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               "GetModelMetadataRequest must specify at least one metadata_field")
        for field in fields:
            if field != "signature_def":
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"Metadata field {field} is not supported")
        servable = self.manager.resolve(request.model_spec)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = self.manager.name
        response.model_spec.version.value = servable.version
        response.metadata["signature_def"].Pack(servable.signature_def_map())
        return response

    def status(self, request) -> get_model_status_pb2.GetModelStatusResponse:
        response = get_model_status_pb2.GetModelStatusResponse()
        response.model_version_status.extend(self.manager.status(request.model_spec))
        return response
