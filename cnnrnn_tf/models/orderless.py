"""Orderless training step: PLA and MLA as published (Yazici et al., CVPR 2020).

What the official code does (github.com/voyazici/orderless-rnn-classification),
and what this module follows:

* ``model.py`` ``Decoder.forward``: the encoder runs once; the decoder runs 20
  steps from START and is fed its **own prediction** at every step
  (``next_word_idx = torch.max(preds, 1)[1]``), never the ground truth. Here:
  :func:`free_running_logits`, the same, for ``T`` = the target length steps,
  through ``CNNRNN.start_state`` / ``CNNRNN.step`` (with the label-head evidence).
  The fed token is the most probable *label* not yet on the path (END and START
  are not fed before the path ends, and labels already on the path are masked, as
  the project's decoder and beam search do; the official code has no such mask).
* ``train_lstm.py`` ``order_the_targets_pla`` / ``order_the_targets_mla``: the
  targets are re-ordered from that same pass's scores (detached, ``.data``), with
  cost(t, k) = -log_softmax(scores_t)[k] and the Hungarian algorithm
  (``munkres``). MLA: all n true labels to the first n steps. PLA: a true label
  predicted at step t < n keeps step t; the remaining labels fill the remaining
  steps by minimal total cost. (The official PLA also leaves a true label that
  was predicted only at a step >= n where the dataset put it; here it takes part
  in the minimal-cost assignment, as the paper's text describes.) END stays at
  step n. Here: :func:`align`, an in-graph batched Hungarian algorithm
  (:func:`hungarian`, float64, XLA-compatible) under ``stop_gradient``.
* ``train_lstm.py`` training loop: the cross-entropy is taken on **the same
  pass's** scores against the re-ordered targets, and back-propagated through
  decoder and encoder. Here: :func:`train_step` (``model.compute_loss`` on the
  free-running logits), plus the project's label-head BCE when the model has one.
* The official recipe trains the encoder first with a BCE loss (``train_bce.py``),
  then encoder + decoder with PLA. The project's ``--label-head aux|evidence``
  trains a BCE head on the same features from the first step; there is no separate
  warm-up stage with a fixed order.

Decoder dropout does not apply in the free-running pass (``CNNRNN.step`` runs
the decoder in inference mode; the official default is ``-dropout 0.0``).
Validation (:func:`test_step`) runs the same pass and alignment without updates.

Token ids: 0 END, 1 START, 2+k label k; targets are l_1..l_n, END, PAD_TARGET.
"""
from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from cnnrnn_tf.inputs.preprocessor import multi_hot
from cnnrnn_tf.vocabulary import MASK_LOGIT, NUM_SPECIAL, PAD_TARGET, START_ID

NEG_INF = MASK_LOGIT
_CLIP = 1e4   # a masked label's cost (log p near -1e9) is clipped to this
_BIG = 1e9    # forbidden pairs: larger than any sum of clipped costs (<= 17 * 1e4)
_INF = 1e18


def hungarian(cost):
    """Minimal-cost perfect assignment of each of a batch of square cost matrices.

    cost: float [B, N, N] (row = step, column = label). Returns int32 [B, N], the
    column assigned to each row; the same optimum as
    ``scipy.optimize.linear_sum_assignment``. In-graph (tf.while_loop, float64),
    O(N^3) per matrix, all rows of the batch in lock-step; XLA-compatible.
    The shortest-augmenting-path form with potentials (Kuhn-Munkres, as in
    e-maxx's "Hungarian algorithm in O(n^3)"); index 0 is a sentinel.
    """
    cost = tf.cast(tf.convert_to_tensor(cost), tf.float64)
    n = cost.shape[-1]
    if n is None or cost.shape[-2] != n:
        raise ValueError(f"hungarian needs square matrices of static size, got {cost.shape}")
    batch = tf.shape(cost)[0]
    a = tf.pad(cost, [[0, 0], [1, 0], [1, 0]])  # [B, N+1, N+1]
    m = n + 1
    u = tf.zeros((batch, m), tf.float64)
    v = tf.zeros((batch, m), tf.float64)
    p = tf.zeros((batch, m), tf.int32)      # p[j]: the row matched to column j (0: none)
    way = tf.zeros((batch, m), tf.int32)
    cols = tf.range(m)

    def gather(x, j):
        return tf.gather(x, j[:, None], batch_dims=1)[:, 0]

    for i in range(1, m):
        p = tf.concat([tf.fill((batch, 1), i), p[:, 1:]], axis=1)
        j0 = tf.zeros((batch,), tf.int32)
        minv = tf.fill((batch, m), tf.constant(_INF, tf.float64))
        used = tf.zeros((batch, m), tf.bool)

        def search_cond(j0, p, u, v, minv, used, way):
            return tf.reduce_any(gather(p, j0) != 0)

        def search_body(j0, p, u, v, minv, used, way):
            active = gather(p, j0) != 0
            used_n = used | ((cols[None, :] == j0[:, None]) & active[:, None])
            i0 = gather(p, j0)
            row = tf.gather(a, i0[:, None], batch_dims=1)[:, 0]      # [B, N+1]
            cur = row - gather(u, i0)[:, None] - v
            free = ~used_n
            better = free & (cur < minv)
            minv_n = tf.where(better, cur, minv)
            way_n = tf.where(better, j0[:, None], way)
            cand = tf.where(free, minv_n, _INF)
            j1 = tf.cast(tf.argmin(cand, axis=1), tf.int32)
            delta = tf.reduce_min(cand, axis=1)
            rows_used = tf.reduce_sum(
                tf.one_hot(p, m, dtype=tf.float64) * tf.cast(used_n, tf.float64)[..., None],
                axis=1)                                               # [B, N+1] over rows
            u_n = u + delta[:, None] * rows_used
            v_n = v - delta[:, None] * tf.cast(used_n, tf.float64)
            minv_n = tf.where(free, minv_n - delta[:, None], minv_n)
            keep = active[:, None]
            return (tf.where(active, j1, j0), p, tf.where(keep, u_n, u), tf.where(keep, v_n, v),
                    tf.where(keep, minv_n, minv), tf.where(keep, used_n, used),
                    tf.where(keep, way_n, way))

        j0, p, u, v, minv, used, way = tf.while_loop(
            search_cond, search_body, (j0, p, u, v, minv, used, way))

        def augment_cond(j0, p):
            return tf.reduce_any(j0 != 0)

        def augment_body(j0, p):
            active = j0 != 0
            j1 = gather(way, j0)
            at = (cols[None, :] == j0[:, None]) & active[:, None]
            p = tf.where(at, gather(p, j1)[:, None], p)
            return tf.where(active, j1, j0), p

        _, p = tf.while_loop(augment_cond, augment_body, (j0, p))

    # p[:, 1:] holds the row (1-based) of each column: invert to column per row.
    rows = p[:, 1:] - 1                                              # [B, N]
    onehot = tf.one_hot(rows, n, dtype=tf.int32)                     # [B, col, row]
    return tf.reduce_sum(onehot * tf.range(n)[None, :, None], axis=1)


