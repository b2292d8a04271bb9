"""Real Keras training logged to a real MLflow server: what lands in the run equals
scikit-learn on the model's own predictions."""

from __future__ import annotations

import warnings

import keras
import mlflow
import numpy as np
import pytest
import tensorflow as tf
from _inputs import ece_reference
from sklearn import metrics as skm

import mlflow_mcmetrics
from mlflow_mcmetrics import ClassificationMetrics, MCMetricsCallback, MCMetricsWarning, datasets

pytestmark = pytest.mark.slow

AVERAGES = ("f1_macro", "f1_micro", "f1_weighted", "precision_macro", "recall_macro")


def expected_scores(y_true, y_pred, labels, prefix):
    """The SPEC's keys computed by scikit-learn."""
    precision, recall, f1, _ = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    values = {}
    for index, label in enumerate(labels):
        values[f"{prefix}precision/{label}"] = precision[index]
        values[f"{prefix}recall/{label}"] = recall[index]
        values[f"{prefix}f1/{label}"] = f1[index]
    for average in ("macro", "micro", "weighted"):
        values[f"{prefix}f1_{average}"] = skm.f1_score(
            y_true, y_pred, labels=labels, average=average, zero_division=0
        )
    values[f"{prefix}precision_macro"] = skm.precision_score(
        y_true, y_pred, labels=labels, average="macro", zero_division=0
    )
    values[f"{prefix}recall_macro"] = skm.recall_score(
        y_true, y_pred, labels=labels, average="macro", zero_division=0
    )
    return values


def assert_logged(client, run_id, expected, num_epochs):
    metrics = client.get_run(run_id).data.metrics
    for key, value in expected.items():
        assert metrics[key] == pytest.approx(value, abs=1e-6), key
    for key in ("val_f1_macro", next(k for k in expected if "/" in k)):
        history = client.get_metric_history(run_id, key)
        assert [m.step for m in history] == list(range(num_epochs)), key


def per_class_table(run_id: str, epoch: int, split: str) -> dict[str, dict]:
    """The per-class table an artifact epoch logged (MLflow's table JSON), by class name."""
    table = mlflow.artifacts.load_dict(
        f"runs:/{run_id}/mcmetrics/epochs/{epoch:04d}/{split}_per_class.json"
    )
    return {row[0]: dict(zip(table["columns"], row, strict=True)) for row in table["data"]}


def assert_curve_scores_logged(client, run_id, y_true, y_score, task, last_epoch, names=None):
    """The last epoch's ``val_`` scores beyond precision/recall/F1 against scikit-learn on
    ``model.predict(x_val)`` (``y_score``: probabilities, ``(N, C)``; binary ``(N,)``):
    confusion-matrix scores exact, ROC AUC inside its logged tie interval, ECE to 0.005, and
    the F1 at each logged threshold equal to scikit-learn's F1 of ``score >= threshold``."""
    metrics = client.get_run(run_id).data.metrics
    folder = f"runs:/{run_id}/mcmetrics/epochs/{last_epoch:04d}"
    if task == "binary":
        y_score = np.stack([1 - y_score, y_score], axis=1)
    num_classes = y_score.shape[1]
    names = names or [str(c) for c in range(num_classes)]
    if task == "multilabel":
        positives = y_true.astype(bool)
    else:
        positives = y_true[:, None] == np.arange(num_classes)
        y_pred = y_score.argmax(1) if task == "multiclass" else (y_score[:, 1] > 0.5).astype(int)
        for key, score in (
            ("balanced_accuracy", skm.balanced_accuracy_score),
            ("mcc", skm.matthews_corrcoef),
            ("cohen_kappa", skm.cohen_kappa_score),
        ):
            assert metrics[f"val_{key}"] == pytest.approx(score(y_true, y_pred), abs=1e-9), key
        assert metrics["val_ece"] == pytest.approx(
            ece_reference(y_true, y_score, np.ones(len(y_true))), abs=0.005
        )
    curves = mlflow.artifacts.load_dict(f"{folder}/val_roc_curves.json")["curves"]
    table = per_class_table(run_id, last_epoch, "val")
    for c, name in enumerate(names):
        exact = skm.roc_auc_score(positives[:, c], y_score[:, c])
        lower, upper = curves[name]["roc_auc_bounds"]
        assert lower - 1e-9 <= exact <= upper + 1e-9, name
        assert lower <= table[name]["roc_auc"] <= upper == curves[name]["roc_auc_bounds"][1]
    if task != "multiclass":
        thresholds = mlflow.artifacts.load_dict(f"runs:/{run_id}/mcmetrics/thresholds.json")
        assert thresholds["split"] == "val" and thresholds["epoch"] == last_epoch
        threshold_classes = [1] if task == "binary" else range(num_classes)
        assert list(thresholds["thresholds"]) == [names[c] for c in threshold_classes]
        for c in threshold_classes:
            threshold = thresholds["thresholds"][names[c]]
            assert metrics[f"val_threshold/{names[c]}"] == threshold
            f1 = skm.f1_score(positives[:, c], y_score[:, c] >= threshold)
            assert metrics[f"val_f1_at_threshold/{names[c]}"] == pytest.approx(f1, abs=1e-9)


