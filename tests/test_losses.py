"""Each loss against a NumPy reference formula; finite gradients; serialization."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops

from mlflow_mcmetrics import losses

RNG = np.random.default_rng(0)
COUNTS = np.array([200.0, 80.0, 30.0, 10.0])
C = len(COUNTS)
LABELS = RNG.integers(0, C, 64)
LOGITS = RNG.normal(0, 3, (64, C)).astype("float32")


def log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def reference(name, labels, logits):
    """Per-sample losses, written from the papers' formulas."""
    rows = np.arange(len(labels))
    prior = COUNTS / COUNTS.sum()
    if name == "cce":
        return -log_softmax(logits)[rows, labels]
    if name == "weighted_cce":
        w = COUNTS.sum() / (C * COUNTS)
        return -w[labels] * log_softmax(logits)[rows, labels]
    if name == "class_balanced":
        w = (1 - 0.99) / (1 - 0.99**COUNTS)
        w = w * C / w.sum()
        return -w[labels] * log_softmax(logits)[rows, labels]
    if name in ("logit_adjusted", "balanced_softmax"):
        return -log_softmax(logits + np.log(prior))[rows, labels]
    if name == "ldam":
        margins = 1 / COUNTS**0.25
        margins = margins * 0.5 / margins.max()
        shifted = logits.copy()
        shifted[rows, labels] -= margins[labels]
        return -log_softmax(shifted)[rows, labels]
    if name == "focal":
        p = np.exp(log_softmax(logits))[rows, labels]
        return -0.25 * (1 - p) ** 2 * np.log(p)
    raise AssertionError(name)


def keras_per_sample(loss, y_true, y_pred):
    return ops.convert_to_numpy(
        loss.call(ops.convert_to_tensor(y_true), ops.convert_to_tensor(y_pred))
    )


@pytest.mark.parametrize(
    "name",
    [
        "cce",
        "weighted_cce",
        "class_balanced",
        "logit_adjusted",
        "balanced_softmax",
        "ldam",
        "focal",
    ],
)
@pytest.mark.parametrize("labels", ["sparse", "one-hot"])
def test_multiclass_losses_match_reference(name, labels):
    loss = losses.get(name, COUNTS)
    y_true = LABELS if labels == "sparse" else np.eye(C, dtype="float32")[LABELS]
    per_sample = keras_per_sample(loss, y_true, LOGITS)
    np.testing.assert_allclose(
        per_sample.reshape(-1),
        reference(name, LABELS, LOGITS.astype("float64")),
        rtol=2e-5,
        atol=1e-5,
    )
    assert float(loss(y_true, LOGITS)) == pytest.approx(per_sample.mean(), rel=1e-5)


def test_class_balanced_differs_from_inverse_frequency_by_default():
    small = np.array([100.0, 20.0, 5.0])
    inverse = losses.inverse_frequency_weights(small)
    assert not np.allclose(losses.class_balanced_weights(small, 0.99) / inverse, 1.0, rtol=0.1)
    # The observation: beta = 0.999 under ~100 samples/class is nearly inverse frequency.
    np.testing.assert_allclose(
        losses.class_balanced_weights(small, 0.999) / (inverse * 3 / inverse.sum()), 1.0, rtol=0.06
    )


def test_ldam_deferred_reweighting_switches_weights_on():
    loss = losses.LDAMLoss(COUNTS, drw_start_epoch=2)
    before = keras_per_sample(loss, LABELS, LOGITS)
    callback = losses.DeferredReweighting(loss)
    callback.on_epoch_begin(1)
    np.testing.assert_allclose(keras_per_sample(loss, LABELS, LOGITS), before)
    callback.on_epoch_begin(2)
    weights = losses.class_balanced_weights(COUNTS, 0.9999)
    np.testing.assert_allclose(
        keras_per_sample(loss, LABELS, LOGITS), before * weights[LABELS], rtol=1e-5
    )


def test_weighted_bce_matches_reference():
    y = (RNG.random((50, 6)) < 0.2).astype("float32")
    z = RNG.normal(0, 4, (50, 6)).astype("float32")
    positives = y.sum(0) + 1
    loss = losses.get("weighted_bce", positives, num_samples=50)
    pos_weight = (50 - positives) / positives
    sig = 1 / (1 + np.exp(-z.astype("float64")))
    expected = -(pos_weight * y * np.log(sig) + (1 - y) * np.log(1 - sig)).mean(-1)
    np.testing.assert_allclose(keras_per_sample(loss, y, z), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", losses.LOSSES)
def test_gradients_are_finite_for_extreme_logits(name):
    import tensorflow as tf

    extreme = np.array(
        [[1e4, -1e4, 0.0, 50.0], [-1e4, 1e4, -1e4, 1e4], [0, 0, 0, 0]], dtype="float32"
    )
    if name == "weighted_bce":
        loss, y_true = (
            losses.get(name, [1.0, 2.0, 1.0, 3.0], num_samples=10),
            np.eye(4, dtype="float32")[[0, 1, 2]],
        )
    else:
        loss, y_true = losses.get(name, COUNTS), np.array([1, 0, 3])
    logits = tf.Variable(extreme)
    with tf.GradientTape() as tape:
        value = loss(y_true, logits)
    gradient = tape.gradient(value, logits)
    assert np.isfinite(float(value)) and np.all(np.isfinite(gradient.numpy()))


@pytest.mark.parametrize("name", losses.LOSSES)
def test_a_saved_model_reloads_with_its_loss(name, tmp_path):
    counts = COUNTS if name != "weighted_bce" else [3.0, 1.0, 2.0, 5.0]
    kwargs = {"num_samples": 20} if name == "weighted_bce" else {}
    loss = losses.get(name, counts, **kwargs)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(C)])
    model.compile(optimizer="adam", loss=loss)
    path = tmp_path / "model.keras"
    model.save(path)
    restored = keras.models.load_model(path)
    assert type(restored.loss) is type(loss)
    assert restored.loss.get_config() == loss.get_config()
    y_true = LABELS[:8] if name != "weighted_bce" else (RNG.random((8, C)) < 0.3).astype("float32")
    np.testing.assert_allclose(
        float(restored.loss(y_true, LOGITS[:8])), float(loss(y_true, LOGITS[:8])), rtol=1e-6
    )


def test_unknown_loss_lists_the_choices():
    with pytest.raises(
        ValueError, match="Unknown loss 'dice'; choose one of cce, weighted_cce, focal"
    ):
        losses.get("dice", COUNTS)
    with pytest.raises(ValueError, match="class_counts must be positive"):
        losses.get("weighted_cce", [3, 0, 1])
