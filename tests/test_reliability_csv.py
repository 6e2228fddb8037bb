"""Bad CSV, COCO and VOC inputs to the converters: each works or fails with one line
naming the file (and line / entry), and leaves no output folder behind."""
import csv
import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnnrnn_tf.data import convert_coco, convert_csv, convert_voc
from cnnrnn_tf.errors import InputError
from cnnrnn_tf.schema import iter_records
from tests.conftest import png_bytes, jpeg_bytes
from tests.reliability_helpers import assert_cli_error, good_image, run_main

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
PNG = png_bytes(good_image())


def refused(fn, *args, needle, out, **kw):
    with pytest.raises(InputError) as exc:
        fn(*args, **kw)
    msg = str(exc.value)
    assert "\n" not in msg and needle in msg, msg
    assert not os.path.exists(out), "partial output left behind"
    return msg


@pytest.fixture
def imgs(tmp_path):
    for name in ("a.png", "b.png", "c,d.png"):
        (tmp_path / name).write_bytes(PNG)
    return tmp_path


# ------------------------------------------------------------------ CSV
@pytest.mark.parametrize("raw, needle", [
    (b"", "empty CSV file"),
    (b"\n\n  \n", "empty CSV file"),
    (b"image,labels\n", "no rows after the header"),
    (b"image,labels\r\n\r\n", "no rows after the header"),
    (b"file,tags\na.png,x\n", "line 1: missing column 'image'"),
    (b"image\na.png\n", "line 1: missing column 'labels'"),
    (b"image,labels\na.png\n", "line 2: image a.png: no labels"),
    (b"image,labels\na.png,| |\n", "line 2: image a.png: no labels"),
    (b"image,labels\n,x\n", "line 2: empty 'image' field"),
    (b"image,labels\nmissing.png,x\n", "line 2: image file"),
    (b"image,labels\na.png,x\n\nnope.png,y\n", "line 4: image file"),
    (b"image,labels\na.png,caf\xe9\n", "line 2: not UTF-8"),
    (b"image,labels\na.png,\"x\n", "malformed CSV"),
    (b"image,labels\n.,x\n", "is a folder"),
    (b"image,labels\na.png,x\x00y\n", "line 2"),
])
def test_bad_csv(imgs, raw, needle):
    (imgs / "data.csv").write_bytes(raw)
    msg = refused(convert_csv, str(imgs / "data.csv"), str(imgs / "out" / "deep"),
                  needle=needle, out=imgs / "out")
    assert msg.startswith(str(imgs / "data.csv"))


@pytest.mark.parametrize("raw, rows", [
    (b"\xef\xbb\xbfimage,labels\na.png,x|y\n", [["x", "y"]]),                # BOM
    (b"image,labels\r\na.png,x\r\nb.png,y\r\n", [["x"], ["y"]]),              # CRLF
    (b"IMAGE , Labels,extra\na.png,x,1\n", [["x"]]),                          # case, spaces
    (b"image,labels\n\n\na.png,x\n\n", [["x"]]),                              # blank lines
    (b'image,labels\n"c,d.png","x|y,z"\n', [["x", "y,z"]]),                   # quoted seps
    (b"labels,image\n x | x |y ,b.png\n", [["x", "y"]]),                      # dup, spaces
])
def test_odd_but_valid_csv(imgs, raw, rows):
    (imgs / "data.csv").write_bytes(raw)
    summary = convert_csv(str(imgs / "data.csv"), str(imgs / "out"))
    assert [r.labels for r in iter_records(str(imgs / "out"))] == rows
    assert summary.written == len(rows)


def test_csv_missing_file_and_folder(tmp_path):
    refused(convert_csv, str(tmp_path / "no.csv"), str(tmp_path / "out"),
            needle="no.csv: CSV file does not exist", out=tmp_path / "out")
    refused(convert_csv, str(tmp_path), str(tmp_path / "out"),
            needle="is a folder", out=tmp_path / "out")


def test_csv_output_is_a_file(imgs):
    (imgs / "data.csv").write_bytes(b"image,labels\na.png,x\n")
    (imgs / "out").write_text("keep me")
    with pytest.raises(InputError, match="exists and is not a folder"):
        convert_csv(str(imgs / "data.csv"), str(imgs / "out"))
    assert (imgs / "out").read_text() == "keep me"


@settings(max_examples=40, **SETTINGS)
@given(st.lists(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
                                 max_size=12), min_size=0, max_size=3), max_size=5))
