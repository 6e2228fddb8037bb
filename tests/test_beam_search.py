"""Tests of cnnrnn_tf.models.beam_search against hand-computed tables and Python references."""
import itertools
import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import tensorflow as tf

from cnnrnn_tf.models.beam_search import beam_search

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
    third = math.log(0.5) + math.log(0.3) + math.log(0.6 / 0.8)  # a, c, END (a,c masked)
    assert out["tokens"].tolist() == [[B, C, -1]]
    assert out["length"].tolist() == [2]
    assert out["log_prob"][0] == pytest.approx(best, abs=1e-5)
    # The search stops before step 3: the best live path [a, b, c] (.5 * .3 * .8/.9)
    # is less probable than the candidate [b, c, END], so it is never completed.
    assert out["beam_tokens"].tolist() == [[[B, C, -1], [A, -1, -1], [A, C, -1]]]
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
    # [a, b] and [a, c] are alive after 2 labels: forced END with probability 0.1 / 0.9
    # and 0.6 / 0.8. ([a, c] survives step 1 because the finished [a] has a slot of
    # its own; when finished paths took live slots, [a, b] pushed [a, c] out.)
    assert out["beam_tokens"].tolist() == [[[B, C], [A, -1], [A, C]]]
    np.testing.assert_allclose(
        out["beam_log_probs"],
        [[math.log(0.4 * 0.8 * 0.75), math.log(0.5 * 0.4), math.log(0.5 * 0.3 * 0.75)]],
        atol=1e-5,
    )


def test_finished_path_is_kept_when_live_paths_outnumber_it():
    """The paper's candidate set: [a] + END is best although it never holds a live slot."""
    # END, START, a, b, c; rows: previous token
    table = np.array(
        [
            [1.0, 1e-6, 1e-6, 1e-6, 1e-6],  # after END (unused)
            [1e-6, 1e-6, 0.6, 0.4, 1e-6],  # after START: a .6, b .4
            [0.44, 1e-6, 0.05, 0.05, 0.46],  # after a: c .46, END .44
            [0.1, 1e-6, 0.05, 0.05, 0.8],  # after b: c .8, END .1
            [0.4, 1e-6, 0.3, 0.3, 1e-6],  # after c: END .4, a .3, b .3
        ]
    )
    table = table / table.sum(axis=1, keepdims=True)
    out = _run(2, 3, table=table)
    # step 1: extensions aE .264, ac .276, bc .32, bE .04: the live slots go to bc
    # and ac, aE stays a candidate. Step 2: bc -> bcE (.32 * .4/.7), ac -> acE; step 3:
    # no live path beats aE, the search stops.
    p = lambda *rows: float(np.prod(rows))
    a_end = math.log(p(table[START, A], table[A, END] / (1 - table[A, A])))
    bc_end = math.log(p(table[START, B], table[B, C] / (1 - table[B, B]),
                        table[C, END] / (1 - table[C, B] - table[C, C])))
    assert out["tokens"].tolist() == [[A, -1, -1]]
    assert out["log_prob"][0] == pytest.approx(a_end, abs=1e-5)
    assert out["beam_tokens"].tolist() == [[[A, -1, -1], [B, C, -1]]]
    np.testing.assert_allclose(out["beam_log_probs"][0], [a_end, bc_end], atol=1e-5)
    assert a_end > bc_end  # where finished paths competed for live slots, bc + END won


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


