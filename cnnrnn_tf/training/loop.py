"""Training: tf.data input, the model, callbacks, the distribution strategy; writes MODEL_DIR."""
from __future__ import annotations

import contextlib
import importlib.util
import dataclasses
import functools
import logging
import json
import os
import shutil
import tempfile
import time
from typing import Any, Dict, List, Optional

import keras
import numpy as np
import tensorflow as tf

from cnnrnn_tf import __version__
from cnnrnn_tf.cluster import (TF_CONFIG, ClusterConfig, is_chief, is_multi_worker, num_workers,
                               worker_dir)
from cnnrnn_tf.config import TrainConfig, default_epochs, early_stopping_patience
from cnnrnn_tf.inputs.dataset import (LabelStats, choose_cache, choose_max_labels, make_dataset,
                               resolve_files, scan_labels)
from cnnrnn_tf.errors import InputError
from cnnrnn_tf.io_utils import copy_tree, makedirs, remove_quietly
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
    """MultiWorkerMirroredStrategy when ``TF_CONFIG`` describes several workers (each uses
    all its GPUs, see ``cnnrnn_tf.cluster``); else MirroredStrategy over several GPUs (or
    the given devices), one GPU, or the CPU."""
    cluster = ClusterConfig.from_environment()
    if cluster is not None and cluster.multi_worker:
        if devices:
            raise InputError(f"devices {list(devices)}: cannot be chosen when {TF_CONFIG} "
                             f"describes several workers (each worker uses all its GPUs)")
        log.info("%s: %s of %d workers", TF_CONFIG, cluster.task_name, cluster.num_workers)
        try:
            return tf.distribute.MultiWorkerMirroredStrategy()
        except RuntimeError as exc:  # "Collective ops must be configured at program startup"
            raise RuntimeError(
                f"{TF_CONFIG} describes {cluster.num_workers} workers, but TensorFlow already "
                f"ran in this process; MultiWorkerMirroredStrategy must come first: call "
                f"cnnrnn_tf.training.loop.choose_strategy() at the start of the program and pass "
                f"it to train(strategy=...)") from exc
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
    # --ema: the optimizer keeps a moving average of the weights (momentum 0.99);
    # SwapEMAWeights (training_callbacks) validates and selects on it, with BatchNorm
    # statistics recomputed for it (EMABatchNorm), and fit() ends with both in the model
    # (Keras' finalize_variable_values; EarlyStopping's best weights), so they are exported.
    ema = dict(use_ema=True, ema_momentum=0.99) if config.ema else {}
    if config.optimizer == "adam":
        return keras.optimizers.Adam(lr, **ema)
    return keras.optimizers.RMSprop(lr, **ema)


def make_loss(config: TrainConfig):
    from cnnrnn_tf.models.losses import AsymmetricLoss, sequence_crossentropy

    smoothing = float(config.label_smoothing)
    if config.model == "cnn-rnn":
        return sequence_crossentropy(smoothing)
    if config.model == "asl":
        return AsymmetricLoss(label_smoothing=smoothing)
    return keras.losses.BinaryCrossentropy(from_logits=True, label_smoothing=smoothing)


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
    # metrics.json as written: the final split's metrics (the test split's when one was
    # given, else the validation split's) with "split", "data" and "validation".
    metrics: Optional[Dict[str, Any]] = None
    validation_metrics: Optional[Dict[str, Any]] = None  # the validation split's metrics


