"""Training: tf.data input, the model, callbacks, the distribution strategy; writes MODEL_DIR."""
from __future__ import annotations

import contextlib
import importlib.util
import dataclasses
import logging
import json
import shutil
import tempfile
import time
from typing import Any, Dict, List, Optional

import keras
import numpy as np
import tensorflow as tf

from cnnrnn_tf import __version__
from cnnrnn_tf.config import TrainConfig, default_epochs, early_stopping_patience
from cnnrnn_tf.dataset import (LabelStats, choose_cache, choose_max_labels, make_dataset,
                               scan_labels)
from cnnrnn_tf.errors import InputError
from cnnrnn_tf.io_utils import makedirs, remove_quietly
from cnnrnn_tf.uri import absolute, ensure_filesystem, is_remote, join, storage_error
from cnnrnn_tf.model_dir import (HISTORY_FILE, METRICS_FILE, SAVED_MODEL_DIR, is_model_dir,
                                 save_model_dir, write_json)
from cnnrnn_tf.vocabulary import LabelVocabulary, label_rank

log = logging.getLogger(__name__)
BACKUP_DIR = "backup"
LOG_DIR = "logs"
CACHE_DIR = "input_cache"  # --cache disk: under MODEL_DIR while training, then removed
MAX_AUTO_STEPS_PER_EXECUTION = 16


def choose_strategy(devices: Optional[List[str]] = None) -> tf.distribute.Strategy:
    """MirroredStrategy over several GPUs (or the given devices), one GPU, or the CPU."""
    if devices:
        return tf.distribute.MirroredStrategy(devices) if len(devices) > 1 \
            else tf.distribute.OneDeviceStrategy(devices[0])
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    if len(gpus) == 1:
        return tf.distribute.OneDeviceStrategy(gpus[0].name)
    return tf.distribute.get_strategy()


def strategy_device_type(strategy: tf.distribute.Strategy) -> str:
    """"GPU" when the strategy's replicas (or, for the default strategy, TensorFlow's
    default placement) run on a GPU, else "CPU"."""
    if isinstance(strategy, (tf.distribute.OneDeviceStrategy, tf.distribute.MirroredStrategy,
                             tf.distribute.MultiWorkerMirroredStrategy)):
        devices = strategy.extended.worker_devices
        return "GPU" if any(":GPU:" in d.upper() for d in devices) else "CPU"
    return "GPU" if tf.config.list_logical_devices("GPU") else "CPU"


def choose_jit_compile(setting: str, device_type: str) -> bool:
    """XLA for the training step. "auto": on for a GPU, off for the CPU.

    On the CPU, oneDNN's kernels without XLA trained the small CNN in 38-44 s per epoch,
    with XLA 66-79 s (BENCHMARKS.md). The value is passed to ``compile`` explicitly:
    Keras's own "auto" turns XLA off under any distribution strategy, which is how a
    single GPU (a OneDeviceStrategy) trained without it.
    """
    if setting == "on":
        return True
    if setting == "off":
        return False
    if setting != "auto":
        raise ValueError(f"jit_compile must be auto, on or off, got {setting!r}")
    return device_type.upper() == "GPU"


def choose_steps_per_execution(requested: Optional[int], steps_per_epoch: int,
                               device_type: str) -> int:
    """Training steps per call of the compiled train function: a divisor of the steps per
    epoch, so that an epoch ends on a call boundary (the data repeats, and a call that ran
    past the end would shift every later epoch) and epoch-end callbacks stay exact.

    ``requested``: the most wanted (the largest divisor not above it is taken); None: 1 on
    the CPU (a step there takes tens of milliseconds or more, the per-call overhead a few),
    up to 16 on a GPU, where short steps make the per-call overhead count. Progress bars and
    batch-level callbacks then report every that many steps.
    """
    steps = max(1, int(steps_per_epoch))
    if requested is None:
        requested = MAX_AUTO_STEPS_PER_EXECUTION if device_type.upper() == "GPU" else 1
    requested = max(1, min(int(requested), steps))
    return max(k for k in range(1, requested + 1) if steps % k == 0)


