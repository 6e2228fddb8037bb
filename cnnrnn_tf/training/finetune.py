"""Fine-tuning a trained model on new data, growing the vocabulary with new labels.

The decoder's token ids put END and START first and label k at 2 + k (see
``cnnrnn_tf.vocabulary``), so appending labels never moves an existing row:

* CNN-RNN: the label embedding ``U_l`` (input embeddings and, tied, the output
  scores) gets one new row per new label, and the per-label head (when the model
  has one, ``label_head="aux"`` / ``"evidence"``) one new column and bias; every
  other weight is copied as is.
* BCE / ASL classifier: the output Dense layer gets one new column (and bias)
  per new label.

New rows / columns start at the mean of the existing label rows / columns plus
a little noise (0.01 of their standard deviation). With tied scores, the mean
row gives the new label a score close to the average label's score: it enters
the softmax as a plausible but not dominant choice, which keeps the output
distribution over the old labels close to the trained one (Hewitt, "Initializing
new word embeddings for pretrained language models", 2021), and the noise breaks
the symmetry between several new labels.

:func:`finetune` loads a MODEL_DIR, adds the labels of the new training data that
the model does not know, and trains with ``cnnrnn_tf.training.loop.train``. It
orders the vocabulary by frequency in the new data (:func:`finetune_vocabulary`,
rows moved with their label: :func:`remap_vocabulary`) so that the paper's
frequent-first label order still holds. Mix images of the old labels into the
new training data, or the model forgets them.
"""
from __future__ import annotations

import collections

from typing import Iterable, List, Optional, Sequence, Tuple

import keras
import numpy as np

from cnnrnn_tf.vocabulary import LabelVocabulary

__all__ = ["grow_vocabulary", "remap_vocabulary", "finetune_vocabulary", "new_labels_in", "finetune"]


def _init_new(existing: np.ndarray, count: int, axis: int, rng: np.random.RandomState) -> np.ndarray:
    """``count`` new slices along ``axis``: mean of ``existing`` + 0.01 std noise."""
    mean = existing.mean(axis=axis, keepdims=True)
    std = float(existing.std()) or 1e-3
    shape = list(existing.shape)
    shape[axis] = count
    noise = rng.normal(0.0, 0.01 * std, size=shape)
    return (np.broadcast_to(mean, shape) + noise).astype(existing.dtype)


def _image_size(model) -> Optional[int]:
    shape = getattr(model.encoder, "input_shape", None)
    if shape and len(shape) == 4 and shape[1]:
        return int(shape[1])
    return None


def _build(model, image_size: int) -> None:
    model(model.example_inputs(image_size))


def grow_vocabulary(model: keras.Model, old_vocab: LabelVocabulary, new_labels: Iterable[str],
                    *, max_labels: Optional[int] = None, image_size: Optional[int] = None,
                    seed: int = 0) -> Tuple[keras.Model, LabelVocabulary]:
    """A copy of ``model`` for ``old_vocab`` extended with ``new_labels``.

    Existing labels keep their ids; labels already known are skipped. Every
    weight of ``model`` is copied exactly (the label embedding / output layer
    into its first rows / columns); ``model`` itself is left untouched. Works
    for ``CNNRNN`` and ``MultiLabelClassifier`` (anything with ``num_labels``
    in its config and either a ``decoder.label_embedding`` or a ``classifier``).
    ``max_labels``: a new longest label path (defaults to the model's).
    ``image_size``: needed only when the encoder's input has no fixed size.

    Returns ``(new_model, new_vocab)``; the new model is built, not compiled.
    """
    new_vocab = old_vocab.extend(new_labels)
    return remap_vocabulary(model, old_vocab, new_vocab, max_labels=max_labels,
                            image_size=image_size, seed=seed), new_vocab


