"""Tests of cnnrnn_tf.metrics: hand-computed cases, scikit-learn agreement, validation."""
import json

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_score, recall_score

from cnnrnn_tf.errors import InputError
from cnnrnn_tf.metrics import (
    average_precision,
    format_comparison,
    format_table,
    multilabel_metrics,
    per_class_table,
)

# ---------------------------------------------------------------------------
# Hand-computed case: 4 images x 3 classes.
#   class 0: 3 positives, predicted 3 times (2 right)
#   class 1: 2 positives, NEVER predicted            -> precision 0 in CP
#   class 2: NO positive, predicted once (img1)      -> excluded from mAP/CP/CR,
#                                                       but a false positive in OP
# ---------------------------------------------------------------------------
Y_TRUE = np.array([
    [1, 0, 0],
    [1, 1, 0],
    [0, 1, 0],
    [1, 0, 0],
])
Y_PRED = np.array([
    [1, 0, 0],
    [0, 0, 1],
    [1, 0, 0],
    [1, 0, 0],
])
Y_SCORE = np.array([
    [0.9, 0.1, 0.5],
    [0.2, 0.7, 0.5],
    [0.6, 0.3, 0.6],  # tie between class 0 and class 2: top-1 must pick class 0
    [0.8, 0.4, 0.1],
])
NAMES = ["cat", "dog", "car"]


def test_hand_computed_ap_per_class():
    # class 0: scores desc -> img0(+) 0.9, img3(+) 0.8, img2(-) 0.6, img1(+) 0.2
    #   positives at ranks 1, 2, 4: precisions 1/1, 2/2, 3/4 -> AP = 2.75/3 = 11/12
    assert average_precision(Y_TRUE[:, 0], Y_SCORE[:, 0]) == pytest.approx(11 / 12)
    # class 1: img1(+) 0.7, img3(-) 0.4, img2(+) 0.3, img0(-) 0.1
    #   positives at ranks 1, 3: precisions 1, 2/3 -> AP = (5/3)/2 = 5/6
    assert average_precision(Y_TRUE[:, 1], Y_SCORE[:, 1]) == pytest.approx(5 / 6)
    # class 2: no positive -> undefined
    assert np.isnan(average_precision(Y_TRUE[:, 2], Y_SCORE[:, 2]))


def test_hand_computed_multilabel_metrics():
    r = multilabel_metrics(Y_TRUE, Y_PRED, Y_SCORE, top_k=1, label_names=NAMES)
    assert r["num_images"] == 4
    assert r["num_classes"] == 3
    assert r["num_classes_evaluated"] == 2
    # mAP over classes 0, 1 only: (11/12 + 10/12) / 2 = 21/24 = 0.875
    assert r["mAP"] == pytest.approx(0.875)
    # predicted sets:
    #   class 0: TP 2 (img0, img3), predicted 3, support 3 -> P = 2/3, R = 2/3
    #   class 1: TP 0, predicted 0, support 2            -> P = 0,   R = 0
    #   CP = (2/3 + 0)/2 = 1/3, CR = 1/3, CF1 = 1/3
    assert r["CP"] == pytest.approx(1 / 3)
    assert r["CR"] == pytest.approx(1 / 3)
    assert r["CF1"] == pytest.approx(1 / 3)
    #   overall: TP 2, predicted 4 (incl. the class-2 false positive), positives 5
    #   OP = 2/4 = 0.5, OR = 2/5 = 0.4, OF1 = 2*0.5*0.4/0.9 = 4/9
    assert r["OP"] == pytest.approx(0.5)
    assert r["OR"] == pytest.approx(0.4)
    assert r["OF1"] == pytest.approx(4 / 9)

    # top-1 sets: img0 -> 0, img1 -> 1, img2 -> 0 (tie 0.6/0.6, lower index), img3 -> 0
    #   class 0: TP 2, predicted 3, support 3 -> P = 2/3, R = 2/3
    #   class 1: TP 1, predicted 1, support 2 -> P = 1,   R = 1/2
    #   CP = (2/3 + 1)/2 = 5/6, CR = (2/3 + 1/2)/2 = 7/12,
    #   CF1 = 2*(5/6)*(7/12)/(5/6 + 7/12) = 35/51
    #   OP = 3/4, OR = 3/5, OF1 = 2*0.75*0.6/1.35 = 2/3
    top = r["top1"]
    assert r["top_k"] == 1
    assert top["CP"] == pytest.approx(5 / 6)
    assert top["CR"] == pytest.approx(7 / 12)
    assert top["CF1"] == pytest.approx(35 / 51)
    assert top["OP"] == pytest.approx(0.75)
    assert top["OR"] == pytest.approx(0.6)
    assert top["OF1"] == pytest.approx(2 / 3)

    pc = r["per_class"]
    assert [c["label"] for c in pc] == NAMES
    assert [c["support"] for c in pc] == [3, 2, 0]
    assert [c["predicted"] for c in pc] == [3, 0, 1]
    assert pc[0]["AP"] == pytest.approx(11 / 12)
    assert pc[1]["AP"] == pytest.approx(5 / 6)
    assert pc[2]["AP"] is None
    assert pc[0]["precision"] == pytest.approx(2 / 3)
    assert pc[0]["recall"] == pytest.approx(2 / 3)
    assert pc[0]["F1"] == pytest.approx(2 / 3)
    assert (pc[1]["precision"], pc[1]["recall"], pc[1]["F1"]) == (0.0, 0.0, 0.0)
    assert (pc[2]["precision"], pc[2]["recall"], pc[2]["F1"]) == (0.0, 0.0, 0.0)

    # JSON-serialisable, plain python types
    json.dumps(r, allow_nan=False)
    assert type(r["mAP"]) is float and type(r["CP"]) is float
    assert type(pc[0]["support"]) is int


