"""tf.data input pipelines over the project's TFRecord shards."""
from __future__ import annotations

import collections
import dataclasses
import json
from typing import Dict, List, Optional, Sequence, Tuple, Union

import tensorflow as tf

from cnnrnn_tf import schema, uri
from cnnrnn_tf.errors import InputError
from cnnrnn_tf.uri import ensure_filesystem
from cnnrnn_tf.inputs.images import Augmentation, augment_image
from cnnrnn_tf.inputs.preprocessor import Preprocessor, sequence_targets  # noqa: F401  (re-exported)
from cnnrnn_tf.vocabulary import LabelVocabulary, label_rank

AUTOTUNE = tf.data.AUTOTUNE
MAX_LABELS_CAP = 16
# Written by the converters next to the shards: {"num_examples": N, "label_counts":
# {label: images with it}, "shards": [shard file basenames]} (an optional "max_labels",
# the most labels of one image, spares the training split its scan).
LABEL_COUNTS_FILE = "label_counts.json"


@dataclasses.dataclass
class LabelStats:
    """What one pass over the labels of a data folder tells (or its label_counts.json).

    ``label_lists`` (one label list per record) and ``max_labels`` are None when the
    stats come from ``label_counts.json`` (which has no per-record lists and may not
    have the longest label set).
    """

    num_examples: int
    label_lists: Optional[List[List[str]]]
    max_labels: Optional[int]
    label_counts: Dict[str, int] = dataclasses.field(default_factory=dict)
    source: str = "scan"  # "scan" or the path of the label_counts.json read

    def __post_init__(self):
        if not self.label_counts and self.label_lists is not None:
            counter: collections.Counter = collections.Counter()
            for labels in self.label_lists:
                counter.update(set(labels))
            self.label_counts = dict(counter)

    def vocabulary(self) -> LabelVocabulary:
        return LabelVocabulary.from_counts(self.label_counts)


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


