"""Tests of the CSV, MS-COCO and Pascal VOC converters (tiny generated inputs)."""
import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from cnnrnn_tf.data import writing
from cnnrnn_tf.data.converters import convert_coco, convert_csv, convert_voc
from cnnrnn_tf.errors import InputError
from cnnrnn_tf.schema import image_format, iter_records, list_shards
from tests.conftest import jpeg_bytes, png_bytes


def _rgb(seed: int, size: int = 8) -> np.ndarray:
    return (np.random.RandomState(seed).rand(size, size, 3) * 255).astype(np.uint8)


def _records(folder):
    return {r.image_id: r for r in iter_records(str(folder))}


def _assert_nothing_left(out_dir):
    assert not os.path.exists(out_dir), os.listdir(out_dir)


# --------------------------------------------------------------------------- CSV


@pytest.fixture
def csv_dir(tmp_path):
    folder = tmp_path / "ds"
    (folder / "img").mkdir(parents=True)
    (folder / "img" / "a.png").write_bytes(png_bytes(_rgb(1)))
    (folder / "img" / "b.jpg").write_bytes(jpeg_bytes(_rgb(2)))
    (folder / "img" / "c, d.png").write_bytes(png_bytes(_rgb(3)[..., 0]))
    buf = io.BytesIO()
    Image.fromarray(_rgb(4)).save(buf, format="BMP")
    (folder / "img" / "e.bmp").write_bytes(buf.getvalue())
    (folder / "notes.txt").write_text("not an image\n")
    return folder


def test_csv_happy_path(csv_dir, tmp_path):
    absolute = str(csv_dir / "img" / "e.bmp")
    (csv_dir / "labels.csv").write_text(
        "image,labels,source\n"
        "img/a.png, cat | dog |cat,web\n"
        "\n"
        "img/b.jpg,dog,\n"
        '"img/c, d.png","bird||cat",x\n'
        f"{absolute},fish\n",
        encoding="utf-8",
    )
    summary = convert_csv(str(csv_dir / "labels.csv"), str(tmp_path / "out"))
    assert summary.written == 4 and summary.skipped == 0 and int(summary) == 4
    assert summary.labels == {"bird": 1, "cat": 2, "dog": 2, "fish": 1}
    assert "wrote 4 examples" in str(summary)
    records = _records(tmp_path / "out")
    assert set(records) == {"img/a.png", "img/b.jpg", "img/c, d.png", absolute}
    assert records["img/a.png"].labels == ["cat", "dog"]
    assert records["img/c, d.png"].labels == ["bird", "cat"]
    # PNG and JPEG are kept byte for byte; BMP is converted to PNG.
    assert records["img/a.png"].image == (csv_dir / "img" / "a.png").read_bytes()
    assert records["img/b.jpg"].image == (csv_dir / "img" / "b.jpg").read_bytes()
    converted = records[absolute].image
    assert image_format(converted) == "png"
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(converted))), _rgb(4))


def test_csv_label_sep_and_bom(csv_dir, tmp_path):
    (csv_dir / "l.csv").write_bytes("\ufeffImage,Labels\nimg/a.png,cat;dog\n".encode("utf-8"))
    summary = convert_csv(str(csv_dir / "l.csv"), str(tmp_path / "out"), label_sep=";")
    assert summary.labels == {"cat": 1, "dog": 1}


@pytest.mark.parametrize(
    "content, pattern",
    [
        ("image,tags\nimg/a.png,cat\n", r"l\.csv: line 1: missing column 'labels'"),
        ("img/a.png,cat\n", r"l\.csv: line 1: missing column 'image'"),
        (
            "image,labels\nimg/a.png,cat\n\nimg/missing.png,dog\n",
            r"l\.csv: line 4: image file .*missing\.png does not exist",
        ),
        ("image,labels\nimg/a.png,cat\nnotes.txt,dog\n", r"l\.csv: line 3: .*notes\.txt is not an image file"),
        ("image,labels\nimg/a.png,cat\nimg/b.jpg, | \n", r"l\.csv: line 3: image img/b\.jpg: no labels"),
        ("image,labels\nimg/a.png\n", r"l\.csv: line 2: image img/a\.png: no labels"),
        ("image,labels\n,cat\n", r"l\.csv: line 2: empty 'image' field"),
        ("image,labels\n", r"l\.csv: no rows after the header"),
        ("", r"l\.csv: empty CSV file"),
    ],
)
def test_csv_errors_leave_nothing(csv_dir, tmp_path, content, pattern):
    (csv_dir / "l.csv").write_text(content, encoding="utf-8")
    out = tmp_path / "new" / "out"
    with pytest.raises(InputError, match=pattern):
        convert_csv(str(csv_dir / "l.csv"), str(out))
    _assert_nothing_left(tmp_path / "new")


