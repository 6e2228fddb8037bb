"""The preprocessor: the one place that turns stored examples into model inputs and targets.

keras-hub style: one serialisable Keras layer owns image decoding, resizing, quantisation
(:func:`cnnrnn_tf.inputs.images.decode_image`: uint8 pixels, the same in every path) and
label tokenisation (vocabulary lookup, the label order, START / END / PAD, multi-hot sets).
tf.data (:func:`cnnrnn_tf.inputs.dataset.make_dataset`), the SavedModel signatures
(:mod:`cnnrnn_tf.serving.export`), :class:`cnnrnn_tf.serving.predictor.Predictor`, evaluation and the TFX
Trainer all go through it, so train / serve skew cannot come back.
"""
from __future__ import annotations

from typing import Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from cnnrnn_tf.inputs.images import decode_image, decode_images
from cnnrnn_tf.vocabulary import END_ID, NUM_SPECIAL, PAD_TARGET, START_ID


@keras.saving.register_keras_serializable(package="cnnrnn_tf")
class Preprocessor(keras.layers.Layer):
    """Images: encoded bytes -> float32 pixels [.., size, size, 3] in [0, 255] (uint8 values).
    Labels: names -> vocabulary ids in the training order -> decoder sequences or multi-hot.

    Args:
        image_size: the square side the encoder takes.
        labels: the vocabulary (index order).
        label_rank: a rank per vocabulary index (lower first): the order label paths are
            trained in (``cnnrnn_tf.vocabulary.label_rank``); default: the vocabulary order.
        max_labels: the longest label path (labels, END excluded).
    """

    def __init__(self, image_size: int, labels: Sequence[str] = (),
                 label_rank: Optional[Sequence[int]] = None, max_labels: int = 4, **kwargs):
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        self.image_size = int(image_size)
        self.labels = tuple(str(x) for x in labels)
        rank = np.arange(len(self.labels)) if label_rank is None else np.asarray(label_rank)
        if rank.shape != (len(self.labels),):
            raise ValueError(f"label_rank has {rank.shape[0]} entries, the vocabulary "
                             f"{len(self.labels)}")
        self.label_rank = tuple(int(r) for r in rank)
        self.max_labels = int(max_labels)
        self._table = None

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    # ------------------------------------------------------------------ images
    def decode_image(self, encoded: tf.Tensor) -> tf.Tensor:
        """One image's bytes -> uint8 [size, size, 3] (what tf.data caches)."""
        return decode_image(encoded, self.image_size)

    def decode_images(self, encoded: tf.Tensor) -> tf.Tensor:
        """A [batch] of image bytes -> float32 [batch, size, size, 3] model inputs."""
        return decode_images(encoded, self.image_size)

    def call(self, encoded):
        return self.decode_images(encoded)

    # ------------------------------------------------------------------ labels
    def _lookup(self) -> tf.lookup.StaticHashTable:
        if self._table is None:
            self._table = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(
                    tf.constant(list(self.labels), tf.string),
                    tf.range(self.num_labels, dtype=tf.int32)), -1)
        return self._table

    def label_ids(self, names: tf.Tensor) -> tf.Tensor:
        """Label names [n] -> vocabulary ids in the training order; unknown names dropped,
        duplicates keep their first occurrence."""
        ids = self._lookup().lookup(names)
        ids = tf.boolean_mask(ids, ids >= 0)
        ids, _ = tf.unique(ids)
        rank = tf.constant(self.label_rank, tf.int32)
        return tf.gather(ids, tf.argsort(tf.gather(rank, ids), stable=True))

    def sequence(self, ids: tf.Tensor):
        """Ordered ids -> (inputs [T], targets [T]), T = max_labels + 1.

        inputs  = START, l1, ..., ln, END-padding
        targets = l1, ..., ln, END, PAD_TARGET-padding   (token ids: label k -> k + 2)
        """
        return sequence_targets(ids, self.max_labels)

    def multi_hot(self, ids: tf.Tensor) -> tf.Tensor:
        """Vocabulary ids [n] (any -1 ignored) -> float32 multi-hot [num_labels]: the whole
        label set, never cut at max_labels."""
        return multi_hot(ids, self.num_labels)

    def get_config(self):
        config = super().get_config()
        config.update(image_size=self.image_size, labels=list(self.labels),
                      label_rank=list(self.label_rank), max_labels=self.max_labels)
        return config


def sequence_targets(ids: tf.Tensor, max_labels: int):
    """See :meth:`Preprocessor.sequence`."""
    tokens = ids[:max_labels] + NUM_SPECIAL
    n = tf.shape(tokens)[0]
    length = max_labels + 1
    inputs = tf.concat([[START_ID], tokens], 0)
    inputs = tf.pad(inputs, [[0, length - n - 1]], constant_values=END_ID)
    targets = tf.concat([tokens, [END_ID]], 0)
    targets = tf.pad(targets, [[0, length - n - 1]], constant_values=PAD_TARGET)
    inputs.set_shape([length])
    targets.set_shape([length])
    return inputs, targets


def multi_hot(ids: tf.Tensor, num_labels: int) -> tf.Tensor:
    """The project's one multi-hot builder: ids [..., n] (-1 = none) -> [..., num_labels]."""
    ids = tf.convert_to_tensor(ids)
    hot = tf.one_hot(ids, num_labels, dtype=tf.float32)  # -1 gives a zero row
    return tf.reduce_max(hot, axis=-2) if ids.shape.rank else hot