def train(
    config: TrainConfig,
    train_data,
    eval_data,
    out_dir: str,
    *,
    test_data=None,
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

    ``train_data`` / ``eval_data`` / ``test_data``: a data folder, a glob pattern or a list
    of shard files. ``eval_data`` is the validation split: it drives early stopping,
    checkpoint selection, threshold calibration and the ``val_*`` history. ``test_data``
    (optional) is only scored: it is first read after the model is final (best epoch
    restored, thresholds calibrated, MODEL_DIR and SavedModel written), so no choice depends
    on it (and only when ``evaluate_after``, on the chief); it may not be the training or
    the validation data. metrics.json (and ``TrainResult.metrics``) then holds the test
    split's metrics, else the validation split's; see :func:`final_metrics`. The vocabulary is built from the training labels
    unless given (the TFX Trainer passes the one Transform computed). An interrupted run
    resumes from ``out_dir/backup`` when started again with the same arguments.
    ``rank``: the label order as a rank per vocabulary index (lower first); default from
    ``config.label_order``. It is saved in config.json (``label_rank``), so fine-tuning keeps it.
    ``initial_model``: train this model (e.g. from ``cnnrnn_tf.training.finetune``) instead of
    building a fresh one; its number of labels must match the vocabulary. Create it
    inside ``strategy.scope()`` when training on several GPUs.
    ``strategy``: default :func:`choose_strategy`, which reads ``TF_CONFIG``: on a cluster
    of several workers every worker calls train() with the same arguments; the chief
    writes ``out_dir``, the others a temporary folder they remove (``cnnrnn_tf.cluster``).
    ``config.batch_size`` is the global batch, split over all replicas.
    """
    # The strategy first (MultiWorkerMirroredStrategy must come before other TensorFlow
    # work), then the cheap checks of the arguments, before any data is read.
    strategy = strategy or choose_strategy()
    check_splits_apart(train_data, eval_data, test_data)
    out_dir = prepare_out_dir(out_dir)
    device_type = strategy_device_type(strategy)
    # Every worker trains and saves (collective steps need all of them); only the chief
    # writes out_dir, the others a temporary folder removed at the end.
    with worker_dir(out_dir, strategy) as write_dir:
        t0 = time.time()
        plan = plan_training(config, train_data, eval_data, vocab=vocab, rank=rank)
        keras.utils.set_random_seed(config.seed)
        with precision_policy(config.mixed_precision), strategy.scope():
            model = build_training_model(config, plan, initial_model)
            makedirs(write_dir, "model folder")
            with input_cache_dir(config, plan, model, write_dir) as cache_dir:
                train_ds, eval_ds = make_datasets(config, plan, model, train_data, eval_data,
                                                  cache_dir=cache_dir)
                compile_model(model, config, plan, eval_ds, device_type=device_type)
                history = fit(model, config, plan, train_ds, eval_ds, write_dir,
                              verbose=verbose, extra_callbacks=extra_callbacks,
                              data_names=(train_data, eval_data),
                              resume_from=join(out_dir, BACKUP_DIR),
                              decoded_ds=decoded_validation_dataset(config, plan, eval_data,
                                                                   model))
        # Calibration and evaluation only read the model: the other workers skip them.
        chief = is_chief(strategy)
        calibration = calibrate_thresholds(model, config, plan, eval_data) if chief else None
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
        if num_workers(strategy) > 1:
            info["workers"] = num_workers(strategy)
        if calibration is not None:
            info["calibration"] = calibration
        result = TrainResult(model, plan.vocab, config, info, history)
        save_training(write_dir, result)
        if export:
            from cnnrnn_tf.serving.export import export_saved_model

            export_saved_model(model, plan.vocab, config.image_size,
                               join(write_dir, SAVED_MODEL_DIR), beam_size=config.beam_size)
        if evaluate_after and chief:
            # The model is final and written: only now is the test split read.
            result.validation_metrics, result.metrics = final_metrics(
                model, config, plan, train_data, eval_data, test_data)
            write_json(join(write_dir, METRICS_FILE), result.metrics)
    return result


def check_splits_apart(train_data, eval_data, test_data=None) -> None:
    """InputError when ``test_data`` shares a shard with ``eval_data`` or ``train_data``:
    the same folder under another name (a trailing slash, ``..``, a symbolic link), a glob
    or a list of shards over it; or when it names no shard. Only names and folder listings
    are read, no shard: a wrong ``--test`` fails before training, yet nothing of the test
    data can steer it."""
    if test_data is None:
        return
    test = _shard_set(test_data)
    for role, flag, data in (("validation", "--eval", eval_data),
                             ("training", "--train", train_data)):
        other = _shard_set(data)
        shared = test & other
        if shared == test == other:
            raise InputError(f"{_shown(test_data)}: the test split (--test) is also the "
                             f"{role} split ({flag}); give --test data that no step of "
                             f"training reads")
        if shared:
            raise InputError(f"{_shown(test_data)}: {len(shared)} of the test split's "
                             f"{len(test)} shards (--test) are also in the {role} split "
                             f"({flag}), e.g. {sorted(shared)[0]}; give --test data that no "
                             f"step of training reads")


def _shard_set(data) -> frozenset:
    """The shard files of a data argument, local ones with symbolic links resolved."""
    return frozenset(path if is_remote(path) else os.path.realpath(path)
                     for path in resolve_files(data))


def _shown(data) -> str:
    if isinstance(data, (list, tuple)):
        return f"{len(data)} shard files" if len(data) != 1 else str(data[0])
    return str(data)


def split_names(train_data, eval_data, test_data=None) -> Dict[str, Any]:
    """metrics.json's ``"data"``: each split as given (a folder, a glob pattern or a list
    of shards), local paths made absolute; ``"test"`` None without a test split."""
    def name(data):
        if data is None:
            return None
        if isinstance(data, (list, tuple)):
            return [absolute(str(d)) for d in data]
        return absolute(str(data))

    return {"train": name(train_data), "eval": name(eval_data), "test": name(test_data)}


def final_metrics(model, config: TrainConfig, plan: TrainPlan, train_data, eval_data,
                  test_data=None):
    """(validation metrics, metrics.json's dict) of the final model.

    The metrics.json dict holds the final split's metrics at the top level (the test
    split's when ``test_data`` is given, else the validation split's), ``"split"``
    (``"test"`` or ``"eval"``), ``"data"`` (the folders of every split, ``"test"`` None
    without one) and ``"validation"`` (the validation split's metrics, in every case, so
    a reader finds them at one place). Both splits are scored by the same
    :func:`cnnrnn_tf.evaluation.evaluate.evaluate_model` that ``cnnrnn evaluate`` runs.
    """
    from cnnrnn_tf.evaluation.evaluate import evaluate_model

    score = dict(image_size=config.image_size, beam_size=config.beam_size)
    validation = evaluate_model(model, plan.vocab, eval_data, stats=plan.eval_stats, **score)
    final = validation if test_data is None else evaluate_model(model, plan.vocab, test_data,
                                                                **score)
    metrics = dict(final)
    metrics["split"] = "eval" if test_data is None else "test"
    metrics["data"] = split_names(train_data, eval_data, test_data)
    metrics["validation"] = validation
    return validation, metrics


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
    if config.augmentation().active or model.encoder.trainable_weights:
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
    (``cnnrnn_tf.inputs.dataset.choose_cache``); both share the memory budget, training first."""
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
    """The training and validation tf.data pipelines, shaped for ``model`` (call in the
    strategy scope: on several workers, each reads its share).

    The training data repeats: ``fit`` runs ``plan.steps_per_epoch`` steps per epoch from
    one iterator, so no iterator is destroyed and rebuilt between epochs. With a frozen
    encoder (``frozen_encoder``) the batches carry its features, computed here, before
    ``fit``, on the strategy's devices (``cnnrnn_tf.inputs.features``), not in the input pipeline.
    """
    # batch_size is the global batch: the strategy splits it over all replicas; on several,
    # full batches only (a last partial one could leave a replica an empty batch).
    strategy = tf.distribute.get_strategy()
    distributed = strategy.num_replicas_in_sync > 1
    for data, count in ((train_data, plan.num_train), (eval_data, plan.num_eval)):
        if distributed and count < config.batch_size:
            raise InputError(f"{data}: {count} records, fewer than one batch (--batch-size "
                             f"{config.batch_size}); training on "
                             f"{strategy.num_replicas_in_sync} replicas needs a full batch")
    common = dict(vocab=plan.vocab, mode="sequence" if model.decodes_sequences else "multi_hot",
                  image_size=config.image_size, batch_size=config.batch_size,
                  max_labels=plan.max_labels, rank=plan.rank, seed=config.seed,
                  encoder=frozen_encoder(config, model),
                  drop_remainder=distributed, num_workers=num_workers(strategy))
    modes = cache_plan(config, plan, model)
    if "disk" in modes.values() and cache_dir is None:
        raise ValueError("make_datasets: a disk cache needs cache_dir (see input_cache_dir)")

    def cache_arg(split):
        return {"memory": True, "none": False}.get(modes[split]) \
            if modes[split] != "disk" else join(cache_dir, split)

    train_ds = make_dataset(train_data, training=True, augment=config.augmentation(),
                            cache=cache_arg("train"), **common)
    eval_ds = make_dataset(eval_data, training=False, cache=cache_arg("eval"), **common)
    return train_ds.repeat(), eval_ds


