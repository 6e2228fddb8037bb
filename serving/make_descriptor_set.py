"""Writes serving/tf_serving.protoset: TF Serving's gRPC API as a FileDescriptorSet.

    python serving/make_descriptor_set.py            # (re)writes serving/tf_serving.protoset
    python serving/make_descriptor_set.py --check    # exit 1 if the checked-in file is stale

The set holds tensorflow_serving/apis/prediction_service.proto and model_service.proto with
every file they import (TensorFlow's tensor protos, google/protobuf/any.proto, ...),
dependencies first, so that tools without the .proto sources can speak the API:

    grpcurl -protoset serving/tf_serving.protoset -plaintext localhost:8500 list

It is what ``python -m grpc_tools.protoc --include_imports --descriptor_set_out=...``
writes over TF Serving's protos; it is built here from the compiled descriptors that the
``tensorflow-serving-api`` wheel ships (the same .proto files, compiled by protoc), because
grpcio-tools is not in this project's locked environment. tests/test_serving_tls.py checks
that the checked-in file equals what this script writes now.
"""
from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "tf_serving.protoset")


def descriptor_set():
    """The FileDescriptorSet of TF Serving's PredictionService and ModelService."""
    from google.protobuf import descriptor_pb2
    from tensorflow_serving.apis import model_service_pb2, prediction_service_pb2

    ordered, seen = [], set()

    def visit(file_descriptor):
        if file_descriptor.name in seen:
            return
        seen.add(file_descriptor.name)
        for dependency in file_descriptor.dependencies:
            visit(dependency)
        ordered.append(file_descriptor)  # after everything it imports

    for module in (prediction_service_pb2, model_service_pb2):
        visit(module.DESCRIPTOR)
    out = descriptor_pb2.FileDescriptorSet()
    for file_descriptor in ordered:
        file_descriptor.CopyToProto(out.file.add())
    return out


def serialized() -> bytes:
    return descriptor_set().SerializeToString(deterministic=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="compare with the checked-in file instead of writing it")
    parser.add_argument("--out", default=OUT, help="where to write (default: %(default)s)")
    args = parser.parse_args(argv)
    data = serialized()
    if args.check:
        try:
            with open(args.out, "rb") as f:
                current = f.read()
        except OSError as exc:
            print(f"error: {args.out}: {exc.strerror}", file=sys.stderr)
            return 1
        if current != data:
            print(f"error: {args.out} is stale; run python serving/make_descriptor_set.py",
                  file=sys.stderr)
            return 1
        print(f"{args.out}: up to date")
        return 0
    tmp = f"{args.out}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, args.out)  # never a half-written protoset
    print(f"wrote {args.out} ({len(data)} bytes, {len(descriptor_set().file)} files)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
