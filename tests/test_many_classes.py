"""Many classes (issue 29): the key budget, the per-class tables and the per-class history."""

from __future__ import annotations

import keras
import mlflow
import numpy as np
import pytest
from sklearn import metrics as skm
from test_training import dense_model, per_class_table, run_id_of_last_fit

import mlflow_mcmetrics
from mlflow_mcmetrics import functional, report
from mlflow_mcmetrics.instrument import MetricsHolder

pytestmark = pytest.mark.slow


def fit_classes(num_classes, per_class=3, epochs=1, **autolog_arguments):
    """A fit on ``per_class`` random rows of each class (validation: the same rows)."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(num_classes), per_class)
    x = rng.normal(size=(len(y), 8)).astype("float32")
    mlflow_mcmetrics.autolog(**autolog_arguments)
    model = dense_model(8, num_classes, "softmax")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    batch = max(256, len(y) // 4)
    model.fit(x, y, validation_data=(x, y), epochs=epochs, batch_size=batch, verbose=0)
    return model, x, y, run_id_of_last_fit()


def summary_keys(metrics: dict, prefix: str) -> set[str]:
    return {f"{prefix}{name}" for name in report.SPLIT_SCORES if f"{prefix}{name}" in metrics}


@pytest.mark.parametrize("num_classes", [10, 100, 1000, 10_000])
def test_keys_per_epoch_follow_the_budget(tracking, num_classes):
    """Per-class precision, recall and F1 for every class up to 100 classes, none beyond:
    at most ~150 step-metric keys per epoch whatever C; the summaries at any C."""
    client, _ = tracking
    _, _, _, run_id = fit_classes(num_classes, per_class=2 if num_classes > 1000 else 3)
    metrics = client.get_run(run_id).data.metrics
    expected = set()
    for prefix in ("", "val_"):
        summaries = summary_keys(metrics, prefix)
        # Every summary the SPEC lists, the long-tail groups and the spread included.
        assert {f"{prefix}{name}" for name in ("f1_macro", "map", "gmean", "f1_few")} <= summaries
        assert len(summaries) == len(report.SPLIT_SCORES)
        expected |= summaries
        if num_classes <= report.KEYED_CLASSES_MAX:
            expected |= {
                f"{prefix}{family}/{c}"
                for family in ("precision", "recall", "f1")
                for c in range(num_classes)
            }
    assert set(metrics) == expected
    if num_classes > report.KEYED_CLASSES_MAX:
        assert len(metrics) <= 150


def test_class_keys_all_and_a_watch_list(tracking):
    client, _ = tracking
    _, _, _, run_id = fit_classes(200, class_keys="all", pr_thresholds=64)
    metrics = client.get_run(run_id).data.metrics
    for family in ("precision", "recall", "f1", "ap", "roc_auc"):
        assert sum(key.startswith(f"val_{family}/") for key in metrics) == 200, family
    names = [f"species {c}" for c in range(200)]
    with pytest.warns(mlflow_mcmetrics.MCMetricsWarning, match="no class named 'nessie'"):
        _, _, _, run_id = fit_classes(
            200, class_names=names, class_keys=["species 7", "species 199", "nessie"]
        )
    per_class = {k for k in client.get_run(run_id).data.metrics if "/" in k}
    assert per_class == {
        f"{prefix}{family}/species {c}"
        for prefix in ("", "val_")
        for family in ("precision", "recall", "f1")
        for c in (7, 199)
    }


class KeepStates(keras.callbacks.Callback):
    """The validation state of each epoch, read as the logging callback reads it."""

    def __init__(self):
        super().__init__()
        self.states = []

    def on_test_end(self, logs=None):
        (holder,) = [m for m in self.model.metrics if isinstance(m, MetricsHolder)]
        self.states.append(holder.metrics[0].state()[0])


def test_tables_and_history_hold_every_per_class_value(tracking):
    """The per-class table of each artifact epoch and the Parquet history equal
    functional.classification_scores of the same state, and scikit-learn at the last epoch."""
    rng = np.random.default_rng(1)
    num_classes = 150
    y = rng.integers(0, num_classes, 1500)
    x = rng.normal(size=(1500, 8)).astype("float32") + y[:, None] * 0.01
    mlflow_mcmetrics.autolog(log_every_n_epochs=1, pr_thresholds=256)
    model = dense_model(8, num_classes, "softmax")
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy")
    keep = KeepStates()
    model.fit(
        x[:1000],
        y[:1000],
        validation_data=(x[1000:], y[1000:]),
        epochs=2,
        verbose=0,
        callbacks=[keep],
    )
    run_id = run_id_of_last_fit()
    history = mlflow_mcmetrics.per_class_history(run_id)
    assert len(history) == 2 * 2 * num_classes  # epochs x splits x classes
    labels = list(range(num_classes))
    for epoch, state in enumerate(keep.states):
        scores = functional.classification_scores(state, labels=labels)
        table = per_class_table(run_id, epoch, "val")
        rows = history[(history.epoch == epoch) & (history.split == "val")]
        for name in ("precision", "recall", "f1", "support", "ap", "roc_auc"):
            logged = [table[str(c)][name] for c in labels]
            logged = np.array([np.nan if value is None else value for value in logged])
            np.testing.assert_allclose(logged, scores[name], rtol=0, atol=0, equal_nan=True)
            np.testing.assert_array_equal(rows[name].to_numpy(dtype=float), logged)
    predicted = model.predict(x[1000:], verbose=0).argmax(1)
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y[1000:], predicted, labels=labels, zero_division=0
    )
    last = per_class_table(run_id, 1, "val")
    for name, expected in (("precision", precision), ("recall", recall), ("f1", f1)):
        np.testing.assert_allclose([last[str(c)][name] for c in labels], expected, atol=1e-12)
    np.testing.assert_array_equal([last[str(c)]["support"] for c in labels], support)
    tag = mlflow.MlflowClient().get_run(run_id).data.tags["mlflow.loggedArtifacts"]
    assert '"mcmetrics/epochs/0001/val_per_class.json", "type": "table"' in tag


@pytest.mark.parametrize("given_counts", [False, True])
def test_class_counts_win_over_a_resampled_training_stream(tracking, given_counts):
    """Issue 30: oversampled to balance, the training split's support says every class is
    many-shot; the data's true counts (class_counts=) give the long tail back. The group
    scores equal scikit-learn's on the group's classes."""
    client, _ = tracking
    rng = np.random.default_rng(2)
    true_counts = np.array([300, 150, 120, 40, 12, 6])
    y = np.repeat(np.arange(6), true_counts)
    x = rng.normal(size=(len(y), 8)).astype("float32") + y[:, None] * 0.5
    resampled = np.concatenate([rng.choice(np.flatnonzero(y == c), 300) for c in range(6)])
    y_val = np.repeat(np.arange(6), 30)
    x_val = rng.normal(size=(len(y_val), 8)).astype("float32") + y_val[:, None] * 0.5
    extra = {"class_counts": true_counts.tolist()} if given_counts else {}
    mlflow_mcmetrics.autolog(**extra)
    model = dense_model(8, 6, "softmax")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x[resampled], y[resampled], validation_data=(x_val, y_val), epochs=2, verbose=0)
    run = client.get_run(run_id_of_last_fit())
    sizes = run.data.params["mcmetrics.shot_group_sizes"]
    if not given_counts:  # 300 samples of each class: thirds of the classes
        assert sizes == "many 2, medium 2, few 2"
        assert "thirds" in run.data.params["mcmetrics.shot_groups"]
        return
    assert sizes == "many 3, medium 1, few 2"
    assert "many > 100" in run.data.params["mcmetrics.shot_groups"]
    predicted = model.predict(x_val, verbose=0).argmax(1)
    for group, classes in (("many", [0, 1, 2]), ("medium", [3]), ("few", [4, 5])):
        for score in ("recall", "f1"):
            expected = getattr(skm, f"{score}_score")(
                y_val, predicted, labels=classes, average="macro", zero_division=0
            )
            assert run.data.metrics[f"val_{score}_{group}"] == pytest.approx(expected, abs=1e-9)
