"""The report's figures (matplotlib, Agg): per-class AP, precision-recall curves, label
co-occurrence, set sizes, example predictions and attention maps, each as PNG bytes."""
from __future__ import annotations

import io
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf

from cnnrnn_tf.errors import InputError

CORRECT, WRONG, MISSED = "#1a7f37", "#cf222e", "#8c959f"


def _figure(width: float, height: float):
    """A new Figure (object-oriented API: no pyplot, no global backend)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise InputError(
            "the report needs matplotlib: pip install 'cnnrnn-tf[report]'") from None
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def figure_to_png(fig) -> bytes:
    """The PNG bytes of a Figure (rendered with the Agg canvas)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def precision_recall_curve(y_true_col, y_score_col):
    """Precision and recall at every distinct score threshold, numpy only.

    Returns ``(precision, recall, thresholds)``: ``thresholds`` holds the
    distinct scores in decreasing order; entry i of ``precision`` / ``recall``
    is for predicting every image whose score is >= ``thresholds[i]``. A first
    point (recall 0, precision 1) is prepended to ``precision`` / ``recall`` so
    the curve starts on the y axis. Recall is 0 everywhere if there is no positive.
    """
    t = np.asarray(y_true_col, dtype=np.float64).ravel()
    s = np.asarray(y_score_col, dtype=np.float64).ravel()
    if t.shape != s.shape:
        raise InputError(f"y_true / y_score: shapes {t.shape} and {s.shape} differ")
    order = np.argsort(-s, kind="stable")
    t, s = t[order], s[order]
    # the last index of each block of tied scores
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1] if len(s) else np.zeros(0, int)
    tp = np.cumsum(t)[last]
    fp = (last + 1) - tp
    positives = t.sum()
    precision = tp / np.maximum(tp + fp, 1)
    recall = tp / positives if positives > 0 else np.zeros_like(tp)
    return np.r_[1.0, precision], np.r_[0.0, recall], s[last]


def cooccurrence_matrix(y) -> np.ndarray:
    """``M[i, j] = P(label j | label i)`` over the images of ``y`` ({0,1} [n, K]).

    Rows of labels that never occur are NaN; the diagonal is 1 where defined.
    """
    y = np.asarray(y, dtype=np.float64)
    counts = y.T @ y
    diag = np.diag(counts).copy()
    with np.errstate(invalid="ignore", divide="ignore"):
        m = counts / diag[:, None]
    m[diag == 0, :] = np.nan
    return m


def _label_font(n: int) -> float:
    return float(np.clip(220.0 / max(n, 1), 5.0, 10.0))


def plot_per_class_ap(results: Mapping[str, Any]):
    """Horizontal bars of each label's AP (percent), best first, with its support.

    ``results``: the dict of ``cnnrnn_tf.metrics.multilabel_metrics``.
    Labels without a positive in the data have no AP and are listed as "n/a".
    """
    rows = list(results.get("per_class", []))
    rows.sort(key=lambda c: (c["AP"] is None, -(c["AP"] or 0.0), c["label"]))
    n = max(len(rows), 1)
    fig = _figure(7.5, 1.2 + 0.28 * n)
    ax = fig.add_subplot()
    y = np.arange(len(rows))
    aps = [100.0 * (c["AP"] or 0.0) for c in rows]
    ax.barh(y, aps, color="#4c72b0")
    ax.set_yticks(y, [c["label"] for c in rows], fontsize=_label_font(n))
    ax.invert_yaxis()
    for yi, c, ap in zip(y, rows, aps):
        text = f"{ap:.1f}  (n={c['support']})" if c["AP"] is not None else f"n/a  (n={c['support']})"
        ax.text(min(ap, 100.0) + 1.0, yi, text, va="center", fontsize=_label_font(n) - 1)
    ax.set_xlim(0, 118)
    ax.set_xticks(range(0, 101, 20))
    m = results.get("mAP")
    if m is not None:
        ax.axvline(100.0 * m, color="#dd8452", linestyle="--", linewidth=1.2,
                   label=f"mAP {100.0 * m:.1f}")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xlabel("average precision (%)")
    ax.set_title(f"Per-class AP on {results.get('num_images', '?')} images")
    return fig


