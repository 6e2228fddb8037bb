"""Unit tests of the label decoder, CNN-RNN, the baselines and the losses."""
import numpy as np
import keras
import pytest
import tensorflow as tf

from cnnrnn_tf.models.losses import AsymmetricLoss, sequence_crossentropy
from cnnrnn_tf.models import CNNRNN, LabelDecoder, MultiLabelClassifier
from cnnrnn_tf.vocabulary import END_ID, START_ID


def tiny_encoder(size=16, name="tiny_encoder"):
    inputs = keras.Input((size, size, 3), name="pixels")
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, x, name=name)


def random_images(n=3, size=16, seed=0):
    return np.random.RandomState(seed).uniform(0, 255, (n, size, size, 3)).astype("float32")


def test_decoder_config_round_trip_and_shapes():
    dec = LabelDecoder(7, embed_dim=8, lstm_units=12, dropout=0.2, mask_seen=False)
    clone = LabelDecoder.from_config(dec.get_config())
    assert clone.get_config() == dec.get_config()
    logits = dec(np.ones((2, 5), "float32"), np.array([[1, 3, 0], [1, 2, 4]]))
    assert logits.shape == (2, 3, 7)


def test_decoder_start_never_scored_and_seen_labels_masked():
    dec = LabelDecoder(6, embed_dim=4, lstm_units=8)
    logits = np.asarray(dec(np.ones((1, 3), "float32"), np.array([[START_ID, 3, 4, END_ID]])))
    assert (logits[0, :, START_ID] < -1e8).all()
    # label 3 was the input at step 1, so it is masked from step 1 on, not before.
    assert logits[0, 0, 3] > -1e8
    assert (logits[0, 1:, 3] < -1e8).all()
    assert (logits[0, 2:, 4] < -1e8).all()
    assert (logits[0, :, END_ID] > -1e8).all()


def test_decoder_step_matches_teacher_forcing():
    dec = LabelDecoder(7, embed_dim=8, lstm_units=16, mask_seen=False)
    feats = np.random.RandomState(0).rand(2, 5).astype("float32")
    tokens = np.array([[START_ID, 3, 4], [START_ID, 2, 6]])
    full = np.asarray(dec(feats, tokens))
    state = dec.initial_state(feats)
    for t in range(3):
        logits, state = dec.step(tokens[:, t], state)
        np.testing.assert_allclose(np.asarray(logits), full[:, t], rtol=1e-5, atol=1e-5)


def test_scores_are_tied_to_label_embeddings():
    dec = LabelDecoder(5, embed_dim=4, lstm_units=4, mask_seen=False)
    feats = np.ones((1, 3), "float32")
    before = np.asarray(dec(feats, np.array([[START_ID]])))
    table = dec.label_embedding.embeddings
    scale = np.ones((5, 1), "float32")
    scale[END_ID] = 2.0
    table.assign(table * scale)  # END's row doubles; END is never an input, so only its score moves
    after = np.asarray(dec(feats, np.array([[START_ID]])))
    np.testing.assert_allclose(after[0, 0, END_ID], 2 * before[0, 0, END_ID], rtol=1e-4)
    np.testing.assert_allclose(after[0, 0, 2:], before[0, 0, 2:], rtol=1e-5)


def make_cnn_rnn(num_labels=4, max_labels=3):
    model = CNNRNN(tiny_encoder(), num_labels, embed_dim=8, lstm_units=16,
                   max_labels=max_labels, beam_size=2)
    inputs = {"images": random_images(2), "label_inputs": np.array([[1, 2, 3, 0], [1, 4, 0, 0]])}
    model(inputs)
    return model, inputs


def assert_fit_lowers_the_loss(model, inputs):
    """Three epochs of fit on the two images of ``make_cnn_rnn`` lower the sequence loss."""
    model.compile(optimizer="rmsprop", loss=sequence_crossentropy())
    targets = np.array([[2, 3, 0, -1], [4, 0, -1, -1]])
    before = model.evaluate(inputs, targets, verbose=0)
    model.fit(inputs, targets, epochs=3, verbose=0)
    assert model.evaluate(inputs, targets, verbose=0) < before


def test_cnn_rnn_keras_round_trip_identical(tmp_path):
    model, inputs = make_cnn_rnn()
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(np.asarray(model(inputs)), np.asarray(loaded(inputs)))
    a, b = model.decode(inputs["images"]), loaded.decode(inputs["images"])
    for key in a:
        np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]))
    assert loaded.get_config()["max_labels"] == 3


