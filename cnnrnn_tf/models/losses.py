"""Losses: the masked per-step cross-entropy of CNN-RNN and the ASL baseline loss."""
from __future__ import annotations

import keras
from keras import ops

from cnnrnn_tf.vocabulary import PAD_TARGET


def sequence_crossentropy(label_smoothing: float = 0.0) -> keras.losses.Loss:
    """Per-step softmax cross-entropy over END + labels, ignoring padded steps.

    Targets are token ids with PAD_TARGET (-1) after END; Keras' own
    ``ignore_class`` masks them, and the mean runs over the real steps only.
    With ``label_smoothing``: :class:`SmoothedSequenceCrossentropy`.
    """
    if label_smoothing:
        return SmoothedSequenceCrossentropy(label_smoothing)
    return keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, ignore_class=PAD_TARGET, name="sequence_crossentropy"
    )


@keras.saving.register_keras_serializable(package="cnnrnn_tf")
class SmoothedSequenceCrossentropy(keras.losses.Loss):
    """The sequence cross-entropy with label smoothing: the target of a step is
    (1 - e) on its token and e spread evenly over the other tokens the step can emit
    (masked ones, START and the labels already on the path, get nothing: their logits
    are MASK_LOGIT). Padded steps (PAD_TARGET) are ignored; the mean runs over the batch's
    real steps, the same weighting as :func:`sequence_crossentropy` without smoothing.
    """

    def __init__(self, label_smoothing=0.1, name="sequence_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        from cnnrnn_tf.vocabulary import MASK_LOGIT

        logits = ops.cast(y_pred, "float32")
        targets = ops.cast(y_true, "int32")
        real = ops.cast(targets != PAD_TARGET, "float32")
        one_hot = ops.one_hot(ops.maximum(targets, 0), ops.shape(logits)[-1], dtype="float32")
        allowed = ops.cast(logits > MASK_LOGIT / 2, "float32")
        others = allowed * (1.0 - one_hot)
        spread = others / ops.maximum(ops.sum(others, axis=-1, keepdims=True), 1.0)
        soft = (1.0 - self.label_smoothing) * one_hot + self.label_smoothing * spread
        log_p = ops.log_softmax(logits, axis=-1)
        per_step = -ops.sum(soft * ops.where(allowed > 0, log_p, 0.0), axis=-1) * real
        # The mean over the batch's real steps, as Keras' ``ignore_class`` masking gives
        # without smoothing (a long label set weighs more than a short one): each real
        # step's value is scaled by steps / real steps, so the default reduction (the
        # mean over all [B, T] values) is the token mean.
        size = ops.cast(ops.size(real), "float32")
        return per_step * (size / ops.maximum(ops.sum(real), 1.0))

    def get_config(self):
        config = super().get_config()
        config.update(label_smoothing=self.label_smoothing)
        return config


@keras.saving.register_keras_serializable(package="cnnrnn_tf")
class AsymmetricLoss(keras.losses.Loss):
    """Asymmetric loss for multi-label classification (Ben-Baruch et al., ICCV 2021).

    L = -y (1-p)^g+ log(p) - (1-y) p_m^g- log(1-p_m), with p_m = max(p - clip, 0):
    easy negatives are down-weighted (gamma_neg) and very easy ones discarded
    (the probability margin ``clip``). Takes logits.
    """

    def __init__(self, gamma_neg=4.0, gamma_pos=0.0, clip=0.05, eps=1e-8,
                 label_smoothing=0.0, name="asymmetric_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.label_smoothing = float(label_smoothing)
        self.gamma_neg = float(gamma_neg)
        self.gamma_pos = float(gamma_pos)
        self.clip = float(clip)
        self.eps = float(eps)

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, "float32")
        if self.label_smoothing:  # as Keras' BCE: y (1 - e) + e / 2
            y_true = y_true * (1.0 - self.label_smoothing) + 0.5 * self.label_smoothing
        logits = ops.cast(y_pred, "float32")
        p = ops.sigmoid(logits)
        # log(p) = log_sigmoid(x) exactly (no clipping of p at eps); for the negatives,
        # 1 - p_m >= clip, so its log is finite; without the margin it is log_sigmoid(-x).
        loss_pos = y_true * ops.log_sigmoid(logits)
        if self.clip > 0:
            p_neg = ops.clip(p - self.clip, 0.0, 1.0)
            loss_neg = (1.0 - y_true) * ops.log(ops.maximum(1.0 - p_neg, self.eps))
        else:
            p_neg = p
            loss_neg = (1.0 - y_true) * ops.log_sigmoid(-logits)
        w_pos = ops.power(1.0 - p, self.gamma_pos)
        w_neg = ops.power(p_neg, self.gamma_neg)
        loss = -(loss_pos * w_pos + loss_neg * w_neg)
        return ops.sum(loss, axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update(gamma_neg=self.gamma_neg, gamma_pos=self.gamma_pos,
                      clip=self.clip, eps=self.eps, label_smoothing=self.label_smoothing)
        return config
