"""Image decoding and resizing: the one function tf.data, the SavedModel and the predictor call.

:func:`decode_image` turns PNG/JPEG/GIF/BMP bytes into **uint8** RGB pixels of a fixed square
size (resized with antialiasing, rounded to the nearest integer). tf.data caches those uint8
pixels and the serving graph computes the very same ones, so training, evaluation and
serving see bit-identical model inputs at every source size (0.2.0 truncated on one side
only). The models take them as float32 in [0, 255]; each encoder normalises them itself.

Memory is bounded, in the exported graph too (so TF Serving gets it): the header is read
before any pixel is decoded and an image over MAX_IMAGE_SIDE a side or MAX_IMAGE_PIXELS in
all is refused (InvalidArgumentError); a JPEG much larger than the target is decoded at a
reduced scale (libjpeg's 1/2, 1/4, 1/8 DCT scaling); resizing reads the uint8 pixels
directly (no full-size float32 copy, which cost 4x the decoded image); a batch decodes at
most DECODE_PARALLELISM images at a time.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import tensorflow as tf

from cnnrnn_tf.schema import (  # noqa: F401  (the image size limits are the records' contract)
    MAX_IMAGE_PIXELS, MAX_IMAGE_SIDE, TOO_LARGE_MESSAGE, image_too_large,
)

# Images of a batch decoded at the same time (tf.map_fn's parallel_iterations).
DECODE_PARALLELISM = 2

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"


def _header_bytes(encoded: tf.Tensor, pos: int, n: int) -> tf.Tensor:
    """encoded[pos:pos + n] as int64 [n] (the caller checks the length)."""
    return tf.cast(tf.io.decode_raw(tf.strings.substr(encoded, pos, n), tf.uint8), tf.int64)


def image_header_side(encoded: tf.Tensor) -> tf.Tensor:
    """The larger side in pixels that a PNG/JPEG/GIF/BMP header claims, without decoding."""
    return tf.reduce_max(image_header_dims(encoded))


def image_header_dims(encoded: tf.Tensor) -> tf.Tensor:
    """[height, width] (int64) that a PNG/JPEG/GIF/BMP header claims, without decoding.

    [0, 0] for anything else (the decoder then rejects it). A JPEG whose header
    cannot be read raises InvalidArgumentError, as decoding it would.
    """
    length = tf.strings.length(encoded)
    head = tf.strings.substr(encoded, 0, 8)

    def png():  # IHDR: width, height as big-endian uint32 at bytes 16..24
        b = _header_bytes(encoded, 16, 8)
        width = ((b[0] * 256 + b[1]) * 256 + b[2]) * 256 + b[3]
        height = ((b[4] * 256 + b[5]) * 256 + b[6]) * 256 + b[7]
        return tf.stack([height, width])

    def jpeg():
        return tf.image.extract_jpeg_shape(encoded, output_type=tf.int64)[:2]

    def gif():  # logical screen: little-endian uint16 at bytes 6..10
        b = _header_bytes(encoded, 6, 4)
        return tf.stack([b[2] + 256 * b[3], b[0] + 256 * b[1]])

    def bmp():  # BITMAPINFOHEADER: little-endian int32 width, height at bytes 18..26
        b = _header_bytes(encoded, 18, 8)
        width = b[0] + 256 * (b[1] + 256 * (b[2] + 256 * b[3]))
        height = b[4] + 256 * (b[5] + 256 * (b[6] + 256 * b[7]))
        height = tf.where(height >= 2 ** 31, 2 ** 32 - height, height)  # top-down BMPs
        return tf.stack([height, width])

    return tf.case([
        (tf.logical_and(tf.strings.substr(head, 0, 8) == _PNG_MAGIC, length >= 24), png),
        (tf.strings.substr(head, 0, 3) == _JPEG_MAGIC, jpeg),
        (tf.logical_and(tf.strings.substr(head, 0, 3) == b"GIF", length >= 10), gif),
        (tf.logical_and(tf.strings.substr(head, 0, 2) == b"BM", length >= 26), bmp),
    ], default=lambda: tf.zeros([2], tf.int64), exclusive=True)


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
                if image_too_large(*image.size):
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


def _jpeg_ratio(dims: tf.Tensor, image_size: int) -> tf.Tensor:
    """The largest DCT scale 1/r (r in 1, 2, 4, 8) that keeps both sides >= 2x the target."""
    short = tf.reduce_min(dims)
    ratio = tf.constant(1, tf.int64)
    for r in (2, 4, 8):
        ratio = tf.where(short >= 2 * r * image_size, tf.constant(r, tf.int64), ratio)
    return ratio


def decode_image(encoded: tf.Tensor, image_size: int) -> tf.Tensor:
    """Decodes one PNG/JPEG (also GIF/BMP) string to uint8 [size, size, 3].

    Grayscale is repeated to RGB, alpha is dropped, 16-bit PNG is scaled to 8 bit. The
    resize is bilinear with antialiasing, rounded to the nearest integer. Raises
    InvalidArgumentError on bytes that are not a decodable image, or on an image over the
    size limits (checked on the header, before decoding).
    """
    dims = image_header_dims(encoded)
    check = tf.debugging.assert_equal(
        tf.logical_and(tf.reduce_max(dims) <= MAX_IMAGE_SIDE,
                       dims[0] * dims[1] <= MAX_IMAGE_PIXELS), True,
        message=TOO_LARGE_MESSAGE, summarize=1)
    with tf.control_dependencies([check] if check is not None else []):
        is_jpeg = tf.strings.substr(encoded, 0, 3) == _JPEG_MAGIC
        ratio = _jpeg_ratio(dims, image_size)

        def jpeg():
            return tf.switch_case(
                tf.cast(tf.math.log(tf.cast(ratio, tf.float32)) / tf.math.log(2.0) + 0.5,
                        tf.int32),
                [lambda r=r: tf.io.decode_jpeg(encoded, channels=3, ratio=r,
                                               dct_method="INTEGER_ACCURATE")
                 for r in (1, 2, 4, 8)])

        def other():
            return tf.io.decode_image(encoded, channels=3, dtype=tf.uint8,
                                      expand_animations=False)

        image = tf.cond(tf.logical_and(is_jpeg, ratio > 1), jpeg, other)
    sides = tf.shape(image)
    tf.debugging.assert_equal(
        tf.logical_and(tf.reduce_max(sides[:2]) <= MAX_IMAGE_SIDE,
                       tf.cast(sides[0], tf.int64) * tf.cast(sides[1], tf.int64)
                       <= MAX_IMAGE_PIXELS), True, message=TOO_LARGE_MESSAGE, summarize=1)
    # resize reads the uint8 pixels as they are: no full-size float32 copy.
    image = tf.image.resize(image, [image_size, image_size], antialias=True)
    image = tf.cast(tf.round(tf.clip_by_value(image, 0.0, 255.0)), tf.uint8)
    image.set_shape([image_size, image_size, 3])
    return image


def decode_images(encoded: tf.Tensor, image_size: int,
                  parallelism: int = DECODE_PARALLELISM) -> tf.Tensor:
    """Decodes a [batch] string tensor to float32 model inputs [batch, size, size, 3].

    At most ``parallelism`` images are decoded at a time, so a batch of large images
    holds at most that many full-size decoded images in memory.
    """
    pixels = tf.map_fn(
        lambda x: decode_image(x, image_size),
        encoded,
        fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.uint8),
        parallel_iterations=int(parallelism),
    )
    return tf.cast(pixels, tf.float32)


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """What the training input pipeline does to each image (all off by default).

    Attributes:
        color: brightness / contrast jitter (``--augment``).
        crop_scale: random resized crop (``--crop-scale MIN``): a box of MIN..1 of the
            image's area, aspect ratio 3/4..4/3, resized back to the image size (as
            Inception / torchvision's RandomResizedCrop). It can cut an object out of
            the frame while its label stays: keep MIN high (0.5+) for small objects.
        hflip: random horizontal flip (``--hflip``): only where a mirrored image has the
            same labels (not for left/right labels, text or digits).
    """

    color: bool = False
    crop_scale: Optional[float] = None
    hflip: bool = False

    def __post_init__(self):
        if self.crop_scale is not None and not 0.0 < float(self.crop_scale) <= 1.0:
            raise ValueError(f"crop_scale must be in (0, 1], got {self.crop_scale}")

    @property
    def active(self) -> bool:
        return bool(self.color or self.crop_scale is not None or self.hflip)


def augment_image(image: tf.Tensor, seed=None, augmentation: Optional[Augmentation] = None
                  ) -> tf.Tensor:
    """Augments one float32 [S, S, 3] image in [0, 255] (default: colour jitter only).

    ``seed``: an int64 [2] seed for TF's stateless random ops (tf.data passes one per
    example, drawn from the training seed), so a run is reproducible; None draws fresh.
    Flips and crops are options (:class:`Augmentation`): they can move an object out of
    the frame or change what a label means (left/right), so each data set decides.
    """
    augmentation = augmentation or Augmentation(color=True)
    if seed is None:
        seed = tf.random.uniform([2], maxval=2 ** 31 - 1, dtype=tf.int64)
    seed = tf.cast(seed, tf.int64)
    if augmentation.crop_scale is not None and augmentation.crop_scale < 1.0:
        image = random_resized_crop(image, seed + 2, float(augmentation.crop_scale))
    if augmentation.hflip:
        image = tf.image.stateless_random_flip_left_right(image, seed=seed + 3)
    if augmentation.color:
        image = tf.image.stateless_random_brightness(image, 20.0, seed=seed)
        image = tf.image.stateless_random_contrast(image, 0.8, 1.2, seed=seed + 1)
    return tf.clip_by_value(image, 0.0, 255.0)


def random_resized_crop(image: tf.Tensor, seed, min_scale: float,
                        ratio=(3.0 / 4.0, 4.0 / 3.0)) -> tf.Tensor:
    """A random box of ``min_scale``..1 of the area (aspect ``ratio``), resized back."""
    size = tf.shape(image)[:2]
    u = tf.random.stateless_uniform([4], seed=seed)
    area = min_scale + (1.0 - min_scale) * u[0]
    log_ratio = tf.math.log(ratio[0]) + (tf.math.log(ratio[1]) - tf.math.log(ratio[0])) * u[1]
    aspect = tf.exp(log_ratio)
    height = tf.minimum(tf.sqrt(area / aspect), 1.0)  # fractions of the side
    width = tf.minimum(tf.sqrt(area * aspect), 1.0)
    top = (1.0 - height) * u[2]
    left = (1.0 - width) * u[3]
    box = tf.stack([top, left, top + height, left + width])[None]
    out = tf.image.crop_and_resize(image[None], box, [0], size, method="bilinear")
    return tf.reshape(out[0], tf.shape(image))
