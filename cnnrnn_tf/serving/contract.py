"""The serving contract, in one place and without TensorFlow: what a client may rely on.

Signature names and their inputs, the message size limit, the SavedModel's file name and the
JSON line of one result (``cnnrnn predict --json``, ``cnnrnn client --json``). The exporter,
the warmup writer, the development server, the predictor and the gRPC client all take these
from here; ``serving/README.md`` documents them for other clients.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np

# The prediction signatures: serialized tf.Examples, or raw PNG/JPEG bytes.
SERVING_DEFAULT = "serving_default"
PREDICT_IMAGES = "predict_images"
SIGNATURES = (SERVING_DEFAULT, PREDICT_IMAGES, "label_scores")
EVAL_SIGNATURES = ("eval_labels", "eval_predictions")
ATTENTION_SIGNATURE = "predict_attention"
# The input each prediction signature takes (a string tensor [batch]).
INPUT_NAMES = {SERVING_DEFAULT: "examples", PREDICT_IMAGES: "images"}
# gRPC messages both ways (TF Serving's default is 2 GiB; 256 MiB bounds a batch of images).
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
SAVED_MODEL_PB = "saved_model.pb"


def format_result(name: str, labels: Sequence[str], scores: Sequence[float],
                  attention: Optional[Sequence[np.ndarray]] = None) -> Dict:
    """The JSON line of ``cnnrnn predict --json`` and ``cnnrnn client --json``.

    ``attention``: with ``predict --attention``, one [h, w] map per label (where the
    attention decoder looked when it emitted the label; rows top to bottom, each map
    sums to 1), written under the label as ``attention``.
    """
    out = [{"label": l, "score": round(float(s), 6)} for l, s in zip(labels, scores)]
    if attention is not None:
        for item, grid in zip(out, attention):
            item["attention"] = np.round(np.asarray(grid, np.float64), 5).tolist()
    return {"image": name, "labels": out}
