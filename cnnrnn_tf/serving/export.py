"""The SavedModel export: the serving contract shared with the pipeline and TF Serving.

Signatures (names exactly as written; decoding and beam search run in the graph):

* ``serving_default``: input ``examples`` (string [batch], serialized tf.Example
  with ``image/encoded``) -> ``labels`` (string [batch, L], the predicted set in
  decoding order, padded with ""), ``scores`` (float32 [batch, L], padded with 0),
  ``label_count`` (int32 [batch]).
* ``predict_images``: input ``images`` (string [batch], PNG/JPEG bytes) -> the same.
* ``label_scores``: input ``examples`` -> ``probabilities`` (float32
  [batch, num_labels], vocabulary order).

L is the model's ``max_labels``.

Models trained with ``--decoder attention`` have one more:

* ``predict_attention``: input ``images`` (as ``predict_images``) -> its three outputs
  and ``attention`` (float32 [batch, L, h, w]): for each predicted label, the attention
  map over the encoder's h x w grid of the step that emitted it (sums to 1; zeros
  for padding).

Two more signatures serve the TFX Evaluator (TFMA), which needs dense
vocabulary-order vectors for both the label and the prediction:

* ``eval_labels``: input ``examples`` -> ``label_multi_hot`` (float32
  [batch, num_labels], the example's ``image/labels``; unknown names ignored;
  no model call, TFMA runs it as a preprocessing function);
* ``eval_predictions``: input ``examples`` -> ``predicted_multi_hot`` (float32
  [batch, num_labels], the beam-search set of ``serving_default``) and
  ``probabilities`` (as ``label_scores``).
"""
from __future__ import annotations

import uuid
from typing import Optional

import tensorflow as tf

from cnnrnn_tf import schema, uri
from cnnrnn_tf.errors import InputError
from cnnrnn_tf.io_utils import makedirs, publish_dir, remove_quietly
from cnnrnn_tf.inputs.preprocessor import Preprocessor
from cnnrnn_tf.vocabulary import LabelVocabulary

# The signature names (contract.SIGNATURES, EVAL_SIGNATURES) are re-exported for callers.
from cnnrnn_tf.serving.contract import EVAL_SIGNATURES, SAVED_MODEL_PB, SIGNATURES  # noqa: E402,F401
VOCAB_ASSET = "vocabulary.txt"


