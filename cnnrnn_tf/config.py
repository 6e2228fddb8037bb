"""Training configuration: a small frozen dataclass used at the edges (CLI, TFX custom_config)."""
from __future__ import annotations

import dataclasses
import json
from typing import Optional

from cnnrnn_tf.errors import InputError
from cnnrnn_tf.choices import (  # noqa: F401  (re-exported: the names config.X stay)
    BACKBONES, CACHE_MODES, DECODERS, JIT_COMPILE, LABEL_HEADS, LABEL_ORDERS, LR_SCHEDULES,
    MODELS, MONITORS, OPTIMIZERS, THRESHOLD_METRICS,
)
# The CNN-RNN of Wang et al. (CVPR 2016) as published: a 64-d label embedding, a 512-unit
# LSTM, no per-label head, no masking of the labels already on the path in training, no
# dropout, RMSprop at a constant learning rate, no early stopping (`cnnrnn train --paper`).
# What stays ours: the small CNN trained from scratch by default (the paper froze an
# ImageNet VGG16: --backbone vgg16), the label order frequent-first as the paper, and the
# beam search, which masks labels already on the path at decoding time.
PAPER_SETTINGS = dict(label_head="none", mask_seen=False, dropout=0.0, lr_schedule="constant",
                      early_stopping=False, lstm_units=512, embed_dim=64, optimizer="rmsprop")
