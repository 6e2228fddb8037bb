"""Running a trained model over a data folder and scoring it."""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional

import numpy as np
import tensorflow as tf

from cnnrnn_tf.inputs.dataset import make_dataset, scan_labels
from cnnrnn_tf.progress import progress_bar
from cnnrnn_tf.vocabulary import LabelVocabulary


def decode_function(model, beam_size: Optional[int] = None, jit_decode: bool = True,
                    from_features: bool = False):
    """A compiled fn(images float32 [B, S, S, 3]) -> the model's decode() dict.

    With ``jit_decode`` (default) and a model whose ``jit_decode`` is set (CNN-RNN), the
    decoder part (beam search over the step function) is compiled with XLA inside the
    graph, the encoder is not: measured on 2 CPU cores, XLA halves the decode's own time
    (e.g. 0.87 -> 0.46 ms at batch 1, beam 1; 4.5 -> 3.5 ms at batch 32, beam 3) and
    compiles once per batch size. See ``cnnrnn benchmark``.
    ``from_features``: fn takes the encoder's features instead of images (a frozen
    encoder's, computed once by the input pipeline).
    """
    jit = bool(jit_decode and model.jit_decode)

    @tf.function(reduce_retracing=True, jit_compile=jit)
    def decode(features):
        return model.decode_features(features, beam_size=beam_size)

    if from_features:
        return decode
    if not jit:
        @tf.function(reduce_retracing=True)
        def fn(images):
            return model.decode(images, beam_size=beam_size)

        return fn

    @tf.function(reduce_retracing=True)
    def fn(images):
        return decode(model.encoder(images, training=False))

    return fn


@dataclasses.dataclass
class Predictions:
    """Model outputs over a data set, aligned with the truth."""

    y_true: np.ndarray       # {0,1} [n, K]
    y_pred: np.ndarray       # {0,1} [n, K] the predicted label sets
    y_score: np.ndarray      # float [n, K] per-label ranking scores
    label_ids: np.ndarray    # int [n, L] decoding order, -1 padded
    scores: np.ndarray       # float [n, L]
    ids: List[str]


def predict_dataset(model, vocab: LabelVocabulary, data, image_size: int,
                    beam_size: Optional[int] = None, batch_size: int = 64,
                    progress: bool = False, total: Optional[int] = None) -> Predictions:
    """``progress``: a bar on stderr (:mod:`cnnrnn_tf.progress`) over ``total`` images."""
    ds = make_dataset(data, vocab, mode="eval", image_size=image_size, batch_size=batch_size,
                      cache=False, with_ids=True)
    with progress_bar(progress, total=total) as bar:
        return predict_batches(decode_function(model, beam_size), ds, data, bar=bar)


def predict_batches(fn, ds, data="the data", bar=None) -> Predictions:
    """Runs ``fn`` (:func:`decode_function`) over an "eval" mode dataset (with ids): on its
    "images", or on its "features" when the dataset computed them (``from_features``).
    ``bar``: a progress bar, advanced by each batch's images."""
    parts: Dict[str, list] = {k: [] for k in ("y_true", "label_ids", "scores", "prob", "ids")}
    try:
        for features, y in ds:
            out = fn(features["images"] if "images" in features else features["features"])
            parts["y_true"].append(y.numpy())
            parts["label_ids"].append(out["label_ids"].numpy())
            parts["scores"].append(out["scores"].numpy())
            parts["prob"].append(out["probabilities"].numpy())
            parts["ids"].extend(v.decode("utf-8", "replace") for v in features["id"].numpy())
            if bar is not None:
                bar.update(int(y.shape[0]))
    except tf.errors.InvalidArgumentError as exc:  # e.g. a record whose image is corrupt
        from cnnrnn_tf.errors import InputError

        detail = exc.message.strip().splitlines()[0] if exc.message else ""
        raise InputError(f"{data}: a record cannot be read near record {len(parts['ids'])} "
                         f"({detail})") from None
    y_true = np.concatenate(parts["y_true"]).astype(np.int32)
    label_ids = np.concatenate(parts["label_ids"])
    y_pred = np.zeros_like(y_true)
    rows, cols = np.nonzero(label_ids >= 0)
    y_pred[rows, label_ids[rows, cols]] = 1
    return Predictions(y_true, y_pred, np.concatenate(parts["prob"]), label_ids,
                       np.concatenate(parts["scores"]), parts["ids"])