def decoded_validation_dataset(config: TrainConfig, plan: TrainPlan, eval_data, model):
    """The validation split as DecodedValidation reads it (None unless --monitor needs it):
    decoded images, or a frozen encoder's features computed once, cached per the plan. On
    several workers, this worker's share of the records (``worker_shard``): each decodes
    its part, and DecodedValidation gathers the predictions before scoring."""
    from cnnrnn_tf.training.decoded_validation import worker_shard

    if config.monitor == "val_loss" or not config.early_stopping:
        return None
    return make_dataset(eval_data, plan.vocab, mode="eval", image_size=config.image_size,
                        batch_size=max(config.batch_size, 64), with_ids=True,
                        encoder=frozen_encoder(config, model),
                        cache=cache_plan(config, plan, model)["eval"] == "memory",
                        shard=worker_shard())


def compile_model(model, config: TrainConfig, plan: TrainPlan, eval_ds, *,
                  device_type: str = "CPU") -> None:
    """Builds the weights (BackupAndRestore needs a built model) and compiles, with XLA
    and steps per execution chosen for the device."""
    sample_inputs, sample_targets = next(iter(eval_ds.take(1)))
    if "images" not in sample_inputs:  # features from the input pipeline: the encoder
        model.encoder(_zero_images(config))  # is built too (it is saved with the model)
    model(sample_inputs)
    steps = plan.steps_per_epoch(config)
    total = steps * plan.epochs
    model.compile(optimizer=make_optimizer(config, total), loss=make_loss(config),
                  jit_compile=choose_jit_compile(config.jit_compile, device_type),
                  steps_per_execution=choose_steps_per_execution(
                      config.steps_per_execution, steps, device_type))
    if is_multi_worker(tf.distribute.get_strategy()):
        # Keras 3.12's fit() on a model created in a strategy scope first builds it
        # "symbolically" from strategy.reduce(MEAN) over a whole input batch, which
        # MultiWorkerMirroredStrategy cannot do for a dict of tensors (keras-team/keras
        # #20329). Built here (model, loss trackers, optimizer), there is nothing left
        # for that step to build, and Keras skips it for a model not tied to a strategy;
        # fit() runs inside strategy.scope() and takes the strategy from there.
        model.compute_loss(sample_inputs, sample_targets, model(sample_inputs))
        model.optimizer.build(model.trainable_variables)
        model._distribute_strategy = None


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


