"""The three splits kept apart: the test split shares no shard with train or val, and is
scored only once the model is final."""
from __future__ import annotations

import os
from typing import Any, Dict

from cnnrnn_tf.config import TrainConfig
from cnnrnn_tf.inputs.dataset import resolve_files
from cnnrnn_tf.errors import InputError
from cnnrnn_tf.uri import absolute, is_remote
from cnnrnn_tf.training.plan import TrainPlan


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