@contextlib.contextmanager
def precision_policy(mixed: bool):
    """Sets the mixed_float16 policy for the block (GPU), restoring the old one."""
    old = keras.config.dtype_policy()
    if mixed:
        keras.config.set_dtype_policy("mixed_float16")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(old)


def make_optimizer(config: TrainConfig, total_steps: Optional[int] = None):
    """RMSprop (the paper's) or Adam, with a cosine decay over the planned steps.

    Without the decay, RMSprop at 1e-3 leaves the validation loss of the
    BatchNorm encoder jumping between epochs; the decay settles it.
    """
    lr = config.learning_rate
    if total_steps and config.lr_schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(lr, decay_steps=total_steps, alpha=0.02)
    if config.optimizer == "adam":
        return keras.optimizers.Adam(lr)
    return keras.optimizers.RMSprop(lr)


def make_loss(config: TrainConfig):
    from cnnrnn_tf.losses import AsymmetricLoss, sequence_crossentropy

    if config.model == "cnn-rnn":
        return sequence_crossentropy()
    if config.model == "asl":
        return AsymmetricLoss()
    return keras.losses.BinaryCrossentropy(from_logits=True)


def _backup_epoch(backup_dir: str) -> Optional[int]:
    """Epochs done according to the BackupAndRestore checkpoint in backup_dir, or None."""
    for name in ("training_metadata.json", "training_metadata.json.bkp"):
        try:
            with tf.io.gfile.GFile(join(backup_dir, name), "r") as f:
                return int(json.loads(f.read())["epoch"])
        except (OSError, tf.errors.OpError, ValueError, KeyError, TypeError):
            continue
    return None


@dataclasses.dataclass
class TrainResult:
    model: keras.Model
    vocab: LabelVocabulary
    config: TrainConfig
    info: Dict[str, Any]
    history: Dict[str, List[float]]
    metrics: Optional[Dict[str, Any]] = None


def train(
    config: TrainConfig,
    train_data,
    eval_data,
    out_dir: str,
    *,
    vocab: Optional[LabelVocabulary] = None,
    strategy: Optional[tf.distribute.Strategy] = None,
    export: bool = True,
    evaluate_after: bool = True,
    verbose: int = 1,
    extra_callbacks: Optional[List[keras.callbacks.Callback]] = None,
    initial_model: Optional[keras.Model] = None,
    rank=None,
) -> TrainResult:
    """Trains the model ``config`` describes and writes MODEL_DIR ``out_dir``.

    ``train_data`` / ``eval_data``: a data folder, a glob pattern or a list of shard
    files. The vocabulary is built from the training labels unless given (the TFX
    Trainer passes the one Transform computed). An interrupted run resumes from
    ``out_dir/backup`` when started again with the same arguments.
    ``rank``: the label order as a rank per vocabulary index (lower first); default from
    ``config.label_order``. It is saved in config.json (``label_rank``), so fine-tuning keeps it.
    ``initial_model``: train this model (e.g. from ``cnnrnn_tf.finetune``) instead of
    building a fresh one; its number of labels must match the vocabulary. Create it
    inside ``strategy.scope()`` when training on several GPUs.
    """
    out_dir = prepare_out_dir(out_dir)
    t0 = time.time()
    plan = plan_training(config, train_data, eval_data, vocab=vocab, rank=rank)
    keras.utils.set_random_seed(config.seed)
    strategy = strategy or choose_strategy()
    device_type = strategy_device_type(strategy)
    with precision_policy(config.mixed_precision), strategy.scope():
        model = build_training_model(config, plan, initial_model)
        makedirs(out_dir, "model folder")
        with input_cache_dir(config, plan, model, out_dir) as cache_dir:
            train_ds, eval_ds = make_datasets(config, plan, model, train_data, eval_data,
                                              cache_dir=cache_dir)
            compile_model(model, config, plan, eval_ds, device_type=device_type)
            history = fit(model, config, plan, train_ds, eval_ds, out_dir, verbose=verbose,
                          extra_callbacks=extra_callbacks, data_names=(train_data, eval_data))
    calibration = calibrate_thresholds(model, config, plan, eval_data)
    info = {
        "library_version": __version__,
        "max_labels": plan.max_labels,
        "label_rank": [int(r) for r in plan.rank],
        "num_train": plan.num_train,
        "num_eval": plan.num_eval,
        "epochs_run": len(history.get("loss", [])),
        "epochs_max": plan.epochs,
        "train_seconds": round(time.time() - t0, 1),
    }
    if calibration is not None:
        info["calibration"] = calibration
    result = TrainResult(model, plan.vocab, config, info, history)
    save_training(out_dir, result)
    if export:
        from cnnrnn_tf.export import export_saved_model

        export_saved_model(model, plan.vocab, config.image_size,
                           join(out_dir, SAVED_MODEL_DIR), beam_size=config.beam_size)
    if evaluate_after:
        from cnnrnn_tf.evaluation import evaluate_model

        result.metrics = evaluate_model(model, plan.vocab, eval_data, config.image_size,
                                        beam_size=config.beam_size, stats=plan.eval_stats)
        write_json(join(out_dir, METRICS_FILE), result.metrics)
    return result


