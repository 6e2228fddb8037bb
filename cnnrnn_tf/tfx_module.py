"""The TFX-facing functions: Transform's ``preprocessing_fn`` and Trainer's ``run_fn``.

This is the only core-library module that touches TFX. tfx / tensorflow_transform
are imported inside the functions, so ``import cnnrnn_tf`` works without them.
The pipeline hands Trainer and Transform the shim ``pipeline/module_file.py``,
which re-exports these two functions.

Design: Transform computes only the label vocabulary (``tft.vocabulary`` over
``image/labels`` of the train split, most frequent first: the paper's label
order). Images are not passed through Transform: the Trainer reads the raw
ExampleGen shards with the library's own tf.data input (the same code as
``cnnrnn train``) and takes the vocabulary from the transform graph, so the
pipeline and the command line train exactly the same model.
"""
from __future__ import annotations

import json
import logging
import math

from cnnrnn_tf import schema, uri

log = logging.getLogger(__name__)

# The name of the vocabulary file in the transform graph.
LABEL_VOCAB_NAME = "labels"
# custom_config keys.
TRAIN_CONFIG_KEY = "train_config"
VERSION_KEY = "library_version"
DEVICES_KEY = "devices"  # optional: device names for MirroredStrategy (default: all GPUs)
# Where run_fn writes the full MODEL_DIR (model.keras, vocabulary.json, config.json ...;
# no metrics.json: the pipeline's Evaluators score the eval and test splits).
MODEL_DIR_NAME = "model_dir"


def preprocessing_fn(inputs):
    """Computes the frequency-ordered label vocabulary; passes the labels through.

    ``tft.vocabulary`` orders by frequency, most frequent first (ties broken by
    the label bytes, descending). Each label counts once per image because the
    schema writer de-duplicates the labels of an example.
    """
    import tensorflow_transform as tft

    labels = inputs[schema.LABELS_KEY]
    vocab_path = tft.vocabulary(labels, vocab_filename=LABEL_VOCAB_NAME)
    # Transform needs at least one output; nothing downstream reads it
    # (the pipeline runs Transform with materialize=False).
    return {"label_ids": tft.apply_vocabulary(labels, vocab_path, default_value=-1)}


def label_vocabulary(transform_output_dir: str):
    """The LabelVocabulary that Transform wrote (vocabulary order = token order)."""
    import tensorflow_transform as tft

    from cnnrnn_tf.vocabulary import LabelVocabulary

    import tensorflow as tf

    path = tft.TFTransformOutput(transform_output_dir).vocabulary_file_by_name(LABEL_VOCAB_NAME)
    with tf.io.gfile.GFile(path, "r") as f:  # the transform graph may be on s3:// / gs://
        return LabelVocabulary(tuple(line.rstrip("\n") for line in f if line.strip()))


def run_fn(fn_args) -> None:
    """Trains with ``cnnrnn_tf.training.loop.train`` and exports the serving SavedModel.

    Reads from ``fn_args``: ``custom_config`` (``train_config``: a TrainConfig dict,
    ``library_version``), ``transform_output`` (the label vocabulary),
    ``train_files`` / ``eval_files`` (glob patterns of GZIP TFRecords: the pipeline's
    ``train`` split fits, its ``eval`` split validates and selects; the ``test`` split
    never reaches run_fn, the pipeline's TestEvaluator scores it after training),
    ``train_steps`` / ``eval_steps`` (optional). ``train_steps`` is the total step
    count, spread over the config's ``epochs`` (1 when unset); ``eval_steps``
    caps the validation steps per epoch. Without them the config decides.
    Writes the MODEL_DIR under ``fn_args.model_run_dir`` and the SavedModel
    (atomically) to ``fn_args.serving_model_dir``. Uses MirroredStrategy over
    all GPUs when there are several, or over ``custom_config["devices"]``; or
    MultiWorkerMirroredStrategy when ``TF_CONFIG`` describes several workers (Vertex AI,
    Kubeflow): then only the chief writes the MODEL_DIR, the SavedModel and run_fn.json.
    """
    from cnnrnn_tf import __version__
    from cnnrnn_tf.cluster import is_chief, worker_dir
    from cnnrnn_tf.config import TrainConfig
    from cnnrnn_tf.errors import InputError
    from cnnrnn_tf.serving.export import export_saved_model
    from cnnrnn_tf.training.devices import choose_strategy
    from cnnrnn_tf.training.loop import train

    custom = dict(fn_args.custom_config or {})
    # First: a multi-worker strategy must exist before TensorFlow runs anything.
    strategy = choose_strategy(custom.get(DEVICES_KEY) or None)
    config = TrainConfig.from_dict(dict(custom.get(TRAIN_CONFIG_KEY) or {}))
    wanted = custom.get(VERSION_KEY)
    if wanted and wanted != __version__:
        raise InputError(
            f"custom_config: the pipeline was built for cnnrnn_tf {wanted}, "
            f"but {__version__} is installed")
    changes = {}
    if getattr(fn_args, "train_steps", None):
        epochs = config.epochs or 1
        changes.update(epochs=epochs,
                       steps_per_epoch=max(1, math.ceil(int(fn_args.train_steps) / epochs)))
    if getattr(fn_args, "eval_steps", None):
        changes.update(validation_steps=int(fn_args.eval_steps))
    config = config.replace(**changes)

    vocab = label_vocabulary(fn_args.transform_output)
    uri.ensure_filesystems(fn_args.model_run_dir, fn_args.serving_model_dir)
    model_dir = uri.join(fn_args.model_run_dir, MODEL_DIR_NAME)
    log.info("run_fn: %d labels, %s, %d replica(s); MODEL_DIR %s", len(vocab),
             type(strategy).__name__, strategy.num_replicas_in_sync, model_dir)
    print(f"cnnrnn run_fn: MODEL_DIR {model_dir} ({type(strategy).__name__}, "
          f"{strategy.num_replicas_in_sync} replica(s))", flush=True)
    # No evaluation here: the pipeline's Evaluator scores the eval split (through the
    # exported eval signatures), so a second pass over it would only cost time.
    result = train(config, list(fn_args.train_files), list(fn_args.eval_files), model_dir,
                   vocab=vocab, strategy=strategy, export=False, evaluate_after=False,
                   verbose=2)
    # Every worker exports (as TensorFlow's multi-worker guide has it); only the chief's stays.
    with worker_dir(fn_args.serving_model_dir, strategy) as serving_dir:
        export_saved_model(result.model, vocab, config.image_size, serving_dir,
                           beam_size=config.beam_size)
    if not is_chief(strategy):
        return
    import tensorflow as tf

    # model_run_dir may be a URI (s3://, gs://): written through tf.io.gfile.
    with tf.io.gfile.GFile(uri.join(fn_args.model_run_dir, "run_fn.json"), "w") as f:
        json.dump({"model_dir": model_dir, "serving_model_dir": fn_args.serving_model_dir,
                   "strategy": type(strategy).__name__,
                   "replicas": strategy.num_replicas_in_sync,
                   "library_version": __version__, "config": config.to_dict()}, f, indent=1)
