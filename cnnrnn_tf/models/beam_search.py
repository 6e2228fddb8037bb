"""Beam search over label paths, written in TensorFlow graph ops.

The sampler decodes a label path (l_1, ..., l_n, END) for every item of a
batch from a step function, the way CNN-RNN predicts (Wang et al., CVPR 2016,
section 3.3). It is written only with TF ops and a ``tf.while_loop`` whose loop
variables have fixed shapes, so it traces inside ``tf.function`` (also with
``jit_compile=True``) and exports into a SavedModel with an unknown batch size.

Token ids are generic (``end_id``, ``start_id``, ``forbidden_ids``); with the
defaults they match ``cnnrnn_tf.vocabulary``: 0 END, 1 START, 2+k label k.

Live paths are folded into the batch: row ``b * beam_size + j`` is live slot j
of item b. The step function is called as ``step_fn(tokens, state) -> (logits,
new_state)`` with ``tokens`` int32 [batch*beam] (each live path's previous token,
START at the first step; rows of empty slots get some valid token id and what
is computed for them is never used), ``state`` any tf.nest structure of tensors with
leading dim batch*beam, and ``logits`` [batch*beam, num_tokens] unnormalised.
``initial_state`` has leading dim batch; each item is repeated ``beam_size``
times before the loop. After the live paths of the next step are chosen, every
tensor of the state is gathered by the parent row of each new live path.

Semantics
---------
The procedure is the one of Wang et al. (2016), section 3.3, with N =
``beam_size``. Each item keeps up to N *live* (intermediate) paths and a set of
*candidates* (finished paths, the ones that emitted END).

* Score: a path's score is the sum of the log-probabilities of its tokens,
  END included, with no length normalisation.
* Start: one live path, the empty one (score 0); no candidates.
* Masks: tokens in ``forbidden_ids`` are never emitted; with ``no_repeat``, a
  token already on the path is never emitted again; at the first
  ``min_length`` steps (capped at ``max_length``) END is masked too. Masked logits are replaced by a large
  negative value (-1e9) BEFORE the float32 log_softmax, so the step
  distribution renormalises over the allowed tokens (a masked token has
  probability exactly 0 and is never a candidate, even when fewer than N
  tokens are allowed).
* Step t (t = 0, 1, ..., ``max_length``), for every item:

  1. Stop test: if no live path has a higher score than the best candidate
     (a tie stops; with no candidate yet, any live path goes on), or there is
     no live path, the item is done: its live paths are dropped and its
     candidates are final.
  2. Expansion: each live path is extended by its N most probable allowed
     next tokens (fewer where fewer are allowed), END counting as one of
     them: at most N x N extensions. Ties in a path's top N go to the lower
     token id.
  3. The extensions that emit END join the candidates. Candidates are never
     evicted by live paths; only the N best candidates are kept (the outputs
     need no more, and one that is not among the N best can never be again).
     Ties among candidates go to the one found first, then to the lower
     parent slot.
  4. The next live paths are the N best of the extensions that did not emit
     END (ties: lower parent slot, then lower token id). Live slots are kept
     sorted by score, best first.

* Length: at step ``max_length`` only END is allowed, so every path still
  alive there becomes a candidate: the END log-probability of the (normally
  masked, not re-renormalised) step distribution is added to its score. The
  loop runs at most ``max_length + 1`` steps and stops early once every item
  is done.
* Result: the best candidate. Since a live path's score can only go down,
  stopping is safe for the best candidate: with N at least the number of
  allowed tokens this is exhaustive search for the best path. An item whose
  paths all died without reaching END (possible only when ``min_length`` or
  the masks leave no token allowed) has no candidate: score -inf and no labels.
* ``beam_size=1`` is exactly greedy decoding (argmax at every step under the
  same masks; ties go to the lower token id).

Outputs (leading dim batch; "best" is the highest-scoring candidate):

* ``tokens`` int32 [batch, max_length]: label token ids of the best candidate
  in emission order, END excluded, padded with -1.
* ``length`` int32 [batch]: number of labels on the best candidate.
* ``token_probs`` float32 [batch, max_length]: probability (exp of the
  masked log_softmax) of each emitted label at its step, padded with 0.
* ``log_prob`` float32 [batch]: the best candidate's score.
* ``max_probs`` float32 [batch, num_tokens]: for each token, the maximum over
  the steps of the best candidate's path (END step included) of its masked and
  renormalised probability at that step. An emitted label has probability 0
  at later steps (no-repeat mask), so its value is at least the probability
  it was emitted with. These are per-label ranking scores (max-pooling over
  time, as in Yazici et al., CVPR 2020).
* ``beam_tokens`` int32 [batch, beam, max_length] and ``beam_log_probs``
  float32 [batch, beam]: the N best candidates sorted by score, best first.
  Fewer than N may have been found before the search stopped: empty slots
  have score -inf, no tokens (and zero ``max_probs``).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf

from cnnrnn_tf.vocabulary import MASK_LOGIT

MASK_VALUE = MASK_LOGIT  # cnnrnn_tf.vocabulary: the project's one mask value

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
    K, V, L, min_len = _checked_sizes(beam_size, num_tokens, max_length, end_id,
                                      forbidden_ids, min_length)
    search = _Search(step_fn, batch_size, K, V, L, end_id, forbidden_ids, no_repeat, min_len)
    loop_vars, shape_invariants = search.initial(initial_state, start_id)
    final = tf.while_loop(search.cond, search.body, loop_vars,
                          shape_invariants=shape_invariants, maximum_iterations=L + 1)
    cand, cand_hist, cand_hist_probs, cand_max_probs = final[-4:]

    best_tokens = cand_hist[:, 0]
    return {
        "tokens": best_tokens,
        "length": tf.reduce_sum(tf.cast(best_tokens >= 0, tf.int32), axis=1),
        "token_probs": cand_hist_probs[:, 0],
        "log_prob": cand[:, 0],
        "max_probs": cand_max_probs[:, 0],
        "beam_tokens": cand_hist,
        "beam_log_probs": cand,
    }


def _checked_sizes(beam_size, num_tokens, max_length, end_id, forbidden_ids, min_length):
    """(K, V, L, min_len) after the argument checks of :func:`beam_search`."""
    K, V, L = int(beam_size), int(num_tokens), int(max_length)
    if K < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    if L < 0:
        raise ValueError(f"max_length must be >= 0, got {max_length}")
    if not 0 <= end_id < V:
        raise ValueError(f"end_id {end_id} is outside [0, {V})")
    if end_id in set(int(i) for i in forbidden_ids):
        raise ValueError("end_id must not be forbidden: every path has to end")
    if int(min_length) < 0:
        raise ValueError(f"min_length must be >= 0, got {min_length}")
    return K, V, L, min(int(min_length), L)


class _Search:
    """The loop of :func:`beam_search`: its constants, its loop variables and one step.

    Loop variables: (t, tokens, state, live, seen, hist, hist_probs, max_probs, cand,
    cand_hist, cand_hist_probs, cand_max_probs); live paths are folded as [batch*beam],
    candidates (finished paths, best first) are [batch, beam].
    """

    def __init__(self, step_fn, batch_size, K, V, L, end_id, forbidden_ids, no_repeat, min_len):
        self.step_fn, self.K, self.V, self.L = step_fn, K, V, L
        self.end_id, self.no_repeat, self.min_len = end_id, no_repeat, min_len
        self.B = tf.convert_to_tensor(batch_size, tf.int32)
        self.N = self.B * K
        self.W = min(K, V)  # extensions per live path: its top N allowed tokens
        self.neg_inf = tf.constant(-np.inf, tf.float32)
        forbidden = sorted(set(int(i) for i in forbidden_ids))
        self.forbidden_mask = tf.constant(np.isin(np.arange(V), forbidden))  # [V]
        self.is_end = tf.constant(np.arange(V) == end_id)  # [V]
        self.token_range = tf.range(V, dtype=tf.int32)
        self.position_range = tf.range(L, dtype=tf.int32)
        # Row offset of each item's first live slot in the folded [batch*beam] layout.
        self.item_offset = tf.range(self.B, dtype=tf.int32)[:, None] * K  # [B, 1]

    def initial(self, initial_state, start_id):
        """(loop variables, shape invariants) before the first step."""
        B, K, V, L, N = self.B, self.K, self.V, self.L, self.N
        state0 = tf.nest.map_structure(
            lambda x: tf.repeat(tf.convert_to_tensor(x), K, axis=0), initial_state
        )
        first_slot = tf.constant([0.0] + [-np.inf] * (K - 1), tf.float32)
        loop_vars = (
            tf.constant(0, tf.int32),
            tf.fill([N], tf.constant(start_id, tf.int32)),  # tokens
            state0,
            tf.reshape(tf.tile(first_slot[None, :], [B, 1]), [N]),  # live; -inf: no path
            tf.zeros([N, V], tf.bool),  # seen
            tf.fill([N, L], tf.constant(-1, tf.int32)),  # hist
            tf.zeros([N, L], tf.float32),  # hist_probs
            tf.zeros([N, V], tf.float32),  # max_probs
            tf.fill([B, K], self.neg_inf),  # cand
            tf.fill([B, K, L], tf.constant(-1, tf.int32)),  # cand_hist
            tf.zeros([B, K, L], tf.float32),  # cand_hist_probs
            tf.zeros([B, K, V], tf.float32),  # cand_max_probs
        )
        shape_invariants = (
            tf.TensorShape([]), tf.TensorShape([None]),
            tf.nest.map_structure(lambda s: _loop_shape(s.shape), state0),
            tf.TensorShape([None]), tf.TensorShape([None, V]), tf.TensorShape([None, L]),
            tf.TensorShape([None, L]), tf.TensorShape([None, V]), tf.TensorShape([None, K]),
            tf.TensorShape([None, K, L]), tf.TensorShape([None, K, L]),
            tf.TensorShape([None, K, V]),
        )
        return loop_vars, shape_invariants

    def going_on(self, live, cand):
        """[B]: some live path of the item beats its best candidate (step 1)."""
        return tf.reduce_max(tf.reshape(live, [self.B, self.K]), axis=1) > cand[:, 0]

    def cond(self, t, tokens, state, live, seen, hist, hist_probs, max_probs,
             cand, cand_hist, cand_hist_probs, cand_max_probs):
        return tf.logical_and(t <= self.L, tf.reduce_any(self.going_on(live, cand)))

    def _masked_log_probs(self, t, logits, seen):
        """(log-probabilities with the masked tokens at MASK_VALUE before the softmax, mask)."""
        logits = tf.cast(logits, tf.float32)
        mask = tf.broadcast_to(self.forbidden_mask[None, :], tf.shape(logits))
        if self.no_repeat:
            mask = tf.logical_or(mask, seen)
        if self.min_len > 0:
            mask = tf.logical_or(mask, tf.logical_and(self.is_end[None, :], t < self.min_len))
        masked = tf.where(mask, tf.constant(MASK_VALUE, tf.float32), logits)
        return tf.nn.log_softmax(masked), mask

    def _merge(self, pick, empty, old, new):
        """Candidates ``old`` [B, K, ...] and the live paths' ``new`` [N, ...], as ``pick``s."""
        B, K = self.B, self.K
        both = tf.concat([old, tf.reshape(new, tf.concat([[B, K], tf.shape(new)[1:]], 0))], 1)
        return tf.where(empty, tf.zeros_like(old), tf.gather(both, pick, batch_dims=1))

    def body(self, t, tokens, state, live, seen, hist, hist_probs, max_probs,
             cand, cand_hist, cand_hist_probs, cand_max_probs):
        B, K, L, N, W, neg_inf = self.B, self.K, self.L, self.N, self.W, self.neg_inf
        # 1. A done item drops its live paths, so its candidates stay as they are.
        live = tf.where(tf.repeat(self.going_on(live, cand), K), live, neg_inf)

        logits, new_state = self.step_fn(tokens, state)
        log_probs, mask = self._masked_log_probs(t, logits, seen)
        max_probs = tf.maximum(max_probs, tf.exp(log_probs))  # this step included, END too

        # 2. Each live path's N most probable allowed tokens (only END at max_length).
        allowed = tf.logical_and(tf.logical_not(mask),
                                 tf.logical_or(t < L, self.is_end[None, :]))
        top_lp, top_tok = tf.math.top_k(tf.where(allowed, log_probs, neg_inf), k=W)
        ext = live[:, None] + top_lp  # [N, W]; -inf: no extension
        ext_is_end = tf.equal(top_tok, self.end_id)

        # 3. Extensions by END join the candidates (at most one per live path).
        end_score = tf.reduce_max(tf.where(ext_is_end, ext, neg_inf), axis=1)  # [N]
        pool = tf.concat([cand, tf.reshape(end_score, [B, K])], axis=1)  # old ones first
        cand, pick = tf.math.top_k(pool, k=K)
        empty = tf.math.is_inf(cand)[:, :, None]
        cand_hist = tf.where(empty, tf.constant(-1, tf.int32),
                             self._merge(pick, empty, cand_hist, hist))
        cand_hist_probs = self._merge(pick, empty, cand_hist_probs, hist_probs)
        cand_max_probs = self._merge(pick, empty, cand_max_probs, max_probs)

        # 4. The next live paths: the N best extensions by a label.
        label_ext = tf.reshape(tf.where(ext_is_end, neg_inf, ext), [B, K * W])
        new_live, flat_idx = tf.math.top_k(label_ext, k=K)
        rows = tf.reshape(flat_idx // W + self.item_offset, [N])  # parent row of each slot
        picked = tf.reshape(flat_idx + self.item_offset * W, [N])  # index into [N*W]
        token = tf.gather(tf.reshape(top_tok, [N * W]), picked)
        chosen_prob = tf.exp(tf.gather(tf.reshape(top_lp, [N * W]), picked))
        live = tf.reshape(new_live, [N])

        write = tf.equal(self.position_range, t)[None, :]
        hist = tf.where(write, token[:, None], tf.gather(hist, rows))
        hist_probs = tf.where(write, chosen_prob[:, None], tf.gather(hist_probs, rows))
        new_seen = tf.equal(self.token_range[None, :], token[:, None])
        seen = tf.logical_or(tf.gather(seen, rows), new_seen)
        max_probs = tf.gather(max_probs, rows)
        state = tf.nest.map_structure(lambda s: tf.gather(s, rows), new_state)
        return (t + 1, token, state, live, seen, hist, hist_probs, max_probs,
                cand, cand_hist, cand_hist_probs, cand_max_probs)
