"""The callbacks of a training run: backup and resume, early stopping, decoded validation,
TensorBoard, epoch times and the BatchNorm recompute for EMA weights."""
from __future__ import annotations

import logging
import importlib.util
import functools
import json
import time
from typing import List, Optional

import keras
import tensorflow as tf

from cnnrnn_tf.config import TrainConfig, early_stopping_patience
from cnnrnn_tf.inputs.dataset import make_dataset
from cnnrnn_tf.uri import join
from cnnrnn_tf.training.plan import TrainPlan

log = logging.getLogger(__name__)


BACKUP_DIR = "backup"


LOG_DIR = "logs"


def backup_epoch(backup_dir: str) -> Optional[int]:
    """Epochs done according to the BackupAndRestore checkpoint in backup_dir, or None."""
    for name in ("training_metadata.json", "training_metadata.json.bkp"):
        try:
            with tf.io.gfile.GFile(join(backup_dir, name), "r") as f:
                return int(json.loads(f.read())["epoch"])
        except (OSError, tf.errors.OpError, ValueError, KeyError, TypeError):
            continue
    return None


class EpochTimer(keras.callbacks.Callback):
    """Adds ``epoch_seconds`` (wall time from epoch begin to end, validation included) to
    the epoch logs, so history.json records what every epoch really cost."""

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["epoch_seconds"] = round(time.perf_counter() - self._start, 3)


def ema_batch_norm_batches(config: TrainConfig, plan: TrainPlan, train_data, model):
    """The training batches EMABatchNorm recomputes the EMA network's BatchNorm statistics
    on: images (whatever the training batches carry), in file order, not augmented, so
    every epoch's EMA weights see the same images; only the first few are read."""
    return make_dataset(train_data, plan.vocab,
                        mode="sequence" if model.decodes_sequences else "multi_hot",
                        image_size=config.image_size, batch_size=config.batch_size,
                        max_labels=plan.max_labels, rank=plan.rank, seed=config.seed,
                        cache=False)


def training_callbacks(config: TrainConfig, plan: TrainPlan, out_dir: str,
                       verbose: int, decoded_ds=None,
                       train_data=None) -> List[keras.callbacks.Callback]:
    """In this order (each epoch's logs pass through them in turn): the resume checkpoint
    (raw weights), the EMA swap with its BatchNorm statistics (recomputed on ``train_data``),
    decoded validation (adds val_f1 / val_map), TensorBoard, early stopping with checkpoint
    selection on ``config.monitor`` (its state kept beside the resume checkpoint, so a
    resumed run keeps its best epoch, patience and best weights)."""
    from cnnrnn_tf.training.early_stopping import ResumableEarlyStopping

    callbacks: List[keras.callbacks.Callback] = [
        keras.callbacks.BackupAndRestore(join(out_dir, BACKUP_DIR)),
    ]
    if config.ema:
        from cnnrnn_tf.training.ema_batch_norm import EMABatchNorm

        callbacks.append(keras.callbacks.SwapEMAWeights(swap_on_epoch=True))
        if train_data is None:
            log.warning("--ema without the training data: the BatchNorm statistics stay "
                        "those of the raw weights")
        else:
            callbacks.append(EMABatchNorm(functools.partial(
                ema_batch_norm_batches, config, plan, train_data)))
    if decoded_ds is not None:
        from cnnrnn_tf.training.decoded_validation import DecodedValidation, worker_shard

        callbacks.append(DecodedValidation(
            decoded_ds, beam_size=config.beam_size, calibrate=config.threshold is None,
            threshold_metric=config.threshold_metric, per_class=config.per_class_threshold,
            sharded=worker_shard() is not None))
    if importlib.util.find_spec("tensorboard") is not None:
        callbacks.append(keras.callbacks.TensorBoard(join(out_dir, LOG_DIR),
                                                     update_freq="epoch"))
    else:  # TensorFlow >= 2.20 no longer installs TensorBoard
        log.warning("tensorboard is not installed: no TensorBoard logs in %s", out_dir)
    patience = early_stopping_patience(config, plan.epochs)
    if patience is not None:
        monitor = config.monitor if decoded_ds is not None else "val_loss"
        callbacks.append(ResumableEarlyStopping(
            join(out_dir, BACKUP_DIR), monitor=monitor,
            mode="min" if monitor == "val_loss" else "max",
            patience=patience, restore_best_weights=True, verbose=min(verbose, 1)))
    return callbacks