# ------------------------------------------------------------------ the steps of train()
@dataclasses.dataclass
class TrainPlan:
    """What one look at the data decides: vocabulary, label order, lengths, epochs."""

    vocab: LabelVocabulary
    rank: np.ndarray
    max_labels: int
    epochs: int
    num_train: int
    num_eval: int
    eval_stats: Optional[LabelStats] = None  # reused by the evaluation after training

    def steps_per_epoch(self, config: TrainConfig) -> int:
        return config.steps_per_epoch or -(-self.num_train // config.batch_size)


def prepare_out_dir(out_dir: str) -> str:
    """The MODEL_DIR path (absolute when local); refuses a file or a trained MODEL_DIR."""
    out_dir = absolute(out_dir)
    ensure_filesystem(out_dir)
    try:
        if tf.io.gfile.exists(out_dir) and not tf.io.gfile.isdir(out_dir):
            raise InputError(f"{out_dir}: exists and is not a folder; choose another --out")
    except tf.errors.OpError as exc:
        raise storage_error(out_dir, exc) from None
    if is_model_dir(out_dir):
        raise InputError(f"{out_dir}: already holds a trained model; choose another --out")
    return out_dir


def plan_training(config: TrainConfig, train_data, eval_data, *,
                  vocab: Optional[LabelVocabulary] = None, rank=None) -> TrainPlan:
    # One look at each split: its label_counts.json when the converter wrote one for exactly
    # these shards, else a scan of the labels. The file does not say how many labels the
    # longest set has: unless --max-labels does, the training labels are scanned for that.
    train_stats = scan_labels(train_data)
    if train_stats.max_labels is None and not config.max_labels:
        train_stats = scan_labels(train_data, use_counts_file=False)
    eval_stats = scan_labels(eval_data)
    vocab = vocab or train_stats.vocabulary()
    rank = (np.asarray(label_rank(vocab, config.label_order, config.seed)) if rank is None
            else np.asarray(rank, dtype=np.int32))
    if rank.shape != (len(vocab),):
        raise ValueError(f"rank has {rank.shape[0]} entries, the vocabulary {len(vocab)}")
    return TrainPlan(vocab, rank, choose_max_labels(train_stats, config.max_labels),
                     config.epochs or default_epochs(train_stats.num_examples),
                     train_stats.num_examples, eval_stats.num_examples, eval_stats)


def build_training_model(config: TrainConfig, plan: TrainPlan,
                         initial_model: Optional[keras.Model] = None) -> keras.Model:
    """A fresh model for the plan, or ``initial_model`` once checked (call in the strategy scope)."""
    from cnnrnn_tf.models import build_model

    if initial_model is None:
        return build_model(config, len(plan.vocab), plan.max_labels)
    if initial_model.num_labels != len(plan.vocab):
        raise ValueError(f"initial_model has {initial_model.num_labels} labels, "
                         f"the vocabulary {len(plan.vocab)}")
    return initial_model


def frozen_encoder(config: TrainConfig, model):
    """The model's encoder when its features can be computed once before training: it has
    no trainable weight (a pretrained backbone without --fine-tune) and the images are not
    augmented. None otherwise."""
    if config.augment or model.encoder.trainable_weights:
        return None
    return model.encoder


def example_bytes(config: TrainConfig, model) -> int:
    """Bytes of one cached training example: its uint8 pixels, or a frozen encoder's
    float32 features."""
    encoder = frozen_encoder(config, model)
    if encoder is None:
        return config.image_size ** 2 * 3
    shape = encoder.output_shape[1:]
    return 4 * int(np.prod([d or 1 for d in shape]))


def cache_plan(config: TrainConfig, plan: TrainPlan, model) -> Dict[str, str]:
    """{"train": mode, "eval": mode}: where each split's decoded input is kept
    (``cnnrnn_tf.dataset.choose_cache``); both share the memory budget, training first."""
    per_example = example_bytes(config, model)
    train = choose_cache(config.cache, plan.num_train * per_example, config.cache_budget_gb)
    left = config.cache_budget_gb - (plan.num_train * per_example / (1 << 30)
                                     if train == "memory" else 0.0)
    evaluation = choose_cache(config.cache, plan.num_eval * per_example, max(left, 0.0))
    return {"train": train, "eval": evaluation}


@contextlib.contextmanager
def input_cache_dir(config: TrainConfig, plan: TrainPlan, model, out_dir: str):
    """A folder for the cache files of --cache disk (None when no split caches on disk):
    MODEL_DIR/input_cache, or a local temporary folder when MODEL_DIR is remote; removed
    when training ends, however it ends."""
    if "disk" not in cache_plan(config, plan, model).values():
        yield None
        return
    if is_remote(out_dir):
        path = tempfile.mkdtemp(prefix="cnnrnn-input-cache-")
    else:
        path = join(out_dir, CACHE_DIR)
        makedirs(path, "input cache folder")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def make_datasets(config: TrainConfig, plan: TrainPlan, model, train_data, eval_data,
                  cache_dir: Optional[str] = None):
    """The training and validation tf.data pipelines, shaped for ``model``.

    The training data repeats: ``fit`` runs ``plan.steps_per_epoch`` steps per epoch from
    one iterator, so no iterator is destroyed and rebuilt between epochs. With a frozen
    encoder (``frozen_encoder``) the batches carry its features, computed once.
    """
    common = dict(vocab=plan.vocab, mode="sequence" if model.decodes_sequences else "multi_hot",
                  image_size=config.image_size, batch_size=config.batch_size,
                  max_labels=plan.max_labels, rank=plan.rank, seed=config.seed,
                  encoder=frozen_encoder(config, model))
    modes = cache_plan(config, plan, model)
    if "disk" in modes.values() and cache_dir is None:
        raise ValueError("make_datasets: a disk cache needs cache_dir (see input_cache_dir)")

    def cache_arg(split):
        return {"memory": True, "none": False}.get(modes[split]) \
            if modes[split] != "disk" else join(cache_dir, split)

    train_ds = make_dataset(train_data, training=True, augment=config.augment,
                            cache=cache_arg("train"), **common)
    eval_ds = make_dataset(eval_data, training=False, cache=cache_arg("eval"), **common)
    return train_ds.repeat(), eval_ds


def compile_model(model, config: TrainConfig, plan: TrainPlan, eval_ds, *,
                  device_type: str = "CPU") -> None:
    """Builds the weights (BackupAndRestore needs a built model) and compiles, with XLA
    and steps per execution chosen for the device."""
    sample_inputs, _ = next(iter(eval_ds.take(1)))
    if "images" not in sample_inputs:  # features from the input pipeline: the encoder
        model.encoder(_zero_images(config))  # is built too (it is saved with the model)
    model(sample_inputs)
    steps = plan.steps_per_epoch(config)
    total = steps * plan.epochs
    model.compile(optimizer=make_optimizer(config, total), loss=make_loss(config),
                  jit_compile=choose_jit_compile(config.jit_compile, device_type),
                  steps_per_execution=choose_steps_per_execution(
                      config.steps_per_execution, steps, device_type))


def _zero_images(config: TrainConfig):
    return np.zeros((1, config.image_size, config.image_size, 3), "float32")


class EpochTimer(keras.callbacks.Callback):
    """Adds ``epoch_seconds`` (wall time from epoch begin to end, validation included) to
    the epoch logs, so history.json records what every epoch really cost."""

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["epoch_seconds"] = round(time.perf_counter() - self._start, 3)


def training_callbacks(config: TrainConfig, plan: TrainPlan, out_dir: str,
                       verbose: int) -> List[keras.callbacks.Callback]:
    callbacks: List[keras.callbacks.Callback] = [
        keras.callbacks.BackupAndRestore(join(out_dir, BACKUP_DIR)),
    ]
    if importlib.util.find_spec("tensorboard") is not None:
        callbacks.append(keras.callbacks.TensorBoard(join(out_dir, LOG_DIR),
                                                     update_freq="epoch"))
    else:  # TensorFlow >= 2.20 no longer installs TensorBoard
        log.warning("tensorboard is not installed: no TensorBoard logs in %s", out_dir)
    patience = early_stopping_patience(config, plan.epochs)
    if patience is not None:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=patience,
            restore_best_weights=True, verbose=min(verbose, 1)))
    return callbacks


