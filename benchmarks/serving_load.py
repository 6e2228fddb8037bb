"""Load test of ``cnnrnn serve`` (or TF Serving) over gRPC, on loopback only.

N concurrent clients (one thread and one gRPC channel each) send Predict
requests of batch 1 and batch 32 for a bounded time and count; the script
prints p50/p99 latency and images/second as a markdown table, with the command.

    # against a server started here, in this process, on a free loopback port:
    python benchmarks/serving_load.py --model-base-path SERVING_DIR/cnnrnn --model-name cnnrnn
    # a tiny model trained on the spot (about 20 s; for a smoke run):
    python benchmarks/serving_load.py --tiny-model --seconds 3
    # against a server that is already running on this machine:
    python benchmarks/serving_load.py --server 127.0.0.1:8500 --model-name cnnrnn

Bounds: --seconds <= 60 per batch size, --max-requests <= 10000 per batch size,
--clients <= 64; only 127.0.0.1 / localhost / ::1 are accepted as --server.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import threading
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


def _synthetic_png(rng, size, labels):
    import tensorflow as tf

    img = (rng.rand(size, size, 3) * 40).astype(np.uint8)
    h = size // 2
    for i, name in enumerate(("red", "green", "blue")):
        if name in labels:
            img[(i // 2) * h:(i // 2 + 1) * h, (i % 2) * h:(i % 2 + 1) * h, i] = 220
    return tf.io.encode_png(img).numpy()


def train_tiny_model(work: str) -> str:
    """A 32x32 model trained for one epoch on generated images; returns its base path."""
    import shutil

    from cnnrnn_tf import schema
    from cnnrnn_tf.config import TrainConfig
    from cnnrnn_tf.training import train

    rng = np.random.RandomState(0)
    for split, n in (("train", 64), ("test", 16)):
        records = []
        for i in range(n):
            labels = [c for c in ("red", "green", "blue") if rng.rand() < 0.5] or ["red"]
            records.append(schema.Record(_synthetic_png(rng, 32, labels), labels, f"{split}{i}"))
        schema.write_records(os.path.join(work, split), records)
    out = os.path.join(work, "model")
    train(TrainConfig(image_size=32, batch_size=16, epochs=1, lstm_units=32, embed_dim=16,
                      beam_size=2), os.path.join(work, "train"), os.path.join(work, "test"),
          out, verbose=0)
    base = os.path.join(work, "serving", "cnnrnn")
    shutil.copytree(os.path.join(out, "saved_model"), os.path.join(base, "1"))
    return base


def run_load(address: str, model: str, signature: str, batch: int, clients: int,
             seconds: float, max_requests: int, image: bytes) -> dict:
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from cnnrnn_tf import schema

    value = image if signature == "predict_images" else \
        schema.make_example(image, [], "bench").SerializeToString()
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    request.inputs["images" if signature == "predict_images" else "examples"].CopyFrom(
        tf.make_tensor_proto([value] * batch, dtype=tf.string, shape=[batch]))
    latencies, errors = [], []
    lock = threading.Lock()
    budget = [max_requests]
    end = [float("inf")]
    began = [0.0]

    def open_gate():  # runs once all clients are connected and warmed up
        began[0] = time.monotonic()
        end[0] = began[0] + seconds

    start_gate = threading.Barrier(clients, action=open_gate)

    def client():
        channel = grpc.insecure_channel(address)
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        try:
            stub.Predict(request, timeout=60)  # connect + warm up, not timed
        except grpc.RpcError as exc:
            errors.append(exc.code().name)
        start_gate.wait()
        while time.monotonic() < end[0]:
            with lock:
                if budget[0] <= 0:
                    break
                budget[0] -= 1
            t0 = time.perf_counter()
            try:
                stub.Predict(request, timeout=60)
                with lock:
                    latencies.append(time.perf_counter() - t0)
            except grpc.RpcError as exc:
                with lock:
                    errors.append(exc.code().name)
        channel.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 180)
    wall = time.monotonic() - began[0]
    lat = np.array(latencies) * 1000.0
    return {
        "batch": batch, "clients": clients, "requests": len(latencies), "errors": len(errors),
        "p50_ms": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
        "p99_ms": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
        "images_per_s": len(latencies) * batch / wall if wall > 0 else float("nan"),
        "wall_s": wall,
    }


def markdown(rows) -> str:
    lines = ["| batch | clients | requests | errors | p50 ms | p99 ms | images/s |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['batch']} | {r['clients']} | {r['requests']} | {r['errors']} | "
                     f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['images_per_s']:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--model-base-path", help="start an in-process server over this base path")
    where.add_argument("--server", help="HOST:PORT of a running server (loopback only)")
    where.add_argument("--tiny-model", action="store_true",
                       help="train a tiny model first and serve it in process")
    parser.add_argument("--model-name", default="cnnrnn")
    parser.add_argument("--signature", choices=("serving_default", "predict_images"),
                        default="predict_images")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--batch-sizes", default="1,32")
    parser.add_argument("--seconds", type=float, default=5.0, help="per batch size")
    parser.add_argument("--max-requests", type=int, default=2000, help="per batch size")
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args(argv)
    if not 0 < args.seconds <= 60 or not 0 < args.max_requests <= 10000 \
            or not 0 < args.clients <= 64:
        parser.error("bounds: 0 < --seconds <= 60, 0 < --max-requests <= 10000, "
                     "0 < --clients <= 64")
    batches = [int(b) for b in args.batch_sizes.split(",")]
    server = None
    with tempfile.TemporaryDirectory(prefix="serving-load-") as work:
        if args.server:
            host = args.server.rpartition(":")[0]
            if host not in LOOPBACK:
                parser.error(f"--server {args.server}: loopback addresses only")
            address = args.server
        else:
            from cnnrnn_tf.serving.server import ModelServer

            base = train_tiny_model(work) if args.tiny_model else args.model_base_path
            server = ModelServer(base, args.model_name, port=0, rest_port=None,
                                 host="127.0.0.1", max_workers=max(8, args.clients)).start()
            address = server.grpc_address
        try:
            image = _synthetic_png(np.random.RandomState(1), args.image_size, ["red", "blue"])
            rows = [run_load(address, args.model_name, args.signature, b, args.clients,
                             args.seconds, args.max_requests, image) for b in batches]
        finally:
            if server is not None:
                server.stop(grace=1)
    words = [sys.argv[0]] + list(sys.argv[1:] if argv is None else argv)
    print(f"command: python {' '.join(shlex.quote(a) for a in words)}")
    print(f"server: {'in-process cnnrnn serve' if server else address}, signature "
          f"{args.signature}, {args.image_size}x{args.image_size} PNG, {os.cpu_count()} CPUs\n")
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