def test_cnn_rnn_decode_outputs_and_one_fit_step():
    model, inputs = make_cnn_rnn(num_labels=4, max_labels=3)
    out = model.decode(inputs["images"], beam_size=3)
    ids = np.asarray(out["label_ids"])
    assert ids.shape == (2, 3) and ids.min() >= -1 and ids.max() < 4
    counts = np.asarray(out["label_count"])
    np.testing.assert_array_equal(counts, (ids >= 0).sum(1))
    probs = np.asarray(out["probabilities"])
    assert probs.shape == (2, 4) and (probs >= 0).all() and (probs <= 1).all()
    for row in ids:  # a set: no label twice
        kept = row[row >= 0]
        assert len(set(kept)) == len(kept)
    assert_fit_lowers_the_loss(model, inputs)


def test_sequence_loss_ignores_padding():
    loss = sequence_crossentropy()
    logits = np.zeros((1, 3, 4), "float32")
    logits[0, 2] = [0, 50, 0, 0]  # a terrible prediction on a padded step
    targets = np.array([[2, 0, -1]])
    assert float(loss(targets, logits)) == pytest.approx(np.log(4), rel=1e-5)


def test_multilabel_classifier_round_trip_and_threshold(tmp_path):
    model = MultiLabelClassifier(tiny_encoder(), 5, max_labels=3, threshold=0.5)
    images = random_images(2)
    model({"images": images})
    model.classifier.bias.assign([3.0, -3.0, 2.0, 1.0, 0.5])
    model.classifier.kernel.assign(np.zeros_like(model.classifier.kernel.numpy()))
    out = model.decode(images)
    # sigmoid(bias) = .95, .05, .88, .73, .62: top-3 above 0.5 in order 0, 2, 3
    np.testing.assert_array_equal(np.asarray(out["label_ids"]), [[0, 2, 3], [0, 2, 3]])
    np.testing.assert_array_equal(np.asarray(out["label_count"]), [3, 3])
    path = str(tmp_path / "b.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(np.asarray(loaded({"images": images})),
                                  np.asarray(model({"images": images})))


def test_asymmetric_loss_matches_hand_value_and_reduces_to_bce():
    y = np.array([[1.0, 0.0]], "float32")
    logits = np.array([[0.0, 2.0]], "float32")
    p = 1 / (1 + np.exp(-2.0))
    # gamma_neg=1, clip=0.1: pos term -log(0.5); neg term -(p-0.1)^1 * log(1-(p-0.1))
    expected = -np.log(0.5) - (p - 0.1) * np.log(1 - (p - 0.1))
    got = float(AsymmetricLoss(gamma_neg=1, gamma_pos=0, clip=0.1)(y, logits))
    assert got == pytest.approx(expected, rel=1e-5)
    plain = AsymmetricLoss(gamma_neg=0, gamma_pos=0, clip=0)(y, logits)
    bce = keras.losses.BinaryCrossentropy(from_logits=True)(y, logits) * 2  # sum vs mean
    assert float(plain) == pytest.approx(float(bce), rel=1e-5)
    clone = AsymmetricLoss.from_config(AsymmetricLoss(gamma_neg=2).get_config())
    assert clone.gamma_neg == 2


def test_mixed_precision_fit_and_decode():
    from cnnrnn_tf.training.devices import precision_policy

    with precision_policy(True):
        model, inputs = make_cnn_rnn()
        assert model.decoder.compute_dtype == "float16"
        model.compile(optimizer="rmsprop", loss=sequence_crossentropy())
        targets = np.array([[2, 3, 0, -1], [4, 0, -1, -1]])
        logits = model(inputs)
        assert logits.dtype == "float32"  # the softmax and the loss stay in float32
        model.fit(inputs, targets, epochs=1, verbose=0)
        out = model.decode(inputs["images"])
        assert np.isfinite(np.asarray(out["probabilities"])).all()
    assert keras.config.dtype_policy().name == "float32"


