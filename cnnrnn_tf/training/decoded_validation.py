"""Validation on what the model is used for: the decoded label sets, not the teacher-forced loss."""
from __future__ import annotations

import dataclasses
import logging
from typing import Callable, List, Optional, Tuple

import keras
import numpy as np
import tensorflow as tf

log = logging.getLogger(__name__)


class DecodedValidation(keras.callbacks.Callback):
    """After every epoch, decodes the validation split and logs set metrics.

    Adds ``val_CF1``, ``val_OF1``, ``val_f1`` (their mean) and ``val_map`` to the epoch's
    logs, so EarlyStopping (placed after this callback) can select the checkpoint on them
    and TensorBoard / history.json record them. CNN-RNN decodes with its beam search;
    BCE / ASL are scored at the threshold :meth:`calibrate` would choose on the same split
    (or their fixed ``--threshold``), as after training, so the selection compares like
    with like. The eval dataset and the compiled decoder are built once.

    On several workers each decodes its share of the split (``sharded``: the dataset is
    :func:`worker_shard`'s part, as ``cnnrnn_tf.training.plan.decoded_validation_dataset`` makes
    it), and every worker gathers all the workers' predictions (:func:`gather_predictions`)
    before anything is scored: the thresholds, the per-class counts and the AP are those of
    the whole split, never an average of per-shard F1 or AP, and every worker logs the same
    values, so EarlyStopping decides alike on all of them.

    Args:
        eval_ds: an "eval" mode dataset (``make_dataset(..., mode="eval", with_ids=True)``);
            with a frozen encoder, one that carries its cached features
            (``make_dataset(..., encoder=...)``): each epoch then runs the decoder only.
        threshold_metric / per_class / calibrate: how thresholded models are scored.
        beam_size: the beam of the decoding.
        sharded: on several workers, ``eval_ds`` holds this worker's share only.
    """

    def __init__(self, eval_ds, beam_size: Optional[int] = None, calibrate: bool = True,
                 threshold_metric: str = "OF1", per_class: bool = False,
                 sharded: bool = False):
        super().__init__()
        self.eval_ds = eval_ds
        self.beam_size = beam_size
        self.calibrate = calibrate
        self.threshold_metric = threshold_metric
        self.per_class = per_class
        self.sharded = sharded
        self._fn = None

    def on_epoch_end(self, epoch, logs=None):
        from cnnrnn_tf.evaluation.evaluate import decode_function, predict_batches
        from cnnrnn_tf.metrics import multilabel_metrics

        if self._fn is None:  # features when the dataset carries a frozen encoder's
            carries_features = "features" in self.eval_ds.element_spec[0]
            self._fn = decode_function(self.model, self.beam_size,
                                       from_features=carries_features)
        preds = predict_batches(self._fn, self.eval_ds, "the validation split")
        if self.sharded:
            local = len(preds.y_true)
            preds = gather_predictions(preds)
            log.info("decoded %d of %d validation images on this worker", local,
                     len(preds.y_true))
        y_pred = preds.y_pred
        if self.model.thresholded and self.calibrate:
            from cnnrnn_tf.metrics import choose_thresholds, decoded_sets

            # the sets the model would decode once calibrated on this split: its top
            # max_labels, thresholded, as the export does
            top = self.model.output_length
            best, per, _ = choose_thresholds(preds.y_true, preds.y_score, self.threshold_metric,
                                             self.per_class, max_labels=top)
            y_pred = decoded_sets(preds.y_score, best, per, max_labels=top).astype(np.int32)
        m = multilabel_metrics(preds.y_true, y_pred, preds.y_score, top_k=3)
        values = {"val_CF1": m["CF1"], "val_OF1": m["OF1"],
                  "val_f1": 0.5 * (m["CF1"] + m["OF1"]), "val_map": m["mAP"]}
        if not self.sharded:
            values = self._agree_across_workers(values)
        if logs is not None:
            logs.update({k: float(v) for k, v in values.items()})
        log.info("epoch %d: %s", epoch + 1,
                 ", ".join(f"{k} {v:.4f}" for k, v in values.items()))

    @staticmethod
    def _agree_across_workers(values):
        """On several workers that each decoded the whole split, the mean of every worker's
        values: their models can differ in BatchNorm's moving statistics (kept per replica),
        so their decoded sets can too, and EarlyStopping must take the same decision on all
        of them (or the collectives hang)."""
        from cnnrnn_tf.cluster import is_multi_worker

        strategy = tf.distribute.get_strategy()
        if not is_multi_worker(strategy):
            return values
        keys = sorted(values)
        local = tf.constant([values[k] for k in keys], tf.float32)
        per_replica = strategy.experimental_distribute_values_from_function(lambda ctx: local)
        mean = strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica, axis=None).numpy()
        return {k: float(v) for k, v in zip(keys, mean)}


