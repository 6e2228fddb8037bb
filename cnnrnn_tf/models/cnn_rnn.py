"""CNN-RNN: an image encoder plus the label decoder, with beam-search decoding."""
from __future__ import annotations

import keras
from keras import ops

from cnnrnn_tf.models.attention_label_decoder import AttentionLabelDecoder
from cnnrnn_tf.models.label_decoder import LabelDecoder
from cnnrnn_tf.models.multilabel_model import MultiLabelModel
from cnnrnn_tf.choices import DECODERS, LABEL_HEADS
from cnnrnn_tf.vocabulary import END_ID, NUM_SPECIAL, START_ID


@keras.saving.register_keras_serializable(package="cnnrnn_tf")
class CNNRNN(MultiLabelModel):
    """The CNN-RNN of Wang et al. (CVPR 2016).

    ``call({"images", "label_inputs"})`` runs teacher forcing and returns
    per-step logits [B, T, num_labels + 2]; :meth:`decode` runs beam search over
    label paths and returns label sets.

    Args:
        encoder: a keras.Model mapping float pixels [B, H, W, 3] in [0, 255] to
            features [B, D] (see ``cnnrnn_tf.models.encoders``), or to a feature map
            [B, h, w, D] for the attention decoder (``build_encoder(..., pooling=None)``).
        num_labels: size of the label vocabulary.
        max_labels: the longest label path decoded (labels, END excluded).
        beam_size: the default beam size of :meth:`decode`.
        alignment: "none" (train on the dataset's fixed label order), "pla" or
            "mla": orderless training (Yazici et al., CVPR 2020): each train / test
            step is ``cnnrnn_tf.models.orderless`` (one free-running pass, the targets
            re-ordered from its own probabilities, the loss on its logits).
            ``call`` and ``decode`` are the same in every mode.
        label_head: "none" (the paper's model), "aux" or "evidence". Beyond the paper:
            a per-label linear head on the image features (``label_head``, one logit
            z_k per label) trained with a binary cross-entropy on the image's label set
            (weight ``aux_loss_weight``), so the encoder gets a direct signal for every
            label of the image (semantic regularisation, Liu et al., CVPR 2017). With
            "evidence" the logits are also added to the decoder's scores at every step,
            s_k(t) = (U_l^T x_t)_k + z_k (0 for END): the visual evidence for a label no
            longer has to pass through the 64-d joint embedding, and a visible label that
            is unusual in the current label context is still emitted. "aux" uses the
            head for the loss only.
        aux_loss_weight: the weight of that binary cross-entropy.
        decoder: "global" (the paper's: one image vector I joins every step, see
            :class:`LabelDecoder`) or "attention" (beyond the paper: each step attends
            over the encoder's feature map, see :class:`AttentionLabelDecoder`; the
            label head then scores every cell, see :meth:`label_logits`). START / END, label orders,
            beam search, the label head and fine-tuning are the same for both.
        attention_dim: the attention decoder's attention size.
    """

    model_type = "cnn-rnn"
    decodes_sequences = True
    jit_decode = True

    def __init__(self, encoder, num_labels, embed_dim=64, lstm_units=256, max_labels=4,
                 beam_size=3, joint_activation="relu", dropout=0.0, mask_seen=True,
                 alignment="none", min_labels=1, label_head="none", aux_loss_weight=1.0,
                 decoder="global", attention_dim=128, **kwargs):
        super().__init__(**kwargs)
        from cnnrnn_tf.models.label_alignment import ALIGNMENTS

        if alignment not in ALIGNMENTS:
            raise ValueError(f"alignment must be one of {ALIGNMENTS}, got {alignment!r}")
        self.alignment = alignment
        self.encoder = encoder
        self.num_labels = int(num_labels)
        self.max_labels = int(max_labels)
        self.beam_size = int(beam_size)
        # Paths decode at least this many labels (END is masked before): every
        # training image has a label, so an empty set is never a right answer.
        self.min_labels = int(min_labels)
        if decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
        self.decoder_type = decoder
        common = dict(embed_dim=embed_dim, lstm_units=lstm_units,
                      joint_activation=joint_activation, dropout=dropout, mask_seen=mask_seen,
                      name="label_decoder")
        if decoder == "attention":
            self.decoder = AttentionLabelDecoder(self.num_labels + NUM_SPECIAL,
                                                 attention_dim=attention_dim, **common)
        else:
            self.decoder = LabelDecoder(self.num_labels + NUM_SPECIAL, **common)
        if label_head not in LABEL_HEADS:
            raise ValueError(f"label_head must be one of {LABEL_HEADS}, got {label_head!r}")
        self.label_head_mode = label_head
        self.aux_loss_weight = float(aux_loss_weight)
        if self.aux_loss_weight < 0:
            raise ValueError(f"aux_loss_weight must be >= 0, got {aux_loss_weight}")
        self.label_evidence = label_head == "evidence"
        self.label_head = (keras.layers.Dense(self.num_labels, name="label_head")
                           if label_head != "none" else None)

    def evidence(self, features, aux_logits=None):
        """Per-token visual evidence added to the decoder's scores at every step, or None.

        [B, num_tokens] float32: the label head's logit for each label, 0 for END and
        START (START stays masked by the decoder).
        """
        if not self.label_evidence:
            return None
        if aux_logits is None:
            aux_logits = self.label_logits(features)
        aux_logits = ops.cast(aux_logits, "float32")
        return ops.pad(aux_logits, [[0, 0], [NUM_SPECIAL, 0]])

    def label_logits(self, features):
        """The label head's logit per label [B, num_labels].

        On a feature vector: a linear layer. On a feature map (the attention decoder): the
        same layer on every grid cell, then the mean over the cells plus the maximum
        (class-specific residual attention, Zhu & Wu, ICCV 2021, with an infinite
        temperature): the average pooling of the global model, plus the best cell for each
        label, so a small object is not averaged away by the background.
        """
        if len(features.shape) == 2:
            return self.label_head(features)
        shape = ops.shape(features)
        # Dense on a 2-D view (TF 2.16's oneDNN rank-4 matmul bug; see the decoder).
        cells = ops.reshape(self.label_head(ops.reshape(features, (-1, shape[-1]))),
                            (shape[0], -1, self.num_labels))
        return ops.mean(cells, axis=1) + ops.max(cells, axis=1)

    @property
    def attends(self) -> bool:
        return self.decoder_type == "attention"

    def start_state(self, features):
        """The decoding state at START for :meth:`step` (the beam search's state):
        the decoder's state, followed by the evidence when the model adds it."""
        state = self.decoder.initial_state(features)
        evidence = self.evidence(features)
        return state if evidence is None else state + (evidence,)

    def step(self, tokens, state):
        """One decoding step: the decoder's step, plus the visual evidence if any."""
        if not self.label_evidence:
            return self.decoder.step(tokens, state)
        *decoder_state, evidence = state
        logits, new_state = self.decoder.step(tokens, tuple(decoder_state))
        return logits + evidence, new_state + (evidence,)

    def call(self, inputs, training=None):
        return self.teacher_forced(inputs, training=training)[0]

    def teacher_forced(self, inputs, training=None):
        """(teacher-forced logits [B, T, V], the weighted label-head loss or 0).

        The label-head loss needs ``inputs["label_set"]``; the training and validation
        steps add it to the sequence loss (``cnnrnn_tf.models.orderless.train_step``), so
        val_loss is the loss optimised. It is not an ``add_loss``: the replicas of a
        MirroredStrategy share the model's list of added losses, and their threads take
        turns at every cross-replica point of the call (the small CNN's synchronized
        BatchNormalization), so one replica's step could take another's loss; and an
        eager build that nothing rebuilds before ``fit`` (``compile_model`` on several
        workers) left its value in ``model.losses``, added to every loss of the PLA /
        MLA steps, which call the model's parts, not the model.
        """
        features = self.encode(inputs, training=training)
        logits = self.decoder(features, inputs["label_inputs"], training=training)
        aux = 0.0
        if self.label_head is not None:
            aux_logits = self.label_logits(features)
            if self.aux_loss_weight > 0 and "label_set" in inputs:
                aux = self.aux_loss_weight * self.label_set_loss(
                    inputs["label_set"], ops.cast(aux_logits, "float32"))
            evidence = self.evidence(features, aux_logits)
            if evidence is not None:
                logits = logits + evidence[:, None, :]
        return logits, aux

    def label_set_loss(self, label_set, aux_logits):
        """Mean per-label binary cross-entropy of the image's whole label set.

        ``label_set``: multi-hot [B, num_labels] from the preprocessor (every label of the
        image, never cut at max_labels like the teacher-forcing inputs are).
        """
        return ops.mean(keras.losses.binary_crossentropy(
            ops.cast(label_set, "float32")[..., None], aux_logits[..., None], from_logits=True))

    def example_inputs(self, image_size, batch_size=1):
        import numpy as np

        inputs = super().example_inputs(image_size, batch_size)
        inputs["label_inputs"] = np.full((batch_size, 1), START_ID, "int32")
        return inputs

    def label_weights(self):
        # label embedding [tokens, dim]: label rows start after END and START
        out = [(self.decoder.label_embedding.embeddings, 0, NUM_SPECIAL)]
        if self.label_head is not None:
            out += [(self.label_head.kernel, 1, 0), (self.label_head.bias, 0, 0)]
        return out

    def decode_features(self, features, beam_size=None, max_labels=None):
        """Beam search from the encoder's features [B, D] (see ``MultiLabelModel.decode``).

        ``probabilities``: the maximum over the best path's steps of each label's
        probability (see README).
        """
        from cnnrnn_tf.models.beam_search import beam_search

        result = beam_search(
            self.step, self.start_state(features), batch_size=ops.shape(features)[0],
            num_tokens=self.num_labels + NUM_SPECIAL,
            beam_size=int(beam_size or self.beam_size),
            max_length=int(max_labels or self.max_labels),
            end_id=END_ID, start_id=START_ID, forbidden_ids=(START_ID,), no_repeat=True,
            min_length=self.min_labels,
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

    def attention_maps(self, images, label_ids):
        """Where the attention decoder looked for each label of the given paths.

        ``images``: float32 pixels [B, S, S, 3]; ``label_ids``: int [B, L] vocabulary
        indices in decoding order, -1 padded (as :meth:`decode` returns them).
        Returns float32 [B, L, h, w]: the attention map of the step that emitted each
        label (each sums to 1; zeros for padding).
        """
        if not self.attends:
            raise ValueError("attention maps need a model trained with --decoder attention")
        features = self.encoder(images, training=False)
        label_ids = ops.cast(label_ids, "int32")
        valid = label_ids >= 0
        tokens = ops.where(valid, label_ids + NUM_SPECIAL, END_ID)
        start = ops.full((ops.shape(tokens)[0], 1), START_ID, dtype="int32")
        maps = self.decoder.attention_maps(features, ops.concatenate([start, tokens[:, :-1]], 1))
        return maps * ops.cast(valid, maps.dtype)[:, :, None, None]

    # ---- the steps: teacher forcing (a fixed label order) or PLA / MLA -------
    def _step_forward(self):
        from cnnrnn_tf.models import orderless

        if self.alignment == "none":
            return orderless.teacher_forced_forward
        return orderless.forward

    def train_step(self, data):
        from cnnrnn_tf.models import orderless

        return orderless.train_step(self, data, forward=self._step_forward())

    def test_step(self, data):
        from cnnrnn_tf.models import orderless

        return orderless.test_step(self, data, forward=self._step_forward())

    def get_config(self):
        config = super().get_config()
        d = self.decoder
        config.update(
            encoder=keras.saving.serialize_keras_object(self.encoder),
            num_labels=self.num_labels, embed_dim=d.embed_dim, lstm_units=d.lstm_units,
            max_labels=self.max_labels, beam_size=self.beam_size,
            joint_activation=d.joint_activation, dropout=d.dropout_rate, mask_seen=d.mask_seen,
            alignment=self.alignment, min_labels=self.min_labels,
            label_head=self.label_head_mode, aux_loss_weight=self.aux_loss_weight,
            decoder=self.decoder_type,
        )
        if self.attends:
            config["attention_dim"] = d.attention_dim
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["encoder"] = keras.saving.deserialize_keras_object(config["encoder"])
        return cls(**config)
