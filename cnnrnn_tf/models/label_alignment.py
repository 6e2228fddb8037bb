"""Orderless training targets: Predicted Label Alignment (PLA) and Minimal Loss Alignment (MLA).

Yazici, Gonzalez-Garcia, Ramisa, Twardowski, van de Weijer, *Orderless Recurrent
Models for Multi-label Classification*, CVPR 2020. Instead of one fixed label
order, each training image's label sequence is re-ordered at every training step
to agree with what the model itself predicts:

* **PLA**: a true label that the model predicted at some step t (t < n, the
  number of true labels) keeps step t; the remaining true labels fill the
  remaining steps by minimum total cost, cost(t, k) = -log p_t(k), solved with
  the Hungarian algorithm (``scipy.optimize.linear_sum_assignment``).
* **MLA**: the Hungarian assignment of all n true labels to the n steps, with
  no "keep what was predicted" rule.

This module is the plain-Python reference (scipy, one row at a time) of the
alignment. Training uses ``cnnrnn_tf.models.orderless``: the same rule, in-graph, on the
probabilities of the training pass itself (the decoder fed its own predictions),
as the paper's official code does.

Token ids as in ``cnnrnn_tf.vocabulary``: 0 END, 1 START, 2+k label k. Targets
use the layout of ``cnnrnn_tf.inputs.dataset.sequence_targets``: l_1..l_n, END, then
PAD_TARGET (-1).
"""
from __future__ import annotations

import numpy as np

from cnnrnn_tf.vocabulary import END_ID, NUM_SPECIAL, PAD_TARGET

ALIGNMENTS = ("none", "pla", "mla")
# Masked tokens have log-probabilities near -1e9; clip so sums stay well conditioned.
_MAX_COST = 1e6


def align_row(true_tokens, pred_tokens, log_probs, keep_predicted=True):
    """One sequence: the true label tokens in their aligned order.

    Args:
      true_tokens: the n true label tokens (any order, distinct, >= NUM_SPECIAL).
      pred_tokens: int [S], the model's predicted token at each step (S >= n).
      log_probs: float [S, V], the model's log-probabilities at each step.
      keep_predicted: PLA (True) or MLA (False).

    Returns a list of the n tokens, the token for step t at position t.
    """
    from scipy.optimize import linear_sum_assignment

    true_tokens = [int(k) for k in true_tokens]
    n = len(true_tokens)
    slots = [None] * n
    if keep_predicted:
        true_set = set(true_tokens)
        for t in range(n):
            k = int(pred_tokens[t])
            if k in true_set and k not in slots:
                slots[t] = k
    remaining = [k for k in true_tokens if k not in slots]
    free = [t for t in range(n) if slots[t] is None]
    if remaining:
        cost = -np.asarray(log_probs, np.float64)[np.ix_(free, remaining)]
        cost = np.clip(cost, 0.0, _MAX_COST)
        rows, cols = linear_sum_assignment(cost)  # rows: free steps, cols: labels
        for r, c in zip(rows, cols):
            slots[free[r]] = remaining[c]
    return slots


def align_targets(targets, pred_tokens, log_probs, keep_predicted=True):
    """A batch: targets int [B, T] (any label order) -> the aligned targets [B, T].

    ``pred_tokens`` int [B, S] and ``log_probs`` float [B, S, V] with S >= the
    number of labels of every row (S = T - 1 with the dataset's layout). Rows keep
    their END and padding; only the order of the labels changes.
    """
    targets = np.asarray(targets)
    out = np.full_like(targets, PAD_TARGET)
    for b, row in enumerate(targets):
        labels = [int(k) for k in row if k >= NUM_SPECIAL]
        aligned = align_row(labels, pred_tokens[b], log_probs[b], keep_predicted)
        n = len(aligned)
        out[b, :n] = aligned
        if n < targets.shape[1]:
            out[b, n] = END_ID
    return out


def inputs_from_targets(targets):
    """Teacher-forcing inputs for targets (numpy or tensor): START, l_1..l_n, END padding."""
    from keras import ops

    from cnnrnn_tf.vocabulary import START_ID

    targets = ops.convert_to_tensor(targets)
    shifted = ops.where(targets[:, :-1] >= NUM_SPECIAL, targets[:, :-1], END_ID)
    start = ops.full((ops.shape(targets)[0], 1), START_ID, dtype=targets.dtype)
    return ops.concatenate([start, ops.cast(shifted, targets.dtype)], axis=1)
