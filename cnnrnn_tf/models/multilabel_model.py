"""The small base class every model of the project shares (CNN-RNN and the per-label baselines).

Code around the models (training, export, evaluation, fine-tuning, benchmarks) talks to this
interface only, instead of branching on ``model_type`` strings or ``hasattr(model, ...)``.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from cnnrnn_tf.cluster import is_multi_worker


class MultiLabelModel(keras.Model):
    """An image encoder and a head that predicts a label set.

    Subclasses set ``model_type`` and implement :meth:`decode_features`, :meth:`label_weights`
    and ``get_config``; they keep ``encoder``, ``num_labels``, ``max_labels`` and
    ``beam_size`` as attributes.

    Attributes:
        decodes_sequences: True when the model decodes label paths step by step
            (``start_state`` / ``step``, teacher forcing on ``label_inputs``).
        jit_decode: compile :meth:`decode_features` with XLA in evaluation and serving.
        thresholded: the predicted set depends on decision thresholds, which
            :meth:`calibrate` sets from validation scores.
        attends: the model has ``attention_maps(images, label_ids)`` (CNN-RNN with
            the attention decoder).
    """

    model_type = "multilabel"
    decodes_sequences = False
    jit_decode = False
    thresholded = False
    attends = False  # True: attention_maps(images, label_ids) says where each label came from

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        """Keras's step logs; on a replica of a multi-worker strategy each with a batch axis.

        Keras 3.12 averages a step's logs over the workers of a MultiWorkerMirroredStrategy
        with ``strategy.reduce("MEAN", value, axis=0)``, which fails on a scalar ("Invalid
        reduction dimension 0 for input with 0 dimensions", tensorflow/tensorflow#72388).
        With shape [1] it gives the mean over the replicas, as MirroredStrategy does.
        """
        logs = super().compute_metrics(x, y, y_pred, sample_weight=sample_weight)
        if tf.distribute.in_cross_replica_context() or not is_multi_worker(
                tf.distribute.get_strategy()):
            return logs
        return keras.tree.map_structure(
            lambda v: ops.reshape(v, (1,)) if len(ops.shape(v)) == 0 else v, logs)

    def calibrate(self, y_true, y_score, metric: str = "OF1", per_class: bool = False):
        """Sets the decision thresholds from validation truth / scores; returns a summary."""
        return None

    @property
    def output_length(self) -> int:
        """L, the length of the ``label_ids`` / ``scores`` outputs of :meth:`decode`."""
        return int(self.max_labels)

    def encode(self, inputs, training=None):
        """The image features the heads read: ``inputs["features"]`` when the batch carries
        them (a frozen encoder's output, computed once by the input pipeline: see
        ``cnnrnn_tf.inputs.dataset.make_dataset(encoder=...)``), else ``self.encoder(inputs["images"])``.
        Any rank: a vector [B, D] or a feature map [B, H, W, C], whatever the encoder gives.
        """
        if isinstance(inputs, dict) and "features" in inputs:
            return inputs["features"]
        images = inputs["images"] if isinstance(inputs, dict) else inputs
        return self.encoder(images, training=training)

    def decode(self, images, beam_size=None, max_labels=None) -> Dict:
        """Label sets for float32 pixels [B, S, S, 3]. A dict of tensors:

        ``label_ids`` int32 [B, L] vocabulary indices in decoding order, -1 padded;
        ``scores`` float32 [B, L]; ``label_count`` int32 [B]; ``log_prob`` float32 [B];
        ``probabilities`` float32 [B, num_labels] per-label ranking scores.
        """
        features = self.encoder(images, training=False)
        return self.decode_features(features, beam_size, max_labels)

    def decode_features(self, features, beam_size=None, max_labels=None) -> Dict:
        raise NotImplementedError

    def example_inputs(self, image_size: int, batch_size: int = 1) -> Dict[str, np.ndarray]:
        """Inputs that build every weight of the model when called on them."""
        return {"images": np.zeros((batch_size, image_size, image_size, 3), "float32")}

    def label_weights(self) -> List[Tuple[keras.Variable, int, int]]:
        """The weights that hold one slice per label: (variable, label axis, first label
        index along it). Fine-tuning copies and grows exactly these along that axis."""
        raise NotImplementedError
