"""Tests of the IDX reader and the Fashion-MNIST outfits builder (tiny fake sources)."""
import gzip
import io
import json
import os
import struct
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from cnnrnn_tf.data import fashion_outfits as fo
from cnnrnn_tf.data import outfit_grammar as og
from cnnrnn_tf.data import idx
from cnnrnn_tf.errors import InputError
from cnnrnn_tf.schema import iter_records, list_shards

from tests.reliability_helpers import assert_cli_error, run_main

PER_CLASS = 6
REAL_DIR = "/usr/share/datasets/fashion-mnist"
# The fake train split has 60 items: val holds back the last sixth, positions 50..59.
HELD_BACK = 50


def _idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    """IDX encoding written by hand (independent of the module under test)."""
    header = struct.pack(">HBB", 0, type_code, array.ndim)
    header += b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(">u1").tobytes()


def _fake_labels(split: str) -> np.ndarray:
    """Blocks of the 10 classes, each block shuffled: every sixth of the split has every class."""
    rng = np.random.RandomState(7 if split == "train" else 8)
    return np.concatenate([rng.permutation(10) for _ in range(PER_CLASS)]).astype(np.uint8)


def _pixel_value(split: str, position: int) -> int:
    """Train items are even, test items odd; the value also encodes the item's position."""
    return 2 * position + 2 + (1 if split == "test" else 0)


def _decode_value(value: int):
    """(source split, position in it, class) of an item's pixel value."""
    split = "test" if value % 2 else "train"
    position = (value - 2 - (value % 2)) // 2
    return split, position, int(_fake_labels(split)[position])


def _write_fake_source(folder, gz: bool = True, labels=None):
    """Fake Fashion-MNIST: each item is a solid 28x28 block of one marker value."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, images_name, labels_name in fo.SOURCE_FILES:
        split_labels = _fake_labels(split) if labels is None else labels[split]
        images = np.zeros((len(split_labels), 28, 28), np.uint8)
        for i in range(len(split_labels)):
            images[i] = _pixel_value(split, i)
        for name, array in ((images_name, images), (labels_name, split_labels)):
            data = _idx_bytes(array)
            if gz:
                (folder / (name + ".gz")).write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
    return folder


@pytest.fixture
def fake_source(tmp_path):
    return _write_fake_source(tmp_path / "fmnist")


def _fits_grammar(labels) -> bool:
    """A subset of one style's items plus at most one off-style item."""
    return any(len(set(labels) - set(style.items)) <= 1 for style in og.OUTFIT_STYLES)


def _shard_bytes(folder):
    return [open(p, "rb").read() for p in list_shards(str(folder))]


# --------------------------------------------------------------------------- IDX