def dense_model(inputs, outputs, activation, hidden=16):
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((inputs,)),
            keras.layers.Dense(hidden, activation="relu"),
            keras.layers.Dense(outputs, activation=activation),
        ]
    )


def run_id_of_last_fit():
    return mlflow.last_active_run().info.run_id


# --------------------------------------------------------------------------------------------
# Every task, validated against scikit-learn on model.predict(x_val)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["sparse", "one-hot", "logits"])
def test_multiclass(tracking, digits, layout):
    client, _ = tracking
    x, y, xv, yv = digits
    mlflow_mcmetrics.autolog()
    if layout == "logits":
        model = dense_model(64, 10, None)
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    else:
        model = dense_model(64, 10, "softmax")
        loss = (
            "sparse_categorical_crossentropy" if layout == "sparse" else "categorical_crossentropy"
        )
    targets, val_targets = (np.eye(10)[y], np.eye(10)[yv]) if layout == "one-hot" else (y, yv)
    model.compile(optimizer="adam", loss=loss, metrics=["accuracy"])
    model.fit(x, targets, validation_data=(xv, val_targets), epochs=3, batch_size=128, verbose=0)

    run_id = run_id_of_last_fit()
    scores = model.predict(xv, verbose=0)
    predicted = scores.argmax(-1)
    assert_logged(client, run_id, expected_scores(yv, predicted, list(range(10)), "val_"), 3)
    if layout == "logits":
        scores = keras.ops.convert_to_numpy(keras.ops.softmax(scores))
    assert_curve_scores_logged(client, run_id, yv, scores, "multiclass", 2)
    params = client.get_run(run_id).data.params
    assert params["mcmetrics.task"] == "multiclass"
    assert params["mcmetrics.from_logits"] == str(layout == "logits")
    labels = mlflow.artifacts.load_dict(f"runs:/{run_id}/mcmetrics/labels.json")
    assert [entry["key"] for entry in labels["labels"]] == [str(i) for i in range(10)]


def test_binary_one_sigmoid_unit(tracking, digits):
    client, _ = tracking
    x, y, xv, yv = digits
    y, yv = (y < 3).astype("float32"), (yv < 3).astype("float32")
    mlflow_mcmetrics.autolog(class_names=["rest", "low digit"], threshold=0.5)
    model = dense_model(64, 1, "sigmoid")
    model.compile(optimizer="adam", loss="binary_crossentropy")
    model.fit(x, y, validation_data=(xv, yv), epochs=2, batch_size=128, verbose=0)

    probability = model.predict(xv, verbose=0)[:, 0]
    predicted = (probability > 0.5).astype(int)
    expected = expected_scores(yv, predicted, [0, 1], "val_")
    expected = {
        k.replace("/0", "/rest").replace("/1", "/low digit"): v for k, v in expected.items()
    }
    run_id = run_id_of_last_fit()
    assert_logged(client, run_id, expected, 2)
    assert_curve_scores_logged(
        client, run_id, yv.astype(int), probability, "binary", 1, names=["rest", "low digit"]
    )
    assert client.get_run(run_id).data.params["mcmetrics.task"] == "binary"