def fit(model, config: TrainConfig, plan: TrainPlan, train_ds, eval_ds, out_dir: str, *,
        verbose: int = 1, extra_callbacks=None, data_names=("train", "eval"),
        resume_from: Optional[str] = None, decoded_ds=None) -> Dict[str, List[float]]:
    """model.fit with the project's callbacks; resumes from out_dir/backup. Returns the history.

    ``resume_from``: another backup folder to resume from (a non-chief worker, whose
    out_dir is temporary, resumes from the chief's: the weights of all workers are equal).
    ``decoded_ds``: the validation split for DecodedValidation (``--monitor val_f1|val_map``).
    ``data_names``: the training and validation data as given to train(); the first also
    feeds ``--ema``'s BatchNorm recomputation (``ema_batch_norm_batches``).
    """
    # The timer last: its epoch includes the other callbacks' epoch-end work (checkpoints).
    callbacks = (training_callbacks(config, plan, out_dir, verbose, decoded_ds,
                                    train_data=data_names[0])
                 + list(extra_callbacks or []) + [EpochTimer()])
    backup = join(out_dir, BACKUP_DIR)
    if resume_from and resume_from != backup and _backup_epoch(resume_from) is not None:
        copy_tree(resume_from, backup)
    resumed = _backup_epoch(backup)
    strategy = tf.distribute.get_strategy()
    if is_multi_worker(strategy):
        _check_workers_resume_alike(strategy, resumed)
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


def _check_workers_resume_alike(strategy: tf.distribute.Strategy, epoch: Optional[int]) -> None:
    """All workers must start from the same epoch (and weights), or their collective steps
    part ways; a worker that cannot read the chief's MODEL_DIR would start afresh."""
    value = float(-1 if epoch is None else epoch)
    per_replica = strategy.experimental_distribute_values_from_function(
        lambda _: tf.constant([1.0, value, value * value], tf.float64))
    n, total, squares = strategy.reduce("SUM", per_replica, axis=None).numpy()
    if n * squares != total * total:  # equal everywhere exactly when the variance is 0
        mine = "none" if epoch is None else f"{epoch} epochs done"
        raise InputError(
            f"the workers of {TF_CONFIG} would not resume from the same point (this one: "
            f"{mine}): every worker must read the chief's --out folder (keep it on storage all "
            f"of them reach: gs://, s3://, a shared volume), or remove its {BACKUP_DIR}/ "
            f"folder to start afresh")


def calibrate_thresholds(model, config: TrainConfig, plan: TrainPlan, eval_data):
    """BCE / ASL without a fixed ``--threshold``: thresholds chosen on the validation split
    (cnnrnn_tf.metrics), kept in the model (so in model.keras and the SavedModel)."""
    if not model.thresholded or config.threshold is not None:
        return None
    from cnnrnn_tf.evaluation.evaluate import predict_dataset

    preds = predict_dataset(model, plan.vocab, eval_data, config.image_size)
    return model.calibrate(preds.y_true, preds.y_score, config.threshold_metric,
                           config.per_class_threshold)


def save_training(out_dir: str, result: "TrainResult") -> None:
    """MODEL_DIR's model, vocabulary, config and history; then the resume checkpoint goes."""
    save_model_dir(out_dir, result.model, result.vocab, result.config, result.info)
    write_json(join(out_dir, HISTORY_FILE), result.history)
    remove_quietly(join(out_dir, BACKUP_DIR))
