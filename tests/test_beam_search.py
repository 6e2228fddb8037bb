"""Tests of cnnrnn_tf.beam_search against hand-computed tables and Python references."""
import itertools
import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import tensorflow as tf

from cnnrnn_tf.beam_search import beam_search

END, START = 0, 1
A, B, C = 2, 3, 4  # three labels

# Next-token probabilities indexed by the previous token (rows) over
# END, START, a, b, c (columns). Zeros sit only where the masks apply anyway
# (START is forbidden, a label never follows itself with no_repeat), so
# renormalisation happens only where a label seen earlier on the path has
# probability mass (written as fractions in the expected values below).
TABLE = np.array(
    [
        [1.0, 0.0, 0.0, 0.0, 0.0],  # after END (finished beams only)
        [0.05, 0.0, 0.5, 0.4, 0.05],  # after START
        [0.4, 0.0, 0.0, 0.3, 0.3],  # after a
        [0.1, 0.0, 0.1, 0.0, 0.8],  # after b
        [0.6, 0.0, 0.2, 0.2, 0.0],  # after c
    ]
)


def _table_step(table):
    with np.errstate(divide="ignore"):
        logits = tf.constant(np.log(table), tf.float32)

    def step(tokens, state):
        return tf.gather(logits, tokens), state

    return step


def _run(beam_size, max_length, table=TABLE, **kw):
    out = beam_search(
        _table_step(table), tf.zeros([1, 1]), 1, table.shape[1], beam_size=beam_size,
        max_length=max_length, **kw,
    )
    return {k: v.numpy() for k, v in out.items()}


# ---------------------------------------------------------------- hand-computed


def test_greedy_takes_the_locally_best_path():
    out = _run(1, 3)
    # START -> a (0.5) -> END (0.4; a is masked but has probability 0 anyway)
    assert out["tokens"].tolist() == [[A, -1, -1]]
    assert out["length"].tolist() == [1]
    assert out["log_prob"][0] == pytest.approx(math.log(0.5) + math.log(0.4), abs=1e-5)
    np.testing.assert_allclose(out["token_probs"], [[0.5, 0.0, 0.0]], atol=1e-6)
    # max over step 0 (after START) and step 1 (after a, mask {a})
    np.testing.assert_allclose(out["max_probs"], [[0.4, 0.0, 0.5, 0.4, 0.3]], atol=1e-6)


def test_beam_three_finds_a_better_path_than_greedy():
    out = _run(3, 3)
    best = math.log(0.4) + math.log(0.8) + math.log(0.6 / 0.8)  # b, c, END (b,c masked)
    second = math.log(0.5) + math.log(0.4)  # a, END
    third = math.log(0.5) + math.log(0.3) + math.log(0.8 / 0.9) + math.log(1.0)  # a,b,c,END
    assert out["tokens"].tolist() == [[B, C, -1]]
    assert out["length"].tolist() == [2]
    assert out["log_prob"][0] == pytest.approx(best, abs=1e-5)
    assert out["beam_tokens"].tolist() == [[[B, C, -1], [A, -1, -1], [A, B, C]]]
    np.testing.assert_allclose(out["beam_log_probs"], [[best, second, third]], atol=1e-5)
    np.testing.assert_allclose(out["token_probs"], [[0.4, 0.8, 0.0]], atol=1e-6)
    # step 0: E .05 a .5 b .4 c .05; step 1 (after b, mask {b}): E .1 a .1 c .8;
    # step 2 (after c, mask {b, c}): E .75 a .25
    np.testing.assert_allclose(out["max_probs"], [[0.75, 0.0, 0.5, 0.4, 0.8]], atol=1e-6)


def test_beam_two_sorted_beams():
    out = _run(2, 3)
    best = math.log(0.4) + math.log(0.8) + math.log(0.6 / 0.8)
    assert out["beam_tokens"].tolist() == [[[B, C, -1], [A, -1, -1]]]
    np.testing.assert_allclose(
        out["beam_log_probs"], [[best, math.log(0.5) + math.log(0.4)]], atol=1e-5
    )


