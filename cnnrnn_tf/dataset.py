"""tf.data input pipelines over the project's TFRecord shards."""
from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence

import numpy as np
import tensorflow as tf

from cnnrnn_tf import schema
from cnnrnn_tf.errors import InputError
from cnnrnn_tf.uri import ensure_filesystem
from cnnrnn_tf.losses import PAD_TARGET
from cnnrnn_tf.preprocessing import augment_image, decode_image
from cnnrnn_tf.vocabulary import END_ID, NUM_SPECIAL, START_ID, LabelVocabulary, label_rank

AUTOTUNE = tf.data.AUTOTUNE
MAX_LABELS_CAP = 16


@dataclasses.dataclass
class LabelStats:
    """What one pass over the labels of a data folder tells."""

    num_examples: int
    label_lists: List[List[str]]
    max_labels: int

    def vocabulary(self) -> LabelVocabulary:
        return LabelVocabulary.from_label_lists(self.label_lists)


def resolve_files(data) -> List[str]:
    """A data folder, a glob pattern or a list of shard paths -> shard paths."""
    if isinstance(data, (list, tuple)):
        files: List[str] = []
        for item in data:
            files.extend(resolve_files(item))
        if not files:
            raise InputError("no shard files given")
        return files
    data = str(data)
    ensure_filesystem(data)
    if any(ch in data for ch in "*?["):
        files = sorted(tf.io.gfile.glob(data))
        if not files:
            raise InputError(f"{data}: no files match this pattern")
        return files
    if tf.io.gfile.isdir(data):
        return schema.list_shards(data)
    if tf.io.gfile.exists(data):
        return [data]
    raise InputError(f"{data}: data folder does not exist")


def scan_labels(data, require_labels: bool = True) -> LabelStats:
    """Reads only the labels of every record, shard by shard, with clear errors."""
    label_lists: List[List[str]] = []
    spec = {schema.LABELS_KEY: tf.io.VarLenFeature(tf.string),
            schema.IMAGE_KEY: tf.io.FixedLenFeature([], tf.string, default_value="")}
    for path in resolve_files(data):
        ds = tf.data.TFRecordDataset(path, compression_type=schema.COMPRESSION).batch(1024)
        start = len(label_lists)
        try:
            for batch in ds:
                try:
                    parsed = tf.io.parse_example(batch, spec)
                except tf.errors.InvalidArgumentError:
                    raise InputError(
                        f"{path}: a record is not a tf.train.Example in the project schema "
                        f"(near record {len(label_lists) - start})"
                    ) from None
                images = parsed[schema.IMAGE_KEY].numpy()
                labels = tf.sparse.to_dense(parsed[schema.LABELS_KEY], default_value=b"").numpy()
                for i, row in enumerate(labels):
                    index = len(label_lists) - start
                    if not images[i]:
                        raise InputError(f"{path} record {index}: missing {schema.IMAGE_KEY!r}")
                    try:
                        names = [v.decode("utf-8") for v in row if v]
                    except UnicodeDecodeError:
                        raise InputError(
                            f"{path} record {index}: a value of {schema.LABELS_KEY!r} is not UTF-8"
                        ) from None
                    if require_labels and not names:
                        raise InputError(f"{path} record {index}: no {schema.LABELS_KEY!r}")
                    label_lists.append(list(dict.fromkeys(names)))
        except tf.errors.OpError as exc:
            raise InputError(
                f"{path}: corrupt or not a GZIP TFRecord shard ({exc.message.splitlines()[0]})"
            ) from None
    if not label_lists:
        raise InputError(f"{data}: the shards hold no records")
    longest = max(len(x) for x in label_lists)
    return LabelStats(len(label_lists), label_lists, longest)


def choose_max_labels(stats: LabelStats, requested: Optional[int] = None) -> int:
    return int(requested) if requested else int(min(max(stats.max_labels, 1), MAX_LABELS_CAP))


def _lookup_table(vocab: LabelVocabulary) -> tf.lookup.StaticHashTable:
    keys = tf.constant(list(vocab.labels))
    values = tf.range(len(vocab), dtype=tf.int32)
    return tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(keys, values), -1)