def align(targets, logits, keep_predicted):
    """The re-ordered targets [B, T] from one pass's logits [B, T, V] (no gradient).

    targets: l_1..l_n, END, PAD_TARGET (any label order). ``keep_predicted``: PLA
    (True) or MLA (False). The predicted label at step t is the most probable label
    (END and START excluded) of ``logits[:, t]``, the token the pass fed on.
    """
    targets = ops.convert_to_tensor(targets)
    dtype = targets.dtype
    targets = ops.cast(targets, "int32")
    logits = tf.stop_gradient(ops.cast(logits, "float32"))
    steps = targets.shape[1] - 1
    labels = targets[:, :steps]                                      # [B, N]
    valid = labels >= NUM_SPECIAL
    safe = ops.where(valid, labels, 0)
    log_probs = ops.log_softmax(logits[:, :steps], axis=-1)          # [B, N(t), V]
    batch = ops.shape(targets)[0]
    index = ops.broadcast_to(safe[:, None, :], (batch, steps, steps))
    cost = ops.clip(-ops.take_along_axis(log_probs, index, axis=2), 0.0, _CLIP)
    cost = ops.cast(cost, "float64")
    row_valid, col_valid = valid[:, :, None], valid[:, None, :]     # step t < n, label c < n
    if keep_predicted:
        special = ops.arange(logits.shape[-1]) < NUM_SPECIAL
        pred = ops.cast(ops.argmax(ops.where(special, NEG_INF, logits[:, :steps]), axis=-1),
                        "int32")
        earlier = ops.tril(ops.ones((steps, steps), "bool"), -1)   # s < t
        repeat = ops.any((pred[:, :, None] == pred[:, None, :]) & earlier, axis=2)
        first = (~repeat)[:, :, None]  # a label predicted twice keeps its first step only
        forced = (pred[:, :, None] == labels[:, None, :]) & first & row_valid & col_valid
        row_forced = ops.any(forced, axis=2, keepdims=True)
        col_forced = ops.any(forced, axis=1, keepdims=True)
        cost = ops.where(forced, 0.0, ops.where(row_forced | col_forced, _BIG, cost))
    both = row_valid & col_valid
    neither = ~row_valid & ~col_valid
    cost = ops.where(both, cost, ops.where(neither, 0.0, _BIG))
    column = hungarian(cost)                                         # [B, N]
    aligned = ops.take_along_axis(labels, column, axis=1)
    aligned = ops.where(valid, aligned, labels)                      # END / padding stay
    out = ops.concatenate([aligned, targets[:, steps:]], axis=1)
    return tf.stop_gradient(ops.cast(out, dtype))