def test_multilabel_with_logits(tracking):
    """Seed 004: 30 sparse labels, weighted-BCE-style logits model."""
    client, _ = tracking
    features, labels = datasets.sparse_multilabel(num_samples=1500, num_labels=30)
    x, y, xv, yv = features[:1000], labels[:1000], features[1000:], labels[1000:]
    mlflow_mcmetrics.autolog()
    model = dense_model(30, 30, None, hidden=32)
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=keras.losses.BinaryCrossentropy(from_logits=True),
    )
    model.fit(x, y, validation_data=(xv, yv), epochs=3, batch_size=100, verbose=0)

    logits = model.predict(xv, verbose=0)
    predicted = (logits > 0).astype(int)  # sigmoid(z) > 0.5
    expected = expected_scores(yv, predicted, list(range(30)), "val_")
    run_id = run_id_of_last_fit()
    assert_logged(client, run_id, expected, 3)
    probabilities = keras.ops.convert_to_numpy(keras.ops.sigmoid(logits))
    assert_curve_scores_logged(client, run_id, yv, probabilities, "multilabel", 2)
    assert client.get_run(run_id).data.params["mcmetrics.task"] == "multilabel"


def test_padded_sequence_tagger_with_mask_and_ignore_class(tracking):
    """Seed 001: LSTM tagger on zero-padded sequences; class 0 is padding."""
    client, _ = tracking
    num_tags, vocab, length = 6, 40, 12
    tokens, tags = datasets.padded_sequences(
        700, num_tags=num_tags, vocabulary=vocab, max_length=length, seed=1
    )
    x, y, xv, yv = tokens[:500], tags[:500], tokens[500:], tags[500:]

    mlflow_mcmetrics.autolog(ignore_class=0)
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((length,)),
            keras.layers.Embedding(vocab, 16, mask_zero=True),
            keras.layers.LSTM(16, return_sequences=True),
            keras.layers.Dense(num_tags, activation="softmax"),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    model.fit(x, y, validation_data=(xv, yv), epochs=2, batch_size=50, verbose=0)

    predicted = model.predict(xv, verbose=0).argmax(-1)
    real = yv != 0
    expected = expected_scores(yv[real], predicted[real], list(range(1, num_tags)), "val_")
    run_id = run_id_of_last_fit()
    assert_logged(client, run_id, expected, 2)
    logged = client.get_run(run_id).data.metrics
    assert not any(key.endswith("/0") for key in logged)


# --------------------------------------------------------------------------------------------
# Training split, XLA, MirroredStrategy
# --------------------------------------------------------------------------------------------


def test_training_split_with_learning_rate_zero(tracking, digits):
    client, _ = tracking
    x, y, xv, yv = digits
    mlflow_mcmetrics.autolog()
    model = dense_model(64, 10, "softmax")
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate=0.0), loss="sparse_categorical_crossentropy"
    )
    with mlflow.start_run() as run:
        model.fit(x, y, validation_data=(xv, yv), epochs=2, batch_size=100, verbose=0)
    expected = expected_scores(y, model.predict(x, verbose=0).argmax(-1), list(range(10)), "")
    assert_logged(client, run.info.run_id, expected, 2)


def test_jit_compile_gives_the_same_values(tracking, digits):
    client, _ = tracking
    x, y, xv, yv = digits
    mlflow_mcmetrics.autolog()
    model = dense_model(64, 10, "softmax")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", jit_compile=True)
    model.fit(x, y, validation_data=(xv, yv), epochs=2, batch_size=128, verbose=0)
    predicted = model.predict(xv, verbose=0).argmax(-1)
    assert_logged(
        client, run_id_of_last_fit(), expected_scores(yv, predicted, list(range(10)), "val_"), 2
    )


def test_mirrored_strategy_on_two_cpus(tracking, digits):
    client, _ = tracking
    x, y, xv, yv = digits
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    mlflow_mcmetrics.autolog()
    with strategy.scope():
        model = dense_model(64, 10, "softmax")
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x, y, validation_data=(xv, yv), epochs=2, batch_size=128, verbose=0)

    run_id = run_id_of_last_fit()
    # The last validation pass, summed over replicas: every sample counted once.
    logged = mlflow.artifacts.load_dict(
        f"runs:/{run_id}/mcmetrics/epochs/0001/val_confusion_matrix.json"
    )
    assert np.sum(logged["matrix"]) == len(yv)
    predicted = model.predict(xv, verbose=0).argmax(-1)
    np.testing.assert_array_equal(logged["matrix"], skm.confusion_matrix(yv, predicted))
    assert_logged(client, run_id, expected_scores(yv, predicted, list(range(10)), "val_"), 2)


