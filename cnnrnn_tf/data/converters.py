"""Converters from common multi-label data layouts to a data folder of shards.

Each converter reads one layout, checks every input and writes GZIP TFRecord
shards in the project schema (:mod:`cnnrnn_tf.schema`) with
:class:`~cnnrnn_tf.schema.ShardWriter`. It returns a :class:`ConversionSummary`
(examples written, images skipped and why, examples per label).

* :func:`convert_csv`: a CSV file with a header ``image,labels`` (other columns
  are ignored); ``labels`` holds label names joined by ``label_sep`` (``|``).
* :func:`convert_coco`: an MS-COCO instances JSON file and its image folder.
* :func:`convert_voc`: a Pascal VOC tree (``Annotations/``, ``JPEGImages/``,
  ``ImageSets/Main/<split>.txt``).

Images
    PNG and JPEG files are checked (they must decode with Pillow) and stored
    byte for byte. BMP, GIF, WEBP, TIFF and PPM/PGM/PBM files are decoded with
    Pillow (first frame only) and stored as lossless PNG (mode L, RGB or RGBA).
    Anything else is an error. JPEG EXIF orientation is not applied (nor is it
    by TensorFlow's decoder, so training and serving see the same pixels).

Errors
    Every bad input raises :class:`~cnnrnn_tf.errors.InputError` with a one-line
    message naming the file (and the CSV line, JSON entry or XML file). On any
    error nothing is left behind: partial shards are deleted, and the output
    folder (and any parent folders the converter created) is removed again.
    With ``on_bad_image="skip"`` an image file that is missing, unreadable,
    corrupt or too large is left out instead, and listed in ``OUT/skipped.csv``
    (columns ``file,reason,source``); a conversion that would write nothing
    still fails.

Two ways to run
    The annotations (CSV rows, COCO JSON, VOC XML) are always parsed here, into
    a list of :class:`ImageItem` (image path, labels, id). The images are then
    read, checked and written either in this process (the default, with an
    optional progress bar) or, with ``beam=True``, by an Apache Beam pipeline
    (:mod:`cnnrnn_tf.data.beam_writer`; the DirectRunner with 2 worker
    processes unless ``beam_args`` say otherwise). Both write the same records
    in the same shard format.

Beside the shards
    ``OUT/label_counts.json``: ``{"num_examples": N, "label_counts": {label:
    count}, "shards": [shard file names]}``, so a reader can learn the
    vocabulary without scanning the records.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import tensorflow as tf

from cnnrnn_tf.errors import InputError
from cnnrnn_tf import uri
from cnnrnn_tf.io_utils import read_bytes, write_json, write_text_atomic
from cnnrnn_tf.inputs.images import TOO_LARGE_MESSAGE, image_too_large
from cnnrnn_tf.schema import SHARD_GLOB, ShardWriter, image_format, make_example, validate_label

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


def read_image_file(path: str, where: str) -> bytes:
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


def _write(
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
                    image = read_image_file(item.path, item.where)
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


def _convert(
    items: Sequence[ImageItem],
    out_dir: str,
    empty_message: str,
    *,
    records_per_shard: int,
    on_bad_image: str,
    beam: bool,
    beam_args: Sequence[str],
    direct_num_workers: int,
    progress: bool,
) -> WriteResult:
    """Writes the items in this process or with Beam; InputError when there are none."""
    if not items:
        raise InputError(empty_message)
    if beam:
        from cnnrnn_tf.data.beam_writer import write_with_beam

        return write_with_beam(items, out_dir, records_per_shard=records_per_shard,
                               on_bad_image=on_bad_image, beam_args=beam_args,
                               direct_num_workers=direct_num_workers)
    return _write(out_dir, items, records_per_shard, on_bad_image, progress)


def _summary(out_dir: str, result: WriteResult, empty: int = 0, empty_reason: str = ""):
    """The ConversionSummary of a write, with ``empty`` images left out for ``empty_reason``."""
    reasons = []
    if empty:
        reasons.append(f"{empty} {empty_reason}" if result.bad else empty_reason)
    if result.bad:
        reasons.append(f"{len(result.bad)} bad image file{'s' if len(result.bad) != 1 else ''}"
                       f" listed in {result.report}")
    return ConversionSummary(out_dir, result.count, empty + len(result.bad), result.label_counts,
                             result.shards, "; ".join(reasons), len(result.bad), result.report)


def _check_records_per_shard(records_per_shard: int) -> None:
    if not isinstance(records_per_shard, int) or records_per_shard < 1:
        raise InputError(f"records_per_shard: must be a positive integer, got {records_per_shard!r}")


# --------------------------------------------------------------------------- CSV


def _read_csv_text(csv_path: str) -> str:
    raw = read_bytes(csv_path, "CSV file", allow_empty=True)  # empty: reported below
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InputError(
            f"{csv_path}: line {line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); "
            "save the CSV as UTF-8"
        ) from None


def _split_labels(text: str, label_sep: str, where: str) -> List[str]:
    labels: List[str] = []
    for part in text.split(label_sep):
        if not part.strip():
            continue
        name = validate_label(part, where)
        if name not in labels:
            labels.append(name)
    return labels


def convert_csv(
    csv_path: str,
    out_dir: str,
    label_sep: str = "|",
    *,
    records_per_shard: int = DEFAULT_RECORDS_PER_SHARD,
    on_bad_image: str = "fail",
    beam: bool = False,
    beam_args: Sequence[str] = (),
    direct_num_workers: int = 2,
    progress: bool = False,
) -> ConversionSummary:
    """Converts a CSV file ``image,labels`` to a data folder of shards.

    The header line is required and must name the columns ``image`` and
    ``labels`` (case-insensitive; other columns are ignored). Image paths are
    relative to the CSV's folder (absolute paths are accepted); ``image/id`` is
    the path as written. Labels are split on ``label_sep``, stripped, empty
    entries dropped and duplicates removed; a row without labels is an error.
    Blank lines are skipped; quoted fields (with commas) follow the csv module.
    Errors name the CSV and the line number (line 1 is the header).

    Returns:
        A ConversionSummary (skipped counts only bad image files left out under
        ``on_bad_image="skip"``: every other row is written or the conversion fails).

    Writing (the same for every converter):
        on_bad_image: "fail" (default) stops at the first bad image file with an
            InputError naming it; "skip" leaves bad image files out and lists them
            in ``OUT/skipped.csv``.
        beam: read and write the images with an Apache Beam pipeline (needs
            ``apache-beam``; see :mod:`cnnrnn_tf.data.beam_writer`).
        beam_args: Beam pipeline arguments (e.g. ``["--runner=DataflowRunner", ...]``).
        direct_num_workers: worker processes of the local DirectRunner.
        progress: show a progress bar (single-process path only).
    """
    csv_path = os.fspath(csv_path)
    out_dir = os.fspath(out_dir)
    if not isinstance(label_sep, str) or not label_sep:
        raise InputError("label_sep: must be a non-empty string")
    _check_records_per_shard(records_per_shard)
    check_on_bad_image(on_bad_image)
    text = _read_csv_text(csv_path)
    uri.ensure_filesystems(csv_path, out_dir)
    items = _csv_items(csv_path, text, label_sep)
    result = _convert(items, out_dir, f"{csv_path}: no rows after the header",
                      records_per_shard=records_per_shard, on_bad_image=on_bad_image,
                      beam=beam, beam_args=beam_args, direct_num_workers=direct_num_workers,
                      progress=progress)
    return _summary(out_dir, result)


def _csv_items(csv_path: str, text: str, label_sep: str) -> List[ImageItem]:
    """The rows of a CSV ``image,labels`` as ImageItems (the images are not read here)."""
    base = uri.dirname(uri.absolute(csv_path))

    def rows():
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)  # e.g. an open quote
        header: Optional[List[str]] = None
        image_col = labels_col = -1
        consumed = 0
        try:
            for row in reader:
                line = consumed + 1
                consumed = reader.line_num
                if not any(cell.strip() for cell in row):
                    continue
                if header is None:
                    header = [cell.strip().lower() for cell in row]
                    for name in ("image", "labels"):
                        if name not in header:
                            raise InputError(
                                f"{csv_path}: line {line}: missing column {name!r} in the header "
                                f"(found {', '.join(repr(c) for c in row)}; the first line must "
                                "be a header with columns 'image' and 'labels')"
                            )
                    image_col, labels_col = header.index("image"), header.index("labels")
                    continue
                where = f"{csv_path}: line {line}"
                image_ref = row[image_col].strip() if image_col < len(row) else ""
                if not image_ref:
                    raise InputError(f"{where}: empty 'image' field")
                labels_text = row[labels_col] if labels_col < len(row) else ""
                labels = _split_labels(labels_text, label_sep, where)
                if not labels:
                    raise InputError(f"{where}: image {image_ref}: no labels")
                path = (image_ref if os.path.isabs(image_ref) or uri.scheme(image_ref)
                        else uri.join(base, image_ref))
                yield ImageItem(path, tuple(labels), image_ref, where)
        except csv.Error as exc:
            raise InputError(f"{csv_path}: line {reader.line_num}: malformed CSV ({exc})") from None
        if header is None:
            raise InputError(f"{csv_path}: empty CSV file (expected a header 'image,labels')")

    return list(rows())


# --------------------------------------------------------------------------- COCO


def _load_json(path: str) -> object:
    raw = read_bytes(path, "COCO annotations file")
    try:
        return json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text (expected a COCO annotations JSON file)") from None
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{path}: not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg})"
        ) from None


def _entries(data: dict, key: str, path: str) -> list:
    if key not in data:
        raise InputError(f"{path}: missing key {key!r} (expected a COCO instances JSON file)")
    value = data[key]
    if not isinstance(value, list):
        raise InputError(f"{path}: {key!r} must be a list, got {type(value).__name__}")
    return value


def _field(entry: object, key: str, where: str, path: str):
    if not isinstance(entry, dict):
        raise InputError(f"{path}: {where} must be an object, got {type(entry).__name__}")
    if key not in entry:
        raise InputError(f"{path}: {where} has no key {key!r}")
    value = entry[key]
    if isinstance(value, bool) or value is None:
        raise InputError(f"{path}: {where}[{key!r}] has a bad value {value!r}")
    if key.endswith("id") and not isinstance(value, (int, str)):
        raise InputError(f"{path}: {where}[{key!r}] must be an integer or a string, got {value!r}")
    return value


def convert_coco(
    annotations_path: str,
    images_dir: str,
    out_dir: str,
    skip_empty: bool = True,
    *,
    records_per_shard: int = DEFAULT_RECORDS_PER_SHARD,
    on_bad_image: str = "fail",
    beam: bool = False,
    beam_args: Sequence[str] = (),
    direct_num_workers: int = 2,
    progress: bool = False,
) -> ConversionSummary:
    """Converts an MS-COCO instances JSON file to a data folder of shards.

    Reads ``images`` (``id``, ``file_name``), ``annotations`` (``image_id``,
    ``category_id``; crowd annotations included) and ``categories`` (``id``,
    ``name``). An image's labels are the names of its annotations' categories,
    deduplicated, in annotation order. ``file_name`` is relative to images_dir
    and is the ``image/id``. Images without annotations are skipped (and
    counted) when skip_empty, else written without labels (usable for
    prediction only). Examples are written in the order of ``images``.

    Writing (the same for every converter):
        on_bad_image: "fail" (default) stops at the first bad image file with an
            InputError naming it; "skip" leaves bad image files out and lists them
            in ``OUT/skipped.csv``.
        beam: read and write the images with an Apache Beam pipeline (needs
            ``apache-beam``; see :mod:`cnnrnn_tf.data.beam_writer`).
        beam_args: Beam pipeline arguments (e.g. ``["--runner=DataflowRunner", ...]``).
        direct_num_workers: worker processes of the local DirectRunner.
        progress: show a progress bar (single-process path only).
    """
    annotations_path = os.fspath(annotations_path)
    images_dir = os.fspath(images_dir)
    out_dir = os.fspath(out_dir)
    _check_records_per_shard(records_per_shard)
    check_on_bad_image(on_bad_image)
    path = annotations_path
    data = _load_json(path)
    if not isinstance(data, dict):
        raise InputError(f"{path}: top level must be a JSON object (a COCO instances file)")
    images = _entries(data, "images", path)
    annotations = _entries(data, "annotations", path)
    categories = _entries(data, "categories", path)
    uri.ensure_filesystems(images_dir, out_dir)
    if not tf.io.gfile.isdir(images_dir):
        raise InputError(f"{images_dir}: image folder does not exist")

    names: Dict[object, str] = {}
    for i, cat in enumerate(categories):
        where = f"categories[{i}]"
        cat_id = _field(cat, "id", where, path)
        name = _field(cat, "name", where, path)
        if not isinstance(name, str):
            raise InputError(f"{path}: {where}['name'] must be a string, got {name!r}")
        if cat_id in names:
            raise InputError(f"{path}: {where}: duplicate category id {cat_id!r}")
        names[cat_id] = validate_label(name, f"{path}: {where}")

    file_names: Dict[object, str] = {}
    for i, img in enumerate(images):
        where = f"images[{i}]"
        img_id = _field(img, "id", where, path)
        file_name = _field(img, "file_name", where, path)
        if not isinstance(file_name, str) or not file_name.strip():
            raise InputError(f"{path}: {where}['file_name'] must be a non-empty string")
        if img_id in file_names:
            raise InputError(f"{path}: {where}: duplicate image id {img_id!r}")
        file_names[img_id] = file_name

    labels_of: Dict[object, List[str]] = {}
    for i, ann in enumerate(annotations):
        where = f"annotations[{i}]"
        img_id = _field(ann, "image_id", where, path)
        cat_id = _field(ann, "category_id", where, path)
        if img_id not in file_names:
            raise InputError(f"{path}: {where}: image_id {img_id!r} is not in 'images'")
        if cat_id not in names:
            raise InputError(f"{path}: {where}: unknown category_id {cat_id!r} (not in 'categories')")
        labels = labels_of.setdefault(img_id, [])
        if names[cat_id] not in labels:
            labels.append(names[cat_id])

    items: List[ImageItem] = []
    empty = 0
    for img_id, file_name in file_names.items():
        labels = labels_of.get(img_id, [])
        if not labels and skip_empty:
            empty += 1
            continue
        items.append(ImageItem(uri.join(images_dir, file_name), tuple(labels), file_name,
                               f"{path}: image id {img_id!r}"))

    result = _convert(items, out_dir, f"{path}: no image has annotations (nothing to write)",
                      records_per_shard=records_per_shard, on_bad_image=on_bad_image,
                      beam=beam, beam_args=beam_args, direct_num_workers=direct_num_workers,
                      progress=progress)
    return _summary(out_dir, result, empty, "no annotations")


# --------------------------------------------------------------------------- VOC


def _read_split_ids(split_path: str) -> List[str]:
    try:
        lines = read_bytes(split_path, "split file", allow_empty=True).decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise InputError(f"{split_path}: not UTF-8 text") from None
    ids: List[str] = []
    seen = set()
    for line in lines:
        tokens = line.split()
        if tokens and tokens[0] not in seen:
            seen.add(tokens[0])
            ids.append(tokens[0])
    if not ids:
        raise InputError(f"{split_path}: split file lists no image ids")
    return ids


def _voc_objects(xml_path: str) -> List[Tuple[str, bool]]:
    """Returns (name, difficult) for each <object> of a VOC annotation file."""
    try:
        tree = ET.parse(xml_path)
    except FileNotFoundError:
        raise InputError(f"{xml_path}: annotation file does not exist") from None
    except ET.ParseError as exc:
        raise InputError(f"{xml_path}: malformed XML ({exc})") from None
    except OSError as exc:
        raise InputError(f"{xml_path}: cannot read annotation file ({exc.strerror or exc})") from None
    objects = []
    for i, obj in enumerate(tree.getroot().iter("object")):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise InputError(f"{xml_path}: <object> {i} has no <name>")
        difficult_text = (obj.findtext("difficult") or "0").strip() or "0"
        if difficult_text not in ("0", "1"):
            raise InputError(f"{xml_path}: <object> {i}: <difficult> must be 0 or 1, got {difficult_text!r}")
        objects.append((validate_label(name, xml_path), difficult_text == "1"))
    return objects


def convert_voc(
    root: str,
    split: str,
    out_dir: str,
    include_difficult: bool = False,
    *,
    records_per_shard: int = DEFAULT_RECORDS_PER_SHARD,
    on_bad_image: str = "fail",
    beam: bool = False,
    beam_args: Sequence[str] = (),
    direct_num_workers: int = 2,
    progress: bool = False,
) -> ConversionSummary:
    """Converts a Pascal VOC split to a data folder of shards.

    Reads the ids in ``root/ImageSets/Main/<split>.txt`` (one per line; of a
    per-class file such as ``aeroplane_train.txt`` only the first token of each
    line is used), then ``root/Annotations/<id>.xml`` and
    ``root/JPEGImages/<id>.jpg``. Labels are the ``<object><name>`` values,
    deduplicated in file order; objects marked ``<difficult>1</difficult>`` are
    left out unless include_difficult. Images left with no label are skipped
    and counted. ``image/id`` is the VOC id.

    Writing (the same for every converter):
        on_bad_image: "fail" (default) stops at the first bad image file with an
            InputError naming it; "skip" leaves bad image files out and lists them
            in ``OUT/skipped.csv``.
        beam: read and write the images with an Apache Beam pipeline (needs
            ``apache-beam``; see :mod:`cnnrnn_tf.data.beam_writer`).
        beam_args: Beam pipeline arguments (e.g. ``["--runner=DataflowRunner", ...]``).
        direct_num_workers: worker processes of the local DirectRunner.
        progress: show a progress bar (single-process path only).
    """
    root = os.fspath(root)
    out_dir = os.fspath(out_dir)
    _check_records_per_shard(records_per_shard)
    check_on_bad_image(on_bad_image)
    if not isinstance(split, str) or not split.strip() or os.sep in split or "/" in split:
        raise InputError(f"split: bad split name {split!r} (expected e.g. 'train', 'val', 'trainval')")
    uri.ensure_filesystems(root, out_dir)
    if not tf.io.gfile.isdir(root):
        raise InputError(f"{root}: VOC root folder does not exist")
    split_path = uri.join(root, "ImageSets", "Main", f"{split}.txt")
    ids = _read_split_ids(split_path)
    items: List[ImageItem] = []
    empty = 0
    for image_id in ids:
        xml_path = uri.join(root, "Annotations", f"{image_id}.xml")
        labels: List[str] = []
        for name, difficult in _voc_objects(xml_path):
            if (include_difficult or not difficult) and name not in labels:
                labels.append(name)
        if not labels:
            empty += 1
            continue
        items.append(ImageItem(uri.join(root, "JPEGImages", f"{image_id}.jpg"), tuple(labels),
                               image_id, f"{split_path}: id {image_id}"))

    result = _convert(items, out_dir,
                      f"{split_path}: no image has a (non-difficult) object (nothing to write)",
                      records_per_shard=records_per_shard, on_bad_image=on_bad_image,
                      beam=beam, beam_args=beam_args, direct_num_workers=direct_num_workers,
                      progress=progress)
    return _summary(out_dir, result, empty, "no objects, or only difficult ones")