CONFIG_FILE = "config.json"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (paths excluded)."""

    model: str = "cnn-rnn"
    backbone: str = "small-cnn"
    image_size: int = 64
    epochs: Optional[int] = None  # None: chosen from the training set size (see default_epochs)
    batch_size: int = 32
    label_order: str = "frequent-first"
    seed: int = 0
    optimizer: str = "rmsprop"
    learning_rate: float = 1e-3
    embed_dim: int = 64
    lstm_units: int = 256
    dropout: float = 0.1
    # CNN-RNN only (see cnnrnn_tf.models.cnn_rnn.CNNRNN): "evidence" adds a per-label
    # head trained with an auxiliary BCE (weight aux_loss_weight) whose logits join the
    # decoder's scores; "aux" uses the head for the loss only; "none" is the paper's model.
    label_head: str = "evidence"
    # CNN-RNN only: "global" (the paper's decoder, one image vector) or "attention"
    # (each step attends over the encoder's feature map; cnnrnn_tf.models.attention_label_decoder).
    decoder: str = "global"
    attention_dim: int = 128
    # Mask the labels already on the path out of later softmaxes in training (as the beam
    # search does when decoding). The paper does not: --paper / --no-mask-seen.
    mask_seen: bool = True
    lr_schedule: str = "cosine"
    aux_loss_weight: float = 1.0
    beam_size: int = 3
    max_labels: Optional[int] = None  # None: the most labels of any training image (capped at 16)
    # BCE / ASL decision threshold. None (default): calibrated on the validation split after
    # training (cnnrnn_tf.metrics): the global threshold that maximises
    # threshold_metric, or one per class with per_class_threshold. A number fixes it.
    threshold: Optional[float] = None
    threshold_metric: str = "OF1"
    per_class_threshold: bool = False
    augment: bool = False  # colour jitter (brightness / contrast)
    # The training recipe (the same for every model; see cnnrnn_tf.inputs.images.Augmentation):
    crop_scale: Optional[float] = None  # random resized crop of crop_scale..1 of the area
    hflip: bool = False  # random horizontal flip: only where mirroring keeps the labels
    ema: bool = False  # evaluate, select and export an exponential moving average of the weights
    label_smoothing: float = 0.0
    # What early stopping and the checkpoint selection watch: "val_f1" (mean of CF1 and OF1
    # of the decoded validation sets; thresholds calibrated for BCE / ASL), "val_map", or
    # "val_loss" (teacher-forced loss, what 0.3.0 used).
    monitor: str = "val_f1"
    fine_tune: bool = False
    weights: str = "default"
    mixed_precision: bool = False
    # None: max(4, a third of the planned epochs). Early stopping restores the best
    # weights; with the cosine decay the last epochs are usually the best, and the
    # validation loss spikes while the learning rate is high (seen on 3k scenes:
    # 0.49 -> 2.36 at epoch 9 of 27), so a short patience would cut the schedule.
    early_stopping_patience: Optional[int] = None
    early_stopping: bool = True
    steps_per_epoch: Optional[int] = None
    validation_steps: Optional[int] = None
    # XLA for the training step: "auto" compiles on a GPU and not on the CPU, where
    # oneDNN without XLA was faster (BENCHMARKS.md, "Training speed"); "on" / "off" force it.
    jit_compile: str = "auto"
    # Training steps per tf.function call; None: chosen (cnnrnn_tf.training.loop.
    # choose_steps_per_execution), always a divisor of the steps per epoch.
    steps_per_execution: Optional[int] = None
    # The decoded input (or a frozen encoder's features): "auto" in memory when it fits
    # cache_budget_gb, else in a cache file under MODEL_DIR; "none" re-decodes every epoch.
    cache: str = "auto"
    cache_budget_gb: float = 2.0

    def __post_init__(self):
        _choice("--model", self.model, MODELS)
        _choice("--backbone", self.backbone, BACKBONES)
        _choice("--label-order", self.label_order, LABEL_ORDERS)
        _choice("--optimizer", self.optimizer, OPTIMIZERS)
        _choice("--label-head", self.label_head, LABEL_HEADS)
        _choice("--decoder", self.decoder, DECODERS)
        _positive("--attention-dim", self.attention_dim)
        if self.decoder != "global" and self.model != "cnn-rnn":
            raise InputError(f"--decoder {self.decoder}: only --model cnn-rnn has a label decoder")
        _choice("--lr-schedule", self.lr_schedule, LR_SCHEDULES)
        _choice("--jit-compile", self.jit_compile, JIT_COMPILE)
        _choice("--cache", self.cache, CACHE_MODES)
        if not (0.0 <= float(self.cache_budget_gb) < 1e6):
            raise InputError(f"--cache-budget-gb: {self.cache_budget_gb} is not in [0, 1e6)")
        _positive("--image-size", self.image_size, minimum=16)
        if self.image_size > 1024:
            raise InputError(f"--image-size: {self.image_size} is larger than 1024")
        _positive("--batch-size", self.batch_size)
        for flag, value in (("--epochs", self.epochs), ("--max-labels", self.max_labels),
                            ("--steps-per-epoch", self.steps_per_epoch),
                            ("--validation-steps", self.validation_steps),
                            ("--steps-per-execution", self.steps_per_execution)):
            if value is not None:
                _positive(flag, value)
        _positive("--beam-size", self.beam_size)
        _positive("--embed-dim", self.embed_dim)
        _positive("--lstm-units", self.lstm_units)
        if not (0.0 < float(self.learning_rate) < 10.0):
            raise InputError(f"--learning-rate: {self.learning_rate} is not in (0, 10)")
        if not (0.0 <= float(self.dropout) < 1.0):
            raise InputError(f"--dropout: {self.dropout} is not in [0, 1)")
        if not (0.0 <= float(self.aux_loss_weight) <= 100.0):
            raise InputError(f"--aux-loss-weight: {self.aux_loss_weight} is not in [0, 100]")
        _choice("--threshold-metric", self.threshold_metric, THRESHOLD_METRICS)
        if self.threshold is not None and not (0.0 < float(self.threshold) < 1.0):
            raise InputError(f"--threshold: {self.threshold} is not in (0, 1)")
        if self.crop_scale is not None and not (0.05 <= float(self.crop_scale) <= 1.0):
            raise InputError(f"--crop-scale: {self.crop_scale} is not in [0.05, 1]")
        if not (0.0 <= float(self.label_smoothing) < 0.5):
            raise InputError(f"--label-smoothing: {self.label_smoothing} is not in [0, 0.5)")
        _choice("--monitor", self.monitor, MONITORS)
        if self.weights in (None, "none") and not self.fine_tune and self.backbone != "small-cnn":
            # A pretrained backbone is frozen unless fine-tuned: without its weights it
            # would stay at its random initialisation. small-cnn has no pretrained weights
            # (it always trains from scratch), so "none" changes nothing there.
            raise InputError(f"--no-pretrained-weights without --fine-tune: the {self.backbone} "
                             f"backbone would stay frozen at its random initialisation; add "
                             f"--fine-tune to train it, or drop --no-pretrained-weights")
        if self.early_stopping_patience is not None and self.early_stopping_patience < 0:
            raise InputError("--patience: must be >= 0")

    def augmentation(self):
        """The training images' :class:`~cnnrnn_tf.inputs.images.Augmentation`."""
        from cnnrnn_tf.inputs.images import Augmentation

        return Augmentation(color=self.augment, crop_scale=self.crop_scale, hflip=self.hflip)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise InputError(f"training config: unknown keys {', '.join(unknown)}")
        return cls(**d)

    @classmethod
    def paper(cls, **overrides) -> "TrainConfig":
        """The paper's settings (PAPER_SETTINGS), with ``overrides`` applied on top."""
        return cls(**{**PAPER_SETTINGS, **overrides})

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)


def default_epochs(num_train: int) -> int:
    """Epochs when none are given: about 80k image presentations, 6 to 40 epochs.

    Measured on the default data (10k scenes, small CNN): the validation loss is
    lowest after about 5-8 epochs and the model overfits after that. Early
    stopping on the validation loss (restoring the best weights) guards the rest.
    """
    if num_train <= 0:
        return 1
    return int(min(40, max(6, round(80_000 / num_train))))


def early_stopping_patience(config: "TrainConfig", epochs: int) -> Optional[int]:
    """The patience in force: None when early stopping is off."""
    if not config.early_stopping:
        return None
    if config.early_stopping_patience is not None:
        return int(config.early_stopping_patience)
    return max(4, epochs // 3)


def _choice(flag, value, choices):
    if value not in choices:
        raise InputError(f"{flag}: {value!r} is not one of {', '.join(choices)}")


def _positive(flag, value, minimum=1):
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise InputError(f"{flag}: {value!r} must be an integer >= {minimum}")
