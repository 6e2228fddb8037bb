"""Inference speed of a MODEL_DIR: the encoder alone vs the full decode (``cnnrnn benchmark``).

Every figure is the median over ``repeats`` timed calls after ``warmup``
untimed calls (tracing and compilation happen in the warm-up), on random images
of the model's input size, with the outputs pulled to the host each call; the
functions are called in turn in every round (see :func:`time_interleaved`):

* ``encoder_ms_per_batch``: the encoder alone, one ``tf.function``.
* ``full_ms_per_batch``: encoder + beam search, the same compiled function the
  predictor and ``cnnrnn evaluate`` use (``cnnrnn_tf.evaluation.evaluate.decode_function``).
* ``decode_ms_per_batch``: full - encoder; ``decode_ratio``: full / encoder.
* ``decoder_only_ms_per_batch``: the decoder part (beam search) alone on precomputed
  features, compiled like the predictor's (XLA): the decode's own cost, measured
  directly (the difference above is noisy on a shared machine).
* ``python_loop_ms_per_batch`` (``--python-loop`` / :func:`benchmark_model`): a
  reference greedy decode whose loop runs in Python, one compiled step call per
  label step, against the in-graph decode with beam 1 (``full_beam1_ms_per_batch``).
"""
from __future__ import annotations

import json
import platform
import statistics
import time
from typing import Any, Dict, List, Optional

import numpy as np
import tensorflow as tf


def _sync(out) -> None:
    """Pulls one output to the host so that the timing includes the computation."""
    leaves = tf.nest.flatten(out)
    if leaves:
        np.asarray(leaves[0])


def encoder_function(model):
    @tf.function(reduce_retracing=True)
    def fn(images):
        return model.encoder(images, training=False)

    return fn


def python_loop_decode_function(model, max_labels: Optional[int] = None):
    """Greedy decoding whose loop runs in Python: encoder + one compiled step per label.

    The reference for the in-graph beam search with beam 1 (same masks: START never,
    no label twice, END forced after ``max_labels``). Returns fn(images) -> label ids
    [B, L] (vocabulary indices, -1 padded).
    """
    from cnnrnn_tf.vocabulary import END_ID, MASK_LOGIT, NUM_SPECIAL, START_ID

    steps = int(max_labels or model.max_labels)
    num_tokens = model.num_labels + NUM_SPECIAL

    @tf.function(reduce_retracing=True)
    def start(images):
        return model.start_state(model.encoder(images, training=False))

    @tf.function(reduce_retracing=True)
    def step(tokens, state, seen):
        logits, state = model.step(tokens, state)
        logits = tf.where(seen, tf.constant(MASK_LOGIT, logits.dtype), logits)
        return tf.argmax(logits, axis=-1, output_type=tf.int32), state

    def fn(images):
        state = start(images)
        batch = int(images.shape[0])
        tokens = np.full([batch], START_ID, np.int32)
        seen = np.zeros([batch, num_tokens], bool)
        seen[:, START_ID] = True
        done = np.zeros([batch], bool)
        out = np.full([batch, steps], -1, np.int32)
        for t in range(steps + 1):
            step_seen = seen.copy()
            if t == steps:  # only END may follow the last label
                step_seen[:, :] = True
                step_seen[:, END_ID] = False
            new_tokens, state = step(tf.constant(tokens), state, tf.constant(step_seen))
            new_tokens = new_tokens.numpy()
            emit = ~done & (new_tokens != END_ID)
            if t < steps:
                out[emit, t] = new_tokens[emit] - NUM_SPECIAL
            done |= new_tokens == END_ID
            seen[np.arange(batch)[emit], new_tokens[emit]] = True
            tokens = np.where(done, END_ID, new_tokens).astype(np.int32)
            if done.all():
                break
        return out

    return fn


