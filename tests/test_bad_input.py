"""Bad input gets an error that names the problem and the fix (SPEC section 5)."""

from __future__ import annotations

import warnings

import keras
import mlflow
import numpy as np
import pytest
from sklearn import metrics as skm

import mlflow_mcmetrics
from mlflow_mcmetrics import ClassificationMetrics, datasets, functional, losses


def wrong_width():
    ClassificationMetrics(3).update_state(np.zeros(4), np.zeros((4, 5), "float32"))


def npz_without_validation(tmp_path):
    path = tmp_path / "data.npz"
    np.savez(path, x_train=np.zeros((4, 8, 8, 1)), y_train=np.zeros(4))
    datasets.load(f"npz:{path}")


# (what the user did, exception type, words the message must contain)
BAD_INPUTS = [
    (lambda _: ClassificationMetrics(3, task="multi"), ValueError, "Unknown task 'multi'"),
    (lambda _: ClassificationMetrics(1), ValueError, "a single sigmoid unit is task='binary'"),
    (
        lambda _: ClassificationMetrics(3, task="binary"),
        ValueError,
        "task='binary' has num_classes=2",
    ),
    (
        lambda _: ClassificationMetrics(3, threshold=1.0),
        ValueError,
        r"threshold must be in \(0, 1\)",
    ),
    (
        lambda _: ClassificationMetrics(3, threshold=0.0),
        ValueError,
        r"threshold must be in \(0, 1\)",
    ),
    (lambda _: ClassificationMetrics(3, pr_thresholds=-1), ValueError, "0 turns PR curves off"),
    (
        lambda _: ClassificationMetrics(3, ignore_class=3),
        ValueError,
        r"ignore_class must be a class index in \[0, 3\)",
    ),
    (
        lambda _: ClassificationMetrics(3, task="multilabel", ignore_class=0),
        ValueError,
        "for a multiclass or binary task",
    ),
    (
        lambda _: ClassificationMetrics(3, zero_division="warn"),
        ValueError,
        "zero_division must be 0.0, 1.0 or numpy.nan",
    ),
    (
        lambda _: wrong_width(),
        ValueError,
        r"expects predictions whose last axis is 3, got shape \(4, 5\)",
    ),
    (
        lambda _: mlflow_mcmetrics.autolog(task="multi-label"),
        ValueError,
        "expected 'auto' or one of",
    ),
    (
        lambda _: mlflow_mcmetrics.autolog(threshold=2),
        ValueError,
        r"threshold must be in \(0, 1\), got 2",
    ),
    (
        lambda _: mlflow_mcmetrics.autolog(pr_thresholds=-5),
        ValueError,
        "pr_thresholds must be .auto. .* or >= 0",
    ),
    (
        lambda _: mlflow_mcmetrics.autolog(log_every_n_epochs=0),
        ValueError,
        "log_every_n_epochs must be >= 1",
    ),
    (
        lambda _: functional.precision_recall_f1_from_confusion_matrix(np.eye(2), average="binary"),
        ValueError,
        "average must be None",
    ),
    (
        lambda _: functional.precision_recall_f1_from_confusion_matrix(np.eye(2), labels=[5]),
        ValueError,
        r"labels must be class indices in \[0, 2\)",
    ),
    (
        lambda _: functional.state_from_predictions([0, 3], np.eye(3)[:2]),
        ValueError,
        r"Labels must be in \[0, 3\)",
    ),
    (lambda _: losses.get("dice", [3, 2]), ValueError, "choose one of cce, weighted_cce, focal"),
    (lambda _: losses.get("weighted_cce", [3, 0]), ValueError, "class_counts must be positive"),
    (
        lambda _: losses.class_balanced_weights([3, 2], beta=1.0),
        ValueError,
        r"beta must be in \[0, 1\)",
    ),
    (
        lambda _: datasets.load("imagenet"),
        ValueError,
        "choose one of digits, fashion_mnist, cifar10, npz:PATH",
    ),
    (lambda _: datasets.load("npz:/no/such/file.npz"), FileNotFoundError, "no such file"),
    (npz_without_validation, ValueError, "needs x_train, y_train, x_val, y_val"),
]


