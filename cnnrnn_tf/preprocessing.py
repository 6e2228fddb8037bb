"""Image decoding and resizing, shared by tf.data and the serving graph.

Images enter the models as float32 RGB pixels in [0, 255] of a fixed square
size; each encoder normalises them itself (its first layers), so the same
function serves training, evaluation and the exported SavedModel.
"""
from __future__ import annotations

import tensorflow as tf

# Images larger than this (either side, in pixels) are refused rather than
# decoded: a 20000x20000 RGB image would take 1.2 GB before resizing.
MAX_IMAGE_SIDE = 8192


def decode_image(encoded: tf.Tensor, image_size: int) -> tf.Tensor:
    """Decodes one PNG/JPEG (also GIF/BMP) string to float32 [size, size, 3] in [0, 255].

    Grayscale is repeated to RGB, alpha is dropped, 16-bit PNG is scaled to 8 bit.
    Raises InvalidArgumentError on bytes that are not a decodable image, or on an
    image whose side exceeds MAX_IMAGE_SIDE.
    """
    image = tf.io.decode_image(encoded, channels=3, dtype=tf.uint8, expand_animations=False)
    dims = tf.shape(image)
    tf.debugging.assert_less_equal(
        tf.reduce_max(dims[:2]), MAX_IMAGE_SIDE,
        message=f"image larger than {MAX_IMAGE_SIDE} pixels on a side",
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