def fit(model, config: TrainConfig, plan: TrainPlan, train_ds, eval_ds, out_dir: str, *,
        verbose: int = 1, extra_callbacks=None, data_names=("train", "eval")) -> Dict[str, List[float]]:
    """model.fit with the project's callbacks; resumes from out_dir/backup. Returns the history."""
    # The timer last: its epoch includes the other callbacks' epoch-end work (checkpoints).
    callbacks = (training_callbacks(config, plan, out_dir, verbose) + list(extra_callbacks or [])
                 + [EpochTimer()])
    backup = join(out_dir, BACKUP_DIR)
    resumed = _backup_epoch(backup)
    if resumed is not None:
        message = f"resuming from {backup} (epoch {resumed} of {plan.epochs} done)"
        log.info(message)
        if verbose:
            print(message, flush=True)
    if verbose:
        print(f"Training {config.model} ({config.backbone}, {config.image_size}px) on "
              f"{plan.num_train} images, {len(plan.vocab)} labels, "
              f"up to {plan.max_labels} per image, {plan.epochs} epochs max.", flush=True)
    try:
        history = model.fit(
            train_ds, validation_data=eval_ds, epochs=plan.epochs,
            steps_per_epoch=plan.steps_per_epoch(config),
            validation_steps=config.validation_steps,
            callbacks=callbacks, verbose=verbose,
        )
    except tf.errors.InvalidArgumentError as exc:  # e.g. a record whose image is corrupt
        detail = exc.message.strip().splitlines()[0] if exc.message else ""
        raise InputError(f"{data_names[0]} / {data_names[1]}: a record cannot be read while "
                         f"training ({detail}); the resume checkpoint is kept in "
                         f"{backup}") from None
    return {k: [float(v) for v in vals] for k, vals in history.history.items()}


def calibrate_thresholds(model, config: TrainConfig, plan: TrainPlan, eval_data):
    """BCE / ASL without a fixed ``--threshold``: thresholds chosen on the validation split
    (cnnrnn_tf.calibration), kept in the model (so in model.keras and the SavedModel)."""
    if not model.thresholded or config.threshold is not None:
        return None
    from cnnrnn_tf.evaluation import predict_dataset

    preds = predict_dataset(model, plan.vocab, eval_data, config.image_size)
    return model.calibrate(preds.y_true, preds.y_score, config.threshold_metric,
                           config.per_class_threshold)


def save_training(out_dir: str, result: "TrainResult") -> None:
    """MODEL_DIR's model, vocabulary, config and history; then the resume checkpoint goes."""
    save_model_dir(out_dir, result.model, result.vocab, result.config, result.info)
    write_json(join(out_dir, HISTORY_FILE), result.history)
    remove_quietly(join(out_dir, BACKUP_DIR))
