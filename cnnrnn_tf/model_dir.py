"""MODEL_DIR: everything a reload needs, in one folder.

    MODEL_DIR/model.keras        the Keras model (architecture + weights)
    MODEL_DIR/vocabulary.json    the label vocabulary, most frequent first
    MODEL_DIR/config.json        the TrainConfig plus derived values (max_labels, num_train)
    MODEL_DIR/saved_model/       the SavedModel with the serving signatures
    MODEL_DIR/metrics.json       evaluation after training: on the --test data (else --eval)
    MODEL_DIR/history.json       the per-epoch training history
    MODEL_DIR/logs/              TensorBoard logs
    MODEL_DIR/backup/            the resume checkpoint while training runs
"""
from __future__ import annotations

import dataclasses
import logging
import uuid
from typing import Any, Dict

import keras
import tensorflow as tf

from cnnrnn_tf.config import TrainConfig
from cnnrnn_tf.errors import InputError
from cnnrnn_tf.io_utils import makedirs, read_json, write_json  # noqa: F401  (write_json re-exported)
from cnnrnn_tf.uri import ensure_filesystem, is_remote, join, storage_error
from cnnrnn_tf.vocabulary import LabelVocabulary

log = logging.getLogger(__name__)

MODEL_FILE = "model.keras"
CONFIG_FILE = "config.json"
SAVED_MODEL_DIR = "saved_model"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.json"


@dataclasses.dataclass
class LoadedModel:
    model: keras.Model
    vocab: LabelVocabulary
    config: TrainConfig
    info: Dict[str, Any]
    path: str

    @property
    def image_size(self) -> int:
        return self.config.image_size


def save_model_dir(path: str, model: keras.Model, vocab: LabelVocabulary,
                   config: TrainConfig, info: Dict[str, Any]) -> None:
    """Writes vocabulary, config and, last, the model file (the MODEL_DIR's marker)."""
    makedirs(path, "model folder")
    vocab.save(path)
    write_json(join(path, CONFIG_FILE), {"train_config": config.to_dict(), **info})
    model_file = join(path, MODEL_FILE)
    if is_remote(path):
        # Keras writes a remote .keras through a local temporary file and one copy.
        model.save(model_file)
    else:
        tmp = join(path, f".tmp-{uuid.uuid4().hex[:8]}-{MODEL_FILE}")
        model.save(tmp)
        tf.io.gfile.rename(tmp, model_file, overwrite=True)


def is_model_dir(path: str) -> bool:
    ensure_filesystem(path)
    return tf.io.gfile.exists(join(path, MODEL_FILE))


def load_model_dir(path: str, compile: bool = False) -> LoadedModel:
    """Loads MODEL_DIR; raises InputError naming what is missing or broken."""
    import cnnrnn_tf.models  # noqa: F401  registers the custom objects

    ensure_filesystem(path)
    try:
        if not tf.io.gfile.isdir(path):
            raise InputError(f"{path}: model folder does not exist")
    except tf.errors.OpError as exc:
        raise storage_error(path, exc, "model folder cannot be read") from None
    model_file = join(path, MODEL_FILE)
    if not tf.io.gfile.exists(model_file):
        raise InputError(f"{path}: no {MODEL_FILE} in this folder (not a trained MODEL_DIR)")
    config_file = join(path, CONFIG_FILE)
    if not tf.io.gfile.exists(config_file):
        raise InputError(f"{path}: no {CONFIG_FILE} in this folder")
    info = read_json(config_file)
    config = TrainConfig.from_dict(info.pop("train_config", {}))
    vocab = LabelVocabulary.load(path)
    try:
        model = keras.saving.load_model(model_file, compile=compile)
    except Exception as exc:  # keras raises many types on a corrupt archive
        model = _rebuild_and_load_weights(model_file, config, vocab, info)
        if model is None:
            raise InputError(f"{model_file}: cannot load the model ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
        log.warning("%s: saved by another Keras version (%s); rebuilt the model from "
                    "config.json and loaded its weights", model_file, type(exc).__name__)
    return LoadedModel(model, vocab, config, info, path)


def _rebuild_and_load_weights(model_file: str, config: TrainConfig, vocab: LabelVocabulary,
                              info: Dict[str, Any]):
    """Rebuilds the architecture from config.json and loads the archive's weights.

    A ``.keras`` file written by a newer Keras can carry config keys an older one
    rejects (Keras 3.15 adds ``input_axes`` to initializer configs, which 3.12
    refuses); the weights themselves load fine. Returns None when that fails too.
    """
    from cnnrnn_tf.models import build_model

    try:
        # No download: the archive's weights replace the pretrained ones anyway.
        model = build_model(config, len(vocab), int(info["max_labels"]), pretrained=False)
        model(model.example_inputs(config.image_size))
        model.load_weights(model_file)
    except Exception:  # noqa: BLE001 - the caller reports the original error
        return None
    return model
