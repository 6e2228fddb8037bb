"""Training configuration: a frozen dataclass, declared once per option.

Each field of :class:`TrainConfig` is declared with :func:`option`: its default, its help
text, and its choices or range. ``cnnrnn train``'s flags, ``cnnrnn pipeline run/compile``'s
training flags (``cnnrnn_tf.cli.train.add_config_flags``) and the checks of
``TrainConfig.__post_init__`` all come from that declaration, so adding an option is one
edit here. A field the command line does not offer is declared ``api_only=True``.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Optional, Tuple

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
# beam search, which masks labels already on the path at decoding time. The paper's value of
# each field is declared with it (option(..., paper=...)); PAPER_SETTINGS collects them.
CONFIG_FILE = "config.json"
NOT_SET = object()


def option(default: Any, help: str, *, choices: Optional[Tuple] = None,
           minimum: Optional[int] = None, maximum: Optional[int] = None,
           interval: Optional[str] = None, flag: Optional[str] = None,
           store: Any = None, paper: Any = NOT_SET, metavar: Optional[str] = None,
           api_only: bool = False):
    """One TrainConfig field's declaration (``dataclasses.field`` metadata).

    ``choices``: the accepted values; ``minimum``/``maximum``: an integer's bounds;
    ``interval``: a float's, written as it reads ("[0, 1)"); ``flag``: the flag's name when
    it is not ``--field-name``; ``store``: the value a flag without an argument stores
    (``--hflip`` stores True, ``--no-mask-seen`` False); ``paper``: the paper's value, set by
    ``--paper`` and :meth:`TrainConfig.paper` (PAPER_SETTINGS); ``api_only``: no flag.
    """
    return dataclasses.field(default=default, metadata=dict(
        help=help, choices=choices, minimum=minimum, maximum=maximum, interval=interval,
        flag=flag, store=store, paper=paper, metavar=metavar, api_only=api_only))


def parse_interval(text: str) -> Tuple[float, float, bool, bool]:
    """'[0, 1)' -> (0.0, 1.0, low closed, high closed)."""
    low, high = text[1:-1].split(",")
    return float(low), float(high), text[0] == "[", text[-1] == "]"


def in_interval(value: float, text: str) -> bool:
    low, high, low_closed, high_closed = parse_interval(text)
    value = float(value)
    return ((low <= value) if low_closed else (low < value)) and \
        ((value <= high) if high_closed else (value < high))


def flag_name(field: dataclasses.Field) -> str:
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (paths excluded)."""

    model: str = option("cnn-rnn", "cnn-rnn (the paper's model, default) or a per-label "
                        "baseline: bce, asl", choices=MODELS)
    backbone: str = option("small-cnn", "image encoder: small-cnn from scratch (default) or "
                           "a pretrained one", choices=BACKBONES)
    image_size: int = option(64, "images are resized to this square size in pixels "
                             "(default 64)", minimum=16, maximum=1024)
    epochs: Optional[int] = option(None, "default: chosen from the training set size, with "
                                   "early stopping (see default_epochs)", minimum=1)
    batch_size: int = option(32, "the global batch: split over all replicas when training "
                             "on several GPUs or machines (TF_CONFIG, see README)", minimum=1)
    label_order: str = option("frequent-first", "cnn-rnn: order of the label path in "
                              "training (default frequent-first, the paper's; pla/mla: "
                              "orderless, Yazici et al. 2020)", choices=LABEL_ORDERS)
    seed: int = option(0, "random seed (default 0)", minimum=0)
    optimizer: str = option("rmsprop", "rmsprop (the paper's, default) or adam",
                            choices=OPTIMIZERS, paper="rmsprop")
    learning_rate: float = option(1e-3, "initial learning rate (default 1e-3)",
                                  interval="(0, 10)")
    embed_dim: int = option(64, "label embedding size (default 64)", minimum=1, paper=64)
    lstm_units: int = option(256, "LSTM units (default 256, paper 512)", minimum=1, paper=512)
    dropout: float = option(0.1, "dropout (default 0.1, paper 0)", interval="[0, 1)",
                            paper=0.0)
    # CNN-RNN only (cnnrnn_tf.models.cnn_rnn.CNNRNN).
    label_head: str = option("evidence", "cnn-rnn: 'evidence' (default) adds a per-label head "
                             "trained with an auxiliary BCE whose logits join the decoder's "
                             "scores; 'aux' uses it for the loss only; 'none' is the paper's "
                             "model exactly", choices=LABEL_HEADS, paper="none")
    decoder: str = option("global", "cnn-rnn: 'global' (the paper's: one image vector joins "
                          "every step) or 'attention' (each step attends over the encoder's "
                          "feature map; attention maps with predict --attention and in report)",
                          choices=DECODERS)
    attention_dim: int = option(128, "cnn-rnn --decoder attention: size of the attention space",
                                minimum=1)
    mask_seen: bool = option(True, "cnn-rnn: do not mask labels already on the path in "
                             "training (paper)", flag="--no-mask-seen", store=False, paper=False)
    lr_schedule: str = option("cosine", "default cosine decay over the planned steps (paper: "
                              "constant)", choices=LR_SCHEDULES, paper="constant")
    aux_loss_weight: float = option(1.0, "cnn-rnn: weight of that auxiliary BCE (default 1)",
                                    interval="[0, 100]")
    beam_size: int = option(3, "beam width of the decoding (default 3)", minimum=1)
    max_labels: Optional[int] = option(None, "most labels per image (default: the most of any "
                                       "training image, up to 16)", minimum=1)
    # BCE / ASL decision threshold: None calibrates it on the validation split after training
    # (cnnrnn_tf.metrics.choose_thresholds); a number fixes it.
    threshold: Optional[float] = option(None, "bce/asl: a fixed decision threshold (default: "
                                        "chosen on the --eval (validation) split after "
                                        "training, maximising --threshold-metric)",
                                        interval="(0, 1)")
    threshold_metric: str = option("OF1", "bce/asl: what the calibrated threshold maximises on "
                                   "--eval", choices=THRESHOLD_METRICS)
    per_class_threshold: bool = option(False, "bce/asl: one calibrated threshold per label",
                                       store=True)
    # The training recipe, the same for every model (cnnrnn_tf.inputs.images.Augmentation).
    augment: bool = option(False, "brightness / contrast jitter", store=True)
    crop_scale: Optional[float] = option(None, "random resized crop of MIN..1 of the image's "
                                         "area (e.g. 0.5)", interval="[0.05, 1]", metavar="MIN")
    hflip: bool = option(False, "random horizontal flips (only where a mirrored image keeps "
                         "its labels)", store=True)
    ema: bool = option(False, "validate, select and export a moving average of the weights",
                       store=True)
    label_smoothing: float = option(0.0, "label smoothing of the training loss, in [0, 0.5)",
                                    interval="[0, 0.5)")
    monitor: str = option("val_f1", "early stopping / checkpoint selection: decoded validation "
                          "F1 (mean of CF1 and OF1, default), mAP, or the teacher-forced loss",
                          choices=MONITORS)
    fine_tune: bool = option(False, "train a pretrained encoder too", store=True)
    weights: str = option("default", "random init for vgg16/resnet50/efficientnet-lite0 (needs "
                          "--fine-tune: a frozen random backbone learns nothing)",
                          flag="--no-pretrained-weights", store="none")
    mixed_precision: bool = option(False, "mixed_float16 compute (GPU)", store=True)
    # None: max(4, a third of the planned epochs). With the cosine decay the last epochs are
    # usually the best and the validation loss spikes while the learning rate is high (seen
    # on 3k scenes: 0.49 -> 2.36 at epoch 9 of 27), so a short patience would cut the schedule.
    early_stopping_patience: Optional[int] = option(
        None, "early stopping patience in epochs (default: max(4, epochs/3))", minimum=0,
        flag="--patience")
    early_stopping: bool = option(True, "train every epoch; keep the last weights",
                                  flag="--no-early-stopping", store=False, paper=False)
    steps_per_epoch: Optional[int] = option(None, "training steps per epoch (default: one pass "
                                            "over --train)", minimum=1)
    validation_steps: Optional[int] = option(None, "validation steps per epoch (default: the "
                                             "whole --eval split)", minimum=1)
    jit_compile: str = option("auto", "XLA for the training step: auto (default) on a GPU, off "
                              "on the CPU, where oneDNN without XLA was faster", choices=JIT_COMPILE)
    steps_per_execution: Optional[int] = option(
        None, "training steps per compiled call (default: chosen; a divisor of the steps per "
        "epoch, so epochs and callbacks stay exact)", minimum=1)
    cache: str = option("auto", "decoded input (or frozen-encoder features): in memory when it "
                        "fits --cache-budget-gb (auto), in a cache file under --out removed "
                        "after training (disk), or decoded again every epoch (none)",
                        choices=CACHE_MODES)
    cache_budget_gb: float = option(2.0, "memory for --cache auto (default 2)",
                                    interval="[0, 1e6)")

    def __post_init__(self):
        for field in dataclasses.fields(self):
            _check_declared(field, getattr(self, field.name))
        if self.decoder != "global" and self.model != "cnn-rnn":
            raise InputError(f"--decoder {self.decoder}: only --model cnn-rnn has a label decoder")
        if self.weights in (None, "none") and not self.fine_tune and self.backbone != "small-cnn":
            # A pretrained backbone is frozen unless fine-tuned: without its weights it
            # would stay at its random initialisation. small-cnn has no pretrained weights
            # (it always trains from scratch), so "none" changes nothing there.
            raise InputError(f"--no-pretrained-weights without --fine-tune: the {self.backbone} "
                             f"backbone would stay frozen at its random initialisation; add "
                             f"--fine-tune to train it, or drop --no-pretrained-weights")

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


