"""Decision thresholds for the per-label baselines, chosen on the validation split.

A fixed 0.5 is unfair to BCE and ASL (ASL then predicted 3.27 labels per image against 2.45
for BCE on the outfits data). :func:`choose_thresholds` scans a grid of thresholds and keeps
the one that maximises OF1 or CF1 of the predicted sets (``cnnrnn_tf.metrics`` definitions),
either one for all labels or one per label (each label's own F1). CNN-RNN needs none: it
decodes a set.

The sets scored are those the exported model predicts (``MultiLabelClassifier.decode``):
the ``max_labels`` most probable labels first, then the threshold (:func:`decoded_sets`).
Calibrating on all labels instead chose a threshold for sets the model never outputs.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np

from cnnrnn_tf.metrics import _set_metrics

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