def test_idx_roundtrip_plain_and_gzip(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(_idx_bytes(array))
    (tmp_path / "a.gz").write_bytes(gzip.compress(_idx_bytes(array)))
    for name in ("a", "a.gz"):
        got = idx.read_idx_images(str(tmp_path / name))
        assert got.dtype == np.uint8 and np.array_equal(got, array)
    labels = np.array([3, 1, 4], np.uint8)
    (tmp_path / "l").write_bytes(_idx_bytes(labels))
    assert np.array_equal(idx.read_idx_labels(str(tmp_path / "l")), labels)
    idx.write_idx(str(tmp_path / "w.gz"), array)
    assert np.array_equal(idx.read_idx(str(tmp_path / "w.gz")), array)


def test_idx_bad_magic(tmp_path):
    bad = tmp_path / "bad-images-idx3-ubyte"
    bad.write_bytes(b"\x12\x34\x08\x03" + b"\x00" * 40)
    with pytest.raises(InputError, match="bad-images-idx3-ubyte.*magic"):
        idx.read_idx_images(str(bad))
    # A valid label file is not an image file.
    labels = tmp_path / "labels"
    labels.write_bytes(_idx_bytes(np.zeros(3, np.uint8)))
    with pytest.raises(InputError, match="magic number 0x00000801"):
        idx.read_idx_images(str(labels))


def test_idx_truncated_and_corrupt(tmp_path):
    data = _idx_bytes(np.zeros((2, 28, 28), np.uint8))
    (tmp_path / "short").write_bytes(data[:-10])
    with pytest.raises(InputError, match="short.*size mismatch"):
        idx.read_idx_images(str(tmp_path / "short"))
    (tmp_path / "broken.gz").write_bytes(gzip.compress(data)[:30])
    with pytest.raises(InputError, match="broken.gz.*gzip"):
        idx.read_idx_images(str(tmp_path / "broken.gz"))
    with pytest.raises(InputError, match="missing.*does not exist"):
        idx.read_idx(str(tmp_path / "missing"))


# --------------------------------------------------------------------------- source


def test_load_fashion_mnist_from_folder_and_env(fake_source, tmp_path, monkeypatch):
    data = fo.load_fashion_mnist(str(fake_source))
    assert set(data) == {"train", "test"}
    images, labels = data["train"]
    assert images.shape == (10 * PER_CLASS, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10 * PER_CLASS,) and sorted(Counter(labels.tolist()).values()) == [PER_CLASS] * 10
    plain = _write_fake_source(tmp_path / "plain", gz=False)
    monkeypatch.setenv(fo.ENV_VAR, str(plain))
    env_data = fo.load_fashion_mnist()
    assert np.array_equal(env_data["test"][0], data["test"][0])


def test_load_fashion_mnist_missing_says_how_to_get_it(tmp_path, monkeypatch):
    with pytest.raises(InputError, match="apt-get install dataset-fashion-mnist"):
        fo.load_fashion_mnist(str(tmp_path / "nowhere"))
    (tmp_path / "partial").mkdir()
    monkeypatch.setenv(fo.ENV_VAR, str(tmp_path / "partial"))
    with pytest.raises(InputError, match=r"train-images-idx3-ubyte.*CNNRNN_FASHION_MNIST_DIR"):
        fo.load_fashion_mnist()


# --------------------------------------------------------------------------- grammar


def test_grammar_is_documented_and_consistent():
    for line in og._style_table().splitlines():
        assert "    " + line in og.__doc__
    assert "winter" in og.describe_grammar()
    for style in og.OUTFIT_STYLES:
        assert set(style.items) <= set(fo.OUTFIT_LABELS)
        assert len(style.slots) <= og.MAX_ITEMS
        for slot in style.slots:
            assert abs(sum(o for _, o in slot.choices) - 1.0) < 1e-9
    out = og.label_frequencies("outfits")
    ind = og.label_frequencies("independent")
    assert list(out) == list(fo.OUTFIT_LABELS)
    for label in fo.OUTFIT_LABELS:
        assert 0.05 < out[label] < 0.6
        assert abs(out[label] - ind[label]) < 1e-6


def test_samplers_match_frequencies_but_not_cooccurrence():
    n = 4000
    draws = {}
    for grammar in og.GRAMMARS:
        rng = np.random.default_rng(123)
        sample = og.make_label_sampler(grammar)
        draws[grammar] = [sample(rng) for _ in range(n)]
        for labels in draws[grammar]:
            assert 1 <= len(labels) <= 4 and len(set(labels)) == len(labels)
            assert set(labels) <= set(fo.OUTFIT_LABELS)
        freq = Counter(l for labels in draws[grammar] for l in labels)
        expected = og.label_frequencies(grammar)
        for label in fo.OUTFIT_LABELS:
            assert abs(freq[label] / n - expected[label]) < 0.035, (grammar, label)
    assert all(_fits_grammar(labels) for labels in draws["outfits"])
    misfit = sum(not _fits_grammar(labels) for labels in draws["independent"]) / n
    assert misfit > 0.05

    def together(grammar, a, b):
        return sum(a in labels and b in labels for labels in draws[grammar]) / n

    # Outfits: a coat never comes with sandals; a shirt never with a sneaker unless off-style.
    assert together("outfits", "coat", "sandal") < 0.01 < together("independent", "coat", "sandal")
    assert together("outfits", "coat", "pullover") > 2 * together("independent", "coat", "pullover")


# --------------------------------------------------------------------------- build


def test_build_counts_labels_and_splits(fake_source, tmp_path):
    out = tmp_path / "out"
    summary = fo.build_fashion_outfits(
        str(out), num_train=60, num_test=25, seed=3, source_dir=str(fake_source), progress=False,
        num_val=30,
    )
    sizes = {"train": 60, "val": 30, "test": 25}
    assert list(summary) == ["train", "val", "test"]
    assert {split: s.written for split, s in summary.items()} == sizes
    assert sorted(os.listdir(out)) == ["test", "train", "val"]
    assert sum(summary["train"].labels.values()) >= 60
    for split in sizes:  # label_counts.json: the counts without a scan
        counts = json.loads((out / split / "label_counts.json").read_text())
        assert counts == {"num_examples": summary[split].written,
                          "label_counts": summary[split].labels,
                          "shards": [os.path.basename(p) for p in summary[split].shards]}
    used_items = {split: Counter() for split in sizes}
    for split, n in sizes.items():
        records = list(iter_records(str(out / split)))
        assert len(records) == n
        assert [r.image_id for r in records] == [f"{split}-{i:06d}" for i in range(n)]
        for record in records:
            assert 1 <= len(record.labels) <= 4
            assert len(set(record.labels)) == len(record.labels)
            assert _fits_grammar(record.labels), record.labels
            image = Image.open(io.BytesIO(record.image))
            assert image.format == "PNG" and image.mode == "L" and image.size == (64, 64)
            pixels = np.asarray(image)
            values = set(np.unique(pixels).tolist()) - {0}
            items = [_decode_value(v) for v in values]
            # Exactly one item per label, of the right class.
            assert sorted(fo.OUTFIT_LABELS[c] for _, _, c in items) == sorted(record.labels)
            for value in values:
                assert (pixels == value).sum() == 28 * 28
            used_items[split].update((source, position) for source, position, _ in items)
    # Each split's items come from its own part of Fashion-MNIST: train from train images
    # 0..49 (of 60), val from the held-back 50..59, test from the test images.
    assert {s for s, _ in used_items["train"]} == {"train"}
    assert max(p for _, p in used_items["train"]) < HELD_BACK
    assert {s for s, _ in used_items["val"]} == {"train"}
    assert min(p for _, p in used_items["val"]) >= HELD_BACK
    assert {s for s, _ in used_items["test"]} == {"test"}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not set(used_items[a]) & set(used_items[b]), (a, b)
    # item_pools says the same.
    pools = fo.item_pools(fo.load_fashion_mnist(str(fake_source)))
    assert pools["train"].tolist() == list(range(HELD_BACK))
    assert pools["val"].tolist() == list(range(HELD_BACK, 60))
    assert {p for _, p in used_items["val"]} <= set(pools["val"].tolist())
    # Items are drawn from the whole class pool, not always the same image.
    for c in range(10):
        drawn = {p for (s, p) in used_items["train"] if _fake_labels(s)[p] == c}
        if sum(n for (s, p), n in used_items["train"].items() if _fake_labels(s)[p] == c) >= 10:
            assert len(drawn) >= 3


def test_num_val_is_keyword_only_and_defaults_to_num_test(fake_source, tmp_path):
    # The README's call, and the 0.4.0 positional form, still work; val gets the test size.
    summary = fo.build_fashion_outfits(str(tmp_path / "a"), 4, 3, 0, "outfits",
                                       str(fake_source), 64, False)
    assert {split: s.written for split, s in summary.items()} == {"train": 4, "val": 3, "test": 3}
    with pytest.raises(TypeError):
        fo.build_fashion_outfits(str(tmp_path / "b"), 4, 3, 0, "outfits", str(fake_source), 64,
                                 False, 5)
    with pytest.raises(InputError, match="num_val"):
        fo.build_fashion_outfits(str(tmp_path / "b"), num_val=0, source_dir=str(fake_source))
    assert not (tmp_path / "b").exists()


def test_cli_writes_and_prints_val(fake_source, tmp_path, capfd):
    out = tmp_path / "out"
    code, stdout, err = run_main(["data", "fashion-outfits", "--out", out, "--train", "4",
                                  "--val", "3", "--test", "2", "--source", fake_source], capfd)
    assert code == 0, err
    lines = stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == [str(out / s) for s in ("train", "val", "test")]
    assert "wrote 3 examples" in lines[1]
    assert "fashion-outfits: val 3/3 scenes" in err
    assert len(list(iter_records(str(out / "val")))) == 3
    code, _, err = run_main(["data", "fashion-outfits", "--out", tmp_path / "x", "--val", "0"],
                            capfd)
    assert_cli_error(code, err, "--val", argparse_ok=True)


def test_build_is_deterministic(fake_source, tmp_path):
    kwargs = dict(num_train=30, num_test=10, num_val=8, source_dir=str(fake_source),
                  progress=False)
    fo.build_fashion_outfits(str(tmp_path / "a"), seed=5, **kwargs)
    fo.build_fashion_outfits(str(tmp_path / "b"), seed=5, **kwargs)
    fo.build_fashion_outfits(str(tmp_path / "c"), seed=6, **kwargs)
    for split in ("train", "val", "test"):
        assert _shard_bytes(tmp_path / "a" / split) == _shard_bytes(tmp_path / "b" / split)
        assert _shard_bytes(tmp_path / "a" / split) != _shard_bytes(tmp_path / "c" / split)
        a = [(r.image, r.labels) for r in iter_records(str(tmp_path / "a" / split))]
        c = [(r.image, r.labels) for r in iter_records(str(tmp_path / "c" / split))]
        assert a != c
    # The val and test scenes do not depend on the other splits' sizes.
    fo.build_fashion_outfits(str(tmp_path / "d"), seed=5, **dict(kwargs, num_train=7, num_test=3))
    assert _shard_bytes(tmp_path / "a" / "val") == _shard_bytes(tmp_path / "d" / "val")
    fo.build_fashion_outfits(str(tmp_path / "e"), seed=5, **dict(kwargs, num_train=7, num_val=2))
    assert _shard_bytes(tmp_path / "a" / "test") == _shard_bytes(tmp_path / "e" / "test")


def test_build_independent_grammar(fake_source, tmp_path):
    fo.build_fashion_outfits(
        str(tmp_path / "ind"), num_train=300, num_test=5, seed=0, grammar="independent",
        source_dir=str(fake_source), progress=False,
    )
    records = list(iter_records(str(tmp_path / "ind" / "train")))
    assert len(records) == 300 and all(1 <= len(r.labels) <= 4 for r in records)
    assert sum(not _fits_grammar(r.labels) for r in records) > 5
    val = list(iter_records(str(tmp_path / "ind" / "val")))
    assert len(val) == 5 and (tmp_path / "ind" / "val" / "label_counts.json").exists()


def test_build_refuses_existing_shards_and_bad_args(fake_source, tmp_path, capsys):
    out = tmp_path / "out"
    fo.build_fashion_outfits(str(out), num_train=3, num_test=2, source_dir=str(fake_source))
    assert "fashion-outfits: train 3/3" in capsys.readouterr().err
    before = sorted(os.listdir(out / "train")) + sorted(os.listdir(out / "test"))
    with pytest.raises(InputError, match="already holds"):
        fo.build_fashion_outfits(str(out), num_train=3, num_test=2, source_dir=str(fake_source))
    assert sorted(os.listdir(out / "train")) + sorted(os.listdir(out / "test")) == before
    # Shards in val/ alone are refused too, before anything is written.
    fo.build_fashion_outfits(str(tmp_path / "v"), num_train=3, num_test=2,
                             source_dir=str(fake_source), progress=False)
    for split in ("train", "test"):
        for name in os.listdir(tmp_path / "v" / split):
            os.remove(tmp_path / "v" / split / name)
    with pytest.raises(InputError, match=r"v.val: already holds"):
        fo.build_fashion_outfits(str(tmp_path / "v"), num_train=3, num_test=2,
                                 source_dir=str(fake_source), progress=False)
    assert not os.listdir(tmp_path / "v" / "train") and not os.listdir(tmp_path / "v" / "test")
    with pytest.raises(InputError, match="grammar"):
        fo.build_fashion_outfits(str(tmp_path / "x"), grammar="random", source_dir=str(fake_source))
    with pytest.raises(InputError, match="image_size"):
        fo.build_fashion_outfits(str(tmp_path / "x"), image_size=40, source_dir=str(fake_source))
    with pytest.raises(InputError, match="num_train"):
        fo.build_fashion_outfits(str(tmp_path / "x"), num_train=0, source_dir=str(fake_source))
    # A failing source leaves no output folder behind.
    with pytest.raises(InputError):
        fo.build_fashion_outfits(str(tmp_path / "x"), source_dir=str(tmp_path / "nowhere"))
    assert not (tmp_path / "x").exists()


def test_build_failure_midway_leaves_nothing(fake_source, tmp_path):
    # The test split lacks a class: train is written first, then everything is removed.
    source = fo.load_fashion_mnist(str(fake_source))
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in os.listdir(fake_source):
        (broken / name).write_bytes((fake_source / name).read_bytes())
    images, labels = source["test"]
    keep = labels != 9
    (broken / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(images[keep])))
    (broken / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(labels[keep])))
    out = tmp_path / "new" / "out"
    with pytest.raises(InputError, match="test split: no image of class 9"):
        fo.build_fashion_outfits(str(out), num_train=5, num_test=5, source_dir=str(broken),
                                 progress=False)
    assert not (tmp_path / "new").exists()