def config_fields():
    """TrainConfig's fields that have a flag (all but those declared ``api_only``)."""
    return [f for f in dataclasses.fields(TrainConfig) if not f.metadata["api_only"]]


def config_overrides(args) -> dict:
    """The TrainConfig fields given as flags in an argparse namespace (None: not given)."""
    return {f.name: getattr(args, f.name) for f in config_fields()
            if getattr(args, f.name, None) is not None}


PAPER_SETTINGS = {f.name: f.metadata["paper"] for f in dataclasses.fields(TrainConfig)
                  if f.metadata["paper"] is not NOT_SET}


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


def _check_declared(field: dataclasses.Field, value) -> None:
    """A field's value against its declaration: choices, an integer's bounds, a float's interval."""
    meta = field.metadata
    if value is None and field.default is None:
        return
    flag = flag_name(field)
    if meta.get("choices") is not None:
        _choice(flag, value, meta["choices"])
    if meta.get("minimum") is not None:
        _positive(flag, value, meta["minimum"])
    if meta.get("maximum") is not None and value > meta["maximum"]:
        raise InputError(f"{flag}: {value} is larger than {meta['maximum']}")
    if meta.get("interval") is not None:
        try:
            ok = in_interval(value, meta["interval"])
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise InputError(f"{flag}: {value} is not in {meta['interval']}")


def _choice(flag, value, choices):
    if value not in choices:
        raise InputError(f"{flag}: {value!r} is not one of {', '.join(choices)}")


def _positive(flag, value, minimum=1):
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise InputError(f"{flag}: {value!r} must be an integer >= {minimum}")
