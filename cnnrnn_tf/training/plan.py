"""The plan of a training run before any step: the label statistics and epochs, the
model to train, the cache policy and the tf.data pipelines of the train and val splits."""
from __future__ import annotations

import contextlib
import dataclasses
import shutil
import tempfile
from typing import Dict, Optional

import keras
import numpy as np
import tensorflow as tf

from cnnrnn_tf.cluster import num_workers
from cnnrnn_tf.config import TrainConfig, default_epochs
from cnnrnn_tf.inputs.dataset import (
    LabelStats,
    choose_cache,
    choose_max_labels,
    make_dataset,
    scan_labels,
)
from cnnrnn_tf.errors import InputError
from cnnrnn_tf.inputs.images import Augmentation
from cnnrnn_tf.io_utils import makedirs
from cnnrnn_tf.uri import absolute, ensure_filesystem, is_remote, join, storage_error
from cnnrnn_tf.model_dir import is_model_dir
from cnnrnn_tf.vocabulary import LabelVocabulary, label_rank


CACHE_DIR = "input_cache"  # --cache disk: under MODEL_DIR while training, then removed


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

    def validation_steps(self, config: TrainConfig, strategy) -> Optional[int]:
        """The validation batches of an epoch, counted from the split's size, so that Keras
        never runs the step that finds the input exhausted: under several replicas that step
        raced with the loss tracker and, under load, counted a batch without its loss (PLA's
        val_loss differed between one and two replicas by 1.5%). None on several workers,
        where each reads a share of the shards whose size is not known here."""
        if config.validation_steps:
            return config.validation_steps
        if num_workers(strategy) > 1:
            return None
        if strategy.num_replicas_in_sync > 1:  # full batches only (drop_remainder)
            return max(1, self.num_eval // config.batch_size)
        return -(-self.num_eval // config.batch_size)


def augmentation(config: TrainConfig) -> Augmentation:
    """The training images' augmentation, as ``config`` asks (colour, crop, flip)."""
    return Augmentation(color=config.augment, crop_scale=config.crop_scale, hflip=config.hflip)


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
    if augmentation(config).active or model.encoder.trainable_weights:
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

    train_ds = make_dataset(train_data, training=True, augment=augmentation(config),
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
