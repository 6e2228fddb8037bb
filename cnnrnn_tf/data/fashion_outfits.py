"""The built-in default data set: "Fashion-MNIST outfits".

Each example is a 64x64 grayscale scene (PNG) of 1 to 4 real Fashion-MNIST
items on black, labelled with the items' class names. The items of a scene
are not independent: a scene is an *outfit* drawn from a small grammar, so the
labels co-occur the way clothes do (a coat comes with ankle boots, a dress
with sandals and a bag). This label structure is what a CNN-RNN can exploit
over a plain multi-label classifier: look-alike items (shirt / t-shirt /
pullover / coat, sandal / sneaker / ankle-boot) are easier to tell apart from
the rest of the outfit.

Labels and their co-occurrence come from :mod:`cnnrnn_tf.data.outfit_grammar` (the outfit
grammar, and its ``independent`` control variant, with the same label frequencies).

Scenes. The canvas (``image_size``, default 64) is split into a 2x2 grid of
cells; each item (a 28x28 Fashion-MNIST image drawn uniformly from its class
in the split) goes into its own random cell with a random offset of
0..(cell - 28) pixels (0..4 at 64x64); overlapping pixels take the maximum.
Labels are stored in the order the items were drawn.

Splits. The three splits never share a Fashion-MNIST item (see
:func:`item_pools`): train scenes use the first five sixths of Fashion-MNIST's
train images by index (0..49,999), val scenes the last sixth (50,000..59,999,
held back from train), test scenes its test images. Each split is drawn from
``numpy.random.default_rng([seed, k])`` (k = 0 train, 1 test, 2 val), so a seed
gives byte-identical shards, and the val and test scenes do not depend on the
other splits' sizes.

Source files: :func:`load_fashion_mnist` reads the four IDX files from
``source_dir``, else ``$CNNRNN_FASHION_MNIST_DIR``, else
``/usr/share/datasets/fashion-mnist`` (Debian/Ubuntu package
``dataset-fashion-mnist``), else downloads them with
``keras.datasets.fashion_mnist.load_data()``.
"""
from __future__ import annotations

import io
import os
import sys
from collections import Counter
from typing import Dict, List, Optional, Tuple

import numpy as np

from cnnrnn_tf.data.writing import (
    LABEL_COUNTS_FILE,
    ConversionSummary,
    check_no_shards,
    output_guard,
    write_label_counts,
)
from cnnrnn_tf.data.idx import read_idx_images, read_idx_labels
from cnnrnn_tf.data.outfit_grammar import OUTFIT_LABELS, check_grammar, make_label_sampler
from cnnrnn_tf import uri
from cnnrnn_tf.errors import InputError
from cnnrnn_tf.schema import ShardWriter

ENV_VAR = "CNNRNN_FASHION_MNIST_DIR"
DEFAULT_SOURCE_DIR = "/usr/share/datasets/fashion-mnist"
# (split, images file, labels file); each may also end in .gz.
SOURCE_FILES: Tuple[Tuple[str, str, str], ...] = (
    ("train", "train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    ("test", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
)
ITEM_SIZE = 28
# Splits in the order they are written, each with its Fashion-MNIST split and rng stream.
SPLITS: Tuple[str, ...] = ("train", "val", "test")
_SOURCE_SPLIT = {"train": "train", "val": "train", "test": "test"}
_RNG_STREAM = {"train": 0, "test": 1, "val": 2}
# The last 1/VAL_HOLDBACK of the train images (10,000 of 60,000) are val's items.
VAL_HOLDBACK = 6
RECORDS_PER_SHARD = 2048
PROGRESS_EVERY = 2000

HOW_TO_GET = (
    "install it with `sudo apt-get install dataset-fashion-mnist` (files in "
    f"{DEFAULT_SOURCE_DIR}), or set {ENV_VAR} to a folder holding "
    "train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz "
    "and t10k-labels-idx1-ubyte.gz (from https://github.com/zalandoresearch/fashion-mnist)"
)


# --------------------------------------------------------------------------- source


def _find_file(folder: str, stem: str) -> Optional[str]:
    for name in (stem + ".gz", stem):
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    return None


def _load_folder(folder: str, origin: str) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    if not os.path.isdir(folder):
        raise InputError(f"{folder} ({origin}): Fashion-MNIST folder does not exist; {HOW_TO_GET}")
    out: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}
    for split, images_stem, labels_stem in SOURCE_FILES:
        paths = []
        for stem in (images_stem, labels_stem):
            path = _find_file(folder, stem)
            if path is None:
                raise InputError(
                    f"{os.path.join(folder, stem)}.gz ({origin}): Fashion-MNIST file is missing; "
                    f"{HOW_TO_GET}"
                )
            paths.append(path)
        images, labels = read_idx_images(paths[0]), read_idx_labels(paths[1])
        out[split] = _check_split(images, labels, f"{paths[0]} / {paths[1]}")
    return out