def time_interleaved(fns: Dict[str, Any], args, warmup: int = 3,
                     repeats: int = 20) -> Dict[str, float]:
    """Median ms per call of each fn(*args), the fns called in turn in every round.

    Interleaving makes a slow spell of a shared machine hit every fn alike, so
    differences (full - encoder) stay meaningful.
    """
    for fn in fns.values():
        for _ in range(warmup):
            _sync(fn(*args))
    times: Dict[str, List[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            _sync(fn(*args))
            times[name].append((time.perf_counter() - t0) * 1000.0)
    return {name: statistics.median(v) for name, v in times.items()}


def benchmark_model(model, image_size: int, batch_size: int = 32, beam_size: Optional[int] = None,
                    repeats: int = 20, warmup: int = 3, python_loop: bool = False,
                    seed: int = 0) -> Dict[str, Any]:
    """The timings of one model at one batch size and beam size (see the module docstring)."""
    from cnnrnn_tf.evaluation.evaluate import decode_function

    beam = int(beam_size or model.beam_size)
    images = tf.constant(np.random.RandomState(seed).uniform(
        0, 255, (batch_size, image_size, image_size, 3)).astype("float32"))
    fns = {"encoder": encoder_function(model), "full": decode_function(model, beam)}
    if python_loop and model.decodes_sequences:
        fns["beam1"] = fns["full"] if beam == 1 else decode_function(model, 1)
        fns["loop"] = python_loop_decode_function(model)
    ms = time_interleaved(fns, (images,), warmup, repeats)
    enc, full = ms["encoder"], ms["full"]
    decoder_only = None
    if model.decodes_sequences:
        # The decoder part alone on precomputed features, compiled as decode_function does.
        features = fns["encoder"](images)
        part = tf.function(lambda f: model.decode_features(f, beam_size=beam), jit_compile=True)
        decoder_only = time_interleaved({"d": part}, (features,), warmup, repeats)["d"]
    result: Dict[str, Any] = {
        "model_type": model.model_type,
        "batch_size": int(batch_size),
        "beam_size": beam,
        "image_size": int(image_size),
        "encoder_ms_per_batch": round(enc, 3),
        "full_ms_per_batch": round(full, 3),
        "decode_ms_per_batch": round(full - enc, 3),
        "decode_ratio": round(full / enc, 3) if enc > 0 else None,
        "decoder_only_ms_per_batch": None if decoder_only is None else round(decoder_only, 3),
        "images_per_second": round(batch_size / (full / 1000.0), 1) if full > 0 else None,
        "repeats": int(repeats),
        "warmup": int(warmup),
        "device": device_name(),
        "tensorflow_version": tf.__version__,
    }
    if "loop" in ms:
        result["full_beam1_ms_per_batch"] = round(ms["beam1"], 3)
        result["python_loop_ms_per_batch"] = round(ms["loop"], 3)
    return result


def device_name() -> str:
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        try:
            details = tf.config.experimental.get_device_details(gpus[0])
            return f"GPU: {details.get('device_name', gpus[0].name)}"
        except Exception:  # noqa: BLE001  details are optional
            return f"GPU: {gpus[0].name}"
    cpu = platform.processor() or platform.machine()
    import os

    return f"CPU: {cpu} ({os.cpu_count()} cores)"


def format_speed_table(r: Dict[str, Any]) -> str:
    rows = [
        ("model", r["model_type"]), ("device", r["device"]), ("TensorFlow", r["tensorflow_version"]),
        ("batch size", r["batch_size"]), ("beam size", r["beam_size"]),
        ("image size", r["image_size"]),
        ("encoder ms/batch", f"{r['encoder_ms_per_batch']:.2f}"),
        ("full ms/batch", f"{r['full_ms_per_batch']:.2f}"),
        ("decode ms/batch", f"{r['decode_ms_per_batch']:.2f}"),
        ("decoder alone ms/batch", r["decoder_only_ms_per_batch"]),
        ("full / encoder", r["decode_ratio"]),
        ("images/second", r["images_per_second"]),
    ]
    if "python_loop_ms_per_batch" in r:
        rows += [("in-graph greedy ms/batch", f"{r['full_beam1_ms_per_batch']:.2f}"),
                 ("Python-loop greedy ms/batch", f"{r['python_loop_ms_per_batch']:.2f}")]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows) + \
        f"\n(medians of {r['repeats']} calls after {r['warmup']} warm-up calls)"


def benchmark_command(args) -> int:
    """``cnnrnn benchmark``: prints one JSON object (``--json``) or a short table."""
    from cnnrnn_tf.model_dir import load_model_dir

    loaded = load_model_dir(args.model)
    result = benchmark_model(
        loaded.model, loaded.image_size, batch_size=args.batch_size,
        beam_size=args.beam_size or loaded.config.beam_size, repeats=args.repeats,
        warmup=args.warmup, python_loop=bool(getattr(args, "python_loop", False)))
    result["model_dir"] = args.model
    if args.json:
        print(json.dumps(result, sort_keys=True))
    else:
        print(format_speed_table(result))
    return 0