def _paper_reference(logits_fn, V, N, L, forbidden=(1,), no_repeat=True, min_length=0):
    """Plain-Python beam search of Wang et al. (2016), section 3.3, in float64.

    Keeps N live paths; extends each by its N most probable allowed tokens (END
    counts as one); extensions by END join a candidate set that live paths never
    evict; the next live paths are the N best other extensions; stops when no live
    path beats the best candidate. Ties: lower token id within a path, then lower
    live slot; among candidates the one found first. Returns (outputs, margin):
    the outputs for the N best candidates as dicts, best first, and the smallest gap
    between two scores whose order decided something (float32 may flip a smaller one).
    """
    min_len = min(min_length, L)
    # a path: (score, labels, label probs, max probs)
    live, cands, margin = [(0.0, [], [], np.zeros(V))], [], math.inf
    for t in range(L + 1):
        if not live:
            break
        best_live = max(p[0] for p in live)
        best_cand = max((c[0] for c in cands), default=-math.inf)
        if cands:
            margin = min(margin, abs(best_live - best_cand))
        if best_live <= best_cand:
            break
        ends, labels = [], []
        for score, path, probs, max_probs in live:  # live is sorted best first
            blocked = tuple(forbidden) + ((END,) if t < min_len else ())
            lp, mask = _masked_log_probs(logits_fn(path), path, blocked, no_repeat)
            max_probs = np.maximum(max_probs, np.exp(lp))
            allowed = [v for v in range(V) if not mask[v] and (t < L or v == END)]
            ranked = sorted(allowed, key=lambda v: (-lp[v], v))
            if len(ranked) > N:
                margin = min(margin, lp[ranked[N - 1]] - lp[ranked[N]])
            for v in ranked[:N]:
                if v == END:
                    ends.append((score + lp[v], path, probs, max_probs))
                else:
                    labels.append((score + lp[v], path + [v], probs + [math.exp(lp[v])],
                                   max_probs))
        cands += ends
        labels.sort(key=lambda p: -p[0])  # stable: lower slot, then lower token id
        if len(labels) > N:
            margin = min(margin, labels[N - 1][0] - labels[N][0])
        live = labels[:N]
    cands.sort(key=lambda c: -c[0])  # stable: found first wins a tie
    top = cands[: N + 1]
    for first, second in zip(top, top[1:]):
        margin = min(margin, first[0] - second[0])
    outputs = [{"score": s, "path": p, "probs": q, "max_probs": m} for s, p, q, m in cands[:N]]
    return outputs, margin


def _assert_matches_reference(out, item, ref, N, L, V):
    """Every output of ``out`` for ``item`` equals the reference's (scores to 1e-5)."""
    pad = lambda xs, value: list(xs) + [value] * (L - len(xs))
    empty = {"score": -math.inf, "path": [], "probs": [], "max_probs": np.zeros(V)}
    beams = ref + [empty] * (N - len(ref))
    best = beams[0]
    assert out["tokens"][item].tolist() == pad(best["path"], -1)
    assert out["length"][item] == len(best["path"])
    np.testing.assert_allclose(out["token_probs"][item], pad(best["probs"], 0.0), atol=1e-5)
    np.testing.assert_allclose(out["log_prob"][item], best["score"], atol=1e-5)
    np.testing.assert_allclose(out["max_probs"][item], best["max_probs"], atol=1e-5)
    assert out["beam_tokens"][item].tolist() == [pad(b["path"], -1) for b in beams]
    np.testing.assert_allclose(out["beam_log_probs"][item], [b["score"] for b in beams],
                               atol=1e-5)


def _run_numpy(*args, **kw):
    return {k: v.numpy() for k, v in beam_search(*args, **kw).items()}


@pytest.mark.parametrize("beam_size", [2, 3, 4])
@pytest.mark.parametrize("seed", [0, 1])
def test_stateful_batch_matches_python_reference(beam_size, seed):
    V, L, batch = 7, 4, 3
    params = _make_params(seed, V, batch)
    out = _run_numpy(_state_step(params), _state_init(params, batch), tf.constant(batch), V,
                     beam_size=beam_size, max_length=L)
    for item in range(batch):
        ref, margin = _paper_reference(lambda p: _path_logits(params, item, p), V, beam_size, L)
        assert margin > 1e-4
        _assert_matches_reference(out, item, ref, beam_size, L, V)
    assert len({tuple(row) for row in out["tokens"]}) > 1  # the items really differ


# Random step tables: the logits of a problem are a row of its own table, chosen
# by a hash of the whole path prefix (START included), so they depend on the
# order and the set of the labels so far.
_HASH_SIZE, _HASH_MUL = 211, 31


def _hash_step(tables):
    tables = tf.constant(tables)

    def step(tokens, state):
        problem, code = state
        code = (code * _HASH_MUL + tokens + 1) % _HASH_SIZE
        return tf.gather_nd(tables, tf.stack([problem, code], 1)), (problem, code)

    return step


def _hash_logits(tables, problem, path):
    code = 0
    for token in [START] + list(path):
        code = (code * _HASH_MUL + token + 1) % _HASH_SIZE
    return tables[problem, code].astype(np.float64)


# (num_tokens, max_length, beam sizes, extra options); every problem of one
# configuration and beam size is one batched call.
RANDOM_CONFIGS = [
    (5, 2, (1, 2, 3, 4, 6), {}),  # beam 6 > num_tokens
    (7, 3, (1, 2, 3, 4), {}),
    (8, 4, (2, 3, 4), {}),
    (10, 5, (2, 3), {}),
    (6, 4, (2, 3), {"no_repeat": False}),
    (7, 4, (2, 3), {"min_length": 2}),
    (8, 3, (2, 4), {"forbidden": (1, 4, 5)}),
]


