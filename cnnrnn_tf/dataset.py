"""tf.data input pipelines over the project's TFRecord shards."""
from __future__ import annotations

import dataclasses
from typing import List, Optional, Sequence

import tensorflow as tf

from cnnrnn_tf import schema
from cnnrnn_tf.errors import InputError
from cnnrnn_tf.uri import ensure_filesystem
from cnnrnn_tf.preprocessing import Augmentation, augment_image
from cnnrnn_tf.preprocessor import Preprocessor, sequence_targets  # noqa: F401  (re-exported)
from cnnrnn_tf.vocabulary import LabelVocabulary, label_rank

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
    augment=False,
    cache: bool = True,
    repeat: bool = False,
    with_ids: bool = False,
    rank: Optional[Sequence[int]] = None,
    preprocessor: Optional[Preprocessor] = None,
    drop_remainder: bool = False,
    num_workers: int = 1,
) -> tf.data.Dataset:
    """Batches for Keras, built by the :class:`~cnnrnn_tf.preprocessor.Preprocessor`.

    mode "sequence" (CNN-RNN): ({"images", "label_inputs", "label_set"}, targets [B, T]);
    ``label_set`` is the image's whole label set as multi-hot [B, K] (for the auxiliary loss:
    never cut at max_labels).
    mode "multi_hot" (BCE / ASL): ({"images"}, multi-hot [B, K]).
    mode "eval": ({"images"}, multi-hot [B, K]) in file order, plus "id" when with_ids.
    Images are float32 [B, S, S, 3] pixels in [0, 255] with uint8 values (exactly what the
    serving signatures compute). ``rank``: the label order as a rank per vocabulary index
    (default: from ``label_order`` and ``seed``). Shards are read in parallel (interleaved;
    in file order unless training, where the file order is shuffled too).
    ``augment`` (training only): True for colour jitter, or a
    :class:`~cnnrnn_tf.preprocessing.Augmentation`.
    ``batch_size`` is the global batch: a distribution strategy splits it over its replicas.
    ``drop_remainder``: no last partial batch (on several replicas it could leave one of
    them an empty batch, which TensorFlow's CPU convolution rejects).
    ``num_workers``: the processes of a multi-worker strategy that share the batches.
    """
    if mode not in ("sequence", "multi_hot", "eval"):
        raise ValueError(f"unknown mode {mode}")
    files = resolve_files(data)
    if preprocessor is None:
        preprocessor = Preprocessor(
            image_size, vocab.labels,
            label_rank(vocab, label_order, seed) if rank is None else rank,
            max_labels=max_labels)
    num_labels = preprocessor.num_labels
    spec = schema.feature_spec(require_labels=True)

    def parse(serialized):
        ex = tf.io.parse_single_example(serialized, spec)
        image = preprocessor.decode_image(ex[schema.IMAGE_KEY])  # uint8, as in serving
        labels = tf.sparse.to_dense(ex[schema.LABELS_KEY], default_value="")
        return image, preprocessor.label_ids(labels), ex[schema.ID_KEY]

    if training and len(files) > 1:
        ds = tf.data.Dataset.from_tensor_slices(files).shuffle(
            len(files), seed=seed, reshuffle_each_iteration=True)
        ds = ds.interleave(
            lambda f: tf.data.TFRecordDataset(f, compression_type=schema.COMPRESSION),
            cycle_length=min(len(files), 8), block_length=16,
            num_parallel_calls=min(len(files), 8), deterministic=True)
    else:  # file order: one shard after the other
        ds = tf.data.TFRecordDataset(files, compression_type=schema.COMPRESSION)
    ds = ds.map(parse, num_parallel_calls=AUTOTUNE, deterministic=True)
    if cache:
        ds = ds.cache()
    if training:
        ds = ds.shuffle(4096, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    augmentation = augment if isinstance(augment, Augmentation) else Augmentation(color=bool(augment))
    augmenting = augmentation.active and training
    if augmenting:  # one random seed per example, reproducible from ``seed``
        ds = tf.data.Dataset.zip((ds, tf.data.Dataset.random(
            seed=seed, rerandomize_each_iteration=True).batch(2)))
        ds = ds.map(lambda example, aug_seed: (*example, aug_seed))

    def to_model_inputs(image, ids, image_id, aug_seed=None):
        image = tf.cast(image, tf.float32)
        if aug_seed is not None:
            image = augment_image(image, seed=aug_seed, augmentation=augmentation)
        y = tf.ensure_shape(preprocessor.multi_hot(ids), [num_labels])
        if mode == "sequence":
            inputs, targets = preprocessor.sequence(ids)
            return {"images": image, "label_inputs": inputs, "label_set": y}, targets
        features = {"images": image}
        if with_ids:
            features["id"] = image_id
        return features, y

    ds = ds.map(to_model_inputs, num_parallel_calls=AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    if num_workers > 1:
        # Every worker reads all the records and keeps its part of each global batch: the
        # batches are those of one machine, and no worker runs out of data before another
        # (FILE sharding would give each its own shards, of unequal sizes).
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.DATA)
        ds = ds.with_options(options)
    return ds.prefetch(AUTOTUNE)