def read_label_counts(files: Sequence[str]) -> Optional[LabelStats]:
    """The stats in the ``label_counts.json`` next to ``files``, or None.

    None unless every file lies in one folder whose label_counts.json lists exactly
    these shards (by basename) and parses: a folder holding more or fewer shards than
    were written (a glob over part of it, a shard added later) falls back to a scan.
    """
    folders = {uri.dirname(f) for f in files}
    if len(folders) != 1:
        return None
    path = uri.join(folders.pop(), LABEL_COUNTS_FILE)
    try:
        if not tf.io.gfile.exists(path):
            return None
        with tf.io.gfile.GFile(path, "r") as f:
            info = json.loads(f.read())
        shards = sorted(str(x) for x in info["shards"])
        counts = {str(k): int(v) for k, v in dict(info["label_counts"]).items()}
        num = int(info["num_examples"])
        longest = info.get("max_labels")
        longest = None if longest is None else int(longest)
    except (OSError, tf.errors.OpError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if shards != sorted(uri.basename(f) for f in files) or num <= 0:
        return None
    return LabelStats(num, None, longest, {k: v for k, v in counts.items() if v > 0},
                      source=path)


def scan_labels(data, require_labels: bool = True, use_counts_file: bool = True) -> LabelStats:
    """The label statistics of a data folder (or glob / list of shards).

    From its ``label_counts.json`` when that lists exactly the shards resolved
    (``use_counts_file``; no record is read then, so the records are not checked either),
    else by reading only the labels of every record, shard by shard, with clear errors.
    """
    files = resolve_files(data)
    if use_counts_file:
        stats = read_label_counts(files)
        if stats is not None:
            return stats
    label_lists: List[List[str]] = []
    spec = {schema.LABELS_KEY: tf.io.VarLenFeature(tf.string),
            schema.IMAGE_KEY: tf.io.FixedLenFeature([], tf.string, default_value="")}
    for path in files:
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
    if requested:
        return int(requested)
    if stats.max_labels is None:
        raise ValueError("these label stats do not know the longest label set; "
                         "scan the records (use_counts_file=False)")
    return int(min(max(stats.max_labels, 1), MAX_LABELS_CAP))


CACHE_MODES = ("auto", "memory", "disk", "none")


def choose_cache(mode: str, nbytes: int, budget_gb: float) -> str:
    """The cache a data set gets: "memory", "disk" or "none".

    ``mode`` "auto": memory when the decoded set (``nbytes``) fits the budget, else disk
    (a cache file read back every later epoch instead of re-decoding the images).
    """
    if mode not in CACHE_MODES:
        raise ValueError(f"cache must be one of {CACHE_MODES}, got {mode!r}")
    if mode != "auto":
        return mode
    return "memory" if nbytes <= float(budget_gb) * (1 << 30) else "disk"


def _without_autotune_thread(ds: tf.data.Dataset) -> tf.data.Dataset:
    """Turns off tf.data's autotuning model thread (AUTOTUNE values become fixed defaults).

    With it on (TF 2.16), destroying an iterator often blocks the caller until that
    thread's next wake-up, ~20 s measured here; Keras destroys the validation iterator at
    every epoch, and the training iterator at every epoch end when the data set's length
    is unknown. That stall, not the model, was the later-epoch slowdown of CNN-RNN
    (see BENCHMARKS.md, "Training speed").
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)


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
    cache: Union[bool, str] = True,
    repeat: bool = False,
    with_ids: bool = False,
    rank: Optional[Sequence[int]] = None,
    preprocessor: Optional[Preprocessor] = None,
    drop_remainder: bool = False,
    num_workers: int = 1,
    encoder=None,
    encode_batch_size: Optional[int] = None,
    shard: Optional[Tuple[int, int]] = None,
) -> tf.data.Dataset:
    """Batches for Keras, built by the :class:`~cnnrnn_tf.inputs.preprocessor.Preprocessor`.

    mode "sequence" (CNN-RNN): ({"images", "label_inputs", "label_set"}, targets [B, T]);
    ``label_set`` is the image's whole label set as multi-hot [B, K] (for the auxiliary loss:
    never cut at max_labels).
    mode "multi_hot" (BCE / ASL): ({"images"}, multi-hot [B, K]).
    mode "eval": ({"images"}, multi-hot [B, K]) in file order, plus "id" when with_ids.
    Images are float32 [B, S, S, 3] pixels in [0, 255] with uint8 values (exactly what the
    serving signatures compute). ``rank``: the label order as a rank per vocabulary index
    (default: from ``label_order`` and ``seed``). Shards are read in parallel (interleaved;
    training shuffles the file order too); mode "eval" keeps the file order.

    ``cache``: True (or "memory") keeps the decoded examples in memory, a path caches them
    to that file, False / "none" re-decodes every epoch.
    ``encoder``: a frozen image encoder (keras.Model): its features are computed once, when
    this function is called, in batches of ``encode_batch_size`` (default ``batch_size``),
    ``encoder(images, training=False)`` on the current strategy's devices
    (:func:`cnnrnn_tf.inputs.features.compute_features`; call it inside ``strategy.scope()``), and
    kept instead of the images: in memory, or streamed to the file ``cache`` names. The
    batches carry "features" (the encoder's output, any rank) in place of "images". Not
    with ``augment``.
    ``shard``: (n, i): only every n-th record from the i-th on (each of n workers reads its
    share of a split, before anything is decoded).
    ``augment`` (training only): True for colour jitter, or a
    :class:`~cnnrnn_tf.inputs.images.Augmentation`.
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
    spec = schema.feature_spec(require_labels=True)

    def parse(serialized):
        ex = tf.io.parse_single_example(serialized, spec)
        image = preprocessor.decode_image(ex[schema.IMAGE_KEY])  # uint8, as in serving
        labels = tf.sparse.to_dense(ex[schema.LABELS_KEY], default_value="")
        return image, preprocessor.label_ids(labels), ex[schema.ID_KEY]

    ds = _records(files, interleave=mode != "eval", training=training, seed=seed, shard=shard)
    ds = ds.map(parse, num_parallel_calls=AUTOTUNE, deterministic=True)
    augmentation = augment if isinstance(augment, Augmentation) else Augmentation(color=bool(augment))
    augmenting = augmentation.active and training
    if encoder is not None and augmenting:
        raise ValueError("make_dataset: encoder (precomputed features) and augment exclude "
                         "each other")
    ds = _cached(ds, cache, encoder, encode_batch_size or batch_size)
    if training:
        ds = ds.shuffle(4096, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    if augmenting:  # one random seed per example, reproducible from ``seed``
        ds = tf.data.Dataset.zip((ds, tf.data.Dataset.random(
            seed=seed, rerandomize_each_iteration=True).batch(2)))
        ds = ds.map(lambda example, aug_seed: (*example, aug_seed))

    to_model_inputs = _model_inputs(preprocessor, mode, with_ids, augmentation,
                                    features=encoder is not None)
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
    return _without_autotune_thread(ds.prefetch(AUTOTUNE))


def _records(files, *, interleave: bool, training: bool, seed: int, shard) -> tf.data.Dataset:
    """The serialized records of ``files``: interleaved across shards (the file order
    shuffled in training), or one shard after the other; only ``shard`` = (n, i)'s share."""
    if len(files) > 1 and interleave:
        ds = tf.data.Dataset.from_tensor_slices(files)
        if training:
            ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
        ds = ds.interleave(
            lambda f: tf.data.TFRecordDataset(f, compression_type=schema.COMPRESSION),
            cycle_length=min(len(files), 8), block_length=16,
            num_parallel_calls=min(len(files), 8), deterministic=True)
    else:  # file order: one shard after the other
        ds = tf.data.TFRecordDataset(files, compression_type=schema.COMPRESSION,
                                     buffer_size=1 << 20)
    return ds.shard(*shard) if shard is not None else ds


def _cached(ds: tf.data.Dataset, cache, encoder, encode_batch_size: int) -> tf.data.Dataset:
    """The decoded examples cached as ``cache`` says; with a frozen ``encoder``, its features
    computed now, on the strategy's devices, in their place."""
    cache_file = cache if isinstance(cache, str) and cache not in ("memory", "none") else None
    if encoder is not None:
        from cnnrnn_tf.inputs.features import compute_features

        return compute_features(ds, encoder, encode_batch_size, cache_file=cache_file)
    if cache_file is not None:
        return ds.cache(cache_file)
    if cache is True or cache == "memory":
        return ds.cache()
    return ds


def _model_inputs(preprocessor, mode: str, with_ids: bool, augmentation, *, features: bool):
    """The map from a decoded example (image, label ids, id[, augmentation seed]) to the
    model's (inputs, targets) in ``mode``."""
    pixels_key = "features" if features else "images"
    num_labels = preprocessor.num_labels

    def to_model_inputs(image, ids, image_id, aug_seed=None):
        if not features:
            image = tf.cast(image, tf.float32)
        if aug_seed is not None:
            image = augment_image(image, seed=aug_seed, augmentation=augmentation)
        y = tf.ensure_shape(preprocessor.multi_hot(ids), [num_labels])
        if mode == "sequence":
            inputs, targets = preprocessor.sequence(ids)
            return {pixels_key: image, "label_inputs": inputs, "label_set": y}, targets
        out = {pixels_key: image}
        if with_ids:
            out["id"] = image_id
        return out, y

    return to_model_inputs