def test_aux_label_loss_uses_the_whole_label_set_in_fit_and_validation(tmp_path):
    model = CNNRNN(tiny_encoder(), 4, embed_dim=8, lstm_units=16, max_labels=1,
                   label_head="aux", aux_loss_weight=2.0)
    # max_labels=1 cuts the teacher-forcing path after the first label; the label set
    # (the aux loss's own target) keeps all of them.
    label_inputs = np.array([[START_ID, 2], [START_ID, 4]])
    label_set = np.array([[1, 0, 0, 1], [0, 0, 1, 0]], "float32")
    inputs = {"images": random_images(2), "label_inputs": label_inputs, "label_set": label_set}
    model(inputs)
    logits = np.random.RandomState(1).randn(2, 4).astype("float32")
    p = 1 / (1 + np.exp(-logits))
    expected = np.mean(-(label_set * np.log(p) + (1 - label_set) * np.log(1 - p)))
    assert float(model.label_set_loss(label_set, logits)) == pytest.approx(expected, rel=1e-5)

    # The fit loss and the validation loss are both the sequence loss plus 2 x the
    # label-set loss (0.2.0 left the auxiliary loss out of val_loss).
    targets = np.array([[2, 0], [4, 0]])
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=sequence_crossentropy())
    seq_only = {k: v for k, v in inputs.items() if k != "label_set"}
    seq = model.evaluate(seq_only, targets, verbose=0)
    features = model.encoder(inputs["images"])
    aux = float(model.label_set_loss(label_set, model.label_head(features)))
    val = model.evaluate(inputs, targets, verbose=0)
    assert val == pytest.approx(seq + 2.0 * aux, rel=1e-4)
    fit_loss = model.fit(inputs, targets, epochs=1, verbose=0).history["loss"][0]
    assert fit_loss == pytest.approx(seq + 2.0 * aux, rel=1e-4)

    path = str(tmp_path / "aux.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.aux_loss_weight == 2.0 and loaded.label_head_mode == "aux"
    np.testing.assert_array_equal(np.asarray(loaded(inputs)), np.asarray(model(inputs)))


def test_label_head_none_is_the_paper_model():
    model, _ = make_cnn_rnn()  # the constructor's default
    assert model.label_head_mode == "none" and model.label_head is None
    assert not any("label_head" in w.path for w in model.weights)
    with pytest.raises(ValueError, match="aux_loss_weight"):
        CNNRNN(tiny_encoder(), 4, label_head="aux", aux_loss_weight=-1.0)
    with pytest.raises(ValueError, match="label_head"):
        CNNRNN(tiny_encoder(), 4, label_head="yes")


def test_label_evidence_adds_the_label_heads_logits_at_every_step(tmp_path):
    model = CNNRNN(tiny_encoder(), 4, embed_dim=8, lstm_units=16, max_labels=3,
                   label_head="evidence")
    inputs = {"images": random_images(2), "label_inputs": np.array([[1, 2, 3, 0], [1, 4, 0, 0]])}
    model(inputs)
    before = np.asarray(model(inputs))
    bias = np.array([3.0, 0.0, -2.0, 1.0], "float32")
    model.label_head.bias.assign(model.label_head.bias + bias)
    after = np.asarray(model(inputs))
    live = before > -1e8  # START and labels already on the path stay masked
    expected = np.concatenate([[0.0, 0.0], bias])  # END, START: no evidence
    np.testing.assert_allclose(np.where(live, after - before, 0.0),
                               np.where(live, np.broadcast_to(expected, before.shape), 0.0),
                               atol=1e-4)
    # Step-by-step decoding (the beam search's step function) adds the same evidence.
    state = model.start_state(model.encoder(inputs["images"]))
    for t in range(4):
        logits, state = model.step(tf.constant(inputs["label_inputs"][:, t]), state)
        got = np.asarray(logits)
        np.testing.assert_allclose(np.where(live[:, t], got, 0.0),
                                   np.where(live[:, t], after[:, t], 0.0), rtol=1e-5, atol=1e-4)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.label_evidence
    np.testing.assert_array_equal(np.asarray(loaded(inputs)), after)
    for key, value in model.decode(inputs["images"]).items():
        np.testing.assert_array_equal(np.asarray(loaded.decode(inputs["images"])[key]),
                                      np.asarray(value))


def test_train_config_label_head_choices():
    from cnnrnn_tf.config import TrainConfig
    from cnnrnn_tf.errors import InputError

    assert TrainConfig().label_head == "evidence"
    with pytest.raises(InputError, match="--label-head"):
        TrainConfig(label_head="yes")
    with pytest.raises(InputError, match="--aux-loss-weight"):
        TrainConfig(aux_loss_weight=-1.0)


def test_classifier_thresholds_per_class_and_round_trip(tmp_path):
    from cnnrnn_tf.models import MultiLabelClassifier

    model = MultiLabelClassifier(tiny_encoder(), 4, max_labels=4, threshold=0.5)
    images = random_images(3)
    probs = np.asarray(keras.ops.sigmoid(model({"images": images})))
    model.class_thresholds = [0.0, 1.1, 0.0, 1.1]  # labels 0 and 2 always, 1 and 3 never
    out = model.decode(images)
    got = [sorted(int(i) for i in row if i >= 0) for row in np.asarray(out["label_ids"])]
    assert got == [[0, 2]] * 3, (got, probs)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.class_thresholds == model.class_thresholds
    np.testing.assert_array_equal(np.asarray(loaded.decode(images)["label_ids"]),
                                  np.asarray(out["label_ids"]))


# ---- the attention decoder (--decoder attention) -------------------------------------
def tiny_map_encoder(size=16, name="tiny_map_encoder"):
    """A feature-map encoder: [B, 16, 16, 3] -> [B, 4, 4, 6]."""
    inputs = keras.Input((size, size, 3), name="pixels")
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(6, 3, strides=4, padding="same", activation="relu")(x)
    return keras.Model(inputs, x, name=name)


def make_attention_cnn_rnn(num_labels=4, max_labels=3, label_head="evidence"):
    model = CNNRNN(tiny_map_encoder(), num_labels, embed_dim=8, lstm_units=16,
                   max_labels=max_labels, beam_size=2, decoder="attention", attention_dim=8,
                   label_head=label_head)
    inputs = {"images": random_images(2), "label_inputs": np.array([[1, 2, 3, 0], [1, 4, 0, 0]])}
    model(inputs)
    return model, inputs


def test_attention_decoder_config_round_trip_and_step_matches_teacher_forcing():
    from cnnrnn_tf.models import AttentionLabelDecoder

    dec = AttentionLabelDecoder(7, attention_dim=6, embed_dim=8, lstm_units=16, mask_seen=False)
    clone = AttentionLabelDecoder.from_config(dec.get_config())
    assert clone.get_config() == dec.get_config() and clone.attention_dim == 6
    feats = np.random.RandomState(0).rand(2, 3, 5, 4).astype("float32")  # a 3x5 grid
    tokens = np.array([[START_ID, 3, 4, 5], [START_ID, 2, 6, END_ID]])
    full = np.asarray(dec(feats, tokens))
    assert full.shape == (2, 4, 7)
    state = dec.initial_state(feats)
    for t in range(4):  # one step at a time (T = 1: the shape that once hit a oneDNN bug)
        logits, state = dec.step(tokens[:, t], state)
        np.testing.assert_allclose(np.asarray(logits), full[:, t], rtol=1e-5, atol=1e-5)
    maps = np.asarray(dec.attention_maps(feats, tokens))
    assert maps.shape == (2, 4, 3, 5)
    np.testing.assert_allclose(maps.sum(axis=(2, 3)), 1.0, rtol=1e-5)


def test_attention_decoder_looks_at_the_image():
    """The context comes from the attended cells: changing one cell's features changes the
    scores, and a map concentrated on one cell gives that cell's projected features."""
    from cnnrnn_tf.models import AttentionLabelDecoder

    keras.utils.set_random_seed(0)  # an unlucky initialisation moved the scores by < 1e-3
    dec = AttentionLabelDecoder(6, attention_dim=4, embed_dim=4, lstm_units=8, mask_seen=False)
    feats = np.random.RandomState(1).rand(1, 2, 2, 3).astype("float32")
    tokens = np.array([[START_ID, 3]])
    before = np.asarray(dec(feats, tokens))
    moved = feats.copy()
    moved[0, 1, 1] += 5.0
    assert np.abs(np.asarray(dec(moved, tokens)) - before).max() > 1e-3
    keys, values, _ = dec.memory(feats)
    outputs = np.zeros((1, 1, 8), "float32")
    context, attention = dec.attend(outputs, keys, values)
    np.testing.assert_allclose(np.asarray(context)[0, 0],
                               (np.asarray(attention)[0, 0, :, None] * np.asarray(values)[0]).sum(0),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("label_head", ["evidence", "none"])
def test_attention_cnn_rnn_round_trip_decode_and_fit(tmp_path, label_head):
    model, inputs = make_attention_cnn_rnn(label_head=label_head)
    assert model.attends and model.get_config()["decoder"] == "attention"
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(np.asarray(model(inputs)), np.asarray(loaded(inputs)))
    a, b = model.decode(inputs["images"]), loaded.decode(inputs["images"])
    for key in a:
        np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]))
    ids = np.asarray(a["label_ids"])
    maps = np.asarray(model.attention_maps(inputs["images"], ids))
    assert maps.shape == (2, 3, 4, 4)
    np.testing.assert_allclose(maps.sum(axis=(2, 3)), (ids >= 0).astype("float32"), atol=1e-5)
    np.testing.assert_array_equal(maps, np.asarray(loaded.attention_maps(inputs["images"], ids)))
    assert_fit_lowers_the_loss(model, inputs)


