"""--ema: the averaged weights are validated, selected and saved with BatchNorm statistics
recomputed for them, not with the raw network's."""
import keras
import numpy as np
import pytest

from cnnrnn_tf.config import TrainConfig

TINY_EMA = dict(model="bce", image_size=32, batch_size=16, epochs=2, threshold=0.5, ema=True,
                learning_rate=3e-3, lr_schedule="constant")


class RawStatistics(keras.callbacks.Callback):
    """After each validation (SwapEMAWeights and EMABatchNorm have put the raw weights and
    statistics back by then), the raw network's BatchNorm statistics and first kernel."""

    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_test_end(self, logs=None):
        layers = _batch_norms(self.model.encoder)
        self.epochs.append({"stats": [v.numpy() for layer in layers
                                      for v in (layer.moving_mean, layer.moving_variance)],
                            "kernel": self.model.trainable_variables[0].numpy()})


def _batch_norms(model):
    return [layer for layer in model._flatten_layers(include_self=False)
            if isinstance(layer, keras.layers.BatchNormalization)]


def _statistics_of(model, batches, num_batches):
    """Each BatchNorm layer's inputs under the model's weights, in training mode (earlier
    layers normalise with their batch statistics), averaged over the batches: the mean of
    the batch means and of the batch variances, from the layer's inputs directly."""
    encoder = model.encoder
    layers = _batch_norms(encoder)
    probes = keras.Model(encoder.input, [layer.input for layer in layers])
    sums, count = None, 0
    for inputs, _ in batches.take(num_batches):
        stats = []
        for x in probes(inputs["images"], training=True):
            x = np.asarray(x, np.float64)
            stats += [x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))]
        sums = stats if sums is None else [a + b for a, b in zip(sums, stats)]
        count += 1
    return [s / count for s in sums]


@pytest.mark.slow
def test_ema_model_is_saved_with_its_own_batch_norm_statistics(tiny_data, tmp_path):
    from cnnrnn_tf.training.ema_batch_norm import BN_BATCHES
    from cnnrnn_tf.model_dir import load_model_dir
    from cnnrnn_tf.training.callbacks import ema_batch_norm_batches
    from cnnrnn_tf.training.loop import train
    from cnnrnn_tf.training.plan import plan_training

    config = TrainConfig(**TINY_EMA)
    raw = RawStatistics()
    out = str(tmp_path / "m")
    train(config, str(tiny_data / "train"), str(tiny_data / "test"), out, verbose=0,
          export=False, evaluate_after=False, extra_callbacks=[raw])
    assert len(raw.epochs) == 2
    model = load_model_dir(out).model
    layers = _batch_norms(model.encoder)
    assert len(layers) >= 2 and len(_batch_norms(model)) == len(layers) and all(layer.trainable for layer in layers)
    saved = [v.numpy() for layer in layers for v in (layer.moving_mean, layer.moving_variance)]
    plan = plan_training(config, str(tiny_data / "train"), str(tiny_data / "test"))
    expected = _statistics_of(model, ema_batch_norm_batches(
        config, plan, str(tiny_data / "train"), model), BN_BATCHES)
    for got, want in zip(saved, expected):
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-5)
    # ... and they are not the raw network's of any epoch, nor are its weights.
    for epoch in raw.epochs:
        assert max(float(np.max(np.abs(a - b))) for a, b in zip(saved, epoch["stats"])) > 1e-3
        assert not np.allclose(model.trainable_variables[0].numpy(), epoch["kernel"])