def test_csv_failure_after_a_full_shard_leaves_no_shards(csv_dir, tmp_path):
    rows = "".join("img/a.png,cat\n" for _ in range(5))
    (csv_dir / "l.csv").write_text("image,labels\n" + rows + "img/nope.png,cat\n", encoding="utf-8")
    out = tmp_path / "existing"
    out.mkdir()
    (out / "README").write_text("keep me")
    with pytest.raises(InputError, match="line 7"):
        convert_csv(str(csv_dir / "l.csv"), str(out), records_per_shard=2)
    assert sorted(os.listdir(out)) == ["README"]  # existing folder kept, no shards
    with pytest.raises(InputError, match="no .* shards"):
        list_shards(str(out))


def test_csv_corrupt_png(csv_dir, tmp_path):
    data = (csv_dir / "img" / "a.png").read_bytes()
    (csv_dir / "img" / "broken.png").write_bytes(data[: len(data) // 2])
    (csv_dir / "l.csv").write_text("image,labels\nimg/broken.png,cat\n")
    with pytest.raises(InputError, match=r"line 2: .*broken\.png: corrupt PNG"):
        convert_csv(str(csv_dir / "l.csv"), str(tmp_path / "out"))
    _assert_nothing_left(tmp_path / "out")


def test_csv_not_utf8(csv_dir, tmp_path):
    (csv_dir / "l.csv").write_bytes("image,labels\nimg/a.png,caf\u00e9\n".encode("latin-1"))
    with pytest.raises(InputError, match=r"l\.csv: line 2: not UTF-8"):
        convert_csv(str(csv_dir / "l.csv"), str(tmp_path / "out"))
    _assert_nothing_left(tmp_path / "out")


def test_csv_missing_file_and_existing_shards(csv_dir, tmp_path):
    with pytest.raises(InputError, match=r"nope\.csv: CSV file does not exist"):
        convert_csv(str(csv_dir / "nope.csv"), str(tmp_path / "out"))
    (csv_dir / "l.csv").write_text("image,labels\nimg/a.png,cat\n")
    convert_csv(str(csv_dir / "l.csv"), str(tmp_path / "out"))
    with pytest.raises(InputError, match="already holds"):
        convert_csv(str(csv_dir / "l.csv"), str(tmp_path / "out"))
    assert len(list_shards(str(tmp_path / "out"))) == 1


def test_conversion_is_reproducible(csv_dir, tmp_path):
    (csv_dir / "l.csv").write_text("image,labels\nimg/a.png,cat|dog\nimg/b.jpg,dog\n")
    for name in ("o1", "o2"):
        convert_csv(str(csv_dir / "l.csv"), str(tmp_path / name))
    (s1,), (s2,) = list_shards(str(tmp_path / "o1")), list_shards(str(tmp_path / "o2"))
    assert open(s1, "rb").read() == open(s2, "rb").read()


# --------------------------------------------------------------------------- COCO


def _coco(tmp_path, data=None):
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    for i in (1, 2, 3):
        (images / f"{i:012d}.jpg").write_bytes(jpeg_bytes(_rgb(10 + i)))
    if data is None:
        data = {
            "images": [
                {"id": 1, "file_name": "000000000001.jpg", "width": 8, "height": 8},
                {"id": 2, "file_name": "000000000002.jpg"},
                {"id": 3, "file_name": "000000000003.jpg"},
            ],
            "annotations": [
                {"id": 10, "image_id": 1, "category_id": 18, "iscrowd": 0},
                {"id": 11, "image_id": 1, "category_id": 1, "iscrowd": 0},
                {"id": 12, "image_id": 1, "category_id": 18, "iscrowd": 0},
                {"id": 13, "image_id": 3, "category_id": 1, "iscrowd": 1},
            ],
            "categories": [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}],
        }
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return path, images, data


def test_coco_happy_path(tmp_path):
    path, images, _ = _coco(tmp_path)
    summary = convert_coco(str(path), str(images), str(tmp_path / "out"))
    assert (summary.written, summary.skipped) == (2, 1)
    assert summary.labels == {"dog": 1, "person": 2}
    assert "skipped 1" in str(summary)
    records = _records(tmp_path / "out")
    assert records["000000000001.jpg"].labels == ["dog", "person"]
    assert records["000000000003.jpg"].labels == ["person"]  # crowd annotation counts
    assert records["000000000001.jpg"].image == (images / "000000000001.jpg").read_bytes()


def test_coco_keep_empty(tmp_path):
    path, images, _ = _coco(tmp_path)
    summary = convert_coco(str(path), str(images), str(tmp_path / "out"), skip_empty=False)
    assert (summary.written, summary.skipped) == (3, 0)
    assert _records(tmp_path / "out")["000000000002.jpg"].labels == []


def test_coco_missing_key(tmp_path):
    _, _, data = _coco(tmp_path)
    for key in ("categories", "annotations", "images"):
        broken = {k: v for k, v in data.items() if k != key}
        path, images, _ = _coco(tmp_path, broken)
        with pytest.raises(InputError, match=rf"instances\.json: missing key '{key}'"):
            convert_coco(str(path), str(images), str(tmp_path / "out"))
        _assert_nothing_left(tmp_path / "out")
    broken = json.loads(json.dumps(data))
    del broken["annotations"][2]["category_id"]
    path, images, _ = _coco(tmp_path, broken)
    with pytest.raises(InputError, match=r"annotations\[2\] has no key 'category_id'"):
        convert_coco(str(path), str(images), str(tmp_path / "out"))


def test_coco_unknown_category_and_missing_image(tmp_path):
    _, _, data = _coco(tmp_path)
    broken = json.loads(json.dumps(data))
    broken["annotations"][1]["category_id"] = 99
    path, images, _ = _coco(tmp_path, broken)
    with pytest.raises(InputError, match=r"annotations\[1\]: unknown category_id 99"):
        convert_coco(str(path), str(images), str(tmp_path / "out"))
    path, images, _ = _coco(tmp_path)
    os.remove(images / "000000000003.jpg")
    with pytest.raises(InputError, match=r"image file .*000000000003\.jpg does not exist"):
        convert_coco(str(path), str(images), str(tmp_path / "out"))
    _assert_nothing_left(tmp_path / "out")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(InputError, match=r"bad\.json: not valid JSON"):
        convert_coco(str(tmp_path / "bad.json"), str(images), str(tmp_path / "out"))


# --------------------------------------------------------------------------- VOC


def _voc_xml(objects) -> str:
    parts = ["<annotation><folder>VOC2012</folder><filename>x.jpg</filename>"]
    for name, difficult in objects:
        parts.append(
            f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
            f"<difficult>{difficult}</difficult><bndbox><xmin>1</xmin><ymin>1</ymin>"
            "<xmax>5</xmax><ymax>5</ymax></bndbox></object>"
        )
    parts.append("</annotation>")
    return "".join(parts)


@pytest.fixture
def voc_root(tmp_path):
    root = tmp_path / "VOC2012"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    objects = {
        "2008_000001": [("dog", 0), ("person", 1), ("dog", 0)],
        "2008_000002": [("cat", 1)],
        "2008_000003": [("person", 0), ("bicycle", 0)],
    }
    for i, (image_id, objs) in enumerate(objects.items()):
        (root / "Annotations" / f"{image_id}.xml").write_text(_voc_xml(objs))
        (root / "JPEGImages" / f"{image_id}.jpg").write_bytes(jpeg_bytes(_rgb(20 + i)))
    (root / "ImageSets/Main/train.txt").write_text("2008_000001\n2008_000002\n\n2008_000003\n")
    (root / "ImageSets/Main/dog_train.txt").write_text("2008_000001  1\n2008_000003 -1\n")
    return root


def test_voc_difficult_excluded(voc_root, tmp_path):
    summary = convert_voc(str(voc_root), "train", str(tmp_path / "out"))
    assert (summary.written, summary.skipped) == (2, 1)
    assert summary.labels == {"bicycle": 1, "dog": 1, "person": 1}
    records = _records(tmp_path / "out")
    assert records["2008_000001"].labels == ["dog"]
    assert records["2008_000003"].labels == ["person", "bicycle"]
    assert records["2008_000003"].image == (voc_root / "JPEGImages/2008_000003.jpg").read_bytes()


def test_voc_difficult_included(voc_root, tmp_path):
    summary = convert_voc(str(voc_root), "train", str(tmp_path / "out"), include_difficult=True)
    assert (summary.written, summary.skipped) == (3, 0)
    records = _records(tmp_path / "out")
    assert records["2008_000001"].labels == ["dog", "person"]
    assert records["2008_000002"].labels == ["cat"]


def test_voc_per_class_split_file(voc_root, tmp_path):
    summary = convert_voc(str(voc_root), "dog_train", str(tmp_path / "out"))
    assert summary.written == 2
    assert set(_records(tmp_path / "out")) == {"2008_000001", "2008_000003"}


def test_voc_missing_xml(voc_root, tmp_path):
    os.remove(voc_root / "Annotations" / "2008_000003.xml")
    with pytest.raises(InputError, match=r"2008_000003\.xml: annotation file does not exist"):
        convert_voc(str(voc_root), "train", str(tmp_path / "out"))
    _assert_nothing_left(tmp_path / "out")


def test_voc_malformed_xml_and_missing_jpeg(voc_root, tmp_path):
    (voc_root / "Annotations" / "2008_000003.xml").write_text("<annotation><object>")
    with pytest.raises(InputError, match=r"2008_000003\.xml: malformed XML"):
        convert_voc(str(voc_root), "train", str(tmp_path / "out"))
    (voc_root / "Annotations" / "2008_000003.xml").write_text(_voc_xml([("cow", 0)]))
    os.remove(voc_root / "JPEGImages" / "2008_000003.jpg")
    with pytest.raises(InputError, match=r"2008_000003\.jpg does not exist"):
        convert_voc(str(voc_root), "train", str(tmp_path / "out"))
    _assert_nothing_left(tmp_path / "out")


def test_voc_missing_split_file(voc_root, tmp_path):
    with pytest.raises(InputError, match=r"ImageSets/Main/val\.txt: split file does not exist"):
        convert_voc(str(voc_root), "val", str(tmp_path / "out"))
    _assert_nothing_left(tmp_path / "out")


def test_output_path_is_a_file(voc_root, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        convert_voc(str(voc_root), "train", str(tmp_path / "file"))
    assert writing.ConversionSummary("d", 1).num_labels == 0


# --------------------------------------------------------------------------- bad images, label counts


def _label_counts(folder):
    return json.loads((folder / "label_counts.json").read_text())


def test_label_counts_file(csv_dir, tmp_path):
    (csv_dir / "l.csv").write_text("image,labels\nimg/a.png,cat|dog\nimg/b.jpg,dog\n"
                                   "img/c, d.png,x\n".replace("img/c, d.png", '"img/c, d.png"'))
    summary = convert_csv(str(csv_dir / "l.csv"), str(tmp_path / "out"), records_per_shard=2)
    assert _label_counts(tmp_path / "out") == {
        "num_examples": 3, "label_counts": {"cat": 1, "dog": 2, "x": 1},
        "shards": ["data-00000-of-00002.tfrecord.gz", "data-00001-of-00002.tfrecord.gz"]}
    assert summary.labels == {"cat": 1, "dog": 2, "x": 1}
    assert not (tmp_path / "out" / "skipped.csv").exists() and summary.report == ""


def _csv_with_bad_images(csv_dir):
    data = (csv_dir / "img" / "a.png").read_bytes()
    (csv_dir / "img" / "broken.png").write_bytes(data[: len(data) // 2])
    (csv_dir / "l.csv").write_text(
        "image,labels\n"
        "img/a.png,cat\n"
        "img/missing.png,dog\n"     # line 3
        "img/b.jpg,dog|cat\n"
        "notes.txt,cat\n"           # line 5
        "img/broken.png,bird\n"     # line 6
        "img/e.bmp,fish\n", encoding="utf-8")
    return csv_dir / "l.csv"


def test_csv_skip_bad_images_writes_a_report(csv_dir, tmp_path):
    out = tmp_path / "out"
    summary = convert_csv(str(_csv_with_bad_images(csv_dir)), str(out), on_bad_image="skip")
    assert (summary.written, summary.skipped, summary.bad_images) == (3, 3, 3)
    assert set(_records(out)) == {"img/a.png", "img/b.jpg", "img/e.bmp"}
    assert summary.labels == {"cat": 2, "dog": 1, "fish": 1}  # bird's only image was bad
    assert _label_counts(out)["label_counts"] == summary.labels
    assert summary.report == str(out / "skipped.csv")
    assert "skipped 3 images (3 bad image files listed in" in str(summary)
    import csv
    with open(out / "skipped.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [os.path.basename(r["file"]) for r in rows] == ["missing.png", "notes.txt", "broken.png"]
    assert [r["source"].rsplit(": ", 1)[1] for r in rows] == ["line 3", "line 5", "line 6"]
    assert rows[0]["reason"] == "does not exist"
    assert rows[1]["reason"].startswith("not an image file")
    assert rows[2]["reason"].startswith("corrupt PNG file")


def test_csv_fail_is_the_default_and_names_the_file(csv_dir, tmp_path):
    with pytest.raises(InputError, match=r"l\.csv: line 3: image file .*missing\.png does not exist"):
        convert_csv(str(_csv_with_bad_images(csv_dir)), str(tmp_path / "out"))
    _assert_nothing_left(tmp_path / "out")


def test_skip_with_every_image_bad_fails_and_leaves_nothing(csv_dir, tmp_path):
    (csv_dir / "l.csv").write_text("image,labels\nimg/nope.png,cat\nnotes.txt,dog\n")
    with pytest.raises(InputError, match=r"all 2 image files are bad, nothing to write "
                                         r"\(the first: .*line 2: image file .*nope\.png"):
        convert_csv(str(csv_dir / "l.csv"), str(tmp_path / "new" / "out"), on_bad_image="skip")
    _assert_nothing_left(tmp_path / "new")
    with pytest.raises(InputError, match="on_bad_image: must be one of fail, skip"):
        convert_csv(str(csv_dir / "l.csv"), str(tmp_path / "out"), on_bad_image="ignore")


def test_coco_and_voc_skip_bad_images(tmp_path, voc_root):
    path, images, _ = _coco(tmp_path)
    good = (images / "000000000003.jpg").read_bytes()
    (images / "000000000003.jpg").write_bytes(good[: len(good) // 2])
    summary = convert_coco(str(path), str(images), str(tmp_path / "coco"), on_bad_image="skip")
    assert (summary.written, summary.skipped, summary.bad_images) == (1, 2, 1)
    assert summary.skip_reason.startswith("1 no annotations; 1 bad image file listed in")
    report = (tmp_path / "coco" / "skipped.csv").read_text().splitlines()
    assert report[1].startswith(f"{images / '000000000003.jpg'},corrupt JPEG file")
    assert report[1].endswith("instances.json: image id 3")
    os.remove(voc_root / "JPEGImages" / "2008_000001.jpg")
    summary = convert_voc(str(voc_root), "train", str(tmp_path / "voc"), on_bad_image="skip")
    assert (summary.written, summary.skipped, summary.bad_images) == (1, 2, 1)
    assert set(_records(tmp_path / "voc")) == {"2008_000003"}
    assert "2008_000001.jpg,does not exist," in (tmp_path / "voc" / "skipped.csv").read_text()