def test_forced_end_adds_the_end_log_prob():
    out = _run(3, 2)
    # [a, b] is alive after 2 labels: forced END with probability 0.1 / 0.9
    forced = math.log(0.5) + math.log(0.3) + math.log(0.1 / 0.9)
    assert out["beam_tokens"].tolist() == [[[B, C], [A, -1], [A, B]]]
    np.testing.assert_allclose(
        out["beam_log_probs"],
        [[math.log(0.4 * 0.8 * 0.75), math.log(0.5 * 0.4), forced]],
        atol=1e-5,
    )


# ------------------------------------------------------------ numpy references


def _log_softmax(x):
    x = x - x.max()
    return x - np.log(np.exp(x).sum())


def _masked_log_probs(logits, path, forbidden, no_repeat):
    mask = np.isin(np.arange(len(logits)), forbidden)
    if no_repeat:
        mask[list(path)] = True
    return _log_softmax(np.where(mask, -1e9, logits.astype(np.float64))), mask


def _greedy_reference(table, max_length, forbidden, no_repeat):
    """Argmax decoding of a first-order logits table, written independently."""
    V = table.shape[1]
    path, probs, score, max_probs, prev = [], [], 0.0, np.zeros(V), START
    for t in range(max_length + 1):
        lp, mask = _masked_log_probs(table[prev], path, forbidden, no_repeat)
        max_probs = np.maximum(max_probs, np.exp(lp))
        choice = np.where(mask, -np.inf, lp)
        if t == max_length:
            choice = np.where(np.arange(V) == END, choice, -np.inf)
        tok = int(np.argmax(choice))
        score += lp[tok]
        if tok == END:
            break
        path.append(tok)
        probs.append(math.exp(lp[tok]))
        prev = tok
    return path, probs, score, max_probs


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("no_repeat,forbidden", [(True, (1,)), (True, (1, 3)), (False, (1,))])
def test_beam_one_equals_greedy(seed, no_repeat, forbidden):
    rng = np.random.RandomState(seed)
    V, L = 7, 4
    table = rng.randn(V, V).astype(np.float32) * 2.0
    table[:, END] -= 1.5  # longer paths
    if not no_repeat:
        table[np.arange(V), np.arange(V)] += 3.0  # make repeats happen
    step = lambda tokens, state: (tf.gather(tf.constant(table), tokens), state)
    out = beam_search(step, (), 1, V, beam_size=1, max_length=L,
                      forbidden_ids=forbidden, no_repeat=no_repeat)
    path, probs, score, max_probs = _greedy_reference(table, L, forbidden, no_repeat)
    n = len(path)
    assert out["tokens"].numpy()[0].tolist() == path + [-1] * (L - n)
    assert int(out["length"][0]) == n
    np.testing.assert_allclose(out["token_probs"].numpy()[0], probs + [0.0] * (L - n), atol=1e-5)
    assert float(out["log_prob"][0]) == pytest.approx(score, abs=1e-4)
    np.testing.assert_allclose(out["max_probs"].numpy()[0], max_probs, atol=1e-5)


def _path_logits(params, item, path):
    """Logits after a path, from the path itself (what the TF state encodes)."""
    table2, weights, bias = params
    seq = [START] + list(path)
    prev2 = seq[-2] if len(seq) >= 2 else START
    bag = np.bincount(seq, minlength=table2.shape[-1]).astype(np.float64)
    return table2[prev2, seq[-1]] + bag @ weights + bias[item]


def _state_step(params):
    """A step whose logits depend on a nested state: previous input token and a bag of tokens."""
    table2, weights, _ = params
    V = table2.shape[-1]
    table2 = tf.constant(table2, tf.float32)
    weights = tf.constant(weights, tf.float32)

    def step(tokens, state):
        bag = state["bag"] + tf.one_hot(tokens, V)
        logits = tf.gather_nd(table2, tf.stack([state["prev"], tokens], 1))
        logits = logits + bag @ weights + state["bias"]
        return logits, {"prev": tokens, "bag": bag, "bias": state["bias"]}

    return step