class ServingModule(tf.Module):
    """Wraps a trained model with its signatures: the three of SIGNATURES, the two of
    EVAL_SIGNATURES, and predict_attention for a model that attends."""

    def __init__(self, model, vocab: LabelVocabulary, image_size: int,
                 beam_size: Optional[int] = None, vocab_file: Optional[str] = None):
        super().__init__(name="cnnrnn_serving")
        self.model = model
        self.image_size = int(image_size)
        self.beam_size = int(beam_size or model.beam_size)
        self.num_labels = len(vocab)
        # The same preprocessor as tf.data: bit-identical pixels (see cnnrnn_tf.inputs.preprocessor).
        self.preprocessor = Preprocessor(self.image_size, vocab.labels)
        self.label_names = tf.constant([""] + list(vocab.labels))
        self.label_table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(list(vocab.labels)), tf.range(len(vocab), dtype=tf.int64)), -1)
        if vocab_file is not None:
            self.vocab_asset = tf.saved_model.Asset(vocab_file)
        # Only models with attention maps get (and trace) this signature.
        self.predict_attention = tf.function(
            self._predict_attention,
            input_signature=[tf.TensorSpec([None], tf.string, name="images")],
        ) if getattr(model, "attends", False) else None  # any Keras model may be exported

    def _decode(self, images):
        """Runs decode(); an empty batch returns empty outputs without running the model."""
        length = self.model.output_length

        def run():
            out = self.model.decode(images, beam_size=self.beam_size)
            return (tf.cast(out["label_ids"], tf.int32), tf.cast(out["scores"], tf.float32),
                    tf.cast(out["label_count"], tf.int32),
                    tf.cast(out["probabilities"], tf.float32))

        def empty():
            return (tf.zeros([0, length], tf.int32), tf.zeros([0, length], tf.float32),
                    tf.zeros([0], tf.int32), tf.zeros([0, self.num_labels], tf.float32))

        ids, scores, count, probs = tf.cond(tf.shape(images)[0] > 0, run, empty)
        ids = tf.ensure_shape(ids, [None, length])
        return {
            "labels": tf.gather(self.label_names, ids + 1),
            "scores": tf.ensure_shape(scores, [None, length]),
            "label_count": count,
        }, {"label_ids": ids, "probabilities": tf.ensure_shape(probs, [None, self.num_labels])}

    def _images_from_examples(self, examples):
        parsed = tf.io.parse_example(
            examples, {schema.IMAGE_KEY: tf.io.FixedLenFeature([], tf.string)})
        return self.preprocessor.decode_images(parsed[schema.IMAGE_KEY])

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def serve_examples(self, examples):
        outputs, _ = self._decode(self._images_from_examples(examples))
        return outputs

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    def predict_images(self, images):
        outputs, _ = self._decode(self.preprocessor.decode_images(images))
        return outputs

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def label_scores(self, examples):
        _, out = self._decode(self._images_from_examples(examples))
        return {"probabilities": tf.cast(out["probabilities"], tf.float32)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def eval_labels(self, examples):
        labels = tf.io.parse_example(
            examples, {schema.LABELS_KEY: tf.io.VarLenFeature(tf.string)})[schema.LABELS_KEY]
        ids = self.label_table.lookup(labels.values)
        known = ids >= 0
        index = tf.stack([tf.boolean_mask(labels.indices[:, 0], known),
                          tf.boolean_mask(ids, known)], axis=1)
        shape = tf.stack([tf.shape(examples, out_type=tf.int64)[0],
                          tf.constant(self.num_labels, tf.int64)])
        ones = tf.ones_like(index[:, 0], tf.float32)
        return {"label_multi_hot": tf.minimum(tf.scatter_nd(index, ones, shape), 1.0)}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    def eval_predictions(self, examples):
        _, out = self._decode(self._images_from_examples(examples))
        ids = tf.cast(out["label_ids"], tf.int32)  # -1 pads: one_hot gives zeros
        predicted = tf.reduce_max(tf.one_hot(ids, self.num_labels, dtype=tf.float32), axis=1)
        return {"predicted_multi_hot": predicted,
                "probabilities": tf.cast(out["probabilities"], tf.float32)}

    def _predict_attention(self, images):
        pixels = self.preprocessor.decode_images(images)
        outputs, out = self._decode(pixels)
        grid = tuple(self.model.encoder.output.shape[1:3])
        maps = tf.cond(
            tf.shape(pixels)[0] > 0,
            lambda: tf.cast(self.model.attention_maps(pixels, out["label_ids"]), tf.float32),
            lambda: tf.zeros((0, self.model.output_length) + grid, tf.float32))
        return {**outputs, "attention": tf.ensure_shape(
            maps, (None, self.model.output_length) + grid)}

    def signatures(self):
        extra = ({"predict_attention": self.predict_attention.get_concrete_function()}
                 if self.predict_attention is not None else {})
        return {
            **extra,
            "serving_default": self.serve_examples.get_concrete_function(),
            "predict_images": self.predict_images.get_concrete_function(),
            "label_scores": self.label_scores.get_concrete_function(),
            "eval_labels": self.eval_labels.get_concrete_function(),
            "eval_predictions": self.eval_predictions.get_concrete_function(),
        }


def export_saved_model(model, vocab: LabelVocabulary, image_size: int, out_dir: str,
                       beam_size: Optional[int] = None) -> str:
    """Writes the SavedModel under a temporary name beside ``out_dir``, then publishes it.

    An existing ``out_dir`` is replaced only once the new export is complete, so a reader
    never sees a half-written SavedModel (on object stores ``saved_model.pb`` is copied
    last: see :func:`cnnrnn_tf.io_utils.publish_dir`).
    """
    out_dir = uri.absolute(out_dir).rstrip("/")
    uri.ensure_filesystem(out_dir)
    try:
        if tf.io.gfile.exists(out_dir):
            # Replace only an earlier export (or an empty folder), never a user's file or folder.
            if not tf.io.gfile.isdir(out_dir):
                raise InputError(f"{out_dir}: exists and is not a folder; choose another --out")
            if (tf.io.gfile.listdir(out_dir)
                    and not tf.io.gfile.exists(uri.join(out_dir, SAVED_MODEL_PB))):
                raise InputError(f"{out_dir}: folder is not empty and holds no SavedModel "
                                 f"({SAVED_MODEL_PB}); choose another --out")
        parent = uri.dirname(out_dir) or "."
        makedirs(parent)
    except tf.errors.OpError as exc:
        raise uri.storage_error(out_dir, exc) from None
    tmp = uri.join(parent, f".tmp-export-{uuid.uuid4().hex[:8]}")
    try:
        tf.io.gfile.makedirs(tmp)
        vocab_file = uri.join(tmp, VOCAB_ASSET)
        with tf.io.gfile.GFile(vocab_file, "w") as f:
            f.write("".join(name + "\n" for name in vocab.labels))
        module = ServingModule(model, vocab, image_size, beam_size, vocab_file=vocab_file)
        saved = uri.join(tmp, "sm")
        tf.saved_model.save(module, saved, signatures=module.signatures())
        _write_warmup(saved, image_size)
        publish_dir(saved, out_dir, marker=SAVED_MODEL_PB)
    except tf.errors.OpError as exc:
        raise uri.storage_error(out_dir, exc, "cannot be written") from None
    finally:
        remove_quietly(tmp)
    return out_dir


def _write_warmup(saved_model_dir: str, image_size: int) -> None:
    """TF Serving warmup requests (assets.extra/), when the serving extra is installed."""
    try:
        from cnnrnn_tf.serving.warmup import write_warmup_requests
    except ImportError:  # core install: export without warmup requests
        return
    write_warmup_requests(saved_model_dir, image_size=image_size)
