"""The training loop: plan, build, compile, fit, calibrate, save and score; writes MODEL_DIR.

The parts live beside it: :mod:`.plan` (data and cache), :mod:`.devices` (strategy, XLA,
precision), :mod:`.callbacks` and :mod:`.splits` (the three splits kept apart)."""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Dict, List, Optional

import keras
import numpy as np
import tensorflow as tf

from cnnrnn_tf import __version__
from cnnrnn_tf.cluster import is_chief, is_multi_worker, num_workers, worker_dir
from cnnrnn_tf.config import TrainConfig
from cnnrnn_tf.errors import InputError
from cnnrnn_tf.io_utils import copy_tree, makedirs, remove_quietly
from cnnrnn_tf.model_dir import (HISTORY_FILE, METRICS_FILE, SAVED_MODEL_DIR, save_model_dir,
                                 write_json)
from cnnrnn_tf.training.callbacks import BACKUP_DIR, EpochTimer, backup_epoch, training_callbacks
from cnnrnn_tf.training.devices import (check_workers_resume_alike, choose_jit_compile,
                                        choose_steps_per_execution, choose_strategy,
                                        precision_policy, strategy_device_type)
from cnnrnn_tf.training.plan import (TrainPlan, build_training_model, decoded_validation_dataset,
                                     input_cache_dir, make_datasets, plan_training,
                                     prepare_out_dir)
from cnnrnn_tf.training.splits import check_splits_apart, final_metrics
from cnnrnn_tf.uri import join
from cnnrnn_tf.vocabulary import LabelVocabulary

log = logging.getLogger(__name__)


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
    if resume_from and resume_from != backup and backup_epoch(resume_from) is not None:
        copy_tree(resume_from, backup)
    resumed = backup_epoch(backup)
    strategy = tf.distribute.get_strategy()
    if is_multi_worker(strategy):
        check_workers_resume_alike(strategy, resumed)
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
            validation_steps=plan.validation_steps(config, strategy),
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
