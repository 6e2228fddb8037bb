"""Image decoding and resizing, shared by tf.data and the serving graph.

Images enter the models as float32 RGB pixels in [0, 255] of a fixed square
size; each encoder normalises them itself (its first layers), so the same
function serves training, evaluation and the exported SavedModel.
"""
from __future__ import annotations

import tensorflow as tf

# Images larger than this (either side, in pixels) are refused rather than
# decoded: a 20000x20000 RGB image would take 1.2 GB before resizing. The side is
# read from the PNG / JPEG / GIF / BMP header first (image_header_side), so a file
# whose header claims 100000x100000 is refused without allocating its pixels.
MAX_IMAGE_SIDE = 8192
TOO_LARGE_MESSAGE = f"image larger than {MAX_IMAGE_SIDE} pixels on a side"

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"


def _header_bytes(encoded: tf.Tensor, pos: int, n: int) -> tf.Tensor:
    """encoded[pos:pos + n] as int64 [n] (the caller checks the length)."""
    return tf.cast(tf.io.decode_raw(tf.strings.substr(encoded, pos, n), tf.uint8), tf.int64)


def image_header_side(encoded: tf.Tensor) -> tf.Tensor:
    """The larger side in pixels that a PNG/JPEG/GIF/BMP header claims, without decoding.

    int64 scalar; 0 for anything else (the decoder then rejects it). A JPEG whose
    header cannot be read raises InvalidArgumentError, as decoding it would.
    """
    length = tf.strings.length(encoded)
    head = tf.strings.substr(encoded, 0, 8)

    def png():  # IHDR: width, height as big-endian uint32 at bytes 16..24
        b = _header_bytes(encoded, 16, 8)
        width = ((b[0] * 256 + b[1]) * 256 + b[2]) * 256 + b[3]
        height = ((b[4] * 256 + b[5]) * 256 + b[6]) * 256 + b[7]
        return tf.maximum(width, height)

    def jpeg():
        return tf.reduce_max(tf.image.extract_jpeg_shape(encoded, output_type=tf.int64)[:2])

    def gif():  # logical screen: little-endian uint16 at bytes 6..10
        b = _header_bytes(encoded, 6, 4)
        return tf.maximum(b[0] + 256 * b[1], b[2] + 256 * b[3])

    def bmp():  # BITMAPINFOHEADER: little-endian int32 width, height at bytes 18..26
        b = _header_bytes(encoded, 18, 8)
        width = b[0] + 256 * (b[1] + 256 * (b[2] + 256 * b[3]))
        height = b[4] + 256 * (b[5] + 256 * (b[6] + 256 * b[7]))
        height = tf.where(height >= 2 ** 31, 2 ** 32 - height, height)  # top-down BMPs
        return tf.maximum(width, height)

    return tf.case([
        (tf.logical_and(tf.strings.substr(head, 0, 8) == _PNG_MAGIC, length >= 24), png),
        (tf.strings.substr(head, 0, 3) == _JPEG_MAGIC, jpeg),
        (tf.logical_and(tf.strings.substr(head, 0, 3) == b"GIF", length >= 10), gif),
        (tf.logical_and(tf.strings.substr(head, 0, 2) == b"BM", length >= 26), bmp),
    ], default=lambda: tf.constant(0, tf.int64), exclusive=True)


def check_image_bytes(data: bytes, name: str = "image") -> None:
    """Python-side check of one image file's bytes (no TensorFlow op, nothing on stderr).

    Raises InputError naming ``name`` when the bytes are not a PNG/JPEG/GIF/BMP that
    decodes completely, or when a side exceeds MAX_IMAGE_SIDE (read from the header,
    before any pixel is decoded). libjpeg prints its complaints about broken JPEGs
    straight to stderr from inside TensorFlow's decoder; Pillow does not, so the
    command line checks with Pillow first and keeps its error to one line.
    """
    import io
    import warnings

    from PIL import Image

    from cnnrnn_tf.errors import InputError

    if not data:
        raise InputError(f"{name}: image is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data), formats=["PNG", "JPEG", "GIF", "BMP"]) as image:
                if max(image.size) > MAX_IMAGE_SIDE:
                    raise InputError(f"{name}: {TOO_LARGE_MESSAGE} "
                                     f"({image.size[0]}x{image.size[1]})")
                image.load()
    except InputError:
        raise
    except Image.DecompressionBombError:
        raise InputError(f"{name}: {TOO_LARGE_MESSAGE}") from None
    except Image.UnidentifiedImageError:
        raise InputError(f"{name}: not a decodable PNG/JPEG/GIF/BMP image "
                         "(unknown file format)") from None
    except Exception as exc:  # Pillow raises UnidentifiedImageError, OSError, SyntaxError, ...
        raise InputError(f"{name}: not a decodable PNG/JPEG/GIF/BMP image "
                         f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
                         ) from None


def decode_image(encoded: tf.Tensor, image_size: int) -> tf.Tensor:
    """Decodes one PNG/JPEG (also GIF/BMP) string to float32 [size, size, 3] in [0, 255].

    Grayscale is repeated to RGB, alpha is dropped, 16-bit PNG is scaled to 8 bit.
    Raises InvalidArgumentError on bytes that are not a decodable image, or on an
    image whose side exceeds MAX_IMAGE_SIDE (checked on the header, before decoding).
    """
    check = tf.debugging.assert_less_equal(
        image_header_side(encoded), tf.constant(MAX_IMAGE_SIDE, tf.int64),
        message=TOO_LARGE_MESSAGE, summarize=1,
    )
    with tf.control_dependencies([check] if check is not None else []):
        image = tf.io.decode_image(encoded, channels=3, dtype=tf.uint8, expand_animations=False)
    dims = tf.shape(image)
    tf.debugging.assert_less_equal(
        tf.reduce_max(dims[:2]), MAX_IMAGE_SIDE, message=TOO_LARGE_MESSAGE, summarize=1,
    )
    image = tf.image.resize(tf.cast(image, tf.float32), [image_size, image_size], antialias=True)
    image = tf.clip_by_value(image, 0.0, 255.0)
    image.set_shape([image_size, image_size, 3])
    return image


def decode_images(encoded: tf.Tensor, image_size: int) -> tf.Tensor:
    """Decodes a [batch] string tensor to float32 [batch, size, size, 3]."""
    return tf.map_fn(
        lambda x: decode_image(x, image_size),
        encoded,
        fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.float32),
    )


def augment_image(image: tf.Tensor, seed=None) -> tf.Tensor:
    """Light augmentation for multi-label scenes: brightness/contrast jitter only.

    No flips or crops by default: they can move an object out of the frame or
    change what a label means (left/right); both are cheap to add per dataset.
    """
    image = tf.image.random_brightness(image, 20.0, seed=seed)
    image = tf.image.random_contrast(image, 0.8, 1.2, seed=seed)
    return tf.clip_by_value(image, 0.0, 255.0)