def remap_vocabulary(model: keras.Model, old_vocab: LabelVocabulary, new_vocab: LabelVocabulary,
                     *, max_labels: Optional[int] = None, image_size: Optional[int] = None,
                     seed: int = 0) -> keras.Model:
    """A copy of ``model`` for ``new_vocab``, which holds every label of ``old_vocab``.

    The row (CNN-RNN label embedding) or column (classifier output) of each old
    label is copied to that label's index in ``new_vocab``; labels new to the
    model get new rows (see the module doc); END and START rows and every other
    weight are copied as they are. With ``new_vocab = old_vocab.extend(...)``
    (:func:`grow_vocabulary`) the old rows stay where they were.
    """
    if model.num_labels != len(old_vocab):
        raise ValueError(f"the model has {model.num_labels} labels, the vocabulary {len(old_vocab)}")
    missing = sorted(set(old_vocab.labels) - set(new_vocab.labels))
    if missing:
        raise ValueError(f"the new vocabulary lacks labels of the model: {', '.join(missing)}")
    old_index = old_vocab.index
    source = np.array([old_index.get(name, -1) for name in new_vocab.labels])
    added = int((source < 0).sum())
    config = model.get_config()
    config["num_labels"] = len(new_vocab)
    if config.get("class_thresholds") is not None:  # recalibrated after fine-tuning
        config["class_thresholds"] = None
    if max_labels is not None:
        config["max_labels"] = int(max_labels)
    new_model = type(model).from_config(config)
    size = image_size or _image_size(model)
    if size is None:
        raise ValueError("the encoder has no fixed input size; pass image_size")
    if not model.built or not model.weights:
        _build(model, size)
    _build(new_model, size)

    remapped = {id(var): (axis, first) for var, axis, first in model.label_weights()}
    old_weights, new_weights = model.weights, new_model.weights
    if len(old_weights) != len(new_weights):
        raise ValueError(f"the rebuilt model has {len(new_weights)} weights, "
                         f"the original {len(old_weights)}")
    rng = np.random.RandomState(seed)
    for old, new in zip(old_weights, new_weights):
        value = keras.ops.convert_to_numpy(old.value)
        if id(old) in remapped:
            axis, first = remapped[id(old)]
            fixed = np.take(value, np.arange(first), axis=axis)
            labels = np.take(value, np.arange(first, value.shape[axis]), axis=axis)
            fresh = _init_new(labels, added, axis, rng)
            parts, next_new = [], 0
            for src in source:
                if src >= 0:
                    parts.append(np.take(labels, [src], axis=axis))
                else:
                    parts.append(np.take(fresh, [next_new], axis=axis))
                    next_new += 1
            value = np.concatenate([fixed] + parts, axis=axis)
        if tuple(value.shape) != tuple(new.shape):
            raise ValueError(f"weight {old.path}: shape {value.shape}, rebuilt {tuple(new.shape)}")
        new.assign(value)
    return new_model


def finetune_vocabulary(old_vocab: LabelVocabulary,
                        label_lists: Iterable[Iterable[str]]) -> LabelVocabulary:
    """The vocabulary of new training data, most frequent first, plus the model's labels.

    Labels are ordered by their count in ``label_lists`` (ties: labels the model
    knows first, in its order, then by name); labels of ``old_vocab`` absent from
    the new data come last with count 0. This keeps the training label order
    frequent-first (``cnnrnn_tf.vocabulary.label_rank`` takes the vocabulary
    order as the frequency order) when new labels are frequent.
    """
    counter: collections.Counter = collections.Counter()
    for labels in label_lists:
        counter.update(set(labels))
    old_index = old_vocab.index
    names = set(counter) | set(old_vocab.labels)
    ordered = sorted(names, key=lambda n: (-counter[n], old_index.get(n, len(old_index)), n))
    return LabelVocabulary(tuple(ordered), tuple(int(counter[n]) for n in ordered))


def new_labels_in(vocab: LabelVocabulary, label_lists: Iterable[Iterable[str]]) -> List[str]:
    """Labels of ``label_lists`` not in ``vocab``: most frequent first, ties by name."""
    counter: collections.Counter = collections.Counter()
    for labels in label_lists:
        counter.update(set(labels))
    known = set(vocab.labels)
    return [name for name, _ in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))
            if name not in known]


def learned_rank(loaded) -> List[int]:
    """The label order a MODEL_DIR was trained with, as a rank per vocabulary index.

    From config.json's ``label_rank`` (0.3.0 on); older MODEL_DIRs: recomputed from their
    ``label_order`` and ``seed`` over their vocabulary, as 0.2.0 trained them.
    """
    from cnnrnn_tf.vocabulary import label_rank

    saved = loaded.info.get("label_rank")
    if saved is not None and len(saved) == len(loaded.vocab):
        return [int(r) for r in saved]
    return [int(r) for r in label_rank(loaded.vocab, loaded.config.label_order,
                                       loaded.config.seed)]


def appended_rank(old_rank: Sequence[int], num_new: int) -> List[int]:
    """Old labels keep their relative order; new labels come after them, in vocabulary order."""
    top = max(old_rank, default=-1)
    return [int(r) for r in old_rank] + [top + 1 + i for i in range(num_new)]