def plot_pr_curves(y_true, y_score, label_names: Sequence[str], top_n: int = 6):
    """Precision-recall curves of the ``top_n`` labels with the most positives."""
    from cnnrnn_tf.metrics import average_precision

    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score)
    support = y_true.sum(0)
    order = [j for j in np.argsort(-support, kind="stable") if support[j] > 0][:top_n]
    fig = _figure(6.5, 5.0)
    ax = fig.add_subplot()
    for j in order:
        p, r, _ = precision_recall_curve(y_true[:, j], y_score[:, j])
        ap = average_precision(y_true[:, j], y_score[:, j])
        # "pre": precision p_i holds on (r_{i-1}, r_i], so the area under the curve is the AP
        ax.step(r, p, where="pre", linewidth=1.6,
                label=f"{label_names[j]} (n={int(support[j])}, AP {100 * ap:.1f})")
    ax.set_xlim(0, 1.01)
    ax.set_ylim(0, 1.03)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title(f"Precision-recall, the {len(order)} most frequent labels")
    return fig


def plot_cooccurrence(y_true, y_pred, label_names: Sequence[str]):
    """Two heatmaps of P(column label | row label): in the truth and in the predictions.

    The diagonal (always 1) is left blank so that the colour scale shows the
    off-diagonal structure; rows of labels that never occur are blank too.
    """
    k = len(label_names)
    size = float(np.clip(0.42 * k + 2.5, 5.0, 14.0))
    fig = _figure(2 * size + 1.0, size + 1.2)
    axes = fig.subplots(1, 2, sharey=True)
    font = _label_font(k)
    image = None
    for ax, y, title in ((axes[0], y_true, "truth"), (axes[1], y_pred, "predictions")):
        m = cooccurrence_matrix(y)
        np.fill_diagonal(m, np.nan)
        image = ax.imshow(np.ma.masked_invalid(m), vmin=0.0, vmax=1.0, cmap="viridis")
        ax.set_facecolor("#e6e6e6")
        ax.set_xticks(range(k), label_names, rotation=60, ha="right", fontsize=font)
        ax.set_yticks(range(k), label_names, fontsize=font)
        total = int(np.asarray(y).sum())
        ax.set_title(f"{title} ({total} labels on {len(y)} images)")
        ax.set_xlabel("label j")
        if total == 0:
            ax.text((k - 1) / 2, (k - 1) / 2, f"no {title} label", ha="center", va="center",
                    fontsize=12, color="#555555")
        if k <= 15:
            for i in range(k):
                for j in range(k):
                    if np.isfinite(m[i, j]):
                        ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center",
                                fontsize=font - 2, color="white" if m[i, j] < 0.6 else "black")
    axes[0].set_ylabel("label i")
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="P(label j | label i)")
    fig.suptitle("Label co-occurrence: P(j | i), truth vs predictions")
    return fig