def evaluate_model(model, vocab: LabelVocabulary, data, image_size: int,
                   beam_size: Optional[int] = None, batch_size: int = 64,
                   stats=None, progress: bool = False) -> Dict[str, Any]:
    """The metric dict of ``cnnrnn_tf.metrics.multilabel_metrics`` plus data notes.

    ``stats``: the ``LabelStats`` of ``data`` when already known (training passes the
    validation split's), else they are read here (label_counts.json or a scan).
    """
    from cnnrnn_tf.metrics import multilabel_metrics

    from cnnrnn_tf.errors import InputError

    if stats is None:  # checks the shards before the model runs
        stats = scan_labels(data, require_labels=False)
    known = set(vocab.labels)
    present = {n for n, count in stats.label_counts.items() if count > 0}
    unknown = sorted(present - known)
    if not present & known:
        shown = ", ".join(repr(n) for n in unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        raise InputError(f"{data}: no record carries a label the model knows "
                         f"(unknown labels: {shown or 'none, the records have no labels'}); "
                         "metrics need the model's labels")
    preds = predict_dataset(model, vocab, data, image_size, beam_size, batch_size,
                            progress=progress, total=stats.num_examples)
    results = multilabel_metrics(preds.y_true, preds.y_pred, preds.y_score, top_k=3,
                                 label_names=list(vocab.labels))
    results["unknown_labels"] = unknown
    results["beam_size"] = int(beam_size or model.beam_size)
    results["mean_predicted_labels"] = float(preds.y_pred.sum(1).mean())
    results["mean_true_labels"] = float(preds.y_true.sum(1).mean())
    return results


def evaluate_saved_model(path: str, data, batch_size: int = 64) -> Dict[str, Any]:
    """Scores an exported SavedModel (e.g. the one the pipeline pushed) on a data folder.

    Uses its ``eval_predictions`` signature (the predicted set as multi-hot and the
    per-label scores) and its ``assets/vocabulary.txt``; the truth comes from the
    records' ``image/labels`` (labels outside the vocabulary are ignored).
    """
    from cnnrnn_tf import schema, uri
    from cnnrnn_tf.inputs.dataset import resolve_files
    from cnnrnn_tf.errors import InputError
    from cnnrnn_tf.metrics import multilabel_metrics

    uri.ensure_filesystem(path)
    vocab_file = uri.join(path, "assets", "vocabulary.txt")
    if not tf.io.gfile.exists(uri.join(path, "saved_model.pb")):
        raise InputError(f"{path}: no saved_model.pb in this folder")
    if not tf.io.gfile.exists(vocab_file):
        raise InputError(f"{path}: no assets/vocabulary.txt (not exported by cnnrnn_tf)")
    vocab = LabelVocabulary.from_text_file(vocab_file)
    fn = tf.saved_model.load(path).signatures["eval_predictions"]
    ds = tf.data.TFRecordDataset(resolve_files(data), compression_type=schema.COMPRESSION)
    y_true, y_pred, y_score = [], [], []
    for batch in ds.batch(batch_size):
        out = fn(examples=batch)
        y_pred.append(out["predicted_multi_hot"].numpy().astype(np.int32))
        y_score.append(out["probabilities"].numpy())
        labels = tf.io.parse_example(batch, {schema.LABELS_KEY: tf.io.VarLenFeature(tf.string)})
        rows = tf.sparse.to_dense(labels[schema.LABELS_KEY], default_value=b"").numpy()
        y_true.append(vocab.multi_hot([[v.decode("utf-8") for v in row if v] for row in rows]))
    return multilabel_metrics(np.concatenate(y_true).astype(np.int32), np.concatenate(y_pred),
                              np.concatenate(y_score), top_k=3, label_names=list(vocab.labels))