def label_ids_fn(vocab: LabelVocabulary, order: str = "frequent-first", seed: int = 0):
    """Returns fn(labels: string [n]) -> int32 vocabulary ids ordered for training.

    Unknown labels are dropped; duplicates keep their first occurrence.
    """
    table = _lookup_table(vocab)
    rank = tf.constant(label_rank(vocab, order, seed), tf.int32)

    def fn(labels):
        ids = table.lookup(labels)
        ids = tf.boolean_mask(ids, ids >= 0)
        ids, _ = tf.unique(ids)
        order_idx = tf.argsort(tf.gather(rank, ids), stable=True)
        return tf.gather(ids, order_idx)

    return fn


def sequence_targets(ids: tf.Tensor, max_labels: int):
    """Ordered label ids -> (inputs [T], targets [T]) with T = max_labels + 1.

    inputs  = START, l1, ..., ln, END-padding
    targets = l1, ..., ln, END, PAD_TARGET-padding   (token ids: label k -> k + 2)
    """
    tokens = ids[:max_labels] + NUM_SPECIAL
    n = tf.shape(tokens)[0]
    length = max_labels + 1
    inputs = tf.concat([[START_ID], tokens], 0)
    inputs = tf.pad(inputs, [[0, length - n - 1]], constant_values=END_ID)
    targets = tf.concat([tokens, [END_ID]], 0)
    targets = tf.pad(targets, [[0, length - n - 1]], constant_values=PAD_TARGET)
    inputs.set_shape([length])
    targets.set_shape([length])
    return inputs, targets


def make_dataset(
    data,
    vocab: LabelVocabulary,
    *,
    mode: str,
    image_size: int,
    batch_size: int,
    max_labels: int = 4,
    label_order: str = "frequent-first",
    seed: int = 0,
    training: bool = False,
    augment: bool = False,
    cache: bool = True,
    repeat: bool = False,
    with_ids: bool = False,
) -> tf.data.Dataset:
    """Batches for Keras.

    mode "sequence" (CNN-RNN): ({"images", "label_inputs"}, targets [B, T]).
    mode "multi_hot" (BCE / ASL): ({"images"}, multi-hot [B, K]).
    mode "eval": ({"images"}, multi-hot [B, K]) in file order, plus "id" when with_ids.
    Images are float32 [B, S, S, 3] pixels in [0, 255].
    """
    if mode not in ("sequence", "multi_hot", "eval"):
        raise ValueError(f"unknown mode {mode}")
    files = resolve_files(data)
    to_ids = label_ids_fn(vocab, label_order, seed)
    num_labels = len(vocab)
    spec = schema.feature_spec(require_labels=True)

    def parse(serialized):
        ex = tf.io.parse_single_example(serialized, spec)
        image = tf.cast(decode_image(ex[schema.IMAGE_KEY], image_size), tf.uint8)
        labels = tf.sparse.to_dense(ex[schema.LABELS_KEY], default_value="")
        return image, to_ids(labels), ex[schema.ID_KEY]

    ds = tf.data.TFRecordDataset(files, compression_type=schema.COMPRESSION)
    ds = ds.map(parse, num_parallel_calls=AUTOTUNE, deterministic=True)
    if cache:
        ds = ds.cache()
    if training:
        ds = ds.shuffle(4096, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()

    def to_model_inputs(image, ids, image_id):
        image = tf.cast(image, tf.float32)
        if augment and training:
            image = augment_image(image)
        if mode == "sequence":
            inputs, targets = sequence_targets(ids, max_labels)
            return {"images": image, "label_inputs": inputs}, targets
        y = tf.minimum(tf.reduce_sum(tf.one_hot(ids, num_labels, dtype=tf.float32), axis=0), 1.0)
        y = tf.ensure_shape(tf.reshape(y, [num_labels]), [num_labels])
        features = {"images": image}
        if with_ids:
            features["id"] = image_id
        return features, y

    ds = ds.map(to_model_inputs, num_parallel_calls=AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=False)
    return ds.prefetch(AUTOTUNE)
