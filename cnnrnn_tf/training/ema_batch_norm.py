"""BatchNorm statistics that belong to the EMA weights (``--ema``)."""
from __future__ import annotations

import logging
from typing import Callable, List, Optional, Union

import keras
import numpy as np
import tensorflow as tf

log = logging.getLogger(__name__)
BN_BATCHES = 32  # training batches per recomputation: ~10 training steps of forward passes


class EMABatchNorm(keras.callbacks.Callback):
    """Recomputes the BatchNorm moving statistics for the EMA weights whenever
    ``keras.callbacks.SwapEMAWeights`` puts those weights in the model.

    SwapEMAWeights swaps the trainable variables only. BatchNorm's moving mean and variance
    are not trainable: they follow the raw weights, so without this callback the EMA network
    is validated, selected and exported with another network's statistics.

    Why recompute rather than average the statistics beside the weights: an EMA of the
    moving statistics averages statistics that each belonged to other (raw) weights, so it
    is not the averaged network's either, and it would have to be updated at every step,
    in the compiled train step. The statistics of the EMA weights themselves are what
    inference needs (as SWA's ``update_bn``, "precise BN"): one forward pass in training
    mode over ``num_batches`` training batches, each batch's mean and variance averaged
    with equal weight (the estimate Keras' moving statistics converge to, without the
    drift of the weights). That costs about a third of ``num_batches`` training steps per
    epoch, and nothing when no BatchNorm layer trains (a frozen backbone).

    Place it right after SwapEMAWeights (``swap_on_epoch=True``). It puts the EMA
    statistics in for validation (``on_test_begin``) and from ``on_epoch_end`` on, so every
    later callback (decoded validation, early stopping's ``best_weights``) and the model
    fit() leaves behind carry both; it puts the raw statistics back for training
    (``on_test_end``, ``on_epoch_begin``). A BackupAndRestore placed before SwapEMAWeights
    saves raw weights with raw statistics, so a resumed run trains on exactly what it had.

    Args:
        batches: a dataset of (inputs, targets) training batches, or a function of the
            model returning one (called once, at the first recomputation): the first
            ``num_batches`` are
            read at every recomputation, so a dataset in a fixed order gives every epoch's
            EMA weights the same images.
        num_batches: batches per recomputation.
    """

    def __init__(self, batches: Union[tf.data.Dataset, Callable[[], tf.data.Dataset]],
                 num_batches: int = BN_BATCHES):
        super().__init__()
        self._batches = batches
        self.num_batches = int(num_batches)
        self._layers: Optional[List[keras.layers.BatchNormalization]] = None
        self._raw: Optional[List[np.ndarray]] = None  # raw statistics while the EMA ones are in
        self._ema: Optional[List[np.ndarray]] = None  # this epoch's EMA statistics
        self._step = None

    # ------------------------------------------------------------------ callback events
    def on_train_begin(self, logs=None):
        self._layers = [layer for layer in self.model._flatten_layers(include_self=False)
                        if isinstance(layer, keras.layers.BatchNormalization)
                        and layer.trainable]
        self._raw = self._ema = None

    def on_epoch_begin(self, epoch, logs=None):
        self._use_raw()
        self._ema = None  # the weights move during the epoch

    def on_test_begin(self, logs=None):
        self._use_ema()

    def on_test_end(self, logs=None):
        self._use_raw()

    def on_epoch_end(self, epoch, logs=None):
        self._use_ema()

    # ------------------------------------------------------------------ statistics
    def _variables(self):
        return [v for layer in self._layers for v in (layer.moving_mean, layer.moving_variance)]

    def _use_ema(self):
        if not self._layers or self._raw is not None:
            return
        self._raw = [v.numpy() for v in self._variables()]
        if self._ema is None:
            self._ema = self.recompute()
        for var, value in zip(self._variables(), self._ema):
            var.assign(value)

    def _use_raw(self):
        if self._raw is None:
            return
        for var, value in zip(self._variables(), self._raw):
            var.assign(value)
        self._raw = None

    def recompute(self) -> List[np.ndarray]:
        """The moving statistics of the model's current weights: the mean of each batch's
        mean and (biased) variance over ``num_batches`` training batches (the model's
        variables are left as they were)."""
        if callable(self._batches) and not isinstance(self._batches, tf.data.Dataset):
            self._batches = self._batches(self.model)
        momenta = [layer.momentum for layer in self._layers]
        before = [v.numpy() for v in self._variables()]
        sums = None
        count = 0
        # With momentum 0, a training-mode call leaves exactly the batch's statistics in the
        # moving variables. The momentum is read when the step is traced (this function's
        # own step only: Keras' train step was traced with the layers' own momentum).
        for layer in self._layers:
            layer.momentum = 0.0
        try:
            if self._step is None:
                self._step = tf.function(self._batch_statistics, reduce_retracing=True)
            for inputs, _ in self._batches.take(self.num_batches):
                stats = [s.numpy().astype(np.float64) for s in self._step(inputs)]
                sums = stats if sums is None else [a + b for a, b in zip(sums, stats)]
                count += 1
        finally:
            for layer, momentum in zip(self._layers, momenta):
                layer.momentum = momentum
            for var, value in zip(self._variables(), before):
                var.assign(value)
        if not count:
            raise ValueError("EMABatchNorm: the training batches are empty")
        values = [(s / count).astype(v.dtype) for s, v in zip(sums, before)]
        return _agree_across_workers(values)

    def _batch_statistics(self, inputs):
        if isinstance(inputs, dict):  # no auxiliary loss: only the statistics are wanted
            inputs = {k: v for k, v in inputs.items() if k != "label_set"}
        self.model(inputs, training=True)
        return [tf.identity(v.value) for v in self._variables()]


def _agree_across_workers(values: List[np.ndarray]) -> List[np.ndarray]:
    """On several workers, every worker's statistics averaged, so that the models stay
    equal (each worker reads the same batches, so they differ by rounding at most)."""
    from cnnrnn_tf.cluster import is_multi_worker

    strategy = tf.distribute.get_strategy()
    if not is_multi_worker(strategy):
        return values
    sizes = [v.size for v in values]
    flat = tf.constant(np.concatenate([v.ravel() for v in values]))
    per_replica = strategy.experimental_distribute_values_from_function(lambda ctx: flat)
    mean = strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica, axis=None).numpy()
    parts = np.split(mean, np.cumsum(sizes)[:-1])
    return [p.reshape(v.shape).astype(v.dtype) for p, v in zip(parts, values)]