def test_label_head_on_a_feature_map_is_mean_plus_max_over_cells():
    model, inputs = make_attention_cnn_rnn()
    fmap = np.asarray(model.encoder(inputs["images"]))                   # [2, 4, 4, 6]
    kernel = np.asarray(model.label_head.kernel.value)
    bias = np.asarray(model.label_head.bias.value)
    cells = fmap.reshape(2, 16, 6) @ kernel + bias
    np.testing.assert_allclose(np.asarray(model.label_logits(fmap)),
                               cells.mean(1) + cells.max(1), rtol=1e-5, atol=1e-5)
    one = np.asarray(model.label_logits(fmap[:1]))  # batch 1: the shape of a serving call
    np.testing.assert_allclose(one[0], cells[0].mean(0) + cells[0].max(0), rtol=1e-5, atol=1e-5)


def test_attention_maps_need_the_attention_decoder():
    model, inputs = make_cnn_rnn()
    assert not model.attends
    with pytest.raises(ValueError, match="--decoder attention"):
        model.attention_maps(inputs["images"], np.zeros((2, 3), "int32"))
    from cnnrnn_tf.config import TrainConfig
    from cnnrnn_tf.errors import InputError

    with pytest.raises(InputError, match="--decoder"):
        TrainConfig(decoder="spatial")
    with pytest.raises(InputError, match="only --model cnn-rnn"):
        TrainConfig(model="bce", decoder="attention")


