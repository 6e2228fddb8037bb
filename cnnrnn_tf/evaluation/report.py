"""An evaluation report: metric tables and PNG plots for a MODEL_DIR on a data folder.

``cnnrnn report --model MODEL_DIR --data DIR --out REPORT_DIR`` writes

    REPORT_DIR/report.md            the metric tables, with the plots embedded
    REPORT_DIR/per_class_ap.png     AP of every label (bars), with its support
    REPORT_DIR/pr_curves.png        precision-recall curves of the most frequent labels
    REPORT_DIR/cooccurrence.png     P(column label | row label): truth and predictions side by side
    REPORT_DIR/examples.png         a grid of images: predicted labels (green right, red wrong),
                                    missed true labels in grey
    REPORT_DIR/set_sizes.png        how many labels per image: truth vs predictions
    REPORT_DIR/attention.png        (--decoder attention models) for the first images, the
                                    attention map of each predicted label over the image

The folder is written under a temporary name next to REPORT_DIR and renamed when
complete. An existing REPORT_DIR is replaced when it holds a report written by
this module (it has the marker file ``.cnnrnn-report``), and refused otherwise,
so that a typo in ``--out`` never deletes an unrelated folder.

The plotting functions take arrays and return ``matplotlib.figure.Figure``
objects (no pyplot, no global backend state), so notebooks reuse them. The
PNGs are rendered with matplotlib's Agg canvas. matplotlib is the ``report``
extra: ``pip install 'cnnrnn-tf[report]'``. The precision-recall curves are
computed with numpy (:func:`precision_recall_curve`), not scikit-learn."""
from __future__ import annotations

import os
import uuid
from typing import Any, Dict, List, Mapping, Optional, Sequence

import tensorflow as tf

from cnnrnn_tf import uri
from cnnrnn_tf.errors import InputError
from cnnrnn_tf.io_utils import makedirs, publish_dir, remove_quietly
from cnnrnn_tf.evaluation.plots import (
    _figure,
    figure_to_png,
    plot_attention_maps,
    plot_cooccurrence,
    plot_per_class_ap,
    plot_pr_curves,
    plot_predictions,
    plot_set_sizes,
)

REPORT_FILE = "report.md"
MARKER_FILE = ".cnnrnn-report"
PLOTS = {
    "per_class_ap": "per_class_ap.png",
    "pr_curves": "pr_curves.png",
    "cooccurrence": "cooccurrence.png",
    "examples": "examples.png",
    "set_sizes": "set_sizes.png",
}
# Written too for models that have attention maps (model.attends).
ATTENTION_PLOTS = {"attention": "attention.png"}

__all__ = [
    "write_report", "precision_recall_curve", "cooccurrence_matrix",
    "plot_per_class_ap", "plot_pr_curves", "plot_cooccurrence", "plot_examples",
    "plot_set_sizes", "plot_predictions", "plot_attention", "plot_attention_maps",
    "example_images", "predicted_labels", "figure_to_png",
]


# --------------------------------------------------------------------------
# matplotlib, imported lazily
# --------------------------------------------------------------------------


# --------------------------------------------------------------------------
# numbers behind the plots (numpy only)
# --------------------------------------------------------------------------


# --------------------------------------------------------------------------
# plots: arrays in, Figure out
# --------------------------------------------------------------------------


# --------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> List[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def _pct(v) -> str:
    return "-" if v is None else f"{100.0 * float(v):.1f}"


def _markdown(loaded, data_dir: str, results: Dict[str, Any], beam_size: int,
              plots: Mapping[str, str] = PLOTS) -> str:
    from cnnrnn_tf.metrics import HEADLINE_KEYS

    cfg = loaded.config
    lines = [
        "# CNN-RNN evaluation report",
        "",
        f"- model: `{loaded.path}` ({cfg.model}, {cfg.backbone} encoder, "
        f"{cfg.image_size}px, {len(loaded.vocab)} labels)",
        f"- data: `{data_dir}` ({results['num_images']} images, "
        f"{results['num_classes_evaluated']} of {results['num_classes']} labels occur)",
        f"- decoding: {_decoding(loaded.model, cfg, beam_size)}",
        f"- labels per image: {results['mean_true_labels']:.2f} true, "
        f"{results['mean_predicted_labels']:.2f} predicted",
    ]
    if results.get("unknown_labels"):
        lines.append(f"- labels in the data that the model does not know (ignored): "
                     f"{', '.join(results['unknown_labels'])}")
    lines += ["", "## Metrics (percent)", ""]
    k = results.get("top_k", 3)
    top = results.get(f"top{k}", {})
    lines += _md_table(["", "mAP", *HEADLINE_KEYS], [
        ["predicted sets", _pct(results["mAP"]), *(_pct(results[m]) for m in HEADLINE_KEYS)],
        [f"top-{k}", "-", *(_pct(top.get(m)) for m in HEADLINE_KEYS)],
    ])
    lines += ["", "Definitions: `cnnrnn_tf/metrics.py`. mAP ranks images by the per-label "
              "scores; the other columns score the predicted label sets.", "",
              "## Per class", ""]
    lines += _md_table(["label", "support", "predicted", "AP", "P", "R", "F1"], [
        [f"`{c['label']}`", str(c["support"]), str(c["predicted"]), _pct(c["AP"]),
         _pct(c["precision"]), _pct(c["recall"]), _pct(c["F1"])]
        for c in results["per_class"]])
    captions = {
        "per_class_ap": ("Per-class average precision",
                         "AP of each label over the data, best first; n is the number of images "
                         "with the label; the dashed line is the mAP."),
        "pr_curves": ("Precision-recall curves",
                      "For the most frequent labels, ranking the images by the label's score."),
        "cooccurrence": ("Label co-occurrence",
                         "Cell (i, j) is the fraction of images with label i that also have "
                         "label j: in the truth (left) and in the predicted sets (right)."),
        "examples": ("Examples",
                     "The first images of the data: predicted labels in decoding order with "
                     "their scores, green when true, red when wrong; missed true labels in grey."),
        "set_sizes": ("Label set sizes",
                      "How many images have each number of labels, true vs predicted."),
        "attention": ("Attention maps",
                      "For the first images: the image as the model sees it, then for each "
                      "predicted label (decoding order) where the attention decoder looked "
                      "when it emitted it (bright: high weight). Green: true label, red: wrong."),
    }
    for key, file in plots.items():
        title, caption = captions[key]
        lines += ["", f"## {title}", "", caption, "", f"![{title}]({file})"]
    return "\n".join(lines) + "\n"