def _state_init(params, batch):
    V = params[0].shape[-1]
    return {
        "prev": tf.fill([batch], START),
        "bag": tf.zeros([batch, V]),
        "bias": tf.constant(params[2][:batch], tf.float32),
    }


def _make_params(seed, V=7, batch=3):
    rng = np.random.RandomState(seed)
    table2 = rng.randn(V, V, V) * 2.0
    table2[..., END] -= 1.0
    weights = rng.randn(V, V)
    bias = rng.randn(batch, V)
    return table2.astype(np.float32), weights.astype(np.float32), bias.astype(np.float32)


def _beam_reference(logits_fn, V, K, L, forbidden=(1,), no_repeat=True):
    """Plain Python beam search with the module's semantics (enough finite candidates)."""
    beams = [(0.0, [], False)]
    for t in range(L + 1):
        if all(fin for _, _, fin in beams):
            break
        cands = []
        for j, (score, path, fin) in enumerate(beams):
            if fin:
                cands.append((score, j * V + END, path, True))
                continue
            lp, mask = _masked_log_probs(logits_fn(path), path, forbidden, no_repeat)
            for v in range(V):
                if mask[v] or (t == L and v != END):
                    continue
                cands.append((score + lp[v], j * V + v, path + ([] if v == END else [v]), v == END))
        cands.sort(key=lambda c: (-c[0], c[1]))
        beams = [(s, p, f) for s, _, p, f in cands[:K]]
    return beams


@pytest.mark.parametrize("beam_size", [2, 3, 4])
@pytest.mark.parametrize("seed", [0, 1])
def test_stateful_batch_matches_python_reference(beam_size, seed):
    V, L, batch = 7, 4, 3
    params = _make_params(seed, V, batch)
    out = beam_search(_state_step(params), _state_init(params, batch), tf.constant(batch), V,
                      beam_size=beam_size, max_length=L)
    beam_tokens = out["beam_tokens"].numpy()
    results = set()
    for item in range(batch):
        ref = _beam_reference(lambda p: _path_logits(params, item, p), V, beam_size, L)
        assert len(ref) == beam_size
        for j, (score, path, _) in enumerate(ref):
            assert beam_tokens[item, j].tolist() == path + [-1] * (L - len(path))
            assert out["beam_log_probs"][item, j].numpy() == pytest.approx(score, abs=1e-4)
        best = ref[0][1]
        assert out["tokens"][item].numpy().tolist() == best + [-1] * (L - len(best))
        results.add(tuple(best))
    assert len(results) > 1  # the items really differ
    assert len({beam_tokens[i].tobytes() for i in range(batch)}) == batch


def test_wide_beam_is_exhaustive_search():
    V, L = 5, 3  # 3 labels: 1 + 3 + 6 + 6 = 16 paths of at most 3 labels
    params = _make_params(5, V, 1)
    out = beam_search(_state_step(params), _state_init(params, 1), 1, V, beam_size=16, max_length=L)
    scores = {}
    for n in range(L + 1):
        for path in itertools.permutations([A, B, C], n):
            total = 0.0
            for i in range(n + 1):
                lp, _ = _masked_log_probs(_path_logits(params, 0, path[:i]), path[:i], (1,), True)
                total += lp[path[i]] if i < n else lp[END]
            scores[path] = total
    ranked = sorted(scores.items(), key=lambda kv: -kv[1])
    got = [tuple(t for t in row if t >= 0) for row in out["beam_tokens"].numpy()[0]]
    assert got == [p for p, _ in ranked]
    np.testing.assert_allclose(out["beam_log_probs"].numpy()[0], [s for _, s in ranked], atol=1e-4)


# -------------------------------------------------------------- masks, length


