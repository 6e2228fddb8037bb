"""Converters from common multi-label data layouts to a data folder of shards.

Each converter reads one layout and checks every annotation; the shard-writing engine
(:mod:`cnnrnn_tf.data.writing`) then checks the images and writes GZIP TFRecord shards in
the project schema (:mod:`cnnrnn_tf.schema`). It returns a
:class:`~cnnrnn_tf.data.writing.ConversionSummary` (examples written, images skipped and
why, examples per label).

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
    a list of :class:`~cnnrnn_tf.data.writing.ImageItem` (image path, labels, id). The images are then
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

import csv
import io
import json
import os
import xml.etree.ElementTree as ET
from typing import Dict, List, Optional, Sequence, Tuple

import tensorflow as tf

from cnnrnn_tf import uri
from cnnrnn_tf.data.writing import (
    DEFAULT_RECORDS_PER_SHARD,
    ConversionSummary,
    ImageItem,
    WriteResult,
    check_on_bad_image,
    check_records_per_shard,
    summarize_write,
    write_items,
)
from cnnrnn_tf.errors import InputError
from cnnrnn_tf.io_utils import read_bytes
from cnnrnn_tf.schema import validate_label

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
    return write_items(out_dir, items, records_per_shard, on_bad_image, progress)




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
    check_records_per_shard(records_per_shard)
    check_on_bad_image(on_bad_image)
    text = _read_csv_text(csv_path)
    uri.ensure_filesystems(csv_path, out_dir)
    items = _csv_items(csv_path, text, label_sep)
    result = _convert(items, out_dir, f"{csv_path}: no rows after the header",
                      records_per_shard=records_per_shard, on_bad_image=on_bad_image,
                      beam=beam, beam_args=beam_args, direct_num_workers=direct_num_workers,
                      progress=progress)
    return summarize_write(out_dir, result)


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
    check_records_per_shard(records_per_shard)
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
    return summarize_write(out_dir, result, empty, "no annotations")


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
    check_records_per_shard(records_per_shard)
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
    return summarize_write(out_dir, result, empty, "no objects, or only difficult ones")