def test_random_frozen_backbone_is_refused_by_the_config():
    """weights="none" without fine_tune: a pretrained backbone would stay frozen at random
    weights. small-cnn always trains from scratch, so "none" is harmless there; a loaded
    model rebuilds its frozen encoder without the pretrained weights (pretrained=False)."""
    from cnnrnn_tf.config import TrainConfig
    from cnnrnn_tf.errors import InputError
    from cnnrnn_tf.models import build_model

    for backbone in ("vgg16", "resnet50", "efficientnet-lite0"):
        with pytest.raises(InputError, match="--no-pretrained-weights without --fine-tune"):
            TrainConfig(backbone=backbone, weights="none")
        with pytest.raises(InputError, match="--fine-tune"):
            TrainConfig(backbone=backbone).replace(weights="none")
        assert TrainConfig(backbone=backbone, weights="none", fine_tune=True).fine_tune
    assert TrainConfig(weights="none").backbone == "small-cnn"
    assert TrainConfig().weights == "default"
    frozen = TrainConfig(model="bce", backbone="efficientnet-lite0", image_size=32)
    model = build_model(frozen, 3, 2, pretrained=False)  # no weights file read
    assert not model.encoder.trainable_weights


def test_smoothed_sequence_crossentropy():
    """e = 0 is Keras' masked sparse cross-entropy (the mean over the batch's real steps);
    e > 0 spreads e over the tokens the step can emit only (masked logits get none, so the
    loss stays finite), and matches a hand-written soft-target cross-entropy with the same
    token mean: a tiny e changes the loss by no more than e does, whatever the lengths."""
    from cnnrnn_tf.models.losses import SmoothedSequenceCrossentropy
    from cnnrnn_tf.vocabulary import MASK_LOGIT

    rng = np.random.RandomState(0)
    logits = rng.randn(3, 4, 6).astype("float32")
    logits[:, :, START_ID] = MASK_LOGIT
    logits[0, 2:, 3] = MASK_LOGIT  # a label already on the path
    targets = np.array([[2, 4, 0, -1], [5, 0, -1, -1], [3, 2, 4, 0]])
    plain = float(sequence_crossentropy()(targets, logits))
    np.testing.assert_allclose(float(SmoothedSequenceCrossentropy(0.0)(targets, logits)),
                               plain, rtol=1e-6)
    # padded sequences of 3, 2 and 4 steps: the mean per sequence is 1.6% lower here
    assert abs(float(sequence_crossentropy(1e-7)(targets, logits)) - plain) < 1e-4
    weights = rng.rand(3, 4).astype("float32")  # per step, as Keras' masked mean takes them
    np.testing.assert_allclose(
        float(SmoothedSequenceCrossentropy(0.0)(targets, logits, sample_weight=weights)),
        float(sequence_crossentropy()(targets, logits, sample_weight=weights)), rtol=1e-6)
    e = 0.1
    loss = float(SmoothedSequenceCrossentropy(e)(targets, logits))
    want = []
    for b in range(3):
        for t in range(4):
            if targets[b, t] < 0:
                continue
            z = logits[b, t].astype(np.float64)
            allowed = z > MASK_LOGIT / 2
            logp = z - np.log(np.exp(z[allowed] - z[allowed].max()).sum()) - z[allowed].max()
            soft = np.zeros(6)
            others = allowed.copy()
            others[targets[b, t]] = False
            soft[others] = e / others.sum()
            soft[targets[b, t]] = 1 - e
            want.append(-(soft[allowed] * logp[allowed]).sum())
    np.testing.assert_allclose(loss, np.mean(want), rtol=1e-5)
    clone = SmoothedSequenceCrossentropy.from_config(SmoothedSequenceCrossentropy(e).get_config())
    assert clone.label_smoothing == e