def test_fuzzed_csv_rows(tmp_path_factory, rows):
    folder = tmp_path_factory.mktemp("fz")
    (folder / "a.png").write_bytes(PNG)
    with open(folder / "data.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "labels"])
        for row in rows:
            writer.writerow(["a.png", "|".join(row)])
    out = folder / "out"
    try:
        summary = convert_csv(str(folder / "data.csv"), str(out))
    except InputError as exc:
        assert "\n" not in str(exc) and str(folder / "data.csv") in str(exc)
        assert not out.exists()
        return
    records = list(iter_records(str(out)))
    assert len(records) == summary.written == len(rows)
    for rec, row in zip(records, rows):
        expected = list(dict.fromkeys(p.strip() for p in "|".join(row).split("|") if p.strip()))
        assert rec.labels == expected


# ------------------------------------------------------------------ COCO
def coco(images=None, annotations=None, categories=None, drop=()):
    data = {"images": images if images is not None else [{"id": 1, "file_name": "a.png"},
                                                         {"id": 2, "file_name": "b.png"}],
            "annotations": annotations if annotations is not None else [
                {"image_id": 1, "category_id": 7}, {"image_id": 2, "category_id": 8}],
            "categories": categories if categories is not None else [
                {"id": 7, "name": "cat"}, {"id": 8, "name": "dog"}]}
    for key in drop:
        del data[key]
    return json.dumps(data)


@pytest.mark.parametrize("text, needle", [
    ("", "COCO annotations file"),
    ('{"images": [', "not valid JSON (line 1"),
    ("[]", "top level must be a JSON object"),
    (coco(drop=("annotations",)), "missing key 'annotations'"),
    (coco(drop=("categories",)), "missing key 'categories'"),
    (coco(images={"id": 1}), "'images' must be a list"),
    (coco(images=[{"id": 1}]), "images[0] has no key 'file_name'"),
    (coco(images=[{"file_name": "a.png"}]), "images[0] has no key 'id'"),
    (coco(annotations=[{"image_id": 1}]), "annotations[0] has no key 'category_id'"),
    (coco(annotations=[{"image_id": 9, "category_id": 7}]), "image_id 9 is not in 'images'"),
    (coco(annotations=[{"image_id": 1, "category_id": 99}]), "unknown category_id 99"),
    (coco(categories=[{"id": 7}]), "categories[0] has no key 'name'"),
    (coco(categories=[{"id": 7, "name": ""}, {"id": 8, "name": "x"}]), "empty label name"),
    (coco(images=[{"id": 1, "file_name": "gone.png"}],
          annotations=[{"image_id": 1, "category_id": 7}]), "gone.png does not exist"),
    (coco(annotations=[]), "no image has annotations"),
])
def test_bad_coco(imgs, text, needle):
    (imgs / "ann.json").write_text(text)
    refused(convert_coco, str(imgs / "ann.json"), str(imgs), str(imgs / "out"),
            needle=needle, out=imgs / "out")


def test_coco_truncated_json_and_images_without_annotations(imgs):
    full = coco(annotations=[{"image_id": 1, "category_id": 7}])
    (imgs / "ann.json").write_text(full[: len(full) // 2])
    refused(convert_coco, str(imgs / "ann.json"), str(imgs), str(imgs / "out"),
            needle="not valid JSON", out=imgs / "out")
    (imgs / "ann.json").write_text(full)
    summary = convert_coco(str(imgs / "ann.json"), str(imgs), str(imgs / "out"))
    assert summary.written == 1 and summary.skipped == 1 and "no annotations" in str(summary)
    kept = convert_coco(str(imgs / "ann.json"), str(imgs), str(imgs / "out2"), skip_empty=False)
    assert kept.written == 2


# ------------------------------------------------------------------ VOC
def voc_tree(root, ids=("0001", "0002"), xml=None):
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "ImageSets/Main/train.txt").write_text("\n".join(ids) + "\n")
    for i in ids:
        (root / "JPEGImages" / f"{i}.jpg").write_bytes(jpeg_bytes(good_image()))
        (root / "Annotations" / f"{i}.xml").write_text(
            xml if xml is not None else
            "<annotation><object><name>cat</name><difficult>0</difficult></object></annotation>")
    return root


@pytest.mark.parametrize("xml, needle", [
    ("<annotation><object><name>cat</name>", "malformed XML"),
    ("not xml at all", "malformed XML"),
    ("", "malformed XML"),
    ("<annotation><object><difficult>0</difficult></object></annotation>", "has no <name>"),
    ("<annotation><object><name>c</name><difficult>yes</difficult></object></annotation>",
     "<difficult> must be 0 or 1"),
    ("<annotation></annotation>", "no image has a (non-difficult) object"),
])
def test_bad_voc_xml(tmp_path, xml, needle):
    root = voc_tree(tmp_path / "voc", xml=xml)
    refused(convert_voc, str(root), "train", str(tmp_path / "out"), needle=needle,
            out=tmp_path / "out")


def test_voc_missing_pieces(tmp_path):
    root = voc_tree(tmp_path / "voc")
    out = tmp_path / "out"
    refused(convert_voc, str(tmp_path / "nope"), "train", str(out),
            needle="VOC root folder does not exist", out=out)
    refused(convert_voc, str(root), "val", str(out), needle="val.txt: split file does not exist",
            out=out)
    refused(convert_voc, str(root), "../x", str(out), needle="bad split name", out=out)
    (root / "Annotations" / "0002.xml").unlink()
    refused(convert_voc, str(root), "train", str(out), needle="0002.xml: annotation file does not exist",
            out=out)
    voc_tree(root)
    (root / "JPEGImages" / "0001.jpg").unlink()
    refused(convert_voc, str(root), "train", str(out), needle="0001.jpg does not exist", out=out)


# ------------------------------------------------------------------ through the CLI
def test_cli_csv_errors_are_one_line(imgs, capfd):
    (imgs / "data.csv").write_bytes(b"image,labels\nmissing.png,x\n")
    code, out, err = run_main(["data", "from-csv", "--csv", imgs / "data.csv",
                               "--out", imgs / "out"], capfd)
    assert code == 2 and out == ""
    assert_cli_error(code, err, "missing.png")
    assert not (imgs / "out").exists()
    code, _, err = run_main(["data", "from-csv", "--csv", imgs / "data.csv", "--out",
                             imgs / "o", "--label-sep", ","], capfd)
    assert code == 2
    assert_cli_error(code, err, "--label-sep", argparse_ok=True)
