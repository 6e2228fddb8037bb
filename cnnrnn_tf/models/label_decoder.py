"""The CNN-RNN label decoder (Wang et al., CVPR 2016, section 3).

For a label path (START, l_1, ..., l_n) and an image representation I:

    w_k   = U_l e_k                      label embedding (row k of U_l)
    o(t), r(t) = LSTM(w_{l_{t-1}}, r(t-1))  the recurrent layer over the path
    x_t   = h(U_o o(t) + U_I I)          joint embedding, h = ReLU by default
    s(t)  = U_l^T x_t                    scores tied to the label embeddings
    p(t)  = softmax(s(t))                over END + labels

Token ids (see ``cnnrnn_tf.vocabulary``): 0 END, 1 START, 2+k label k. U_l
has a row for every token; START's score is fixed at a large negative value
so it is never predicted. With ``mask_seen`` (default), labels already on the
path are masked out of the softmax at later steps too, during training as in
beam search, so the model is trained on the distribution it decodes with.

The LSTM state is explicit: :meth:`initial_state` and :meth:`step` carry it
from step to step for decoding, using the same weights as the teacher-forced
:meth:`call`.
"""
from __future__ import annotations

import keras
from keras import ops

from cnnrnn_tf.vocabulary import END_ID, MASK_LOGIT, NUM_SPECIAL, START_ID

NEG_INF = MASK_LOGIT


@keras.saving.register_keras_serializable(package="cnnrnn_tf")
class LabelDecoder(keras.layers.Layer):
    """LSTM over label embeddings with a joint embedding tied to the labels.

    Args:
        num_tokens: labels + 2 (END, START).
        embed_dim: size of the label embedding and of the joint space.
        lstm_units: LSTM size.
        joint_activation: h in x_t = h(U_o o(t) + U_I I).
        dropout: dropout on the joint embedding during training.
        mask_seen: mask labels already on the path out of later softmaxes.
    """

    def __init__(
        self,
        num_tokens: int,
        embed_dim: int = 64,
        lstm_units: int = 256,
        joint_activation: str = "relu",
        dropout: float = 0.0,
        mask_seen: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if num_tokens <= NUM_SPECIAL:
            raise ValueError("num_tokens must count END, START and at least one label")
        self.num_tokens = int(num_tokens)
        self.embed_dim = int(embed_dim)
        self.lstm_units = int(lstm_units)
        self.joint_activation = joint_activation
        self.dropout_rate = float(dropout)
        self.mask_seen = bool(mask_seen)
        self.label_embedding = keras.layers.Embedding(
            self.num_tokens, self.embed_dim, name="label_embedding"
        )  # U_l
        self.lstm = keras.layers.LSTM(
            self.lstm_units, return_sequences=True, return_state=True, name="lstm"
        )
        self.output_projection = keras.layers.Dense(
            self.embed_dim, use_bias=False, name="recurrent_projection"
        )  # U_o
        self.image_projection = keras.layers.Dense(self.embed_dim, name="image_projection")  # U_I
        self.activation = keras.activations.get(joint_activation)
        self.dropout = keras.layers.Dropout(self.dropout_rate)

    def build(self, features_shape, label_inputs_shape=None):
        self.label_embedding.build((None, None))
        self.image_projection.build(features_shape)
        self.lstm.build((None, None, self.embed_dim))
        self.output_projection.build((None, None, self.lstm_units))
        self.built = True

    # ---- shared pieces -------------------------------------------------
    def project_image(self, features):
        """U_I I: computed once per image, reused at every step."""
        return self.image_projection(features)

    def _special_mask(self):
        return ops.convert_to_tensor(
            [NEG_INF if i == START_ID else 0.0 for i in range(self.num_tokens)], "float32"
        )

    def _scores(self, outputs, image_proj, training=None):
        # outputs: [..., lstm_units]; image_proj broadcastable to [..., embed_dim]
        joint = self.activation(self.output_projection(outputs) + image_proj)
        joint = self.dropout(joint, training=training)
        # s(t) = U_l^T x_t, tied to the label embedding.
        table = ops.cast(self.label_embedding.embeddings, joint.dtype)
        logits = ops.matmul(joint, ops.transpose(table))
        return ops.cast(logits, "float32") + self._special_mask()

    def seen_mask(self, label_inputs):
        """[B, T, V] additive mask: labels given as inputs up to step t are masked."""
        one_hot = ops.one_hot(label_inputs, self.num_tokens, dtype="float32")
        seen = ops.cumsum(one_hot, axis=1)
        special = ops.convert_to_tensor(
            [1.0 if i >= NUM_SPECIAL else 0.0 for i in range(self.num_tokens)], "float32"
        )
        return ops.where(seen * special > 0, NEG_INF, 0.0)

    # ---- teacher forcing -----------------------------------------------
    def call(self, features, label_inputs, training=None):
        """features [B, D], label_inputs [B, T] int -> logits [B, T, num_tokens]."""
        image_proj = ops.expand_dims(self.project_image(features), 1)
        embedded = self.label_embedding(label_inputs)
        outputs, _, _ = self.lstm(embedded, training=training)
        logits = self._scores(outputs, image_proj, training=training)
        if self.mask_seen:
            logits = logits + self.seen_mask(label_inputs)
        return logits

    # ---- step-by-step decoding -----------------------------------------
    def initial_state(self, features):
        """The decoding state at START: (h, c, U_I I)."""
        batch = ops.shape(features)[0]
        zeros = ops.zeros((batch, self.lstm_units), dtype=self.compute_dtype)
        return (zeros, zeros, ops.cast(self.project_image(features), self.compute_dtype))

    def step(self, tokens, state):
        """tokens [B] int, state (h, c, image_proj) -> (logits [B, V] float32, new state).

        Masking of labels already on the path is the sampler's job at decode time.
        """
        h, c, image_proj = state
        embedded = self.label_embedding(tokens)
        output, (h, c) = self.lstm.cell(embedded, [h, c], training=False)
        logits = self._scores(output, image_proj, training=False)
        return logits, (h, c, image_proj)

    def get_config(self):
        config = super().get_config()
        config.update(
            num_tokens=self.num_tokens,
            embed_dim=self.embed_dim,
            lstm_units=self.lstm_units,
            joint_activation=self.joint_activation,
            dropout=self.dropout_rate,
            mask_seen=self.mask_seen,
        )
        return config

    def compute_output_shape(self, features_shape, label_inputs_shape):
        return tuple(label_inputs_shape) + (self.num_tokens,)


__all__ = ["LabelDecoder", "END_ID", "START_ID"]
