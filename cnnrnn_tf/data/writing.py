"""The shard-writing engine every converter shares: items in, checked shards out.

A converter parses its layout into :class:`ImageItem` s (image path, labels, id); this module
reads and checks each image (:func:`read_image_bytes`), writes GZIP TFRecord shards in the
project schema (:class:`~cnnrnn_tf.schema.ShardWriter`), the ``label_counts.json`` and, for
images left out under ``on_bad_image="skip"``, ``skipped.csv``, all or nothing
(:func:`output_guard`). :mod:`cnnrnn_tf.data.beam_writer` writes the same shards with Beam.
"""
from __future__ import annotations

import contextlib
import csv
import io
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import tensorflow as tf

from cnnrnn_tf import uri
from cnnrnn_tf.errors import InputError
from cnnrnn_tf.io_utils import read_bytes, write_json, write_text_atomic
from cnnrnn_tf.schema import (SHARD_GLOB, TOO_LARGE_MESSAGE, ShardWriter, image_format,
                              image_too_large)

DEFAULT_RECORDS_PER_SHARD = 2048
ON_BAD_IMAGE = ("fail", "skip")
LABEL_COUNTS_FILE = "label_counts.json"
SKIPPED_FILE = "skipped.csv"

# Formats that are decoded with Pillow and stored as PNG.
CONVERTED_FORMATS: Tuple[str, ...] = ("BMP", "GIF", "WEBP", "TIFF", "PPM")


@dataclass(frozen=True)
class ConversionSummary:
    """What a converter (or the Fashion-MNIST outfits builder) wrote.

    Attributes:
        out_dir: the data folder written.
        written: number of examples written.
        skipped: number of images left out (see ``skip_reason``), bad image
            files (``on_bad_image="skip"``) included.
        labels: label name -> number of examples that carry it.
        shards: paths of the shards written.
        skip_reason: why images were skipped ("" when none were).
        bad_images: how many of the skipped images were bad image files.
        report: the file listing them (``OUT/skipped.csv``; "" when none).
    """

    out_dir: str
    written: int
    skipped: int = 0
    labels: Dict[str, int] = field(default_factory=dict)
    shards: Tuple[str, ...] = ()
    skip_reason: str = ""
    bad_images: int = 0
    report: str = ""

    @property
    def num_labels(self) -> int:
        """Number of distinct labels written."""
        return len(self.labels)

    def __int__(self) -> int:
        return self.written

    def __str__(self) -> str:
        line = (
            f"{self.out_dir}: wrote {self.written} examples with {self.num_labels} labels "
            f"in {len(self.shards)} shard{'s' if len(self.shards) != 1 else ''}"
        )
        if self.skipped:
            line += f"; skipped {self.skipped} images ({self.skip_reason or 'see log'})"
        return line


# --------------------------------------------------------------------------- helpers


