"""Early stopping as training selects its checkpoint: ties on the monitor go to the lower
validation loss, and the state survives an interrupted run."""
from __future__ import annotations

import io
import json
import logging

import keras
import numpy as np
import tensorflow as tf

from cnnrnn_tf.uri import join

log = logging.getLogger(__name__)
STATE_FILE = "early_stopping.json"
BEST_WEIGHTS_FILE = "early_stopping_best_weights.npz"


class TieBreakingEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping whose ties on the monitor go to the epoch with the lower ``tie_breaker``
    (the validation loss).

    Decoded set metrics on a validation split of n images take few distinct values and
    saturate: every epoch of a fine-tune can score ``val_f1`` 1.0, and Keras's strict ``>``
    then keeps the earliest, least trained of the tied epochs (benchmarks/finetune_selection.py).
    Here an epoch that equals the best monitor value with a lower ``tie_breaker`` is an
    improvement: it becomes the checkpoint (``restore_best_weights``) and restarts the
    patience. Epochs without the ``tie_breaker`` in their logs never win a tie.
    """

    def __init__(self, monitor: str = "val_f1", *, tie_breaker: str = "val_loss", **kwargs):
        if kwargs.get("baseline") is not None:
            raise ValueError("TieBreakingEarlyStopping takes no baseline")
        super().__init__(monitor=monitor, **kwargs)
        self.tie_breaker = tie_breaker
        self._tie = self._best_tie = float("inf")

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.best = None  # Keras keeps it from an earlier fit
        self._tie = self._best_tie = float("inf")

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.tie_breaker)
        self._tie = float("inf") if value is None else float(value)
        super().on_epoch_end(epoch, logs)

    def _is_improvement(self, monitor_value, reference_value):
        better = bool(super()._is_improvement(monitor_value, reference_value))
        if not better and reference_value is not None:
            better = float(monitor_value) == float(reference_value) and self._tie < self._best_tie
        if better:
            self._best_tie = self._tie
        return better


class ResumableEarlyStopping(TieBreakingEarlyStopping):
    """:class:`TieBreakingEarlyStopping` that keeps its state in ``backup_dir``.

    Keras 3.12's BackupAndRestore restores the model's weights, the optimizer and the epoch,
    and nothing of the other callbacks: EarlyStopping's ``on_train_begin`` resets ``best``,
    ``wait`` and ``best_weights``, so a resumed run forgot the best epoch before the
    interruption, waited ``patience`` epochs anew, and restored (or exported) the best epoch
    of its own part of the run only. This one writes ``best``, ``wait``, ``best_epoch`` and
    the epochs done to ``backup_dir/early_stopping.json`` at every epoch end (and
    ``best_weights``, when they change, to ``early_stopping_best_weights.npz``), each under a
    temporary name first, and reads them back at train begin when the JSON is there.
    BackupAndRestore removes the folder when training ends.

    Place it after BackupAndRestore (which writes the same folder first at epoch end, and
    restores the epoch at train begin); a state one epoch behind the backup (a crash between
    the two writes) is used, with a warning.
    """

    def __init__(self, backup_dir: str, **kwargs):
        super().__init__(**kwargs)
        self.backup_dir = backup_dir

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        state = self._read(STATE_FILE)
        if state is None:
            return
        try:
            state = json.loads(state)
            best = None if state["best"] is None else float(state["best"])
            wait, best_epoch = int(state["wait"]), int(state["best_epoch"])
            done = int(state["epoch"])
            best_tie = state.get("best_tie")
            best_tie = float("inf") if best_tie is None else float(best_tie)
        except (ValueError, KeyError, TypeError):
            log.warning("%s: unreadable, early stopping starts afresh",
                        join(self.backup_dir, STATE_FILE))
            return
        best_weights = None
        if self.restore_best_weights and state.get("best_weights"):
            data = self._read(BEST_WEIGHTS_FILE, binary=True)
            if data is not None:
                with np.load(io.BytesIO(data)) as arrays:
                    best_weights = [arrays[f"w{i}"] for i in range(len(arrays.files))]
                if [w.shape for w in best_weights] != [tuple(w.shape) for w in
                                                        self.model.weights]:
                    best_weights = None
            if best_weights is None:
                log.warning("%s: missing or not this model's; early stopping starts afresh",
                            join(self.backup_dir, BEST_WEIGHTS_FILE))
                return
        resumed = getattr(self.model, "_initial_epoch", None)
        if resumed is not None and resumed != done:
            log.warning("early stopping state of epoch %d, the backup of epoch %d: "
                        "continuing from the former", done, resumed)
        self.best, self.wait, self.best_epoch = best, wait, best_epoch
        self._best_tie = best_tie
        self.best_weights = best_weights

    def on_epoch_end(self, epoch, logs=None):
        before = self.best_weights
        super().on_epoch_end(epoch, logs)
        if self.best_weights is not None and self.best_weights is not before:
            buffer = io.BytesIO()
            np.savez(buffer, **{f"w{i}": w for i, w in enumerate(self.best_weights)})
            self._write(BEST_WEIGHTS_FILE, buffer.getvalue())
        self._write(STATE_FILE, json.dumps({
            "epoch": epoch + 1, "best": None if self.best is None else float(self.best),
            "wait": int(self.wait),
            "best_epoch": int(self.best_epoch),
            "best_tie": float(self._best_tie) if self._best_tie != float("inf") else None,
            "best_weights": self.best_weights is not None}))

    # ------------------------------------------------------------------ files
    def _read(self, name: str, binary: bool = False):
        path = join(self.backup_dir, name)
        try:
            if not tf.io.gfile.exists(path):
                return None
            with tf.io.gfile.GFile(path, "rb" if binary else "r") as f:
                return f.read()
        except tf.errors.OpError:
            return None

    def _write(self, name: str, data) -> None:
        path = join(self.backup_dir, name)
        tmp = path + ".tmp"
        tf.io.gfile.makedirs(self.backup_dir)
        with tf.io.gfile.GFile(tmp, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
        tf.io.gfile.rename(tmp, path, overwrite=True)