def test_item_pools_of_full_fashion_mnist_hold_back_the_last_10000_train_images():
    # Only the sizes matter: Fashion-MNIST has 60,000 train and 10,000 test images.
    source = {"train": (None, np.zeros(60000, np.uint8)), "test": (None, np.zeros(10000, np.uint8))}
    pools = fo.item_pools(source)
    assert pools["train"].tolist() == list(range(50000))
    assert pools["val"].tolist() == list(range(50000, 60000))
    assert pools["test"].tolist() == list(range(10000))


def test_val_pool_without_a_class_is_refused(tmp_path):
    # Class 9 only in train images 0..49: the held-back part (50..59) has none.
    labels = {"train": _fake_labels("train").copy(), "test": _fake_labels("test")}
    nines = np.flatnonzero(labels["train"] == 9)
    late = nines[nines >= HELD_BACK]
    early_other = [i for i in range(HELD_BACK) if labels["train"][i] != 9][: len(late)]
    labels["train"][late], labels["train"][early_other] = labels["train"][early_other], 9
    source = _write_fake_source(tmp_path / "src", labels=labels)
    with pytest.raises(InputError, match=r"train split \(its last 10 images, held back for val\): "
                                         r"no image of class 9"):
        fo.build_fashion_outfits(str(tmp_path / "out"), num_train=5, num_test=5,
                                 source_dir=str(source), progress=False)
    assert not (tmp_path / "out").exists()


