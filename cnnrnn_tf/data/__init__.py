"""Data sets and converters that write data folders of GZIP TFRecord shards.

* :mod:`cnnrnn_tf.data.fashion_outfits`: the built-in default data set,
  Fashion-MNIST items composed into multi-label outfit scenes;
  :mod:`cnnrnn_tf.data.outfit_grammar`: its label grammar (and the independent control).
* :mod:`cnnrnn_tf.data.writing`: the shard-writing engine the converters share.
* :mod:`cnnrnn_tf.data.converters`: CSV, MS-COCO and Pascal VOC converters
  (:mod:`cnnrnn_tf.data.beam_writer`: their Apache Beam path).
* :mod:`cnnrnn_tf.data.split`: carving a val split out of a train folder
  (``cnnrnn data split``), by a stable hash, copying records byte for byte.
* :mod:`cnnrnn_tf.data.idx`: the IDX (MNIST) file reader.
"""
from cnnrnn_tf.data.converters import convert_coco, convert_csv, convert_voc
from cnnrnn_tf.data.writing import BadImageError, ConversionSummary, read_checked_image
from cnnrnn_tf.data.fashion_outfits import build_fashion_outfits, item_pools, load_fashion_mnist
from cnnrnn_tf.data.outfit_grammar import (
    OUTFIT_LABELS,
    OUTFIT_STYLES,
    describe_grammar,
    label_frequencies,
    make_label_sampler,
)
from cnnrnn_tf.data.idx import read_idx, read_idx_images, read_idx_labels, write_idx
from cnnrnn_tf.data.split import split_train_val, val_point

__all__ = [
    "BadImageError",
    "ConversionSummary",
    "OUTFIT_LABELS",
    "OUTFIT_STYLES",
    "build_fashion_outfits",
    "convert_coco",
    "convert_csv",
    "convert_voc",
    "describe_grammar",
    "item_pools",
    "label_frequencies",
    "load_fashion_mnist",
    "make_label_sampler",
    "read_idx",
    "read_idx_images",
    "read_idx_labels",
    "read_checked_image",
    "split_train_val",
    "val_point",
    "write_idx",
]