def finetune(model_dir: str, train_dir, eval_dir, out_dir: str, epochs: Optional[int] = None,
             *, reorder: bool = False, keep_label_ids: Optional[bool] = None, verbose: int = 1,
             strategy=None, extra_callbacks=None, **config_changes):
    """Loads MODEL_DIR, adds the new labels of ``train_dir``, trains, writes MODEL_DIR ``out_dir``.

    The training configuration is the one the model was trained with, with
    ``epochs`` and any ``config_changes`` (``learning_rate=``, ``batch_size=``,
    ...) applied; ``image_size``, ``model`` and the architecture stay as trained. The
    checkpoint is selected as ``train()`` selects it (the configured ``monitor``, by default
    the decoded validation F1; ties go to the lower validation loss).

    The label order: by default the model keeps the order it learned (its ``label_rank``
    from config.json): old labels keep their ids and their relative order, new labels are
    appended after them (most frequent in ``train_dir`` first). ``reorder=True`` re-orders
    explicitly: the vocabulary becomes :func:`finetune_vocabulary` (every label by its
    frequency in ``train_dir``; old labels keep their weights at their new index) and the
    configured ``label_order`` applies to it. (``keep_label_ids`` is 0.2.0's name:
    ``keep_label_ids=False`` is ``reorder=True``.)
    ``out_dir`` gets the usual MODEL_DIR (model, vocabulary, SavedModel, metrics
    on ``eval_dir``); its ``config.json`` records ``finetuned_from`` and ``new_labels``.

    ``strategy``: as for ``train()`` (default :func:`cnnrnn_tf.training.devices.choose_strategy`,
    which reads ``TF_CONFIG``). It is chosen before anything else runs TensorFlow (a
    MultiWorkerMirroredStrategy must come first), and the model is loaded and grown inside
    its scope, so that its variables belong to it. ``extra_callbacks``: passed to ``train()``.

    Returns the :class:`cnnrnn_tf.training.loop.TrainResult`.
    """
    from cnnrnn_tf.cluster import is_chief
    from cnnrnn_tf.inputs.dataset import choose_max_labels, scan_labels
    from cnnrnn_tf.errors import InputError
    from cnnrnn_tf.model_dir import CONFIG_FILE, is_model_dir, load_model_dir, write_json
    from cnnrnn_tf.uri import join
    from cnnrnn_tf.training.devices import choose_strategy
    from cnnrnn_tf.training.loop import train

    fixed = {"model", "backbone", "image_size", "embed_dim", "lstm_units"} & set(config_changes)
    if fixed:
        raise InputError(f"fine-tuning keeps the trained architecture; cannot change "
                         f"{', '.join(sorted(fixed))}")
    strategy = strategy or choose_strategy()  # before TensorFlow runs anything else
    if is_model_dir(out_dir):
        raise InputError(f"{out_dir}: already holds a trained model; choose another --out")
    with strategy.scope():
        loaded = load_model_dir(model_dir)
    stats = scan_labels(train_dir, use_counts_file=False)  # needs the per-record label lists
    added = new_labels_in(loaded.vocab, stats.label_lists)
    max_labels = max(int(loaded.model.max_labels),
                     choose_max_labels(stats, config_changes.pop("max_labels", None)))
    config = loaded.config.replace(epochs=epochs, max_labels=max_labels, **config_changes)
    if keep_label_ids is not None:  # 0.2.0's name: keep ids == keep the learned order
        reorder = not keep_label_ids
    vocab = finetune_vocabulary(loaded.vocab, stats.label_lists)
    rank = None  # reorder: the configured label order over the new frequencies
    if not reorder:
        grown = loaded.vocab.extend(added)
        vocab = LabelVocabulary(grown.labels, tuple(vocab.counts[vocab.index[n]]
                                                    for n in grown.labels))
        rank = appended_rank(learned_rank(loaded), len(added))
    with strategy.scope():  # the grown model's variables belong to the strategy
        model = remap_vocabulary(loaded.model, loaded.vocab, vocab, max_labels=max_labels,
                                 image_size=loaded.image_size, seed=config.seed)
    if verbose:
        print(f"Fine-tuning {model_dir}: {len(added)} new label(s)"
              f"{': ' + ', '.join(added) if added else ''}.", flush=True)
    result = train(config, train_dir, eval_dir, out_dir, vocab=vocab, initial_model=model,
                   verbose=verbose, rank=rank, strategy=strategy,
                   extra_callbacks=extra_callbacks)
    result.info.update(finetuned_from=str(model_dir), new_labels=added)
    if is_chief(strategy):  # on a cluster only the chief writes out_dir (as in train())
        write_json(join(out_dir, CONFIG_FILE), {"train_config": config.to_dict(), **result.info})
    return result