@pytest.mark.parametrize(
    "make_error, error_type, words", BAD_INPUTS, ids=[w[:40] for _, _, w in BAD_INPUTS]
)
def test_bad_input_is_named(make_error, error_type, words, tmp_path):
    assert len(BAD_INPUTS) >= 15
    with pytest.raises(error_type, match=words):
        make_error(tmp_path)


def small_model(loss="sparse_categorical_crossentropy"):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer="adam", loss=loss)
    return model


@pytest.mark.slow
def test_class_name_count_is_checked_before_training(tracking, digits):
    """The explicit callback raises; under autolog() the same names only warn (test_training)."""
    x, y, _, _ = digits
    model = small_model()
    model.compile(
        optimizer="adam",
        loss="sparse_categorical_crossentropy",
        metrics=[mlflow_mcmetrics.ClassificationMetrics(10)],
    )
    weights = [w.copy() for w in model.get_weights()]
    with pytest.raises(
        ValueError, match="Got 2 class names for a model with 10 classes: pass one name per class"
    ):
        model.fit(
            x, y, epochs=1, verbose=0, callbacks=[mlflow_mcmetrics.MCMetricsCallback(["a", "b"])]
        )
    for before, after in zip(weights, model.get_weights(), strict=True):
        np.testing.assert_array_equal(before, after)  # nothing was trained


@pytest.mark.slow
def test_invalid_labels_and_nan_predictions_are_reported_and_left_out(tracking, digits):
    client, _ = tracking
    x, y, xv, yv = digits
    bad_val = yv.copy()
    bad_val[:7] = 12  # outside [0, 10): a padding id the loss skips, but the metric must not count
    mlflow_mcmetrics.autolog()
    model = small_model(keras.losses.SparseCategoricalCrossentropy(ignore_class=12))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, validation_data=(xv, bad_val), epochs=2, batch_size=128, verbose=0)
    messages = [str(w.message) for w in caught]
    assert any("7 val samples had labels outside [0, 10)" in m for m in messages)
    run_id = mlflow.last_active_run().info.run_id
    predicted = model.predict(xv, verbose=0).argmax(1)
    expected = skm.f1_score(yv[7:], predicted[7:], average="macro", zero_division=0)
    assert client.get_run(run_id).data.metrics["val_f1_macro"] == pytest.approx(expected, abs=1e-6)
    assert [m.step for m in client.get_metric_history(run_id, "val_f1/3")] == [0, 1]

    metric = ClassificationMetrics(3)
    predictions = np.eye(3, dtype="float32")[[0, 1, 2, 0]]
    predictions[1] = np.nan
    metric.update_state(np.array([0, 1, 2, 0]), predictions)
    state, rejected = metric.state()
    assert (
        rejected.tolist() == [0.0, 1.0] and state.confusion_matrix.sum() == 3
    )  # NaN never counts as class 0


@pytest.mark.slow
def test_an_empty_validation_split_is_reported_not_logged_as_scores(tracking, digits):
    client, _ = tracking
    x, y, xv, yv = digits
    mlflow_mcmetrics.autolog()
    model = small_model()
    with pytest.warns(UserWarning, match="counted no val samples in epoch 0, so nothing is logged"):
        model.fit(x, y, validation_data=(xv[:0], yv[:0]), epochs=2, batch_size=128, verbose=0)
    metrics = client.get_run(mlflow.last_active_run().info.run_id).data.metrics
    assert not [key for key in metrics if key.startswith("val_") and key != "val_loss"]
    assert [
        m.step for m in client.get_metric_history(mlflow.last_active_run().info.run_id, "f1/3")
    ] == [0, 1]