def test_no_repeat_and_no_start_even_when_preferred():
    V, L = 6, 3
    table = np.full((V, V), -2.0, np.float32)
    table[np.arange(V), np.arange(V)] = 8.0  # repeat yourself
    table[:, START] = 20.0  # and emit START
    table[:, END] = -10.0  # and never stop
    step = lambda tokens, state: (tf.gather(tf.constant(table), tokens), state)
    out = beam_search(step, (), 1, V, beam_size=3, max_length=L)
    for row in out["beam_tokens"].numpy()[0]:
        labels = row[row >= 0].tolist()
        assert START not in labels and END not in labels
        assert len(labels) == len(set(labels)) == L  # forced END after L labels
    ref = _beam_reference(lambda p: table[p[-1] if p else START], V, 3, L)
    np.testing.assert_allclose(out["beam_log_probs"].numpy()[0], [s for s, _, _ in ref], atol=1e-4)
    # without no_repeat the favourite repeat is taken
    out = beam_search(step, (), 1, V, beam_size=1, max_length=L, no_repeat=False)
    path = out["tokens"].numpy()[0].tolist()
    assert path[0] >= 2 and path == [path[0]] * L


def test_early_stop_when_all_beams_end():
    table = np.array([[5.0, 0, 0, 0, 0]] * 5, np.float32)
    table[START] = [2.0, 0.0, 1.0, 0.5, 0.0]
    table[2:, END] = 6.0
    calls = []

    def step(tokens, state):
        calls.append(1)
        return tf.gather(tf.constant(table), tokens), state

    out = beam_search(step, (), 1, 5, beam_size=3, max_length=5)
    assert len(calls) == 2  # step 0: END, a, b; step 1: a and b end
    assert out["beam_tokens"].numpy()[0, :, 0].tolist() == [-1, A, B]

    counter = tf.Variable(0)

    @tf.function
    def graph_run():
        def counting_step(tokens, state):
            counter.assign_add(1)
            return tf.gather(tf.constant(table), tokens), state

        return beam_search(counting_step, (), 1, 5, beam_size=3, max_length=5)["beam_tokens"]

    assert graph_run().numpy()[0, :, 0].tolist() == [-1, A, B]
    assert int(counter.numpy()) == 2


def test_fewer_allowed_tokens_than_beams_gives_dead_beams():
    table = np.zeros((4, 4), np.float32)  # END, START, and two labels
    table[START, A] = 2.0  # beam 0 is [a], a live parent of dead beams at step 1
    calls = []

    def step(tokens, state):
        calls.append(1)
        return tf.gather(tf.constant(table), tokens), state

    out = beam_search(step, (), 1, 4, beam_size=8, max_length=5)
    # dead beams count as finished: the loop stops once both labels are used
    assert len(calls) == 3
    scores = out["beam_log_probs"].numpy()[0]
    finite = np.isfinite(scores)
    assert finite.sum() == 5  # [a], [a,b], [], [b], [b,a]
    assert out["beam_tokens"].numpy()[0][:5, :2].tolist() == [[A, -1], [A, B], [-1, -1], [B, -1], [B, A]]
    assert np.all(out["beam_tokens"].numpy()[0][~finite] == -1)
    assert np.all(out["token_probs"].numpy()[0] >= 0)
    p_a = math.exp(2) / (math.exp(2) + 2)
    np.testing.assert_allclose(scores[:2], [math.log(p_a / 2)] * 2, atol=1e-5)


# ------------------------------------------------------ graph, XLA, SavedModel