def _missing_dirs(path: str) -> List[str]:
    """The folders of path (itself and parents) that do not exist, deepest first."""
    path = os.fspath(path)
    if uri.is_remote(path):  # object stores: only the folder itself
        return [path] if not tf.io.gfile.exists(path) else []
    missing = []
    current = os.path.abspath(path)
    while not os.path.exists(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    return missing


@contextlib.contextmanager
def output_guard(*dirs: str) -> Iterator[List[str]]:
    """Removes what a failed write left behind.

    On an exception (KeyboardInterrupt included) the files appended to the
    yielded list are deleted, then every folder among ``dirs`` (and their
    parents) that did not exist on entry is removed if it is empty.
    """
    missing: List[str] = []
    for d in dirs:
        if tf.io.gfile.exists(d) and not tf.io.gfile.isdir(d):
            raise InputError(f"{d}: exists and is not a folder")
        missing.extend(m for m in _missing_dirs(d) if m not in missing)
    written: List[str] = []
    try:
        yield written
    except BaseException:
        for path in written:
            with contextlib.suppress(Exception):
                if tf.io.gfile.exists(path):
                    tf.io.gfile.remove(path)
        for d in sorted(missing, key=len, reverse=True):
            with contextlib.suppress(Exception):
                if tf.io.gfile.isdir(d) and not tf.io.gfile.listdir(d):
                    tf.io.gfile.rmtree(d)
        raise


def check_no_shards(out_dir: str) -> None:
    """Raises InputError when out_dir already holds shards."""
    if tf.io.gfile.isdir(out_dir) and tf.io.gfile.glob(uri.join(out_dir, SHARD_GLOB)):
        raise InputError(
            f"{out_dir}: already holds {SHARD_GLOB} shards; choose an empty output folder"
        )


def _to_png(image) -> bytes:
    from PIL import Image

    if image.mode in ("L", "RGB", "RGBA"):
        converted = image
    elif image.mode in ("LA", "PA") or "transparency" in image.info or "A" in image.mode:
        converted = image.convert("RGBA")
    elif image.mode in ("1", "I", "I;16", "I;16B", "I;16L", "F"):
        converted = image.convert("L")
    else:
        converted = image.convert("RGB")
    buf = io.BytesIO()
    converted.save(buf, format="PNG")
    return buf.getvalue()


class BadImageError(InputError):
    """An image file that cannot be used: missing, unreadable, not an image, corrupt, too large.

    ``str(error)`` is the usual one-line message (``"<where>: <path>: <reason>"``
    or the like); ``path`` and ``reason`` (that message without the location)
    are what ``OUT/skipped.csv`` lists under ``on_bad_image="skip"``.
    """

    def __init__(self, message: str, path: str, reason: str):
        super().__init__(message)
        self.path = path
        self.reason = reason


def read_checked_image(path: str, where: str) -> bytes:
    """Returns PNG/JPEG bytes for an image file, or raises BadImageError (an InputError).

    PNG and JPEG files must decode with Pillow and are returned unchanged; the
    formats in CONVERTED_FORMATS are re-encoded as PNG. ``where`` prefixes the
    message (e.g. ``"data.csv: line 3"``).
    """
    from PIL import Image, UnidentifiedImageError

    def bad(reason: str, message: Optional[str] = None) -> BadImageError:
        return BadImageError(message or f"{where}: {path}: {reason}", path, reason)

    try:
        data = read_bytes(path, "image file", where)
    except InputError as exc:  # "<where>: image file <path> does not exist" and the like
        message = str(exc)
        prefix = f"{where}: image file {path} "
        reason = message[len(prefix):] if message.startswith(prefix) else message
        raise bad(reason, message) from None
    fmt = image_format(data)
    allowed = ["PNG"] if fmt == "png" else ["JPEG"] if fmt == "jpeg" else list(CONVERTED_FORMATS)
    try:
        with Image.open(io.BytesIO(data), formats=allowed) as image:
            if image_too_large(*image.size):  # from the header, before decoding
                raise bad(f"{TOO_LARGE_MESSAGE} ({image.size[0]}x{image.size[1]})")
            image.load()
            if fmt is not None:
                return data
            return _to_png(image)
    except BadImageError:
        raise
    except UnidentifiedImageError:
        reason = (f"not an image file (expected PNG or JPEG; "
                  f"{', '.join(CONVERTED_FORMATS)} are converted to PNG)")
        raise bad(reason, f"{where}: {path} is {reason}") from None
    except Image.DecompressionBombError as exc:
        raise bad(f"image too large ({exc})") from None
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, ...
        kind = fmt.upper() if fmt else "image"
        raise bad(f"corrupt {kind} file ({exc})") from None


# --------------------------------------------------------------------------- writing


class ImageItem(NamedTuple):
    """One image to convert, as the annotations give it (parsed in the driver).

    ``where`` locates it in the annotations for messages (``"data.csv: line 3"``).
    """

    path: str
    labels: Tuple[str, ...]
    image_id: str
    where: str


class BadImage(NamedTuple):
    """An image left out under ``on_bad_image="skip"`` (a line of ``OUT/skipped.csv``)."""

    index: int  # position in the list of items
    path: str
    reason: str
    where: str
    message: str

    @classmethod
    def from_error(cls, index: int, item: ImageItem, exc: BadImageError) -> "BadImage":
        return cls(index, item.path, exc.reason, item.where, str(exc))


class WriteResult(NamedTuple):
    """What the single-process writer or the Beam pipeline wrote."""

    count: int
    label_counts: Dict[str, int]
    shards: Tuple[str, ...]
    bad: Tuple[BadImage, ...] = ()
    report: str = ""


def check_on_bad_image(on_bad_image: str) -> None:
    if on_bad_image not in ON_BAD_IMAGE:
        raise InputError(f"on_bad_image: must be one of {', '.join(ON_BAD_IMAGE)}, "
                         f"got {on_bad_image!r}")


def all_bad_message(bad: Sequence[BadImage]) -> str:
    """The error when every image was bad (``on_bad_image="skip"`` wrote nothing)."""
    return (f"all {len(bad)} image file{'s' if len(bad) != 1 else ''} are bad, nothing to write "
            f"(the first: {bad[0].message})")


def write_sidecar_files(out_dir: str, result: WriteResult) -> List[str]:
    """Writes ``label_counts.json`` (and ``skipped.csv`` when images were skipped).

    Returns the paths written (for :func:`output_guard`'s clean-up list).
    """
    written = []
    if result.bad:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["file", "reason", "source"])
        for bad in result.bad:
            writer.writerow([bad.path, bad.reason, bad.where])
        path = uri.join(out_dir, SKIPPED_FILE)
        write_text_atomic(path, buf.getvalue())
        written.append(path)
    path = uri.join(out_dir, LABEL_COUNTS_FILE)
    write_label_counts(path, result.count, result.label_counts, result.shards)
    written.append(path)
    return written


