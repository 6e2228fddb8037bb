"""CNN-RNN: an image encoder plus the label decoder, with beam-search decoding."""
from __future__ import annotations

import keras
from keras import ops

from cnnrnn_tf.models.label_decoder import LabelDecoder
from cnnrnn_tf.vocabulary import END_ID, NUM_SPECIAL, START_ID


@keras.saving.register_keras_serializable(package="cnnrnn_tf")
class CNNRNN(keras.Model):
    """The CNN-RNN of Wang et al. (CVPR 2016).

    ``call({"images", "label_inputs"})`` runs teacher forcing and returns
    per-step logits [B, T, num_labels + 2]; :meth:`decode` runs beam search over
    label paths and returns label sets.

    Args:
        encoder: a keras.Model mapping float pixels [B, H, W, 3] in [0, 255] to
            features [B, D] (see ``cnnrnn_tf.models.encoders``).
        num_labels: size of the label vocabulary.
        max_labels: the longest label path decoded (labels, END excluded).
        beam_size: the default beam size of :meth:`decode`.
    """

    model_type = "cnn-rnn"

    def __init__(self, encoder, num_labels, embed_dim=64, lstm_units=256, max_labels=4,
                 beam_size=3, joint_activation="relu", dropout=0.0, mask_seen=True, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.num_labels = int(num_labels)
        self.max_labels = int(max_labels)
        self.beam_size = int(beam_size)
        self.decoder = LabelDecoder(
            self.num_labels + NUM_SPECIAL, embed_dim=embed_dim, lstm_units=lstm_units,
            joint_activation=joint_activation, dropout=dropout, mask_seen=mask_seen,
            name="label_decoder",
        )

    def call(self, inputs, training=None):
        features = self.encoder(inputs["images"], training=training)
        return self.decoder(features, inputs["label_inputs"], training=training)

    def decode(self, images, beam_size=None, max_labels=None):
        """Beam search. Returns a dict of tensors:

        ``label_ids`` int32 [B, L] vocabulary indices in decoding order, -1 padded;
        ``scores`` float32 [B, L] each label's probability at the step it was emitted;
        ``label_count`` int32 [B]; ``log_prob`` float32 [B] the path's log-probability;
        ``probabilities`` float32 [B, num_labels] per-label ranking scores: the maximum
        over the best path's steps of the label's probability (see README).
        """
        from cnnrnn_tf.beam_search import beam_search

        features = self.encoder(images, training=False)
        state = self.decoder.initial_state(features)
        result = beam_search(
            self.decoder.step, state, batch_size=ops.shape(images)[0],
            num_tokens=self.num_labels + NUM_SPECIAL,
            beam_size=int(beam_size or self.beam_size),
            max_length=int(max_labels or self.max_labels),
            end_id=END_ID, start_id=START_ID, forbidden_ids=(START_ID,), no_repeat=True,
        )
        tokens = result["tokens"]
        label_ids = ops.where(tokens >= NUM_SPECIAL, tokens - NUM_SPECIAL, -1)
        return {
            "label_ids": ops.cast(label_ids, "int32"),
            "scores": result["token_probs"],
            "label_count": ops.cast(result["length"], "int32"),
            "log_prob": result["log_prob"],
            "probabilities": result["max_probs"][:, NUM_SPECIAL:],
        }

    def get_config(self):
        config = super().get_config()
        d = self.decoder
        config.update(
            encoder=keras.saving.serialize_keras_object(self.encoder),
            num_labels=self.num_labels, embed_dim=d.embed_dim, lstm_units=d.lstm_units,
            max_labels=self.max_labels, beam_size=self.beam_size,
            joint_activation=d.joint_activation, dropout=d.dropout_rate, mask_seen=d.mask_seen,
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["encoder"] = keras.saving.deserialize_keras_object(config["encoder"])
        return cls(**config)
