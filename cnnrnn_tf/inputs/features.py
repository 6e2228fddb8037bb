"""A frozen encoder's features, computed once on the accelerator before training.

A ``tf.data`` map runs on the host CPU, whatever devices the model trains on: a VGG16 or
ResNet50 inside the input pipeline computed every feature of a 100k-image split on the CPU
while the GPU waited. Here the input pipeline only decodes the images; the encoder runs as
a compiled ``tf.function`` on the devices of the current distribution strategy (every local
GPU of the worker, batches dealt round-robin), and the features go to memory or, streamed
batch by batch, to a cache file that the training and validation pipelines then read.
"""
from __future__ import annotations

import logging
from typing import List, Optional

import numpy as np
import tensorflow as tf

from cnnrnn_tf import uri

log = logging.getLogger(__name__)
_FEATURES, _IDS, _ID = "features", "label_ids", "id"


def strategy_devices(strategy: Optional[tf.distribute.Strategy] = None) -> List[Optional[str]]:
    """The local devices of ``strategy`` (default: the current one) that compute features:
    its replicas' devices on this worker; [None] (TensorFlow's default placement, the first
    GPU when there is one) for the default strategy."""
    strategy = strategy or tf.distribute.get_strategy()
    try:
        devices = list(strategy.extended.worker_devices)
    except (RuntimeError, NotImplementedError, AttributeError):  # the default strategy
        return [None]
    return devices or [None]


def encode_batches(batches: tf.data.Dataset, encoder, devices: Optional[List[Optional[str]]] = None):
    """Yields (features, label ids (ragged), image ids) per batch of ``batches``, a
    ragged-batched dataset of (images, label ids, image ids): ``encoder(images,
    training=False)`` as one compiled function, dispatched to ``devices`` (default
    :func:`strategy_devices`) in turn, a batch per device in flight at a time."""
    devices = devices or strategy_devices()
    step = tf.function(lambda images: encoder(images, training=False), reduce_retracing=True)
    pending = []

    def dispatch(item):
        images, ids, image_ids = item
        with tf.device(devices[len(pending) % len(devices)]):
            pending.append((step(tf.cast(images, tf.float32)), ids, image_ids))

    for item in batches:
        dispatch(item)
        if len(pending) == len(devices):  # one batch on every device: collect them
            yield from pending
            pending = []
    yield from pending


def compute_features(examples: tf.data.Dataset, encoder, batch_size: int, *,
                     cache_file: Optional[str] = None,
                     devices: Optional[List[Optional[str]]] = None) -> tf.data.Dataset:
    """(image, label ids, image id) examples -> a dataset of (features, label ids, image id)
    with the encoder's features, computed now (see :func:`encode_batches`), in the order of
    ``examples``.

    ``cache_file``: the features are streamed into this file (a TFRecord file, written
    under a temporary name and published when complete; a URI works) and read back from
    it, so a split larger than memory never is in memory at once. None: they are kept in
    memory.
    """
    batches = examples.ragged_batch(batch_size).prefetch(2)
    encoded = encode_batches(batches, encoder, devices)
    if cache_file is None:
        return _in_memory(encoded)
    return _in_file(encoded, cache_file)


def _in_memory(encoded) -> tf.data.Dataset:
    features, lengths, values, image_ids = [], [], [], []
    for feats, ids, ids_of_images in encoded:
        features.append(feats.numpy())
        lengths.append(ids.row_lengths().numpy())
        values.append(ids.flat_values.numpy())
        image_ids.append(ids_of_images.numpy())
    if not features:
        raise ValueError("compute_features: no examples")
    label_ids = tf.RaggedTensor.from_row_lengths(np.concatenate(values),
                                                 np.concatenate(lengths).astype(np.int64))
    return tf.data.Dataset.from_tensor_slices(
        (np.concatenate(features), label_ids, np.concatenate(image_ids)))


def _in_file(encoded, path: str) -> tf.data.Dataset:
    tmp = f"{path}.tmp-features"
    shape, dtype, label_dtype = None, None, None
    try:
        with tf.io.TFRecordWriter(tmp) as writer:
            for feats, ids, image_ids in encoded:
                feats = feats.numpy()
                shape, dtype, label_dtype = feats.shape[1:], feats.dtype, ids.dtype
                for f, row, image_id in zip(feats, ids.to_list(), image_ids.numpy()):
                    writer.write(tf.train.Example(features=tf.train.Features(feature={
                        _FEATURES: tf.train.Feature(bytes_list=tf.train.BytesList(
                            value=[f.tobytes()])),
                        _IDS: tf.train.Feature(int64_list=tf.train.Int64List(value=row)),
                        _ID: tf.train.Feature(bytes_list=tf.train.BytesList(value=[image_id])),
                    })).SerializeToString())
        if shape is None:
            raise ValueError("compute_features: no examples")
        tf.io.gfile.rename(tmp, path, overwrite=True)
    finally:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.remove(tmp)
    log.info("features of %s cached in %s", shape, uri.basename(path))
    spec = {_FEATURES: tf.io.FixedLenFeature([], tf.string),
            _IDS: tf.io.VarLenFeature(tf.int64),
            _ID: tf.io.FixedLenFeature([], tf.string)}

    def parse(serialized):
        ex = tf.io.parse_single_example(serialized, spec)
        feats = tf.reshape(tf.io.decode_raw(ex[_FEATURES], tf.as_dtype(dtype)), shape)
        return feats, tf.cast(tf.sparse.to_dense(ex[_IDS]), label_dtype), ex[_ID]

    return tf.data.TFRecordDataset(path, buffer_size=1 << 20).map(
        parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
