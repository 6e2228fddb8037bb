"""Shared pieces of the reliability tests: bad images, a tiny MODEL_DIR, CLI answers."""
import io
import os
import struct
import zlib

import numpy as np
from PIL import Image

from tests.conftest import jpeg_bytes, png_bytes, synthetic_image

TINY = dict(image_size=32, batch_size=16, epochs=1, lstm_units=32, embed_dim=16, beam_size=2)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def huge_png(width: int = 100000, height: int = 100000) -> bytes:
    """A valid-looking PNG whose IHDR claims width x height (a few bytes of pixel data)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
            + png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + png_chunk(b"IEND", b""))


def huge_jpeg_header(width: int = 60000, height: int = 60000) -> bytes:
    """A real JPEG whose SOF0 frame header is patched to claim width x height."""
    data = bytearray(jpeg_bytes(np.zeros((8, 8, 3), np.uint8)))
    i = data.index(b"\xff\xc0")
    data[i + 5:i + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def encode(array: np.ndarray, fmt: str, mode: str = None, **kw) -> bytes:
    image = Image.fromarray(array)
    if mode:
        image = image.convert(mode)
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def good_image(seed: int = 0) -> np.ndarray:
    return synthetic_image(["red", "blue"], seed=seed)


def odd_but_valid_images() -> dict:
    """Images a user may have that must decode: name -> bytes."""
    rgb = good_image()
    gray16 = (rgb[..., 0].astype(np.uint16) * 257)
    return {
        "grayscale.png": encode(rgb[..., 0], "PNG"),
        "rgba.png": encode(np.dstack([rgb, rgb[..., :1]]), "PNG"),
        "gray16.png": encode(gray16, "PNG"),
        "palette.png": encode(rgb, "PNG", mode="P"),
        "cmyk.jpg": encode(rgb, "JPEG", mode="CMYK"),
        "grayscale.jpg": encode(rgb[..., 0], "JPEG"),
        "tall.png": png_bytes(np.zeros((300, 7, 3), np.uint8)),
        "one_pixel.png": png_bytes(np.zeros((1, 1, 3), np.uint8)),
    }


def bad_images() -> dict:
    """Bytes that must be refused: name -> bytes."""
    png, jpeg = png_bytes(good_image()), jpeg_bytes(good_image())
    return {
        "zero.png": b"",
        "truncated.png": png[: len(png) // 2],
        "header_only.png": png[:33],
        "truncated.jpg": jpeg[: len(jpeg) // 3],
        "text.png": b"this is not an image, just text\n",
        "html.jpg": b"<html><body>404 Not Found</body></html>",
        "huge.png": huge_png(),
        "huge.jpg": huge_jpeg_header(),
    }


def one_error_line(err: str) -> str:
    """stderr must be exactly one line; returns it."""
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {lines!r}"
    return lines[0]


def assert_cli_error(code: int, err: str, needle: str, argparse_ok: bool = False) -> str:
    assert code != 0, "bad input was accepted"
    line = one_error_line(err)
    ok = line.startswith("error: ") or (argparse_ok and line.startswith("cnnrnn") and ": error: " in line)
    assert ok, line
    assert "Traceback" not in err
    assert needle in line, f"{needle!r} not in {line!r}"
    return line


def run_main(argv, capfd):
    """Runs the CLI in process; returns (exit code, stdout, stderr) at the fd level."""
    from cnnrnn_tf.cli.app import main

    capfd.readouterr()
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse
        code = exc.code
    out, err = capfd.readouterr()
    return code, out, err


def build_tiny_model_dir(root) -> str:
    """train/, test/ and a tiny trained MODEL_DIR model/ (with saved_model/) under root."""
    from cnnrnn_tf import schema
    from cnnrnn_tf.config import TrainConfig
    from cnnrnn_tf.training.loop import train
    from tests.conftest import synthetic_records

    root = str(root)
    schema.write_records(os.path.join(root, "train"), synthetic_records(48, seed=1))
    schema.write_records(os.path.join(root, "test"), synthetic_records(8, seed=2))
    out = os.path.join(root, "model")
    train(TrainConfig(**TINY), os.path.join(root, "train"), os.path.join(root, "test"), out,
          verbose=0)
    return out