# ------------------------------------------------------------------ several workers
def worker_shard(strategy: Optional[tf.distribute.Strategy] = None) -> Optional[Tuple[int, int]]:
    """(workers, this worker's rank) under a multi-worker strategy, else None: the rank is
    the worker's place in the cluster (the chief first, then the workers by index), as
    TensorFlow numbers its input pipelines."""
    from cnnrnn_tf.cluster import is_multi_worker, num_workers

    strategy = strategy or tf.distribute.get_strategy()
    if not is_multi_worker(strategy):
        return None
    resolver = strategy.cluster_resolver
    cluster = resolver.cluster_spec().as_dict()
    rank = resolver.task_id
    if resolver.task_type == "worker" and "chief" in cluster:
        rank += len(cluster["chief"])
    return num_workers(strategy), int(rank)


def gather_predictions(preds, strategy: Optional[tf.distribute.Strategy] = None):
    """Every worker's :class:`~cnnrnn_tf.evaluation.evaluate.Predictions` of its shard, joined into
    those of the whole split (worker 0's rows first) on every worker; unchanged on one
    worker. The image ids are not gathered (nothing scored reads them)."""
    shard = worker_shard(strategy)
    if shard is None:
        return preds
    strategy = strategy or tf.distribute.get_strategy()
    return join_shards(preds, shard[1], shard[0], lambda x: _all_sum(strategy, x))


def join_shards(preds, rank: int, workers: int, all_sum: Callable[[np.ndarray], np.ndarray]):
    """The rows of all workers' predictions, from a sum over the workers (``all_sum``, a
    collective all-reduce): each worker contributes its rows at its offset in a zero
    matrix of all the rows, so the sum is their exact concatenation (x + 0 == x)."""
    arrays = [preds.y_true, preds.y_pred, preds.y_score, preds.label_ids, preds.scores]
    widths = [a.shape[1] for a in arrays]
    counts = np.zeros(workers, np.float32)
    counts[rank] = len(preds.y_true)
    counts = all_sum(counts).astype(np.int64)
    offset, total = int(counts[:rank].sum()), int(counts.sum())
    block = np.zeros((total, sum(widths)), np.float32)
    block[offset:offset + counts[rank]] = np.concatenate(
        [a.astype(np.float32) for a in arrays], axis=1)
    parts = np.split(all_sum(block), np.cumsum(widths)[:-1], axis=1)
    y_true, y_pred, y_score, label_ids, scores = (
        p.astype(a.dtype) for p, a in zip(parts, arrays))
    return dataclasses.replace(preds, y_true=y_true, y_pred=y_pred, y_score=y_score,
                               label_ids=label_ids, scores=scores, ids=[])


def _all_sum(strategy: tf.distribute.Strategy, value: np.ndarray) -> np.ndarray:
    """The sum of ``value`` over the workers (one contribution per worker, whatever its
    number of local replicas: the others contribute zeros)."""
    calls: List[int] = []

    def contribution(ctx):
        calls.append(1)
        return tf.constant(value if len(calls) == 1 else np.zeros_like(value))

    per_replica = strategy.experimental_distribute_values_from_function(contribution)
    return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None).numpy()