class _Decoder(tf.Module):
    def __init__(self, params, beam_size=3, max_length=4):
        super().__init__()
        self.table2 = tf.Variable(params[0])
        self.weights = tf.Variable(params[1])
        self.beam_size, self.max_length = beam_size, max_length

    @tf.function(input_signature=[tf.TensorSpec([None, 7], tf.float32)])
    def decode(self, bias):
        batch = tf.shape(bias)[0]
        V = 7

        def step(tokens, state):
            bag = state["bag"] + tf.one_hot(tokens, V)
            logits = tf.gather_nd(self.table2, tf.stack([state["prev"], tokens], 1))
            logits = logits + bag @ self.weights + state["bias"]
            return logits, {"prev": tokens, "bag": bag, "bias": state["bias"]}

        init = {"prev": tf.fill([batch], START), "bag": tf.zeros([batch, V]), "bias": bias}
        return beam_search(step, init, batch, V, beam_size=self.beam_size,
                           max_length=self.max_length)


def _assert_same(a, b):
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_allclose(np.asarray(a[key]), np.asarray(b[key]), atol=1e-5, err_msg=key)


def test_tf_function_with_unknown_batch_and_saved_model(tmp_path):
    params = _make_params(3, 7, 3)
    eager = beam_search(_state_step(params), _state_init(params, 3), 3, 7, beam_size=3, max_length=4)
    module = _Decoder(params)
    graph = module.decode(tf.constant(params[2]))
    _assert_same(graph, eager)
    tf.saved_model.save(module, str(tmp_path / "decoder"))
    loaded = tf.saved_model.load(str(tmp_path / "decoder"))
    _assert_same(loaded.decode(tf.constant(params[2])), eager)
    one = loaded.decode(tf.constant(params[2][1:2]))  # another batch size
    assert one["tokens"].shape == (1, 4)
    np.testing.assert_array_equal(one["beam_tokens"].numpy()[0], eager["beam_tokens"].numpy()[1])


def test_jit_compile():
    params = _make_params(4, 7, 2)

    @tf.function(jit_compile=True)
    def run(bias):
        init = {"prev": tf.fill([tf.shape(bias)[0]], START), "bag": tf.zeros([2, 7]), "bias": bias}
        return beam_search(_state_step(params), init, tf.shape(bias)[0], 7, beam_size=3, max_length=4)

    eager = beam_search(_state_step(params), _state_init(params, 2), 2, 7, beam_size=3, max_length=4)
    _assert_same(run(tf.constant(params[2])), eager)


def test_argument_checks():
    with pytest.raises(ValueError):
        beam_search(lambda t, s: (t, s), (), 1, 5, beam_size=0)
    with pytest.raises(ValueError):
        beam_search(lambda t, s: (t, s), (), 1, 5, forbidden_ids=(0, 1))


def test_min_length_masks_end_at_the_first_steps_and_renormalises():
    """The table prefers END at once; min_length=1 forces one label first."""
    import math

    # Tokens: 0 END, 1 START, 2 a, 3 b. From START: END .5, a .3, b .2 (START never).
    table = np.log(np.array([
        [0.5, 1e-9, 0.3, 0.2],   # after END (unused)
        [0.5, 1e-9, 0.3, 0.2],   # after START
        [0.9, 1e-9, 0.05, 0.05],  # after a
        [0.9, 1e-9, 0.05, 0.05],  # after b
    ], np.float32))

    def step(tokens, state):
        return tf.gather(tf.constant(table), tokens), state

    state = tf.zeros([1, 1])
    plain = beam_search(step, state, 1, 4, beam_size=2, max_length=2)
    assert int(plain["length"][0]) == 0  # END first: the empty set
    forced = beam_search(step, state, 1, 4, beam_size=2, max_length=2, min_length=1)
    assert int(forced["length"][0]) == 1 and int(forced["tokens"][0, 0]) == 2
    # a's probability is renormalised over the allowed tokens: .3 / (.3 + .2)
    assert float(forced["token_probs"][0, 0]) == pytest.approx(0.6, rel=1e-4)
    expected = math.log(0.6) + math.log(0.9 / (0.9 + 0.05))  # then END (b still allowed)
    assert float(forced["log_prob"][0]) == pytest.approx(expected, rel=1e-4)
    with pytest.raises(ValueError, match="min_length"):
        beam_search(step, state, 1, 4, min_length=-1)
