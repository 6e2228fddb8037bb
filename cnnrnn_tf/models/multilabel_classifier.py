"""The per-label baselines: independent sigmoid classifiers on the same encoder."""
from __future__ import annotations

import keras
from keras import ops

from cnnrnn_tf.models.multilabel_model import MultiLabelModel


@keras.saving.register_keras_serializable(package="cnnrnn_tf")
class MultiLabelClassifier(MultiLabelModel):
    """Encoder + one logistic output per label (the paper's "traditional approach").

    Trained with binary cross-entropy (``bce``) or the asymmetric loss (``asl``).
    :meth:`decode` keeps the labels whose probability reaches ``threshold``, in
    descending order of probability, at most ``max_labels``; it returns the same
    dict as ``CNNRNN.decode`` so the export and evaluation code serve both.
    """

    model_type = "bce"
    beam_size = 1
    thresholded = True

    def __init__(self, encoder, num_labels, max_labels=4, threshold=0.5, dropout=0.0,
                 class_thresholds=None, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.num_labels = int(num_labels)
        self.max_labels = int(max_labels)
        self.threshold = float(threshold)
        # One threshold per label (calibrated per class), or None: ``threshold`` for all.
        self.class_thresholds = (None if class_thresholds is None
                                 else [float(t) for t in class_thresholds])
        if self.class_thresholds is not None and len(self.class_thresholds) != self.num_labels:
            raise ValueError(f"class_thresholds has {len(self.class_thresholds)} values, "
                             f"the model {self.num_labels} labels")
        self.dropout_rate = float(dropout)
        self.dropout = keras.layers.Dropout(self.dropout_rate)
        self.classifier = keras.layers.Dense(self.num_labels, name="label_logits")

    def call(self, inputs, training=None):
        return self.logits(self.encode(inputs, training=training), training=training)

    def train_step(self, data):
        from cnnrnn_tf.models import orderless

        return orderless.train_step(self, data, forward=orderless.plain_forward)

    def test_step(self, data):
        # Keras' own step counted a graph-constant batch size, also for the exhausted
        # last step of a validation split: val_loss under two replicas was 24% low.
        from cnnrnn_tf.models import orderless

        return orderless.test_step(self, data, forward=orderless.plain_forward)

    def logits(self, features, training=None):
        return ops.cast(self.classifier(self.dropout(features, training=training)), "float32")

    @property
    def output_length(self) -> int:
        return min(int(self.max_labels), self.num_labels)

    def decode_features(self, features, beam_size=None, max_labels=None):
        """Thresholded label sets; ``beam_size`` is accepted and ignored. The same sets as
        ``cnnrnn_tf.metrics.decoded_sets`` (top ``max_labels`` first, then the
        threshold), on which :meth:`calibrate` chooses the thresholds."""
        k = min(int(max_labels or self.max_labels), self.num_labels)
        probs = ops.sigmoid(self.logits(features, training=False))
        top_probs, top_ids = ops.top_k(probs, k=k, sorted=True)
        if self.class_thresholds is None:
            keep = top_probs >= self.threshold
        else:
            per_label = ops.convert_to_tensor(self.class_thresholds, "float32")
            keep = top_probs >= ops.take(per_label, top_ids)
        label_ids = ops.where(keep, ops.cast(top_ids, "int32"), -1)
        scores = ops.where(keep, top_probs, 0.0)
        count = ops.sum(ops.cast(keep, "int32"), axis=-1)
        log_prob = ops.sum(ops.where(keep, ops.log(ops.maximum(top_probs, 1e-12)), 0.0), axis=-1)
        return {"label_ids": label_ids, "scores": scores, "label_count": count,
                "log_prob": log_prob, "probabilities": probs}

    def calibrate(self, y_true, y_score, metric="OF1", per_class=False):
        """Chooses the thresholds on validation scores (``cnnrnn_tf.metrics``) for the
        sets :meth:`decode` predicts: its ``max_labels`` most probable labels, thresholded."""
        from cnnrnn_tf.metrics import choose_thresholds

        best, per, value = choose_thresholds(y_true, y_score, metric, per_class,
                                             max_labels=self.output_length)
        self.threshold, self.class_thresholds = best, per
        return {"threshold": best, "class_thresholds": per, "metric": metric,
                "validation_value": round(value, 6)}

    def label_weights(self):
        return [(self.classifier.kernel, 1, 0), (self.classifier.bias, 0, 0)]

    def get_config(self):
        config = super().get_config()
        config.update(
            encoder=keras.saving.serialize_keras_object(self.encoder),
            num_labels=self.num_labels, max_labels=self.max_labels,
            threshold=self.threshold, dropout=self.dropout_rate,
            class_thresholds=self.class_thresholds,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["encoder"] = keras.saving.deserialize_keras_object(config["encoder"])
        return cls(**config)