def test_augmentation_crop_and_flip_are_seeded_and_keep_the_shape():
    from cnnrnn_tf.inputs.images import Augmentation, augment_image

    image = tf.constant(np.random.RandomState(0).uniform(0, 255, (20, 20, 3)), tf.float32)
    seed = tf.constant([3, 4], tf.int64)
    flip = Augmentation(hflip=True)
    outs = [augment_image(image, tf.constant([s, 1], tf.int64), flip).numpy() for s in range(8)]
    flipped = [np.allclose(o, image.numpy()[:, ::-1]) for o in outs]
    assert any(flipped) and not all(flipped)
    assert all(f or np.allclose(o, image.numpy()) for f, o in zip(flipped, outs))
    crop = Augmentation(crop_scale=0.3)
    a = augment_image(image, seed, crop).numpy()
    assert a.shape == (20, 20, 3) and not np.allclose(a, image.numpy())
    np.testing.assert_array_equal(a, augment_image(image, seed, crop).numpy())
    np.testing.assert_allclose(augment_image(image, seed, Augmentation(crop_scale=1.0)).numpy(),
                               image.numpy())
    assert not Augmentation().active and Augmentation(color=True).active
    with pytest.raises(ValueError, match="crop_scale"):
        Augmentation(crop_scale=1.5)


def test_attention_cnn_rnn_trains_with_pla():
    """PLA's free-running pass goes through start_state / step: the attention state too."""
    model = CNNRNN(tiny_map_encoder(), 4, embed_dim=8, lstm_units=16, max_labels=3,
                   beam_size=2, decoder="attention", attention_dim=8, alignment="pla",
                   label_head="aux")
    inputs = {"images": random_images(4), "label_inputs": np.array(
        [[1, 2, 3, 0], [1, 4, 0, 0], [1, 5, 2, 0], [1, 3, 0, 0]]),
        "label_set": np.array([[1, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 1], [0, 1, 0, 0]])}
    targets = np.array([[2, 3, 0, -1], [4, 0, -1, -1], [5, 2, 0, -1], [3, 0, -1, -1]])
    model(inputs)
    from cnnrnn_tf.models import orderless

    # One eager PLA pass (fit would XLA-compile the Hungarian step: minutes on 2 cores).
    logits, aligned, aux = orderless.forward(model, inputs, tf.constant(targets), training=True)
    assert logits.shape == (4, 4, 6) and np.isfinite(np.asarray(logits)).all()
    # the aligned targets hold each image's labels, re-ordered, END and padding in place
    for row, want in zip(np.asarray(aligned), targets):
        assert sorted(row[want >= 2]) == sorted(want[want >= 2])
        np.testing.assert_array_equal(row[want < 2], want[want < 2])
    assert float(aux) > 0