def test_build_larger_image_size(fake_source, tmp_path):
    fo.build_fashion_outfits(str(tmp_path / "big"), num_train=4, num_test=2, image_size=96,
                             source_dir=str(fake_source), progress=False)
    record = next(iter_records(str(tmp_path / "big" / "train")))
    assert Image.open(io.BytesIO(record.image)).size == (96, 96)


@pytest.mark.skipif(
    not os.path.exists(os.path.join(REAL_DIR, "t10k-labels-idx1-ubyte.gz")),
    reason="dataset-fashion-mnist is not installed",
)
def test_build_from_real_fashion_mnist(tmp_path):
    summary = fo.build_fashion_outfits(
        str(tmp_path / "real"), num_train=40, num_test=20, source_dir=REAL_DIR, progress=False
    )
    assert summary["train"].written == 40 and summary["test"].written == 20
    assert summary["val"].written == 20
    pools = fo.item_pools(fo.load_fashion_mnist(REAL_DIR))
    assert (pools["train"][-1], pools["val"][0], pools["val"][-1]) == (49999, 50000, 59999)
    for record in iter_records(str(tmp_path / "real" / "test")):
        assert _fits_grammar(record.labels)
        pixels = np.asarray(Image.open(io.BytesIO(record.image)))
        assert pixels.shape == (64, 64) and pixels.max() > 0
