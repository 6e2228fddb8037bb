"""Losses: the masked per-step cross-entropy of CNN-RNN and the ASL baseline loss."""
from __future__ import annotations

import keras
from keras import ops

PAD_TARGET = -1


def sequence_crossentropy() -> keras.losses.Loss:
    """Per-step softmax cross-entropy over END + labels, ignoring padded steps.

    Targets are token ids with PAD_TARGET (-1) after END; Keras' own
    ``ignore_class`` masks them, and the mean runs over the real steps only.
    """
    return keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, ignore_class=PAD_TARGET, name="sequence_crossentropy"
    )


@keras.saving.register_keras_serializable(package="cnnrnn_tf")
class AsymmetricLoss(keras.losses.Loss):
    """Asymmetric loss for multi-label classification (Ben-Baruch et al., ICCV 2021).

    L = -y (1-p)^g+ log(p) - (1-y) p_m^g- log(1-p_m), with p_m = max(p - clip, 0):
    easy negatives are down-weighted (gamma_neg) and very easy ones discarded
    (the probability margin ``clip``). Takes logits.
    """

    def __init__(self, gamma_neg=4.0, gamma_pos=0.0, clip=0.05, eps=1e-8,
                 name="asymmetric_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.gamma_neg = float(gamma_neg)
        self.gamma_pos = float(gamma_pos)
        self.clip = float(clip)
        self.eps = float(eps)

    def call(self, y_true, y_pred):
        y_true = ops.cast(y_true, "float32")
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
                      clip=self.clip, eps=self.eps)
        return config