def _decoding(model, cfg, beam_size: int) -> str:
    if not model.thresholded:
        return f"beam size {beam_size}"
    if model.class_thresholds:
        return "one threshold per label, calibrated on the validation split"
    how = " (calibrated on the validation split)" if cfg.threshold is None else ""
    return f"threshold {model.threshold:g}{how}"


def _prepare_out_dir(out_dir: str) -> None:
    uri.ensure_filesystem(out_dir)
    if not uri.is_remote(out_dir) and os.path.islink(out_dir):
        raise InputError(f"{out_dir}: exists and is not a report folder; choose another --out")
    try:
        if not tf.io.gfile.exists(out_dir):
            return
        if not tf.io.gfile.isdir(out_dir):
            raise InputError(f"{out_dir}: exists and is not a report folder; choose another --out")
        if (tf.io.gfile.listdir(out_dir)
                and not tf.io.gfile.exists(uri.join(out_dir, MARKER_FILE))):
            raise InputError(f"{out_dir}: folder exists and does not hold a report written by "
                             "`cnnrnn report`; choose another --out")
    except tf.errors.OpError as exc:
        raise uri.storage_error(out_dir, exc) from None


def write_report(model_dir: str, data_dir: str, out_dir: str, beam_size: Optional[int] = None,
                 num_examples: int = 16, pr_labels: int = 6, progress: bool = False) -> str:
    """Evaluates MODEL_DIR on ``data_dir`` and writes REPORT_DIR ``out_dir``.

    ``progress``: a progress bar on stderr while the model runs over the data.
    Returns the path of ``report.md``. Replaces a report written earlier to
    ``out_dir``; refuses (InputError) any other existing non-empty folder.
    """
    _figure(1, 1)  # fail early, before the model runs, when matplotlib is missing
    from cnnrnn_tf.inputs.dataset import scan_labels
    from cnnrnn_tf.evaluation.evaluate import predict_dataset
    from cnnrnn_tf.metrics import multilabel_metrics
    from cnnrnn_tf.model_dir import load_model_dir

    out_dir = uri.absolute(out_dir).rstrip("/")
    _prepare_out_dir(out_dir)
    loaded = load_model_dir(model_dir)
    beam = int(beam_size or loaded.config.beam_size)
    stats = scan_labels(data_dir, require_labels=False)
    preds = predict_dataset(loaded.model, loaded.vocab, data_dir, loaded.image_size,
                            beam_size=beam, progress=progress, total=stats.num_examples)
    names = list(loaded.vocab.labels)
    if not preds.y_true.any():
        raise InputError(f"{data_dir}: no image has a label the model knows; nothing to score")
    results = multilabel_metrics(preds.y_true, preds.y_pred, preds.y_score, top_k=3,
                                 label_names=names)
    known = set(names)
    results["unknown_labels"] = sorted(x for x in stats.label_counts if x not in known)
    results["mean_true_labels"] = float(preds.y_true.sum(1).mean())
    results["mean_predicted_labels"] = float(preds.y_pred.sum(1).mean())

    figures = {
        "per_class_ap": lambda: plot_per_class_ap(results),
        "pr_curves": lambda: plot_pr_curves(preds.y_true, preds.y_score, names, top_n=pr_labels),
        "cooccurrence": lambda: plot_cooccurrence(preds.y_true, preds.y_pred, names),
        "examples": lambda: plot_predictions(preds, data_dir, names, count=num_examples),
        "set_sizes": lambda: plot_set_sizes(preds.y_true, preds.y_pred),
    }
    plots = dict(PLOTS)
    if loaded.model.attends:
        plots.update(ATTENTION_PLOTS)
        figures["attention"] = lambda: plot_attention_maps(
            loaded.model, preds, data_dir, names, loaded.image_size, count=min(num_examples, 8))

    parent = uri.dirname(out_dir) or "."
    makedirs(parent)
    tmp = uri.join(parent, f".{uri.basename(out_dir)}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        tf.io.gfile.makedirs(tmp)
        for key, make in figures.items():
            with tf.io.gfile.GFile(uri.join(tmp, plots[key]), "wb") as f:
                f.write(figure_to_png(make()))
        with tf.io.gfile.GFile(uri.join(tmp, REPORT_FILE), "w") as f:
            f.write(_markdown(loaded, data_dir, results, beam, plots))
        with tf.io.gfile.GFile(uri.join(tmp, MARKER_FILE), "w") as f:
            f.write("written by cnnrnn report\n")  # not empty: S3 copies refuse empty objects
        if not uri.is_remote(tmp):
            os.chmod(tmp, 0o755)
        _prepare_out_dir(out_dir)  # checked again: it may have appeared meanwhile
        publish_dir(tmp, out_dir, marker=MARKER_FILE)
    finally:
        remove_quietly(tmp)
    return uri.join(out_dir, REPORT_FILE)