def free_running_logits(model, features, steps):
    """Decoder fed its own predictions: logits [B, steps, V] with gradient.

    At each step the most probable label not yet on the path (END and START
    excluded) is fed to the next step; with ``mask_seen`` the labels already on
    the path are masked out of the logits, as in beam search.
    """
    num_tokens = model.num_labels + NUM_SPECIAL
    batch = ops.shape(features)[0]
    state = model.start_state(features)
    tokens = ops.full((batch,), START_ID, dtype="int32")
    seen = ops.zeros((batch, num_tokens), dtype="float32")
    special = ops.arange(num_tokens) < NUM_SPECIAL
    mask_seen = model.decoder.mask_seen
    out = []
    for _ in range(int(steps)):
        logits, state = model.step(tokens, state)
        if mask_seen:
            logits = logits + NEG_INF * seen
        out.append(logits)
        choice = ops.where(special | (seen > 0), NEG_INF, tf.stop_gradient(logits))
        tokens = ops.cast(ops.argmax(choice, axis=-1), "int32")
        seen = ops.maximum(seen, ops.one_hot(tokens, num_tokens, dtype="float32"))
    return ops.stack(out, axis=1)


def forward(model, x, y, training):
    """One pass: (free-running logits [B, T, V], aligned targets [B, T], aux loss or 0)."""
    if y.shape[1] is None:
        raise ValueError("orderless training needs targets of a static length")
    features = model.encode(x, training=training)
    logits = free_running_logits(model, features, y.shape[1])
    aligned = align(y, logits, keep_predicted=model.alignment == "pla")
    aux = 0.0
    if model.label_head is not None and model.aux_loss_weight > 0:
        aux_logits = ops.cast(model.label_logits(features), "float32")
        label_set = x.get("label_set")
        if label_set is None:  # the targets' labels (cut at max_labels) when not given
            ids = ops.cast(y, "int32") - NUM_SPECIAL
            label_set = multi_hot(ops.where(ids >= 0, ids, -1), model.num_labels)
        aux = model.aux_loss_weight * model.label_set_loss(label_set, aux_logits)
    return logits, aligned, aux


def teacher_forced_forward(model, x, y, training):
    """The fixed label order's pass: (teacher-forced logits, the targets as they are,
    aux loss or 0), for the same steps."""
    logits, aux = model.teacher_forced(x, training=training)
    return logits, y, aux


def plain_forward(model, x, y, training):
    """A per-label model's pass (BCE / ASL): (logits, the targets, 0), for the same steps,
    so that it counts its validation batches as CNN-RNN does (see :func:`_track`)."""
    return model(x, training=training), y, 0.0


def _unpack(data):
    return keras.utils.unpack_x_y_sample_weight(data)


def _replicas():
    return tf.distribute.get_strategy().num_replicas_in_sync


def _loss(model, x, y, sample_weight, training, forward=forward):
    """(logits, the targets scored, this replica's share of the loss).

    Under a strategy of R replicas, Keras' ``compute_loss`` returns each replica's
    loss divided by R (its gradients are summed over the replicas); the label-head
    loss added here by hand is divided the same way, so it keeps its weight. The
    sequence loss is a mean over the real (unpadded) steps of the replica's batch;
    it is reweighted by the replica's share of the global batch's real steps, so the
    sum over the replicas is the token mean of the whole batch, as on one device.
    """
    logits, aligned, aux = forward(model, x, y, training)
    loss = model.compute_loss(x=x, y=aligned, y_pred=logits, sample_weight=sample_weight,
                              training=training)
    replicas = _replicas()
    if replicas > 1 and sample_weight is None and model.decodes_sequences:
        steps = ops.sum(ops.cast(ops.not_equal(aligned, PAD_TARGET), "float32"))
        total = tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM,
                                                               steps)
        loss = loss * tf.stop_gradient(replicas * steps / ops.maximum(total, 1.0))
    return logits, aligned, loss + aux / replicas


def _track(model, y, loss):
    """Logs the loss of the replica's batch, undoing the 1/R share as Keras' own
    ``train_step`` does, so one device and R replicas log the same ``loss``.

    The batch size is counted after the loss is computed: with full batches only (several
    replicas) it is a constant of the graph, and a step whose input has run out (the end
    of a validation split of unknown length) still added it, though not its loss: two
    replicas logged val_loss 2.15 where one device logged 2.50 (Keras' own test_step
    does the same: BCE 0.553 against 0.727).
    """
    with tf.control_dependencies([loss]):
        count = tf.identity(tf.shape(y)[0])
    model._loss_tracker.update_state(loss * _replicas(), sample_weight=count)


def train_step(model, data, forward=forward):
    """Keras ``train_step`` for PLA / MLA: one pass, alignment, loss, update.
    ``forward``: :func:`teacher_forced_forward` for a fixed label order (CNN-RNN's step)."""
    x, y, sample_weight = _unpack(data)
    with tf.GradientTape() as tape:
        logits, aligned, loss = _loss(model, x, y, sample_weight, True, forward)
        _track(model, y, loss)
        scaled = model.optimizer.scale_loss(loss)
    weights = model.trainable_weights
    model.optimizer.apply_gradients(zip(tape.gradient(scaled, weights), weights))
    return model.compute_metrics(x, aligned, logits, sample_weight=sample_weight)


def test_step(model, data, forward=forward):
    """Keras ``test_step`` for PLA / MLA: the same pass and alignment as training."""
    x, y, sample_weight = _unpack(data)
    logits, aligned, loss = _loss(model, x, y, sample_weight, False, forward)
    _track(model, y, loss)
    return model.compute_metrics(x, aligned, logits, sample_weight=sample_weight)
