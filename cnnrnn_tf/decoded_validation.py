"""Validation on what the model is used for: the decoded label sets, not the teacher-forced loss."""
from __future__ import annotations

import logging
from typing import Optional

import keras
import numpy as np

log = logging.getLogger(__name__)


class DecodedValidation(keras.callbacks.Callback):
    """After every epoch, decodes the validation split and logs set metrics.

    Adds ``val_CF1``, ``val_OF1``, ``val_f1`` (their mean) and ``val_map`` to the epoch's
    logs, so EarlyStopping (placed after this callback) can select the checkpoint on them
    and TensorBoard / history.json record them. CNN-RNN decodes with its beam search;
    BCE / ASL are scored at the threshold :meth:`calibrate` would choose on the same split
    (or their fixed ``--threshold``), as after training, so the selection compares like
    with like. The eval dataset and the compiled decoder are built once.

    Args:
        eval_ds: an "eval" mode dataset (``make_dataset(..., mode="eval", with_ids=True)``);
            with a frozen encoder, one that carries its cached features
            (``make_dataset(..., encoder=...)``): each epoch then runs the decoder only.
        threshold_metric / per_class / calibrate: how thresholded models are scored.
        beam_size: the beam of the decoding.
    """

    def __init__(self, eval_ds, beam_size: Optional[int] = None, calibrate: bool = True,
                 threshold_metric: str = "OF1", per_class: bool = False):
        super().__init__()
        self.eval_ds = eval_ds
        self.beam_size = beam_size
        self.calibrate = calibrate
        self.threshold_metric = threshold_metric
        self.per_class = per_class
        self._fn = None

    def on_epoch_end(self, epoch, logs=None):
        from cnnrnn_tf.evaluation import decode_function, predict_batches
        from cnnrnn_tf.metrics import multilabel_metrics

        if self._fn is None:  # features when the dataset carries a frozen encoder's
            carries_features = "features" in self.eval_ds.element_spec[0]
            self._fn = decode_function(self.model, self.beam_size,
                                       from_features=carries_features)
        preds = predict_batches(self._fn, self.eval_ds, "the validation split")
        y_pred = preds.y_pred
        if self.model.thresholded and self.calibrate:
            from cnnrnn_tf.calibration import choose_thresholds, decoded_sets

            # the sets the model would decode once calibrated on this split: its top
            # max_labels, thresholded, as the export does
            top = self.model.output_length
            best, per, _ = choose_thresholds(preds.y_true, preds.y_score, self.threshold_metric,
                                             self.per_class, max_labels=top)
            y_pred = decoded_sets(preds.y_score, best, per, max_labels=top).astype(np.int32)
        m = multilabel_metrics(preds.y_true, y_pred, preds.y_score, top_k=3)
        values = {"val_CF1": m["CF1"], "val_OF1": m["OF1"],
                  "val_f1": 0.5 * (m["CF1"] + m["OF1"]), "val_map": m["mAP"]}
        values = self._agree_across_workers(values)
        if logs is not None:
            logs.update({k: float(v) for k, v in values.items()})
        log.info("epoch %d: %s", epoch + 1,
                 ", ".join(f"{k} {v:.4f}" for k, v in values.items()))

    @staticmethod
    def _agree_across_workers(values):
        """On several workers, the mean of every worker's values: their models differ in
        BatchNorm's moving statistics (kept per replica), so their decoded sets can too, and
        EarlyStopping must take the same decision on all of them (or the collectives hang)."""
        import tensorflow as tf

        from cnnrnn_tf.cluster import is_multi_worker

        strategy = tf.distribute.get_strategy()
        if not is_multi_worker(strategy):
            return values
        keys = sorted(values)
        local = tf.constant([values[k] for k in keys], tf.float32)
        per_replica = strategy.experimental_distribute_values_from_function(lambda ctx: local)
        mean = strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica, axis=None).numpy()
        return {k: float(v) for k, v in zip(keys, mean)}