def _check_split(images: np.ndarray, labels: np.ndarray, where: str) -> Tuple[np.ndarray, np.ndarray]:
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim != 3 or images.shape[1:] != (ITEM_SIZE, ITEM_SIZE):
        raise InputError(f"{where}: expected {ITEM_SIZE}x{ITEM_SIZE} images, got shape {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise InputError(f"{where}: {len(images)} images but {labels.shape} labels")
    if len(labels) and int(labels.max()) >= len(OUTFIT_LABELS):
        raise InputError(f"{where}: label {int(labels.max())} is not a Fashion-MNIST class (0..9)")
    return images.astype(np.uint8, copy=False), labels.astype(np.uint8, copy=False)


def load_fashion_mnist(source_dir: Optional[str] = None) -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
    """Loads Fashion-MNIST: {"train": (images, labels), "test": (images, labels)}.

    Images are uint8 [n, 28, 28], labels uint8 [n] (classes 0..9, see
    OUTFIT_LABELS). Looks in source_dir, else $CNNRNN_FASHION_MNIST_DIR, else
    /usr/share/datasets/fashion-mnist, else tries keras' download. A folder
    given explicitly (argument or environment) must hold the four IDX files
    (``.gz`` or plain). Raises InputError saying how to get the data.
    """
    if source_dir is not None:
        return _load_folder(os.fspath(source_dir), "source_dir")
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return _load_folder(env, f"${ENV_VAR}")
    if all(
        _find_file(DEFAULT_SOURCE_DIR, stem) for _, *stems in SOURCE_FILES for stem in stems
    ):
        return _load_folder(DEFAULT_SOURCE_DIR, "default location")
    try:
        import keras

        (x_train, y_train), (x_test, y_test) = keras.datasets.fashion_mnist.load_data()
    except Exception as exc:  # offline, proxy, ...
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(
            f"Fashion-MNIST: not found in {DEFAULT_SOURCE_DIR} and the download failed "
            f"({first}); {HOW_TO_GET}"
        ) from None
    return {
        "train": _check_split(x_train, y_train, "keras fashion_mnist train"),
        "test": _check_split(x_test, y_test, "keras fashion_mnist test"),
    }


# --------------------------------------------------------------------------- scenes


def _render_scene(
    labels: List[str],
    images: np.ndarray,
    by_class: List[np.ndarray],
    image_size: int,
    rng: np.random.Generator,
) -> np.ndarray:
    cell = image_size // 2
    jitter = cell - ITEM_SIZE
    canvas = np.zeros((image_size, image_size), dtype=np.uint8)
    cells = rng.permutation(4)[: len(labels)]
    for label, cell_index in zip(labels, cells):
        pool = by_class[OUTFIT_LABELS.index(label)]
        item = images[pool[int(rng.integers(len(pool)))]]
        dy, dx = (int(v) for v in rng.integers(0, jitter + 1, size=2))
        row, col = divmod(int(cell_index), 2)
        y, x = row * cell + dy, col * cell + dx
        region = canvas[y : y + ITEM_SIZE, x : x + ITEM_SIZE]
        np.maximum(region, item, out=region)
    return canvas


def _png(canvas: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(canvas).save(buf, format="PNG")
    return buf.getvalue()


def _check_count(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"{name}: must be a positive integer, got {value!r}")
    return int(value)


def item_pools(source: Dict[str, Tuple[np.ndarray, np.ndarray]]) -> Dict[str, np.ndarray]:
    """The Fashion-MNIST item indices each split draws from: {"train", "val", "test"}.

    ``source`` is what :func:`load_fashion_mnist` returns. "train" and "val" index
    into its train images ("val": the last ``len // VAL_HOLDBACK``, i.e. 50,000..59,999
    of Fashion-MNIST's 60,000; "train": the ones before), "test" into its test
    images. So no item is shared between two splits.
    """
    num_train = len(source["train"][1])
    held_back = num_train - num_train // VAL_HOLDBACK
    return {
        "train": np.arange(held_back),
        "val": np.arange(held_back, num_train),
        "test": np.arange(len(source["test"][1])),
    }


def _class_pools(split: str, classes: np.ndarray, items: np.ndarray) -> List[np.ndarray]:
    """Per class, the indices (into the source split) of ``items`` of that class."""
    by_class = [items[classes[items] == c] for c in range(len(OUTFIT_LABELS))]
    for c, pool in enumerate(by_class):
        if not len(pool):
            where = f"Fashion-MNIST {_SOURCE_SPLIT[split]} split"
            if split == "val":
                where += f" (its last {len(items)} images, held back for val)"
            raise InputError(f"{where}: no image of class {c} ({OUTFIT_LABELS[c]})")
    return by_class


def build_fashion_outfits(
    out_dir: str,
    num_train: int = 10000,
    num_test: int = 2000,
    seed: int = 0,
    grammar: str = "outfits",
    source_dir: Optional[str] = None,
    image_size: int = 64,
    progress: bool = True,
    *,
    num_val: Optional[int] = None,
) -> Dict[str, ConversionSummary]:
    """Builds the Fashion-MNIST outfits data set in out_dir/train, out_dir/val and out_dir/test.

    Writes ``num_train`` scenes from the first five sixths of Fashion-MNIST's
    train images, ``num_val`` (keyword only; default ``num_test``) from the last
    sixth, and ``num_test`` from its test images (:func:`item_pools`: no item is
    in two splits), as GZIP TFRecord shards (``train-00000-of-00005.tfrecord.gz``
    ...) with ids ``train-000000``, ``val-000000``, ``test-000000``, ..., and a
    ``label_counts.json`` in each split folder. Deterministic for a seed.
    Refuses (InputError) when out_dir/train, out_dir/val or out_dir/test already
    holds shards; on any error nothing is left behind. Prints a progress line to
    stderr every 2000 scenes when progress.

    Returns:
        {"train": ConversionSummary, "val": ConversionSummary, "test": ConversionSummary}.
    """
    out_dir = os.fspath(out_dir)
    num_train = _check_count("num_train", num_train)
    num_test = _check_count("num_test", num_test)
    num_val = num_test if num_val is None else _check_count("num_val", num_val)
    check_grammar(grammar)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed: must be a non-negative integer, got {seed!r}")
    if (
        isinstance(image_size, bool)
        or not isinstance(image_size, (int, np.integer))
        or image_size < 2 * ITEM_SIZE
        or image_size % 2
    ):
        raise InputError(
            f"image_size: must be an even integer >= {2 * ITEM_SIZE} (2x2 cells of at least "
            f"{ITEM_SIZE} pixels), got {image_size!r}"
        )
    counts = {"train": num_train, "val": num_val, "test": num_test}
    split_dirs = {split: uri.join(out_dir, split) for split in SPLITS}
    for split_dir in split_dirs.values():
        check_no_shards(split_dir)
    source = load_fashion_mnist(source_dir)
    pools = item_pools(source)
    sample_labels = make_label_sampler(grammar)
    summaries: Dict[str, ConversionSummary] = {}
    with output_guard(out_dir, *split_dirs.values()) as written:
        for split in SPLITS:
            count = counts[split]
            images, classes = source[_SOURCE_SPLIT[split]]
            by_class = _class_pools(split, classes, pools[split])
            rng = np.random.default_rng([int(seed), _RNG_STREAM[split]])
            label_counts: Counter = Counter()
            with ShardWriter(split_dirs[split], prefix=split, records_per_shard=RECORDS_PER_SHARD) as writer:
                for i in range(count):
                    labels = sample_labels(rng)
                    canvas = _render_scene(labels, images, by_class, int(image_size), rng)
                    writer.write_record(_png(canvas), labels, f"{split}-{i:06d}")
                    label_counts.update(labels)
                    if progress and ((i + 1) % PROGRESS_EVERY == 0 or i + 1 == count):
                        print(f"fashion-outfits: {split} {i + 1}/{count} scenes", file=sys.stderr,
                              flush=True)
            written.extend(writer.paths)
            counts_file = uri.join(split_dirs[split], LABEL_COUNTS_FILE)
            write_label_counts(counts_file, writer.count, label_counts, writer.paths)
            written.append(counts_file)
            summaries[split] = ConversionSummary(
                split_dirs[split], writer.count, 0,
                {label: label_counts[label] for label in OUTFIT_LABELS if label_counts[label]},
                tuple(writer.paths),
            )
    return summaries