@pytest.mark.parametrize("V,L,beam_sizes,options", RANDOM_CONFIGS)
def test_random_tables_match_the_paper_procedure(V, L, beam_sizes, options):
    problems = 400
    rng = np.random.RandomState(V * 100 + L)
    tables = rng.randn(problems, _HASH_SIZE, V) * rng.uniform(0.5, 3.0, (problems, 1, 1))
    tables[..., END] += rng.uniform(-3.0, 1.0, (problems, 1))  # short and long paths
    tables = tables.astype(np.float32)
    forbidden = options.get("forbidden", (START,))
    no_repeat = options.get("no_repeat", True)
    min_length = options.get("min_length", 0)
    init = (tf.range(problems), tf.zeros([problems], tf.int32))
    compared = 0
    for N in beam_sizes:
        out = _run_numpy(_hash_step(tables), init, problems, V, beam_size=N, max_length=L,
                         forbidden_ids=forbidden, no_repeat=no_repeat, min_length=min_length)
        lengths, several = set(), 0
        for item in range(problems):
            ref, margin = _paper_reference(lambda p: _hash_logits(tables, item, p), V, N, L,
                                           forbidden, no_repeat, min_length)
            if margin <= 1e-4:  # a near tie: float32 and float64 may order it differently
                continue
            _assert_matches_reference(out, item, ref, N, L, V)
            compared += 1
            lengths.add(len(ref[0]["path"]))
            several += len(ref) > 1
        assert len(lengths) > 1 and (N == 1 or several > problems // 10)  # not degenerate
    assert compared >= 0.98 * problems * len(beam_sizes)


def test_wide_beam_finds_the_most_probable_path():
    """With N >= the number of tokens nothing is pruned: the best path is exhaustive
    search's, and every candidate has its exact score (the stop rule may end the
    search before the lower-ranked paths are completed)."""
    V, L = 5, 3  # 3 labels: 1 + 3 + 6 + 6 = 16 paths of at most 3 labels
    for seed in range(5, 10):
        params = _make_params(seed, V, 1)
        out = _run_numpy(_state_step(params), _state_init(params, 1), 1, V, beam_size=16,
                         max_length=L)
        scores = {}
        for n in range(L + 1):
            for path in itertools.permutations([A, B, C], n):
                total = 0.0
                for i in range(n + 1):
                    lp, _ = _masked_log_probs(_path_logits(params, 0, path[:i]), path[:i], (1,),
                                              True)
                    total += lp[path[i]] if i < n else lp[END]
                scores[path] = total
        best = max(scores, key=scores.get)
        assert tuple(out["tokens"][0][: out["length"][0]]) == best
        assert out["log_prob"][0] == pytest.approx(scores[best], abs=1e-4)
        found = np.isfinite(out["beam_log_probs"][0])
        got = [tuple(t for t in row if t >= 0) for row in out["beam_tokens"][0][found]]
        assert len(set(got)) == len(got) >= 1
        np.testing.assert_allclose(out["beam_log_probs"][0][found], [scores[p] for p in got],
                                   atol=1e-4)
        assert np.all(np.diff(out["beam_log_probs"][0][found]) <= 0)


# -------------------------------------------------------------- masks, length


def test_no_repeat_and_no_start_even_when_preferred():
    V, L = 6, 3
    table = np.full((V, V), -2.0, np.float32)
    table[np.arange(V), np.arange(V)] = 8.0  # repeat yourself
    table[:, START] = 20.0  # and emit START
    table[:, END] = -10.0  # and almost never stop
    step = lambda tokens, state: (tf.gather(tf.constant(table), tokens), state)
    out = _run_numpy(step, (), 1, V, beam_size=3, max_length=L)
    found = np.isfinite(out["beam_log_probs"][0])
    for row in out["beam_tokens"][0][found]:
        labels = row[row >= 0].tolist()
        assert START not in labels and END not in labels
        assert len(labels) == len(set(labels)) >= 2
    # END after 2 labels (probability e^-8 / (2 + e^-8)) beats 3 labels and a forced
    # END (1 / (2 + e^-8) * e^-8 / (1 + e^-8)) by a factor 1 + e^-8.
    assert out["length"][0] == 2
    ref, _ = _paper_reference(lambda p: table[p[-1] if p else START], V, 3, L)
    _assert_matches_reference(out, 0, ref, 3, L, V)
    # without no_repeat the favourite repeat is taken
    out = beam_search(step, (), 1, V, beam_size=1, max_length=L, no_repeat=False)
    path = out["tokens"].numpy()[0].tolist()
    assert path[0] >= 2 and path == [path[0]] * L


def test_stops_when_no_live_path_beats_the_best_candidate():
    table = np.array([[5.0, 0, 0, 0, 0]] * 5, np.float32)
    table[START] = [2.0, 0.0, 1.0, 0.5, 0.0]
    table[A] = [0.0, 0.0, -9.0, 3.0, 0.0]  # after a: b is likely (a,b: .24 of the mass)
    table[B] = [6.0, 0.0, 0.0, -9.0, 0.0]
    calls = []

    def step(tokens, state):
        calls.append(1)
        return tf.gather(tf.constant(table), tokens), state

    # step 0: END (.56) is a candidate, [a] (.21) and [b] (.13) live: no live path
    # beats the empty set, so the search stops after one step.
    out = _run_numpy(step, (), 1, 5, beam_size=3, max_length=5)
    assert len(calls) == 1
    assert out["beam_tokens"][0, :, 0].tolist() == [-1, -1, -1]
    lp = _log_softmax(np.where(np.arange(5) == START, -1e9, table[START]).astype(np.float64))
    np.testing.assert_allclose(out["beam_log_probs"][0], [lp[END], -np.inf, -np.inf], atol=1e-5)
    # with END masked at step 0 the live paths go on until they end
    calls.clear()
    out = _run_numpy(step, (), 1, 5, beam_size=3, max_length=5, min_length=1)
    assert len(calls) == 3  # step 1: [a,b] is the best live path, step 2: [a,b,END] wins

    counter = tf.Variable(0)

    @tf.function
    def graph_run():
        def counting_step(tokens, state):
            counter.assign_add(1)
            return tf.gather(tf.constant(table), tokens), state

        return beam_search(counting_step, (), 1, 5, beam_size=3, max_length=5)["beam_tokens"]

    assert graph_run().numpy()[0, :, 0].tolist() == [-1, -1, -1]
    assert int(counter.numpy()) == 1


def test_fewer_allowed_tokens_than_beams_gives_empty_slots():
    table = np.zeros((4, 4), np.float32)  # END, START, and two labels
    table[START, A] = 2.0
    calls = []

    def step(tokens, state):
        calls.append(1)
        return tf.gather(tf.constant(table), tokens), state

    out = _run_numpy(step, (), 1, 4, beam_size=8, max_length=5)
    # step 0: END, a, b (3 of 8 slots); step 1: [a,b] ties with the candidate [a]+END,
    # and a tie stops the search.
    assert len(calls) == 2
    scores = out["beam_log_probs"][0]
    finite = np.isfinite(scores)
    assert finite.tolist() == [True] * 3 + [False] * 5
    assert out["beam_tokens"][0][:3, :2].tolist() == [[A, -1], [-1, -1], [B, -1]]
    assert np.all(out["beam_tokens"][0][~finite] == -1)
    assert np.all(out["token_probs"] >= 0)
    p_a, p_b = math.exp(2) / (math.exp(2) + 2), 1 / (math.exp(2) + 2)
    np.testing.assert_allclose(scores[:3], np.log([p_a / 2, p_b, p_b / 2]), atol=1e-5)


def test_no_allowed_token_leaves_no_candidate():
    # END, START, one label; two labels required: after [a] nothing is allowed
    table = np.zeros((3, 3), np.float32)
    step = lambda tokens, state: (tf.gather(tf.constant(table), tokens), state)
    out = _run_numpy(step, (), 1, 3, beam_size=2, max_length=3, min_length=2)
    assert out["log_prob"][0] == -np.inf
    assert out["length"][0] == 0 and out["tokens"][0].tolist() == [-1, -1, -1]
    assert np.all(out["max_probs"] == 0) and np.all(out["beam_log_probs"] == -np.inf)


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


@pytest.mark.parametrize("beam_size,min_length", [(1, 0), (6, 1)])
def test_jit_compile_random_tables(beam_size, min_length):
    """XLA gives the eager outputs, also with more beams than tokens and min_length."""
    problems, V, L = 64, 5, 3
    rng = np.random.RandomState(beam_size)
    tables = (rng.randn(problems, _HASH_SIZE, V) * 2).astype(np.float32)
    init = (tf.range(problems), tf.zeros([problems], tf.int32))
    kw = dict(beam_size=beam_size, max_length=L, min_length=min_length)
    run = tf.function(lambda: beam_search(_hash_step(tables), init, problems, V, **kw),
                      jit_compile=True)
    _assert_same(run(), beam_search(_hash_step(tables), init, problems, V, **kw))


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
