"""Multi-label evaluation metrics (numpy only).

Notation: ``y_true`` and ``y_pred`` are {0, 1} arrays of shape ``[n, K]``
(n images, K classes); ``y_pred`` holds the *predicted label sets*.
``y_score`` is a float array ``[n, K]`` of ranking scores (higher = more
confident). For class k: ``TP_k = sum_i y_true[i,k] * y_pred[i,k]``,
``support_k = sum_i y_true[i,k]``, ``predicted_k = sum_i y_pred[i,k]``.

Definitions (as in the CNN-RNN paper, Wang et al., CVPR 2016):

* **AP** of one class (non-interpolated average precision): sort the images
  by score, descending; each distinct score is one operating point n (tied
  images enter together), ``AP = sum_n (R_n - R_{n-1}) P_n`` with ``P_n`` and
  ``R_n`` the precision and recall of the images scoring at least that score.
  Without ties this is ``(1/P) * sum_j precision@r_j`` over the ranks of the P
  positives; with ties it does not depend on the images' order, and it equals
  ``sklearn.metrics.average_precision_score`` in every case (0.2.0 broke ties by
  image index). AP is undefined for a class with no positive.
* **Evaluated classes** E: the classes with ``support_k >= 1``.
* **mAP** = mean of AP over E.
* Per class: ``P_k = TP_k / predicted_k`` (0 if ``predicted_k == 0``, like
  sklearn's ``zero_division=0``), ``R_k = TP_k / support_k`` (0 if
  ``support_k == 0``), ``F1_k = 2 P_k R_k / (P_k + R_k)`` (0 if both are 0).
* **CP** = mean of ``P_k`` over E; **CR** = mean of ``R_k`` over E;
  **CF1** = ``2 CP CR / (CP + CR)`` (harmonic mean of the *averages*, as in
  the paper; 0 if both are 0). A class in E that is never predicted counts
  with precision 0.
* **OP** = ``sum_k TP_k / sum_k predicted_k`` (0 if nothing is predicted),
  **OR** = ``sum_k TP_k / sum_k support_k``, **OF1** = ``2 OP OR / (OP + OR)``
  (0 if both are 0). The overall (micro) sums run over *all* K classes, so a
  prediction of a class without positives is a false positive that lowers OP.
* **top-k**: the same six numbers with the predicted set of image i replaced
  by its ``top_k`` highest-scoring labels; ties are broken by the lower class
  index first (stable argsort of ``-y_score[i]``). If ``top_k > K`` all K
  labels are predicted.

:func:`multilabel_metrics` needs at least one positive in ``y_true`` (otherwise
mAP, CP, CR and OR are undefined) and raises :class:`InputError` without one.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from cnnrnn_tf.errors import InputError

HEADLINE_KEYS = ("CP", "CR", "CF1", "OP", "OR", "OF1")

__all__ = [
    "average_precision",
    "multilabel_metrics",
    "format_table",
    "format_comparison",
    "per_class_table",
]


# --------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------

def _as_float_array(x: Any, name: str) -> np.ndarray:
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{name}: not a numeric array ({exc})") from None
    return arr


def _as_binary(x: Any, name: str) -> np.ndarray:
    arr = _as_float_array(x, name)
    if arr.size and not np.all((arr == 0) | (arr == 1)):
        bad = arr[~((arr == 0) | (arr == 1))].ravel()[0]
        raise InputError(f"{name}: values must be 0 or 1 (found {bad!r})")
    return arr.astype(np.int64)


def _as_scores(x: Any, name: str) -> np.ndarray:
    arr = _as_float_array(x, name)
    if arr.size and not np.all(np.isfinite(arr)):
        raise InputError(f"{name}: scores must be finite (found NaN or inf)")
    return arr


# --------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------

def _ap(t: np.ndarray, s: np.ndarray) -> float:
    """AP of validated 1-D arrays (t binary int, s finite float)."""
    order = np.argsort(-s, kind="stable")
    hits = t[order]
    num_pos = int(hits.sum())
    if num_pos == 0:
        return float("nan")
    # One operating point per distinct score (tied images enter together), as
    # scikit-learn's average_precision_score: AP = sum_n (R_n - R_{n-1}) P_n.
    scores = s[order]
    last = np.r_[np.flatnonzero(np.diff(scores) != 0), hits.size - 1]
    cum = np.cumsum(hits, dtype=np.float64)[last]
    precision = cum / (last + 1.0)
    recall_gain = np.diff(np.r_[0.0, cum]) / num_pos
    return float(np.sum(recall_gain * precision))


def average_precision(y_true_col: Any, y_score_col: Any) -> float:
    """Non-interpolated average precision of one class.

    Mean over the positives of the precision at that positive's rank, the
    images being sorted by score descending; images with tied scores count at one
    operating point, so the result does not depend on their order. Equal to
    ``sklearn.metrics.average_precision_score``, ties included. Returns NaN when
    ``y_true_col`` has no positive (AP is undefined).
    """
    t = _as_binary(y_true_col, "y_true_col")
    s = _as_scores(y_score_col, "y_score_col")
    if t.ndim != 1:
        raise InputError(f"y_true_col: expected a 1-D array, got shape {t.shape}")
    if s.shape != t.shape:
        raise InputError(
            f"y_score_col: shape {s.shape} does not match y_true_col shape {t.shape}")
    if t.size == 0:
        raise InputError("y_true_col: empty (need at least one image)")
    return _ap(t, s)


def _safe_div(a: float, b: float) -> float:
    return float(a) / float(b) if b else 0.0


def _harmonic(p: float, r: float) -> float:
    return 2.0 * p * r / (p + r) if (p + r) > 0 else 0.0


def _set_metrics(y_true: np.ndarray, y_pred: np.ndarray,
                 evaluated: np.ndarray) -> Tuple[Dict[str, float], np.ndarray, np.ndarray]:
    """CP/CR/CF1/OP/OR/OF1 of predicted sets, plus per-class P/R/F1 arrays."""
    tp = (y_true * y_pred).sum(axis=0).astype(np.float64)
    support = y_true.sum(axis=0).astype(np.float64)
    predicted = y_pred.sum(axis=0).astype(np.float64)
    prec = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    rec = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    cp = float(prec[evaluated].mean())
    cr = float(rec[evaluated].mean())
    op = _safe_div(tp.sum(), predicted.sum())
    orr = _safe_div(tp.sum(), support.sum())
    out = {
        "CP": cp, "CR": cr, "CF1": float(_harmonic(cp, cr)),
        "OP": float(op), "OR": float(orr), "OF1": float(_harmonic(op, orr)),
    }
    return out, prec, rec


def top_k_sets(y_score: np.ndarray, top_k: int) -> np.ndarray:
    """{0,1} matrix marking each row's ``top_k`` highest scores.

    Ties are broken by the lower class index (stable argsort of ``-score``).
    """
    n, k = y_score.shape
    kk = min(int(top_k), k)
    order = np.argsort(-y_score, axis=1, kind="stable")[:, :kk]
    sets = np.zeros((n, k), dtype=np.int64)
    np.put_along_axis(sets, order, 1, axis=1)
    return sets


def multilabel_metrics(y_true: Any, y_pred: Any, y_score: Any, top_k: int = 3,
                       label_names: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """All evaluation metrics of a multi-label prediction (see module doc).

    Returns a JSON-serialisable dict with keys ``mAP``,
    ``num_classes_evaluated``, ``num_classes``, ``num_images``, ``CP``,
    ``CR``, ``CF1``, ``OP``, ``OR``, ``OF1``, ``top_k``, ``f"top{top_k}"``
    (a dict of the six set metrics for the top-k sets) and ``per_class`` (a
    list, in class index order, of dicts with ``label``, ``support``,
    ``predicted``, ``AP`` (None when support is 0), ``precision``,
    ``recall``, ``F1``).

    Raises:
        InputError: arrays not 2-D or of different shapes, no image or no
            class, non-binary ``y_true``/``y_pred``, non-finite ``y_score``,
            bad ``top_k`` or ``label_names``, or no positive in ``y_true``.
    """
    yt = _as_binary(y_true, "y_true")
    if yt.ndim != 2:
        raise InputError(f"y_true: expected a 2-D array [images, classes], got shape {yt.shape}")
    n, k = yt.shape
    if n < 1:
        raise InputError("y_true: no images (need at least one row)")
    if k < 1:
        raise InputError("y_true: no classes (need at least one column)")
    yp = _as_binary(y_pred, "y_pred")
    if yp.shape != yt.shape:
        raise InputError(f"y_pred: shape {yp.shape} does not match y_true shape {yt.shape}")
    ys = _as_float_array(y_score, "y_score")
    if ys.shape != yt.shape:
        raise InputError(f"y_score: shape {ys.shape} does not match y_true shape {yt.shape}")
    ys = _as_scores(ys, "y_score")
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
        raise InputError(f"top_k: must be a positive integer, got {top_k!r}")
    top_k = int(top_k)
    if label_names is None:
        names: List[str] = [str(i) for i in range(k)]
    else:
        names = [str(x) for x in label_names]
        if len(names) != k:
            raise InputError(
                f"label_names: {len(names)} names for {k} classes")

    support = yt.sum(axis=0)
    evaluated = support > 0
    if not evaluated.any():
        raise InputError("y_true: no positive label in any image (metrics undefined)")

    aps = [(_ap(yt[:, j], ys[:, j]) if evaluated[j] else None) for j in range(k)]
    m_ap = float(np.mean([a for a in aps if a is not None]))

    sets, prec, rec = _set_metrics(yt, yp, evaluated)
    top, _, _ = _set_metrics(yt, top_k_sets(ys, top_k), evaluated)

    predicted = yp.sum(axis=0)
    per_class = []
    for j in range(k):
        p, r = float(prec[j]), float(rec[j])
        per_class.append({
            "label": names[j],
            "support": int(support[j]),
            "predicted": int(predicted[j]),
            "AP": aps[j],
            "precision": p,
            "recall": r,
            "F1": float(_harmonic(p, r)),
        })

    results: Dict[str, Any] = {
        "mAP": m_ap,
        "num_classes_evaluated": int(evaluated.sum()),
        "num_classes": int(k),
        "num_images": int(n),
    }
    results.update(sets)
    results["top_k"] = top_k
    results[f"top{top_k}"] = top
    results["per_class"] = per_class
    return results


# --------------------------------------------------------------------------
# text tables
# --------------------------------------------------------------------------

def _pct(v: Optional[float]) -> str:
    if v is None:
        return "-"
    v = float(v)
    if v != v:  # NaN
        return "-"
    return f"{100.0 * v:.1f}"


def _top_key(results: Mapping[str, Any]) -> Optional[str]:
    """The key of the top-k sub-dict (``"top3"`` etc.), or None."""
    k = results.get("top_k")
    if k is not None and f"top{k}" in results:
        return f"top{k}"
    for key, val in results.items():
        if key.startswith("top") and key[3:].isdigit() and isinstance(val, Mapping):
            return key
    return None


def _render(header: Sequence[str], rows: Sequence[Sequence[str]],
            left_cols: int = 1) -> List[str]:
    widths = [max(len(header[c]), *(len(r[c]) for r in rows)) if rows else len(header[c])
              for c in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        parts = [cell.ljust(w) if c < left_cols else cell.rjust(w)
                 for c, (cell, w) in enumerate(zip(cells, widths))]
        return "  ".join(parts).rstrip()

    out = [line(header), "  ".join("-" * w for w in widths)]
    out.extend(line(r) for r in rows)
    return out


def format_table(results: Mapping[str, Any], title: Optional[str] = None) -> str:
    """Fixed-width table of the headline metrics, values in percent.

    One row for the predicted sets (with mAP) and one for the top-k sets.
    """
    header = ["", "mAP", *HEADLINE_KEYS]
    rows = [["all", _pct(results.get("mAP")), *(_pct(results.get(m)) for m in HEADLINE_KEYS)]]
    tk = _top_key(results)
    if tk is not None:
        top = results[tk]
        rows.append([f"top-{tk[3:]}", "-", *(_pct(top.get(m)) for m in HEADLINE_KEYS)])
    lines: List[str] = []
    if title:
        lines.append(str(title))
    if "num_images" in results:
        lines.append(
            f"images: {results['num_images']}  classes: {results.get('num_classes', '?')}"
            f" (evaluated: {results.get('num_classes_evaluated', '?')})")
    lines.extend(_render(header, rows))
    return "\n".join(lines)


def format_comparison(rows: Mapping[str, Mapping[str, Any]]) -> str:
    """One row per model: mAP CF1 OF1 CP CR OP OR and top-k CF1/OF1 (percent)."""
    cols = ("mAP", "CF1", "OF1", "CP", "CR", "OP", "OR")
    top_keys = {name: _top_key(res) for name, res in rows.items()}
    ks = {tk[3:] for tk in top_keys.values() if tk is not None}
    k_label = ks.pop() if len(ks) == 1 else "k"
    header = ["model", *cols, f"CF1@{k_label}", f"OF1@{k_label}"]
    body = []
    for name, res in rows.items():
        tk = top_keys[name]
        top = res[tk] if tk is not None else {}
        body.append([str(name), *(_pct(res.get(c)) for c in cols),
                     _pct(top.get("CF1")), _pct(top.get("OF1"))])
    return "\n".join(_render(header, body))


def per_class_table(results: Mapping[str, Any]) -> str:
    """One row per class: support, predicted, AP, precision, recall, F1 (percent)."""
    header = ["label", "support", "predicted", "AP", "P", "R", "F1"]
    body = []
    for c in results.get("per_class", []):
        body.append([str(c["label"]), str(c["support"]), str(c["predicted"]),
                     _pct(c["AP"]), _pct(c["precision"]), _pct(c["recall"]), _pct(c["F1"])])
    return "\n".join(_render(header, body))


# ---------------------------------------------------------------------------
# Calibration: Decision thresholds for the per-label baselines, chosen on the validation split.
#
# A fixed 0.5 is unfair to BCE and ASL (ASL then predicted 3.27 labels per image against 2.45
# for BCE on the outfits data). :func:`choose_thresholds` scans a grid of thresholds and keeps
# the one that maximises OF1 or CF1 of the predicted sets (``cnnrnn_tf.metrics`` definitions),
# either one for all labels or one per label (each label's own F1). CNN-RNN needs none: it
# decodes a set.
#
# The sets scored are those the exported model predicts (``MultiLabelClassifier.decode``):
# the ``max_labels`` most probable labels first, then the threshold (:func:`decoded_sets`).
# Calibrating on all labels instead chose a threshold for sets the model never outputs.
# ---------------------------------------------------------------------------

GRID = np.round(np.arange(0.05, 0.951, 0.01), 2)


def within_top_k(y_score, k: Optional[int]) -> np.ndarray:
    """bool [n, K]: each row's ``k`` highest scores, picked as the exported decoder picks
    them (``ops.top_k``: of equal scores, the lower label index first). All when ``k`` is
    None or at least K."""
    from keras import ops

    y_score = np.asarray(y_score)
    n, num = y_score.shape
    if k is None or int(k) >= num:
        return np.ones((n, num), bool)
    _, ids = ops.top_k(ops.convert_to_tensor(y_score, "float32"), k=int(k), sorted=True)
    mask = np.zeros((n, num), bool)
    mask[np.arange(n)[:, None], np.asarray(ids)] = True
    return mask


def decoded_sets(y_score, threshold: float, class_thresholds=None,
                 max_labels: Optional[int] = None, top=None) -> np.ndarray:
    """int {0,1} [n, K]: the label sets the exported BCE / ASL decoder predicts from the
    scores: the ``max_labels`` most probable labels, of which those that reach their
    threshold (``class_thresholds`` per label, else ``threshold``). ``top``: the
    :func:`within_top_k` mask when already computed."""
    y_score = np.asarray(y_score, dtype=np.float64)
    cut = np.asarray(threshold if class_thresholds is None else class_thresholds, np.float64)
    top = within_top_k(y_score, max_labels) if top is None else top
    return ((y_score >= cut) & top).astype(np.int64)


def choose_thresholds(y_true, y_score, metric: str = "OF1", per_class: bool = False,
                      grid=GRID, max_labels: Optional[int] = None
                      ) -> Tuple[float, Optional[List[float]], float]:
    """Returns (global threshold, per-class thresholds or None, the metric's value there).

    The sets scored are :func:`decoded_sets` (``max_labels``: the model's, so the top
    labels are cut before thresholding as the exported model does; None: no cut).
    Ties between thresholds go to the one closest to 0.5. Per class: each label takes the
    threshold that maximises its own F1 on the validation split (labels without a positive
    keep the global one); the value returned is then the metric of those sets. The cut
    ranks by score, not by threshold, so each label's choice is independent of the others'.
    """
    y_true = np.asarray(y_true).astype(np.int64)
    y_score = np.asarray(y_score, dtype=np.float64)
    if y_true.shape != y_score.shape or y_true.ndim != 2:
        raise ValueError(f"y_true {y_true.shape} and y_score {y_score.shape} must be [n, K]")
    evaluated = y_true.sum(axis=0) > 0
    if not evaluated.any():
        raise ValueError("the validation split has no positive label")
    grid = np.asarray(grid, dtype=np.float64)
    top = within_top_k(y_score, max_labels)
    values = np.array([_set_metrics(y_true, decoded_sets(y_score, t, top=top), evaluated)[0][metric]
                       for t in grid])
    best = float(grid[np.lexsort((np.abs(grid - 0.5), -values))[0]])
    if not per_class:
        return best, None, float(values.max())
    per: List[float] = []
    for k in range(y_true.shape[1]):
        if not evaluated[k]:
            per.append(best)
            continue
        pred = (y_score[:, k:k + 1] >= grid[None, :]) & top[:, k:k + 1]
        tp = (pred & (y_true[:, k:k + 1] == 1)).sum(axis=0)
        f1 = 2 * tp / np.maximum(pred.sum(axis=0) + y_true[:, k].sum(), 1)
        per.append(float(grid[np.lexsort((np.abs(grid - 0.5), -f1))[0]]))
    sets = decoded_sets(y_score, best, per, top=top)
    return best, per, float(_set_metrics(y_true, sets, evaluated)[0][metric])
