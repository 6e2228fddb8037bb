"""`cnnrnn report`: every plot is written as a PNG and embedded in report.md;
the numpy precision-recall curve matches scikit-learn's."""
import os
import struct

import numpy as np
import pytest

from cnnrnn_tf.errors import InputError
from cnnrnn_tf.evaluation.plots import cooccurrence_matrix, precision_recall_curve
from cnnrnn_tf.evaluation.report import MARKER_FILE, PLOTS, REPORT_FILE

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == PNG_MAGIC, f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def test_precision_recall_curve_matches_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.RandomState(0)
    for trial in range(20):
        y = (rng.rand(40) < 0.3).astype(int)
        y[trial % 40] = 1
        s = np.round(rng.rand(40), 1 if trial % 2 else 6)  # with and without ties
        p, r, t = precision_recall_curve(y, s)
        sp, sr, st = metrics.precision_recall_curve(y, s)
        # sklearn: increasing thresholds, (recall 0, precision 1) appended last, and it
        # stops at full recall; ours: decreasing thresholds, that point first.
        n = len(st)
        np.testing.assert_allclose(t[::-1][-n:], st)
        np.testing.assert_allclose(p[1:][::-1][-n:], sp[:-1])
        np.testing.assert_allclose(r[1:][::-1][-n:], sr[:-1])
        assert p[0] == 1.0 and r[0] == 0.0 and r[-1] == 1.0


def test_cooccurrence_matrix():
    y = np.array([[1, 1, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]])
    m = cooccurrence_matrix(y)
    np.testing.assert_allclose(m[0], [1.0, 2 / 3, 0.0])
    np.testing.assert_allclose(m[1], [2 / 3, 1.0, 0.0])
    assert np.isnan(m[2]).all()  # a label that never occurs


def test_example_grid_text_stays_clear_of_the_images():
    """The label lines under an image never run into another image or its title."""
    pytest.importorskip("matplotlib")
    from cnnrnn_tf.evaluation.plots import plot_examples

    n = 8
    images = [np.zeros((16, 16, 3), np.uint8)] * n
    truth = [["a", "b", "c", "d", "e", "f"]] * n  # 4 predicted + missed: max_lines used
    predicted = [[("a", 0.9), ("b", 0.8), ("x", 0.7), ("y", 0.6)]] * n
    fig = plot_examples(images, truth, predicted, ids=[f"image-{i}" for i in range(n)])
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    image_axes = [ax for ax in fig.axes if ax.images]
    assert len(image_axes) == n
    blocks = [ax.get_window_extent(renderer) for ax in image_axes]
    blocks += [ax.title.get_window_extent(renderer) for ax in image_axes]
    texts = [t for ax in fig.axes if not ax.images for t in ax.texts]
    assert len(texts) == 5 * n  # 3 + "... 4 more" would be 5 lines per image
    for text in texts:
        box = text.get_window_extent(renderer)
        for block in blocks:
            assert not box.overlaps(block), (text.get_text(), box, block)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from cnnrnn_tf import schema
    from cnnrnn_tf.config import TrainConfig
    from cnnrnn_tf.training.loop import train
    from tests.conftest import synthetic_records

    root = tmp_path_factory.mktemp("report")
    schema.write_records(str(root / "train"), synthetic_records(48, seed=1))
    schema.write_records(str(root / "test"), synthetic_records(20, seed=2))
    train(TrainConfig(image_size=32, batch_size=16, epochs=1, lstm_units=16, embed_dim=8,
                      beam_size=2), str(root / "train"), str(root / "test"), str(root / "model"),
          verbose=0, export=False, evaluate_after=False)
    return root


@pytest.mark.slow
def test_cli_report_writes_every_plot(tiny_model, capsys):
    pytest.importorskip("matplotlib")
    from cnnrnn_tf.cli.app import main

    out = tiny_model / "report"
    argv = ["report", "--model", str(tiny_model / "model"), "--data", str(tiny_model / "test"),
            "--out", str(out), "--beam-size", "2"]
    assert main(argv) == 0
    assert "report written to" in capsys.readouterr().out
    md = (out / REPORT_FILE).read_text()
    for file in PLOTS.values():
        width, height = png_size(out / file)
        assert width >= 300 and height >= 200 and os.path.getsize(out / file) > 5000, file
        assert f"]({file})" in md
    assert "| predicted sets |" in md and "beam size 2" in md
    for label in ("red", "green", "blue", "bar"):
        assert f"| `{label}` |" in md
    leftovers = [n for n in os.listdir(tiny_model) if n.startswith(".report.")]
    assert not leftovers

    # a second run replaces the report; a folder that is not a report is refused
    (out / "stale.png").write_bytes(b"x")
    assert main(argv) == 0
    assert not (out / "stale.png").exists() and (out / MARKER_FILE).exists()
    other = tiny_model / "not_a_report"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    assert main(argv[:-4] + ["--out", str(other)]) == 2
    assert "not hold a report" in capsys.readouterr().err
    assert (other / "notes.txt").read_text() == "keep me"


def test_report_without_matplotlib(monkeypatch, tmp_path):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    from cnnrnn_tf.evaluation.report import write_report

    with pytest.raises(InputError, match=r"pip install 'cnnrnn-tf\[report\]'"):
        write_report(str(tmp_path / "model"), str(tmp_path / "data"), str(tmp_path / "out"))
