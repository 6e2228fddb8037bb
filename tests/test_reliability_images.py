"""Bad and unusual image files at every boundary: the TF decoder, `cnnrnn predict`,
the converters, and the SavedModel's `predict_images` signature.

Each bad image must be refused with a clear one-line message naming it (InputError /
exit 2 / InvalidArgumentError in the graph); each unusual but valid image (grayscale,
RGBA, 16-bit, palette, CMYK) must work. A header claiming 100000x100000 pixels is
refused from the header, before any pixel is allocated (MAX_IMAGE_SIDE).
"""
import csv
import os
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tensorflow as tf

from cnnrnn_tf.errors import InputError
from cnnrnn_tf.inputs.images import (MAX_IMAGE_SIDE, TOO_LARGE_MESSAGE, check_image_bytes,
                                     decode_image, image_header_side)
from tests.conftest import png_bytes
from tests.reliability_helpers import (assert_cli_error, bad_images, build_tiny_model_dir,
                                       good_image, huge_png, odd_but_valid_images, run_main)

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
BAD = bad_images()
ODD = odd_but_valid_images()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_model_dir(tmp_path_factory.mktemp("images"))


# ------------------------------------------------------------------ the decoder itself
@pytest.mark.parametrize("name", sorted(ODD))
def test_unusual_but_valid_images_decode_to_rgb(name):
    image = decode_image(tf.constant(ODD[name]), 32).numpy()
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert 0.0 <= image.min() and image.max() <= 255.0
    check_image_bytes(ODD[name], name)  # the Python-side check agrees


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_images_are_refused_by_both_checks(name):
    with pytest.raises(InputError, match=name.replace(".", r"\.")):
        check_image_bytes(BAD[name], name)
    with pytest.raises(tf.errors.InvalidArgumentError):
        decode_image(tf.constant(BAD[name]), 32)


@pytest.mark.parametrize("claim", [(100000, 100000), (MAX_IMAGE_SIDE + 1, 1), (1, 2 ** 31 - 1)])
def test_huge_header_refused_before_decoding(claim):
    data = huge_png(*claim)
    assert image_header_side(tf.constant(data)).numpy() == max(claim)
    start = time.time()
    with pytest.raises(tf.errors.InvalidArgumentError, match=TOO_LARGE_MESSAGE):
        decode_image(tf.constant(data), 32)
    # Decoding 100000x100000 RGB would need 30 GB; refusing from the header is instant.
    assert time.time() - start < 5
    with pytest.raises(InputError, match=TOO_LARGE_MESSAGE):
        check_image_bytes(data, "x.png")


def test_largest_allowed_side_header_is_not_refused_by_the_header_check():
    assert image_header_side(tf.constant(huge_png(MAX_IMAGE_SIDE, 3))).numpy() == MAX_IMAGE_SIDE


@settings(max_examples=40, **SETTINGS)
@given(st.binary(max_size=300))
def test_random_bytes_never_crash_the_decoder(data):
    try:
        image = decode_image(tf.constant(data), 16).numpy()
        assert image.shape == (16, 16, 3)
    except tf.errors.InvalidArgumentError:
        pass
    try:
        check_image_bytes(data, "fuzz")
    except InputError as exc:
        assert str(exc).startswith("fuzz: ") and "\n" not in str(exc)


@settings(max_examples=40, **SETTINGS)
@given(st.data())
def test_mutated_png_and_jpeg_decode_or_fail_cleanly(data):
    base = data.draw(st.sampled_from([ODD["grayscale.png"], ODD["palette.png"],
                                      ODD["grayscale.jpg"], png_bytes(good_image())]))
    raw = bytearray(base)
    for _ in range(data.draw(st.integers(1, 6))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(raw)))
    raw = bytes(raw[:cut])
    try:
        out = decode_image(tf.constant(raw), 16).numpy()
        assert out.shape == (16, 16, 3) and np.isfinite(out).all()
    except tf.errors.InvalidArgumentError:
        pass
    try:
        check_image_bytes(raw, "m.png")
    except InputError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("m.png: ")


# ------------------------------------------------------------------ cnnrnn predict
@pytest.mark.slow
def test_predict_refuses_each_bad_image_with_one_line(model_dir, tmp_path, capfd):
    good = tmp_path / "good.png"
    good.write_bytes(png_bytes(good_image()))
    for name, data in BAD.items():
        path = tmp_path / name
        path.write_bytes(data)
        code, out, err = run_main(["predict", "--model", model_dir, good, path], capfd)
        assert code == 2
        assert_cli_error(code, err, str(path))
        assert out == ""  # every file is checked before any output


@pytest.mark.slow
def test_predict_accepts_unusual_valid_images(model_dir, tmp_path, capfd):
    import json

    paths = []
    for name, data in ODD.items():
        (tmp_path / name).write_bytes(data)
        paths.append(tmp_path / name)
    code, out, err = run_main(["predict", "--model", model_dir, "--json", *paths], capfd)
    assert code == 0, err
    lines = [json.loads(l) for l in out.splitlines()]
    assert [l["image"] for l in lines] == [str(p) for p in paths]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["folder", "missing"])
def test_predict_folder_or_missing_file(model_dir, tmp_path, capfd, kind):
    target = tmp_path / "photos"
    if kind == "folder":
        target.mkdir()
    code, _, err = run_main(["predict", "--model", model_dir, target], capfd)
    assert code == 2
    assert_cli_error(code, err, str(target))


# ------------------------------------------------------------------ converters
def _csv_with(tmp_path, files: dict):
    with open(tmp_path / "data.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "labels"])
        for name, data in files.items():
            (tmp_path / name).write_bytes(data)
            writer.writerow([name, "red|blue"])
    return tmp_path / "data.csv"


@pytest.mark.parametrize("name", sorted(BAD))
def test_converter_refuses_bad_image_and_leaves_nothing(tmp_path, name):
    from cnnrnn_tf.data import convert_csv

    csv_path = _csv_with(tmp_path, {"ok.png": png_bytes(good_image()), name: BAD[name]})
    with pytest.raises(InputError) as exc:
        convert_csv(str(csv_path), str(tmp_path / "out"))
    msg = str(exc.value)
    assert "\n" not in msg and "line 3" in msg and name in msg
    assert not (tmp_path / "out").exists()


def test_converter_keeps_unusual_valid_images_and_tf_decodes_them(tmp_path):
    from cnnrnn_tf.data import convert_csv
    from cnnrnn_tf.schema import iter_records

    csv_path = _csv_with(tmp_path, ODD)
    summary = convert_csv(str(csv_path), str(tmp_path / "out"))
    assert summary.written == len(ODD)
    for record in iter_records(str(tmp_path / "out")):
        assert decode_image(tf.constant(record.image), 32).shape == (32, 32, 3)


# ------------------------------------------------------------------ the SavedModel
@pytest.mark.slow
def test_saved_model_predict_images_signature(model_dir):
    fn = tf.saved_model.load(os.path.join(model_dir, "saved_model")).signatures["predict_images"]
    out = fn(images=tf.constant(list(ODD.values())))
    assert out["labels"].shape[0] == len(ODD)
    for name, data in BAD.items():
        with pytest.raises(tf.errors.InvalidArgumentError) as exc:
            fn(images=tf.constant([png_bytes(good_image()), data]))
        if name.startswith("huge"):
            assert TOO_LARGE_MESSAGE in exc.value.message
    # still fine afterwards
    assert fn(images=tf.constant([png_bytes(good_image())]))["labels"].shape[0] == 1