# --------------------------------------------------------------------------------------------
# autolog(): before/after compile, together with MLflow's own autologging
# --------------------------------------------------------------------------------------------


def test_autolog_after_compile_and_user_arguments_untouched(tracking, digits):
    client, _ = tracking
    x, y, xv, yv = digits
    model = dense_model(64, 10, "softmax")
    user_metrics, user_callbacks = ["accuracy"], [keras.callbacks.TerminateOnNaN()]
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=user_metrics)
    mlflow_mcmetrics.autolog()
    history = model.fit(
        x,
        y,
        validation_data=(xv, yv),
        epochs=2,
        batch_size=128,
        verbose=0,
        callbacks=user_callbacks,
    )
    assert user_metrics == ["accuracy"] and len(user_callbacks) == 1
    assert "val_f1_macro" in history.history and "val_accuracy" in history.history
    predicted = model.predict(xv, verbose=0).argmax(-1)
    assert_logged(
        client, run_id_of_last_fit(), expected_scores(yv, predicted, list(range(10)), "val_"), 2
    )


def test_disable_undoes_the_patches(tracking, digits):
    x, y, xv, yv = digits
    mlflow_mcmetrics.autolog()
    mlflow_mcmetrics.autolog(disable=True)
    model = dense_model(64, 10, "softmax")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    history = model.fit(x, y, epochs=1, batch_size=256, verbose=0)
    assert list(history.history) == ["loss"]


def test_early_stopping_on_val_f1_macro(tracking, digits):
    x, y, xv, yv = digits
    mlflow_mcmetrics.autolog()
    model = dense_model(64, 10, "softmax")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    stopper = keras.callbacks.EarlyStopping(monitor="val_f1_macro", mode="max", patience=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(
            x, y, validation_data=(xv, yv), epochs=3, batch_size=128, verbose=0, callbacks=[stopper]
        )
    assert not [w for w in caught if "val_f1_macro" in str(w.message)]  # "... not available"
    assert 0.0 < stopper.best <= 1.0


# --------------------------------------------------------------------------------------------
# The callback and the metric used by hand; 1000 classes
# --------------------------------------------------------------------------------------------


def test_manual_metric_and_callback_in_a_user_run(tracking, digits):
    client, _ = tracking
    x, y, xv, yv = digits
    names = [f"digit {i}" for i in range(10)]
    model = dense_model(64, 10, "softmax")
    model.compile(
        optimizer="adam",
        loss="sparse_categorical_crossentropy",
        metrics=[ClassificationMetrics(10, pr_thresholds=0)],
    )
    callback = MCMetricsCallback(class_names=names)
    with mlflow.start_run() as run:
        model.fit(
            x,
            y,
            validation_data=(xv, yv),
            epochs=2,
            batch_size=128,
            verbose=0,
            callbacks=[callback],
        )
    predicted = model.predict(xv, verbose=0).argmax(-1)
    expected = expected_scores(yv, predicted, list(range(10)), "val_")
    expected = {k.replace("/", "/digit ") if "/" in k else k: v for k, v in expected.items()}
    assert_logged(client, run.info.run_id, expected, 2)
    assert len(callback.history["val_f1/digit 3"]) == 2
    assert "val_map" not in client.get_run(run.info.run_id).data.metrics


def test_class_names_that_do_not_fit_warn_and_training_goes_on(tracking, digits):
    """Issue 27 item 5: under autolog() a naming mismatch never stops fit()."""
    client, _ = tracking
    x, y, _, _ = digits
    mlflow_mcmetrics.autolog(class_names=["a", "b"])
    model = dense_model(64, 10, "softmax")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    with pytest.warns(MCMetricsWarning, match="2 class names for a model with 10 classes"):
        model.fit(x, y, epochs=1, verbose=0)
    metrics = client.get_run(run_id_of_last_fit()).data.metrics
    assert {f"f1/{digit}" for digit in range(10)} <= set(metrics)