def write_label_counts(path: str, num_examples: int, label_counts: Dict[str, int],
                       shards: Iterable[str]) -> None:
    """Writes ``{"num_examples", "label_counts", "shards"}`` (shard file names) as JSON."""
    write_json(path, {
        "num_examples": int(num_examples),
        "label_counts": {k: int(v) for k, v in sorted(label_counts.items())},
        "shards": sorted(uri.basename(s) for s in shards),
    })


def _progress_bar(total: int):
    """A Keras progress bar (shown when stdout is a terminal)."""
    import keras

    return keras.utils.Progbar(total, unit_name="image")


def write_items(
    out_dir: str,
    items: Sequence[ImageItem],
    records_per_shard: int,
    on_bad_image: str = "fail",
    progress: bool = False,
) -> WriteResult:
    """Reads, checks and writes the images in this process; all-or-nothing."""
    check_no_shards(out_dir)
    label_counts: Counter = Counter()
    bad: List[BadImage] = []
    bar = _progress_bar(len(items)) if progress else None
    with output_guard(out_dir) as written:
        with ShardWriter(out_dir, records_per_shard=records_per_shard) as writer:
            for index, item in enumerate(items):
                try:
                    image = read_checked_image(item.path, item.where)
                except BadImageError as exc:
                    if on_bad_image == "fail":
                        raise
                    bad.append(BadImage.from_error(index, item, exc))
                else:
                    writer.write_record(image, item.labels, item.image_id)
                    label_counts.update(item.labels)
                if bar is not None and (index % 64 == 63 or index + 1 == len(items)):
                    bar.update(index + 1, finalize=index + 1 == len(items))
            if writer.count == 0:
                raise InputError(all_bad_message(bad))
        written.extend(writer.paths)
        result = WriteResult(writer.count, dict(sorted(label_counts.items())),
                             tuple(writer.paths), tuple(bad))
        sidecars = write_sidecar_files(out_dir, result)
        written.extend(sidecars)
    return result._replace(report=sidecars[0] if bad else "")




def summarize_write(out_dir: str, result: WriteResult, empty: int = 0, empty_reason: str = ""):
    """The ConversionSummary of a write, with ``empty`` images left out for ``empty_reason``."""
    reasons = []
    if empty:
        reasons.append(f"{empty} {empty_reason}" if result.bad else empty_reason)
    if result.bad:
        reasons.append(f"{len(result.bad)} bad image file{'s' if len(result.bad) != 1 else ''}"
                       f" listed in {result.report}")
    return ConversionSummary(out_dir, result.count, empty + len(result.bad), result.label_counts,
                             result.shards, "; ".join(reasons), len(result.bad), result.report)


def check_records_per_shard(records_per_shard: int) -> None:
    if not isinstance(records_per_shard, int) or records_per_shard < 1:
        raise InputError(f"records_per_shard: must be a positive integer, got {records_per_shard!r}")