def plot_examples(images: Sequence[np.ndarray], true_labels: Sequence[Sequence[str]],
                  predicted: Sequence[Sequence[Any]], ids: Optional[Sequence[str]] = None,
                  columns: int = 4, max_lines: int = 5):
    """A grid of images with their predicted and true labels.

    ``predicted[i]``: the predicted labels of image i in decoding order, each a
    name or a ``(name, score)`` pair. Under each image: predicted labels that
    are true in green, predicted labels that are wrong in red, true labels
    that were not predicted in grey ("missed").
    """
    n = len(images)
    columns = max(1, min(columns, n))
    rows = max(1, -(-n // columns))
    # Each grid row is an image row and, under it, a row that holds the label lines,
    # tall enough for max_lines, so no text runs into the next image's title.
    text_height = 0.18 * max_lines
    fig = _figure(2.6 * columns, (2.6 + text_height) * rows)
    grid = fig.subplots(2 * rows, columns, squeeze=False,
                        gridspec_kw={"height_ratios": [2.3, text_height] * rows})
    for ax in grid.ravel():
        ax.axis("off")
    for i in range(n):
        ax = grid[2 * (i // columns), i % columns]
        text_ax = grid[2 * (i // columns) + 1, i % columns]
        ax.imshow(np.asarray(images[i]), interpolation="nearest")
        truth = set(true_labels[i])
        lines = []
        names = []
        for item in predicted[i]:
            name, score = (item if isinstance(item, (tuple, list)) else (item, None))
            names.append(name)
            mark = "\u2713" if name in truth else "\u2717"
            text = f"{mark} {name}" + (f" {float(score):.2f}" if score is not None else "")
            lines.append((text, CORRECT if name in truth else WRONG))
        if not names:
            lines.append(("(nothing predicted)", WRONG))
        lines += [(f"missed: {name}", MISSED) for name in true_labels[i] if name not in names]
        if len(lines) > max_lines:
            lines = lines[:max_lines - 1] + [(f"... {len(lines) - max_lines + 1} more", MISSED)]
        for j, (text, color) in enumerate(lines):
            text_ax.text(0.0, 1.0 - j / max_lines, text, color=color, transform=text_ax.transAxes,
                         va="top", ha="left", fontsize=9,
                         fontweight="bold" if color != MISSED else None)
        if ids is not None:
            ax.set_title(str(ids[i]), fontsize=8)
    fig.suptitle("Predictions: \u2713 correct (green), \u2717 wrong (red), missed (grey)")
    fig.get_layout_engine().set(h_pad=0.02, hspace=0.02)
    return fig


def plot_set_sizes(y_true, y_pred):
    """Grouped bars: how many images have 0, 1, 2, ... true vs predicted labels."""
    true_sizes = np.asarray(y_true).sum(1).astype(int)
    pred_sizes = np.asarray(y_pred).sum(1).astype(int)
    top = int(max(true_sizes.max(initial=0), pred_sizes.max(initial=0)))
    x = np.arange(top + 1)
    t_counts = np.bincount(true_sizes, minlength=top + 1)
    p_counts = np.bincount(pred_sizes, minlength=top + 1)
    fig = _figure(6.5, 4.0)
    ax = fig.add_subplot()
    width = 0.4
    bars_t = ax.bar(x - width / 2, t_counts, width, label=f"true (mean {true_sizes.mean():.2f})",
                    color="#4c72b0")
    bars_p = ax.bar(x + width / 2, p_counts, width,
                    label=f"predicted (mean {pred_sizes.mean():.2f})", color="#dd8452")
    ax.bar_label(bars_t, fontsize=8)
    ax.bar_label(bars_p, fontsize=8)
    ax.set_xticks(x)
    ax.set_xlabel("labels per image")
    ax.set_ylabel("images")
    exact = float(np.mean(true_sizes == pred_sizes)) if len(true_sizes) else 0.0
    ax.set_title(f"Label set sizes on {len(true_sizes)} images "
                 f"(predicted size = true size: {100 * exact:.0f}%)")
    ax.legend()
    ax.margins(y=0.12)
    return fig


def _decode_image(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


def example_images(data_dir: str, count: int, ids: Optional[Sequence[str]] = None):
    """The first ``count`` images of a data folder (decoded, RGB) and their true labels.

    ``ids``: the ``Predictions.ids`` the images must line up with (checked).
    """
    from cnnrnn_tf.schema import iter_records

    images, labels = [], []
    for i, record in enumerate(iter_records(data_dir)):
        if i >= count:
            break
        if ids is not None and record.image_id and i < len(ids) and ids[i] \
                and record.image_id != ids[i]:
            raise InputError(f"{data_dir}: record {i} is {record.image_id!r}, the predictions "
                             f"have {ids[i]!r} (the folder changed while reading)")
        images.append(_decode_image(record.image))
        labels.append(list(record.labels))
    return images, labels


def predicted_labels(preds, label_names: Sequence[str], count: Optional[int] = None):
    """The predicted ``(name, score)`` lists of ``Predictions``, in decoding order."""
    rows = range(len(preds.label_ids) if count is None else min(count, len(preds.label_ids)))
    return [[(label_names[i], float(s)) for i, s in zip(preds.label_ids[r], preds.scores[r])
             if i >= 0] for r in rows]


def plot_predictions(preds, data_dir: str, label_names: Sequence[str], count: int = 16,
                     columns: int = 4):
    """:func:`plot_examples` for the first ``count`` images of ``data_dir``.

    ``preds``: ``cnnrnn_tf.evaluation.evaluate.predict_dataset`` on the same folder.
    """
    images, truth = example_images(data_dir, count, ids=preds.ids)
    return plot_examples(images, truth, predicted_labels(preds, label_names, len(images)),
                         ids=preds.ids, columns=columns)


def plot_attention(images: Sequence[np.ndarray], predicted: Sequence[Sequence[Any]], maps,
                   true_labels: Optional[Sequence[Sequence[str]]] = None,
                   ids: Optional[Sequence[str]] = None):
    """Where the attention decoder looked for each predicted label.

    One row per image: the image as the model saw it, then, for each predicted label in
    decoding order, its attention map over the encoder's grid (upsampled, blended over
    the image), titled with the label and its score (green when true, red when wrong).

    ``images``: [n] arrays [S, S, 3] (uint8 or float in [0, 255]); ``predicted[i]``:
    (name, score) pairs; ``maps``: [n, L, h, w] (``CNNRNN.attention_maps``).
    """
    maps = np.asarray(maps, np.float32)
    n = len(images)
    columns = 1 + max([1] + [len(p) for p in predicted])
    fig = _figure(1.9 * columns, 2.1 * max(n, 1))
    grid = fig.subplots(max(n, 1), columns, squeeze=False)
    for ax in grid.ravel():
        ax.axis("off")
    for i in range(n):
        image = np.clip(np.asarray(images[i], np.float32), 0, 255).astype(np.uint8)
        side = image.shape[0]
        grid[i, 0].imshow(image, interpolation="nearest")
        grid[i, 0].set_title(str(ids[i]) if ids is not None else "image", fontsize=8)
        truth = set(true_labels[i]) if true_labels is not None else None
        for j, (name, score) in enumerate(predicted[i]):
            ax = grid[i, j + 1]
            ax.imshow(image, interpolation="nearest")
            ax.imshow(maps[i, j], cmap="inferno", alpha=0.55, interpolation="bilinear",
                      extent=(-0.5, image.shape[1] - 0.5, side - 0.5, -0.5))
            color = None if truth is None else (CORRECT if name in truth else WRONG)
            ax.set_title(f"{name} {float(score):.2f}", fontsize=8, color=color)
    fig.suptitle("Attention: where the decoder looked for each predicted label")
    return fig


def plot_attention_maps(model, preds, data_dir: str, label_names: Sequence[str],
                        image_size: int, count: int = 8):
    """:func:`plot_attention` for the first ``count`` images of ``data_dir`` (an attention
    model; ``preds``: ``cnnrnn_tf.evaluation.evaluate.predict_dataset`` on the same folder)."""
    from cnnrnn_tf.inputs.preprocessor import Preprocessor
    from cnnrnn_tf.schema import iter_records

    _, truth = example_images(data_dir, count, ids=preds.ids)
    preprocessor = Preprocessor(image_size)
    pixels = [preprocessor.decode_image(tf.constant(r.image)).numpy()
              for r, _ in zip(iter_records(data_dir), range(len(truth)))]
    pixels = np.stack(pixels).astype(np.float32)
    maps = model.attention_maps(pixels, preds.label_ids[:len(pixels)])
    return plot_attention(pixels, predicted_labels(preds, label_names, len(pixels)),
                          np.asarray(maps), true_labels=truth, ids=preds.ids)
