"""A label decoder that looks at the image's feature map at every step.

Beyond the paper: the CNN-RNN of Wang et al. sees one global image vector I. Here the
encoder keeps its last feature map f_1..f_N (N = h x w grid cells) and, at every step,
the LSTM output attends over it (additive attention, as in Show, Attend and Tell and
the attention LSTM of Yazici et al., CVPR 2020), so each label can come from its own
place in the image:

    r(0)  = (tanh(W_h f̄), W_c f̄)           LSTM state from the mean feature f̄
    o(t), r(t) = LSTM(w_{l_{t-1}}, r(t-1))   the recurrent layer over the label path
    e_tj  = v^T tanh(W_k f_j + W_q o(t))     attention energies over the grid
    a_t   = softmax_j(e_tj)                  the attention map of step t
    c_t   = sum_j a_tj f_j                   the attended image representation
    x_t   = h(U_o o(t) + U_I c_t)            joint embedding (as the paper, with c_t for I)
    s(t)  = U_l^T x_t                        scores tied to the label embeddings

U_I c_t is computed as sum_j a_tj (U_I f_j): the grid is projected once per image, and
the decoding state carries (h, c, W_k f, U_I f). START / END, the masks and the tied
output layer are those of :class:`~cnnrnn_tf.models.label_decoder.LabelDecoder`.
"""
from __future__ import annotations

import keras
from keras import ops

from cnnrnn_tf.models.label_decoder import LabelDecoder


@keras.saving.register_keras_serializable(package="cnnrnn_tf")
class AttentionLabelDecoder(LabelDecoder):
    """LSTM over label embeddings with additive attention over a feature map.

    Args:
        num_tokens: labels + 2 (END, START).
        attention_dim: size of the attention space (W_k, W_q, v).
        **kwargs: those of :class:`LabelDecoder` (embed_dim, lstm_units,
            joint_activation, dropout, mask_seen, name).

    ``features`` are a feature map [B, h, w, C] (or already flattened [B, N, C]).
    """

    def __init__(self, num_tokens: int, attention_dim: int = 128, **kwargs):
        super().__init__(num_tokens, **kwargs)
        self.attention_dim = int(attention_dim)
        if self.attention_dim < 1:
            raise ValueError(f"attention_dim must be positive, got {attention_dim}")
        self.key_projection = keras.layers.Dense(
            self.attention_dim, use_bias=False, name="attention_keys")  # W_k
        self.query_projection = keras.layers.Dense(
            self.attention_dim, name="attention_query")  # W_q
        self.attention_energy = keras.layers.Dense(1, use_bias=False, name="attention_energy")  # v
        self.initial_h = keras.layers.Dense(self.lstm_units, activation="tanh", name="initial_h")
        self.initial_c = keras.layers.Dense(self.lstm_units, name="initial_c")

    def build(self, features_shape, label_inputs_shape=None):
        channels = features_shape[-1]
        super().build((None, channels))
        self.key_projection.build((None, None, channels))
        self.query_projection.build((None, None, self.lstm_units))
        self.attention_energy.build((None, self.attention_dim))
        self.initial_h.build((None, channels))
        self.initial_c.build((None, channels))
        self.built = True

    # ---- pieces ---------------------------------------------------------
    @staticmethod
    def grid(features):
        """[B, h, w, C] (or [B, N, C]) -> [B, N, C]."""
        shape = ops.shape(features)
        return ops.reshape(features, (shape[0], -1, shape[-1]))

    def memory(self, features):
        """What the steps attend to, computed once per image: (W_k f [B, N, A], U_I f [B, N, E]),
        and the LSTM's initial state from the mean feature."""
        grid = ops.cast(self.grid(features), self.compute_dtype)
        mean = ops.mean(grid, axis=1)
        keys = self.key_projection(grid)
        values = self.image_projection(grid)
        return keys, values, (self.initial_h(mean), self.initial_c(mean))

    def attend(self, outputs, keys, values):
        """outputs [B, T, U] -> (U_I c_t [B, T, E], attention [B, T, N] float32)."""
        query = self.query_projection(outputs)                           # [B, T, A]
        hidden = ops.tanh(ops.expand_dims(keys, 1) + ops.expand_dims(query, 2))  # [B, T, N, A]
        # v^T on a 2-D view: TensorFlow 2.16's oneDNN BatchMatMul gives wrong values (and
        # corrupts the heap) for a rank-4 x rank-2 product with a unit dimension, as
        # [B, 1, N, A] x [A, 1] is at every decoding step.
        shape = ops.shape(hidden)
        energy = ops.reshape(self.attention_energy(ops.reshape(hidden, (-1, self.attention_dim))),
                             (shape[0], shape[1], shape[2]))                # [B, T, N]
        attention = ops.softmax(ops.cast(energy, "float32"), axis=-1)
        context = ops.matmul(ops.cast(attention, values.dtype), values)  # [B, T, E]
        return context, attention

    def _teacher_forced(self, features, label_inputs, training=None):
        keys, values, state = self.memory(features)
        embedded = self.label_embedding(label_inputs)
        outputs, _, _ = self.lstm(embedded, initial_state=list(state), training=training)
        context, attention = self.attend(outputs, keys, values)
        return outputs, context, attention

    # ---- teacher forcing -----------------------------------------------
    def call(self, features, label_inputs, training=None):
        """features [B, h, w, C], label_inputs [B, T] int -> logits [B, T, num_tokens]."""
        outputs, context, _ = self._teacher_forced(features, label_inputs, training)
        logits = self._scores(outputs, context, training=training)
        if self.mask_seen:
            logits = logits + self.seen_mask(label_inputs)
        return logits

    def attention_maps(self, features, label_inputs):
        """The attention map of every step of the given paths: [B, T, h, w] float32 (each
        map sums to 1). For a decoded path (START, l_1, ..., l_n) the map of step t is where
        the decoder looked when it emitted l_t: the LSTM is deterministic, so this
        teacher-forced pass repeats the beam search's steps exactly."""
        _, _, attention = self._teacher_forced(features, label_inputs, training=False)
        shape = ops.shape(features)
        batch, steps = ops.shape(attention)[0], ops.shape(attention)[1]
        if len(features.shape) == 4:
            return ops.reshape(attention, (batch, steps, shape[1], shape[2]))
        return attention

    # ---- step-by-step decoding -----------------------------------------
    def initial_state(self, features):
        """The decoding state at START: (h, c, W_k f, U_I f)."""
        keys, values, (h, c) = self.memory(features)
        return (h, c, keys, values)

    def step(self, tokens, state):
        """tokens [B] int, state (h, c, keys, values) -> (logits [B, V] float32, new state)."""
        h, c, keys, values = state
        embedded = self.label_embedding(tokens)
        output, (h, c) = self.lstm.cell(embedded, [h, c], training=False)
        context, _ = self.attend(ops.expand_dims(output, 1), keys, values)
        logits = self._scores(output, context[:, 0], training=False)
        return logits, (h, c, keys, values)

    def get_config(self):
        config = super().get_config()
        config.update(attention_dim=self.attention_dim)
        return config