def test_default_label_names_and_top_key():
    r = multilabel_metrics(Y_TRUE, Y_PRED, Y_SCORE)
    assert [c["label"] for c in r["per_class"]] == ["0", "1", "2"]
    # top_k=3 with K=3: every label predicted -> OR = 1, OP = 5/12
    assert r["top3"]["OR"] == pytest.approx(1.0)
    assert r["top3"]["OP"] == pytest.approx(5 / 12)


def test_ap_ties_do_not_depend_on_order():
    # two tied images, one positive: one operating point, precision 1/2 (as scikit-learn)
    assert average_precision([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    assert average_precision([1, 0], [0.5, 0.5]) == pytest.approx(0.5)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_agrees_with_sklearn(seed):
    rng = np.random.RandomState(seed)
    n, k = 40, 7
    y_true = (rng.rand(n, k) < 0.3).astype(int)
    y_true[:, 5] = 0          # a class without positives
    y_true[0, 0] = 1          # make sure at least one positive exists
    y_pred = (rng.rand(n, k) < 0.35).astype(int)
    y_pred[:, 6] = 0          # a class never predicted
    y_score = rng.rand(n, k)  # continuous: no ties (almost surely)
    assert len(np.unique(y_score)) == y_score.size

    r = multilabel_metrics(y_true, y_pred, y_score, top_k=3)
    evaluated = [j for j in range(k) if y_true[:, j].sum() > 0]
    assert 5 not in evaluated
    assert r["num_classes_evaluated"] == len(evaluated)

    aps = []
    for j in range(k):
        if j in evaluated:
            ref = average_precision_score(y_true[:, j], y_score[:, j])
            assert average_precision(y_true[:, j], y_score[:, j]) == pytest.approx(ref)
            assert r["per_class"][j]["AP"] == pytest.approx(ref)
            aps.append(ref)
        else:
            assert r["per_class"][j]["AP"] is None
    assert r["mAP"] == pytest.approx(np.mean(aps))

    def check(sets, got):
        cp = precision_score(y_true, sets, labels=evaluated, average="macro", zero_division=0)
        cr = recall_score(y_true, sets, labels=evaluated, average="macro", zero_division=0)
        op = precision_score(y_true, sets, average="micro", zero_division=0)
        orr = recall_score(y_true, sets, average="micro", zero_division=0)
        assert got["CP"] == pytest.approx(cp)
        assert got["CR"] == pytest.approx(cr)
        assert got["CF1"] == pytest.approx(2 * cp * cr / (cp + cr))
        assert got["OP"] == pytest.approx(op)
        assert got["OR"] == pytest.approx(orr)
        assert got["OF1"] == pytest.approx(2 * op * orr / (op + orr))

    check(y_pred, r)

    # top-3 sets built independently
    top_sets = np.zeros_like(y_true)
    for i in range(n):
        best = sorted(range(k), key=lambda j: (-y_score[i, j], j))[:3]
        top_sets[i, best] = 1
    check(top_sets, r["top3"])

    # per-class precision/recall match sklearn's per-class values
    p_ref = precision_score(y_true, y_pred, average=None, zero_division=0)
    r_ref = recall_score(y_true, y_pred, average=None, zero_division=0)
    np.testing.assert_allclose([c["precision"] for c in r["per_class"]], p_ref)
    np.testing.assert_allclose([c["recall"] for c in r["per_class"]], r_ref)


def test_perfect_predictions():
    rng = np.random.RandomState(7)
    n, k = 12, 5
    y_true = np.zeros((n, k), dtype=int)
    for i in range(n):  # exactly 3 labels per image so top-3 is perfect too
        y_true[i, rng.choice(k, 3, replace=False)] = 1
    y_score = y_true + 0.1 * rng.rand(n, k)
    r = multilabel_metrics(y_true, y_true, y_score, top_k=3)
    for key in ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1"):
        assert r[key] == pytest.approx(1.0), key
    for key in ("CP", "CR", "CF1", "OP", "OR", "OF1"):
        assert r["top3"][key] == pytest.approx(1.0), key
    for c in r["per_class"]:
        assert c["AP"] == pytest.approx(1.0)
        assert c["F1"] == pytest.approx(1.0)


def test_nothing_predicted_gives_zeros():
    r = multilabel_metrics(Y_TRUE, np.zeros_like(Y_TRUE), Y_SCORE, top_k=1)
    for key in ("CP", "CR", "CF1", "OP", "OR", "OF1"):
        assert r[key] == 0.0


@pytest.mark.parametrize("args, kwargs, match", [
    ((Y_TRUE[:, 0], Y_PRED[:, 0], Y_SCORE[:, 0]), {}, "y_true"),          # 1-D
    ((Y_TRUE, Y_PRED[:3], Y_SCORE), {}, "y_pred"),                        # shape
    ((Y_TRUE, Y_PRED, Y_SCORE[:, :2]), {}, "y_score"),                    # shape
    ((Y_TRUE * 2, Y_PRED, Y_SCORE), {}, "y_true"),                        # non-binary
    ((Y_TRUE, Y_PRED * 0.5, Y_SCORE), {}, "y_pred"),                      # non-binary
    ((Y_TRUE, Y_PRED, np.where(Y_SCORE > 0.85, np.nan, Y_SCORE)), {}, "y_score"),
    ((np.zeros((0, 3)), np.zeros((0, 3)), np.zeros((0, 3))), {}, "y_true"),  # n = 0
    ((np.zeros((4, 3)), Y_PRED, Y_SCORE), {}, "y_true"),                  # no positive
    ((Y_TRUE, Y_PRED, Y_SCORE), {"label_names": ["a", "b"]}, "label_names"),
    ((Y_TRUE, Y_PRED, Y_SCORE), {"top_k": 0}, "top_k"),
    ((Y_TRUE, Y_PRED, [["x"] * 3] * 4), {}, "y_score"),
])
def test_input_validation(args, kwargs, match):
    with pytest.raises(InputError, match=match):
        multilabel_metrics(*args, **kwargs)


def test_average_precision_validation():
    with pytest.raises(InputError, match="y_true_col"):
        average_precision([0, 2], [0.1, 0.2])
    with pytest.raises(InputError, match="y_score_col"):
        average_precision([0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(InputError, match="y_true_col"):
        average_precision([[0, 1]], [[0.1, 0.2]])


def test_format_table_and_comparison():
    r = multilabel_metrics(Y_TRUE, Y_PRED, Y_SCORE, top_k=1, label_names=NAMES)
    text = format_table(r, title="demo")
    assert text.splitlines()[0] == "demo"
    for name in ("mAP", "CP", "CR", "CF1", "OP", "OR", "OF1", "top-1"):
        assert name in text
    assert "87.5" in text    # mAP
    assert "33.3" in text    # CP/CR/CF1
    assert "50.0" in text    # OP
    assert "40.0" in text    # OR
    assert "44.4" in text    # OF1
    assert "83.3" in text    # top-1 CP
    assert "68.6" in text    # top-1 CF1 = 35/51
    # fixed width: the header and the two data rows have the same column ends
    lines = [ln for ln in text.splitlines() if ln.startswith(("all", "top-1"))]
    assert len(lines) == 2

    r2 = multilabel_metrics(Y_TRUE, Y_TRUE, Y_SCORE, top_k=1)
    comp = format_comparison({"cnn": r, "cnn-rnn": r2})
    rows = comp.splitlines()
    assert "model" in rows[0] and "CF1@1" in rows[0] and "OF1@1" in rows[0]
    assert rows[2].startswith("cnn ") and "87.5" in rows[2]
    assert rows[3].startswith("cnn-rnn") and "100.0" in rows[3]

    pct = per_class_table(r)
    assert "cat" in pct and "dog" in pct and "car" in pct
    assert "91.7" in pct     # AP of class 0 = 11/12
    car = [ln for ln in pct.splitlines() if ln.startswith("car")][0]
    assert car.split()[3] == "-"  # AP undefined for a class without positives


def test_ap_with_tied_scores_matches_sklearn_and_ignores_order():
    from sklearn.metrics import average_precision_score

    from cnnrnn_tf.metrics import average_precision

    rng = np.random.RandomState(0)
    for _ in range(300):
        n = rng.randint(2, 30)
        t = rng.randint(0, 2, n)
        if not t.any():
            t[0] = 1
        s = rng.randint(0, 4, n) / 4.0  # many ties
        expected = average_precision_score(t, s)
        assert average_precision(t, s) == pytest.approx(expected, abs=1e-12)
        perm = rng.permutation(n)
        assert average_precision(t[perm], s[perm]) == pytest.approx(expected, abs=1e-12)


def test_vocabulary_ties_as_tft_vocabulary():
    from cnnrnn_tf.vocabulary import LabelVocabulary

    vocab = LabelVocabulary.from_label_lists([["b", "a", "c"], ["a", "c"], ["d"]])
    # counts a 2, c 2, b 1, d 1; ties by bytes descending, as tft.vocabulary
    assert vocab.labels == ("c", "a", "d", "b")


def test_calibrated_threshold_maximises_the_metric_on_the_grid():
    from cnnrnn_tf.metrics import GRID, choose_thresholds
    from cnnrnn_tf.metrics import multilabel_metrics

    rng = np.random.RandomState(0)
    y = (rng.rand(200, 5) < 0.3).astype(int)
    y[0] = 1
    score = np.clip(0.25 * y + 0.6 * rng.rand(200, 5), 0, 1)  # best threshold well above 0.5? no
    best, per, value = choose_thresholds(y, score, "OF1")
    assert per is None and best in GRID
    of1 = [multilabel_metrics(y, (score >= t).astype(int), score)["OF1"] for t in GRID]
    assert value == pytest.approx(max(of1)) and value >= of1[list(GRID).index(0.5)]
    best_c, per_c, value_c = choose_thresholds(y, score, "CF1", per_class=True)
    assert len(per_c) == 5
    sets = (score >= np.array(per_c)).astype(int)
    assert value_c == pytest.approx(multilabel_metrics(y, sets, score)["CF1"])


@pytest.mark.parametrize("per_class", [False, True])
def test_calibration_scores_the_sets_the_exported_decoder_predicts(per_class):
    """BCE / ASL decode the top max_labels labels, then threshold: the calibration chooses
    on those same sets, so the threshold it keeps and the value it reports are those of the
    model's own decode (the exported graph), not of sets thresholded over all labels."""
    import keras

    from cnnrnn_tf.metrics import choose_thresholds, decoded_sets
    from cnnrnn_tf.metrics import multilabel_metrics
    from cnnrnn_tf.models import MultiLabelClassifier

    rng = np.random.RandomState(3)
    n, k, top = 400, 5, 2
    y = (rng.rand(n, k) < 0.45).astype(int)  # often 3+ true labels: the cut matters
    score = np.clip(0.35 * y + 0.6 * rng.rand(n, k), 0.01, 0.99).astype("float32")
    model = MultiLabelClassifier(keras.Sequential([keras.layers.Identity()]), k, max_labels=top)
    model.classifier.build((None, k))
    model.classifier.set_weights([np.eye(k, dtype="float32"), np.zeros(k, "float32")])
    features = np.log(score / (1 - score))  # logits, so the classifier's sigmoid gives score

    chosen = model.calibrate(y, score, "CF1" if per_class else "OF1", per_class=per_class)
    out = model.decode_features(features)
    probs = np.asarray(out["probabilities"])
    ids = np.asarray(out["label_ids"])
    exported = np.zeros((n, k), int)
    rows, cols = np.nonzero(ids >= 0)
    exported[rows, ids[rows, cols]] = 1
    assert (exported.sum(1) <= top).all()
    mine = decoded_sets(probs, model.threshold, model.class_thresholds, max_labels=top)
    np.testing.assert_array_equal(mine, exported)
    metric = "CF1" if per_class else "OF1"
    achieved = multilabel_metrics(y, exported, probs)[metric]
    assert chosen["validation_value"] == pytest.approx(achieved, abs=1e-6)
    # Thresholding all labels (no cut) claims a value the exported sets do not reach here.
    best, per, claimed = choose_thresholds(y, score, metric, per_class)
    uncut = decoded_sets(score, best, per, max_labels=top)
    assert claimed > multilabel_metrics(y, uncut, score)[metric] + 0.01
    assert achieved >= multilabel_metrics(y, uncut, score)[metric] - 1e-9
