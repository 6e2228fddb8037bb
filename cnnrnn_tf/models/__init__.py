"""Keras models: image encoders, the label decoder, CNN-RNN and the per-label baselines.

Importing this package registers every custom object with Keras, so that
``keras.saving.load_model`` can rebuild a saved ``.keras`` model.
"""
from cnnrnn_tf.models.attention_label_decoder import AttentionLabelDecoder
from cnnrnn_tf.models.cnn_rnn import CNNRNN
from cnnrnn_tf.models.label_decoder import LabelDecoder
from cnnrnn_tf.models.multilabel_classifier import MultiLabelClassifier
from cnnrnn_tf.models import encoders  # noqa: F401  registers CaffePreprocess

__all__ = ["AttentionLabelDecoder", "CNNRNN", "LabelDecoder", "MultiLabelClassifier", "build_model"]


def build_model(config, num_labels: int, max_labels: int, *, pretrained: bool = True):
    """Builds the model a TrainConfig describes (uncompiled).

    ``pretrained=False``: the encoder starts from a random initialisation whatever
    ``config.weights`` says (no download), for a caller that loads saved weights next.
    """
    from cnnrnn_tf.models.encoders import build_encoder

    trainable = True if config.fine_tune else None
    weights = None if not pretrained or config.weights in (None, "none") else config.weights
    attends = config.model == "cnn-rnn" and config.decoder == "attention"
    encoder = build_encoder(config.backbone, config.image_size, trainable=trainable,
                            weights=weights, seed=config.seed,
                            pooling=None if attends else "avg")
    if config.model == "cnn-rnn":
        return CNNRNN(encoder, num_labels, embed_dim=config.embed_dim,
                      lstm_units=config.lstm_units, max_labels=max_labels,
                      beam_size=config.beam_size, dropout=config.dropout,
                      alignment=config.label_order if config.label_order in ("pla", "mla")
                      else "none", label_head=config.label_head,
                      aux_loss_weight=config.aux_loss_weight, mask_seen=config.mask_seen,
                      decoder=config.decoder, attention_dim=config.attention_dim)
    return MultiLabelClassifier(encoder, num_labels, max_labels=max_labels,
                                threshold=0.5 if config.threshold is None else config.threshold,
                                dropout=config.dropout,
                                name=f"{config.model}_classifier")
