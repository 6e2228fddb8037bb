"""Beam search over label paths, written in TensorFlow graph ops.

The sampler decodes a label path (l_1, ..., l_n, END) for every item of a
batch from a step function, the way CNN-RNN predicts (Wang et al., CVPR 2016,
section 3.3). It is written only with TF ops and a ``tf.while_loop`` whose loop
variables have fixed shapes, so it traces inside ``tf.function`` (also with
``jit_compile=True``) and exports into a SavedModel with an unknown batch size.

Token ids are generic (``end_id``, ``start_id``, ``forbidden_ids``); with the
defaults they match ``cnnrnn_tf.vocabulary``: 0 END, 1 START, 2+k label k.

Beams are folded into the batch: row ``b * beam_size + j`` is beam j of item
b. The step function is called as ``step_fn(tokens, state) -> (logits,
new_state)`` with ``tokens`` int32 [batch*beam] (each beam's previous token,
START at the first step), ``state`` any tf.nest structure of tensors with
leading dim batch*beam, and ``logits`` [batch*beam, num_tokens] unnormalised.
``initial_state`` has leading dim batch; each item is repeated ``beam_size``
times before the loop. After the surviving beams are chosen at a step, every
tensor of the state is gathered by the parent index of each new beam.

Semantics
---------
* Score: a beam's score is the sum of the log-probabilities of its tokens,
  END included, with no length normalisation.
* Start: at step 0 only beam 0 of each item is live; the others start at
  -inf, so the beams kept after step 0 are distinct.
* Masks: tokens in ``forbidden_ids`` are never emitted; with ``no_repeat``, a
  token already on the beam's path is never emitted again. Masked logits are
  replaced by a large negative value (-1e9) BEFORE the float32 log_softmax,
  so the step distribution renormalises over the allowed tokens (a masked
  token has probability exactly 0). In the candidate scores masked tokens are
  -inf, so they are never chosen even when fewer than ``beam_size``
  candidates are allowed.
* Finished beams: a beam that emitted END is finished. From then on its only
  continuation (END again, in its own slot) keeps its score unchanged; all
  its other continuations are -inf. Each step takes the top ``beam_size`` of
  the beam_size*num_tokens candidates of each item with ``tf.math.top_k``
  (ties: the lower flat index, i.e. lower parent beam then lower token id,
  wins). A candidate chosen with score -inf (fewer finite candidates than
  beams) is a dead beam: it is marked finished, keeps score -inf and has no
  tokens.
* Length: the loop runs at most ``max_length`` label steps plus one step in
  which END may be emitted (at most max_length+1 steps). A beam still alive
  at step ``max_length`` is forced to emit END: every other token is removed
  from its candidates, and the END log-probability of the (normally masked,
  not re-renormalised) step distribution is added to its score. The loop stops
  early when every beam of every item is finished.
* ``beam_size=1`` is exactly greedy decoding (argmax at every step under the
  same masks; ties go to the lower token id).

Outputs (leading dim batch; "best" is the highest-scoring final beam):

* ``tokens`` int32 [batch, max_length]: label token ids of the best beam in
  emission order, END excluded, padded with -1.
* ``length`` int32 [batch]: number of labels on the best beam.
* ``token_probs`` float32 [batch, max_length]: probability (exp of the
  masked log_softmax) of each emitted label at its step, padded with 0.
* ``log_prob`` float32 [batch]: the best beam's score.
* ``max_probs`` float32 [batch, num_tokens]: for each token, the maximum over
  the steps of the best beam's path (END step included) of its masked and
  renormalised probability at that step. An emitted label has probability 0
  at later steps (no-repeat mask), so its value is at least the probability
  it was emitted with. These are per-label ranking scores (max-pooling over
  time, as in Yazici et al., CVPR 2020).
* ``beam_tokens`` int32 [batch, beam, max_length] and ``beam_log_probs``
  float32 [batch, beam]: all final beams sorted by score, best first (dead
  beams have score -inf and no tokens).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf

MASK_VALUE = -1e9

StepFn = Callable[[tf.Tensor, Any], Tuple[tf.Tensor, Any]]


def _loop_shape(shape: tf.TensorShape) -> tf.TensorShape:
    """The loop-invariant shape of a beam tensor: any leading (batch*beam) dim."""
    if shape.rank is None:
        return tf.TensorShape(None)
    return tf.TensorShape([None]).concatenate(shape[1:])


def beam_search(
    step_fn: StepFn,
    initial_state: Any,
    batch_size: Union[int, tf.Tensor],
    num_tokens: int,
    beam_size: int = 3,
    max_length: int = 5,
    end_id: int = 0,
    start_id: int = 1,
    forbidden_ids: Sequence[int] = (1,),
    no_repeat: bool = True,
    min_length: int = 0,
) -> Dict[str, tf.Tensor]:
    """Decodes the best label paths of a batch by beam search.

    Args:
      step_fn: ``(tokens [batch*beam] int32, state) -> (logits [batch*beam,
        num_tokens], new_state)``.
      initial_state: nested structure of tensors with leading dim ``batch``.
      batch_size: python int or scalar int tensor (e.g. ``tf.shape(x)[0]``).
      num_tokens: size of the token vocabulary (python int).
      beam_size: number of beams per item (python int, >= 1).
      max_length: maximum number of labels on a path (python int, >= 0).
      end_id, start_id: ids of the END and START tokens.
      forbidden_ids: tokens that are never emitted (START by default).
      no_repeat: never emit a token already on the beam's path.
      min_length: END is masked (like a forbidden token, before the softmax) at
        the first ``min_length`` steps, so every path has at least that many
        labels (capped at ``max_length``). CNN-RNN uses 1: no training image has
        an empty label set.

    Returns:
      A dict of tensors; see the module docstring.
    """
    K, V, L = int(beam_size), int(num_tokens), int(max_length)
    if K < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    if L < 0:
        raise ValueError(f"max_length must be >= 0, got {max_length}")
    if not 0 <= end_id < V:
        raise ValueError(f"end_id {end_id} is outside [0, {V})")
    forbidden = set(int(i) for i in forbidden_ids)
    if end_id in forbidden:
        raise ValueError("end_id must not be forbidden: every path has to end")
    if int(min_length) < 0:
        raise ValueError(f"min_length must be >= 0, got {min_length}")
    min_len = min(int(min_length), L)

    B = tf.convert_to_tensor(batch_size, tf.int32)
    N = B * K
    neg_inf = tf.constant(-np.inf, tf.float32)
    forbidden_mask = tf.constant(np.isin(np.arange(V), sorted(forbidden)))  # [V]
    is_end = tf.constant(np.arange(V) == end_id)  # [V]
    token_range = tf.range(V, dtype=tf.int32)
    position_range = tf.range(L, dtype=tf.int32)
    # Row offset of each item's first beam in the folded [batch*beam] layout.
    item_offset = tf.range(B, dtype=tf.int32)[:, None] * K  # [B, 1]

    state0 = tf.nest.map_structure(
        lambda x: tf.repeat(tf.convert_to_tensor(x), K, axis=0), initial_state
    )
    tokens0 = tf.fill([N], tf.constant(start_id, tf.int32))
    first_beam = tf.constant([0.0] + [-np.inf] * (K - 1), tf.float32)
    scores0 = tf.reshape(tf.tile(first_beam[None, :], [B, 1]), [N])
    finished0 = tf.zeros([N], tf.bool)
    seen0 = tf.zeros([N, V], tf.bool)
    hist0 = tf.fill([N, L], tf.constant(-1, tf.int32))
    hist_probs0 = tf.zeros([N, L], tf.float32)
    max_probs0 = tf.zeros([N, V], tf.float32)

    def cond(t, tokens, state, scores, finished, seen, hist, hist_probs, max_probs):
        return tf.logical_and(t <= L, tf.logical_not(tf.reduce_all(finished)))

    def body(t, tokens, state, scores, finished, seen, hist, hist_probs, max_probs):
        logits, new_state = step_fn(tokens, state)
        logits = tf.cast(logits, tf.float32)
        mask = tf.broadcast_to(forbidden_mask[None, :], tf.shape(logits))
        if no_repeat:
            mask = tf.logical_or(mask, seen)
        if min_len > 0:
            mask = tf.logical_or(mask, tf.logical_and(is_end[None, :], t < min_len))
        log_probs = tf.nn.log_softmax(tf.where(mask, tf.constant(MASK_VALUE, tf.float32), logits))
        probs = tf.exp(log_probs)
        live = tf.logical_not(finished)
        max_probs = tf.where(live[:, None], tf.maximum(max_probs, probs), max_probs)

        # At step max_length only END may be emitted (forced, not renormalised).
        allowed = tf.logical_not(mask)
        allowed = tf.logical_and(allowed, tf.logical_or(t < L, is_end[None, :]))
        live_cand = tf.where(allowed, scores[:, None] + log_probs, neg_inf)
        done_cand = tf.where(is_end[None, :], scores[:, None], neg_inf)
        cand = tf.where(finished[:, None], done_cand, live_cand)

        top_scores, flat_idx = tf.math.top_k(tf.reshape(cand, [B, K * V]), k=K)
        chosen_log_prob = tf.gather(tf.reshape(log_probs, [B, K * V]), flat_idx, batch_dims=1)
        parent = tf.reshape(flat_idx // V + item_offset, [N])
        token = tf.reshape(flat_idx % V, [N])
        new_scores = tf.reshape(top_scores, [N])
        chosen_prob = tf.exp(tf.reshape(chosen_log_prob, [N]))

        parent_finished = tf.gather(finished, parent)
        dead = tf.math.is_inf(new_scores)  # only -inf can occur
        is_end_token = tf.equal(token, end_id)
        emitted = tf.logical_not(parent_finished | dead | is_end_token)
        new_finished = parent_finished | dead | is_end_token

        write = tf.logical_and(emitted[:, None], tf.equal(position_range, t)[None, :])
        hist = tf.where(write, token[:, None], tf.gather(hist, parent))
        hist_probs = tf.where(write, chosen_prob[:, None], tf.gather(hist_probs, parent))
        # A dead beam keeps no path (it is not an extension of its parent).
        hist = tf.where(dead[:, None], tf.constant(-1, tf.int32), hist)
        hist_probs = tf.where(dead[:, None], tf.constant(0.0, tf.float32), hist_probs)
        new_seen = tf.logical_and(emitted[:, None], tf.equal(token_range[None, :], token[:, None]))
        seen = tf.logical_or(tf.gather(seen, parent), new_seen)
        max_probs = tf.gather(max_probs, parent)
        state = tf.nest.map_structure(lambda s: tf.gather(s, parent), new_state)
        return t + 1, token, state, new_scores, new_finished, seen, hist, hist_probs, max_probs

    loop_vars = (
        tf.constant(0, tf.int32), tokens0, state0, scores0, finished0, seen0, hist0,
        hist_probs0, max_probs0,
    )
    shape_invariants = (
        tf.TensorShape([]),
        tf.TensorShape([None]),
        tf.nest.map_structure(lambda s: _loop_shape(s.shape), state0),
        tf.TensorShape([None]),
        tf.TensorShape([None]),
        tf.TensorShape([None, V]),
        tf.TensorShape([None, L]),
        tf.TensorShape([None, L]),
        tf.TensorShape([None, V]),
    )
    _, _, _, scores, _, _, hist, hist_probs, max_probs = tf.while_loop(
        cond, body, loop_vars, shape_invariants=shape_invariants, maximum_iterations=L + 1
    )

    # The last step's top_k left the beams of each item sorted, best first.
    beam_log_probs = tf.reshape(scores, [B, K])
    beam_tokens = tf.reshape(hist, [B, K, L])
    best_tokens = beam_tokens[:, 0]
    return {
        "tokens": best_tokens,
        "length": tf.reduce_sum(tf.cast(best_tokens >= 0, tf.int32), axis=1),
        "token_probs": tf.reshape(hist_probs, [B, K, L])[:, 0],
        "log_prob": beam_log_probs[:, 0],
        "max_probs": tf.reshape(max_probs, [B, K, V])[:, 0],
        "beam_tokens": beam_tokens,
        "beam_log_probs": beam_log_probs,
    }
