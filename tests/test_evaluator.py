"""The ``mcmetrics`` evaluator of ``mlflow.models.evaluate`` against scikit-learn, for logged
scikit-learn and Keras classifiers and for predictions given as data."""

from __future__ import annotations

import json

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import (
    average_precision_score,
    balanced_accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    matthews_corrcoef,
    precision_recall_fscore_support,
    roc_auc_score,
)

pytestmark = pytest.mark.slow

NAMES = [f"digit {d}" for d in range(10)]


def load_json(run_id, path):
    return json.loads(mlflow.artifacts.load_text(f"runs:/{run_id}/{path}"))


def assert_matches_sklearn(run_id, metrics, names, y_true, y_pred, y_score=None, split="test"):
    """Every per-class value logged for ``split`` equals scikit-learn's on the same predictions."""
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=range(len(names)), average=None, zero_division=0
    )
    for index, name in enumerate(names):
        assert metrics[f"{split}_precision/{name}"] == pytest.approx(precision[index], abs=1e-12)
        assert metrics[f"{split}_recall/{name}"] == pytest.approx(recall[index], abs=1e-12)
        assert metrics[f"{split}_f1/{name}"] == pytest.approx(f1[index], abs=1e-12)
    macro = precision_recall_fscore_support(y_true, y_pred, average="macro", zero_division=0)[2]
    assert metrics[f"{split}_f1_macro"] == pytest.approx(macro, abs=1e-12)
    assert (
        load_json(run_id, f"mcmetrics/{split}/confusion_matrix.json")["matrix"]
        == confusion_matrix(y_true, y_pred, labels=range(len(names))).tolist()
    )
    for name, score in (
        ("balanced_accuracy", balanced_accuracy_score),
        ("mcc", matthews_corrcoef),
        ("cohen_kappa", cohen_kappa_score),
    ):
        assert metrics[f"{split}_{name}"] == pytest.approx(score(y_true, y_pred), abs=1e-12)
    if y_score is not None:
        curves = load_json(run_id, f"mcmetrics/{split}/pr_curves.json")["curves"]
        roc_curves = load_json(run_id, f"mcmetrics/{split}/roc_curves.json")["curves"]
        for index, name in enumerate(names):
            exact = average_precision_score(y_true == index, y_score[:, index])
            lower, upper = curves[name]["average_precision_bounds"]
            assert (
                lower - 1e-9 <= exact <= upper + 1e-9
            )  # the binned AP's tie interval holds sklearn's
            assert metrics[f"{split}_ap/{name}"] == pytest.approx(exact, abs=0.01)
            exact = roc_auc_score(y_true == index, y_score[:, index])
            lower, upper = roc_curves[name]["roc_auc_bounds"]
            assert lower - 1e-9 <= exact <= upper + 1e-9
            assert metrics[f"{split}_roc_auc/{name}"] == pytest.approx(exact, abs=0.01)


def test_scikit_learn_classifier(tracking, digits, tmp_path):
    client, _ = tracking
    x_train, y_train, x_test, y_test = digits
    # String classes: the score columns follow the model's classes_ (sorted names).
    columns = [f"pixel {i}" for i in range(64)]
    model = LogisticRegression(max_iter=300).fit(
        pd.DataFrame(x_train, columns=columns), np.array(NAMES)[y_train]
    )
    features = pd.DataFrame(x_test, columns=columns)
    data = features.assign(label=np.array(NAMES)[y_test])
    with mlflow.start_run() as run:
        info = mlflow.sklearn.log_model(model, name="model")
        result = mlflow.models.evaluate(
            info.model_uri, data, targets="label", model_type="classifier", evaluators=["mcmetrics"]
        )
    metrics = client.get_run(run.info.run_id).data.metrics
    assert result.metrics == {key: metrics[key] for key in result.metrics}
    names = list(model.classes_)
    y_pred = model.predict(features)
    assert_matches_sklearn(
        run.info.run_id,
        metrics,
        names,
        np.searchsorted(names, np.array(NAMES)[y_test]),
        np.searchsorted(names, y_pred),
        model.predict_proba(features),
    )
    labels = load_json(run.info.run_id, "mcmetrics/labels.json")["labels"]
    assert [entry["name"] for entry in labels] == names
    local = client.download_artifacts(run.info.run_id, "mcmetrics/test", str(tmp_path))
    for name in ("confusion_matrix.png", "pr_curves.png", "roc_curves.png", "calibration.png"):
        with Image.open(f"{local}/{name}") as image:
            assert image.format == "PNG"
    assert sorted(result.artifacts) == sorted(
        [
            "classification_report.json",
            "classification_report.md",
            "confusion_matrix.json",
            "per_class.json",
            "pr_curves.json",
            "roc_curves.json",
            "calibration.json",
            "confusion_matrix.png",
            "pr_curves.png",
            "roc_curves.png",
            "calibration.png",
        ]
    )


def test_keras_classifier_with_logits(tracking, digits):
    client, _ = tracking
    x_train, y_train, x_test, y_test = digits
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)]
    )
    model.compile(
        optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    model.fit(x_train, y_train, epochs=3, verbose=0)
    logits = model.predict(x_test, verbose=0)
    with mlflow.start_run() as run:
        info = mlflow.keras.log_model(model, name="model")
        mlflow.models.evaluate(
            info.model_uri,
            x_test,
            targets=y_test,
            model_type="classifier",
            evaluators=["mcmetrics"],
            evaluator_config={
                "mcmetrics": {"class_names": NAMES, "from_logits": True, "split": "holdout"}
            },
        )
    metrics = client.get_run(run.info.run_id).data.metrics
    probabilities = np.exp(logits - logits.max(1, keepdims=True))
    probabilities /= probabilities.sum(1, keepdims=True)
    assert_matches_sklearn(
        run.info.run_id, metrics, NAMES, y_test, logits.argmax(1), probabilities, split="holdout"
    )


def test_predictions_given_as_data_and_clear_errors(tracking, digits):
    client, _ = tracking
    _, _, _, y_test = digits
    rng = np.random.default_rng(0)
    y_pred = np.where(rng.random(len(y_test)) < 0.7, y_test, rng.integers(0, 10, len(y_test)))
    data = pd.DataFrame({"label": y_test, "prediction": y_pred})
    with mlflow.start_run() as run:
        mlflow.models.evaluate(
            data=data,
            targets="label",
            predictions="prediction",
            model_type="classifier",
            evaluators=["mcmetrics"],
            evaluator_config={"mcmetrics": {"class_names": NAMES}},
        )
    metrics = client.get_run(run.info.run_id).data.metrics
    assert_matches_sklearn(run.info.run_id, metrics, NAMES, y_test, y_pred)
    assert not any("_ap/" in key for key in metrics)  # labels only: no scores, no AP
    with (
        mlflow.start_run(),
        pytest.raises(ValueError, match="Unknown evaluator_config key.*'labels'"),
    ):
        mlflow.models.evaluate(
            data=data,
            targets="label",
            predictions="prediction",
            model_type="classifier",
            evaluators=["mcmetrics"],
            evaluator_config={"mcmetrics": {"labels": [0, 1]}},
        )
    with (
        mlflow.start_run(),
        pytest.raises(ValueError, match=r"label\(s\) \[9\] are not among the classes"),
    ):
        mlflow.models.evaluate(
            data=data,
            targets="label",
            predictions="prediction",
            model_type="classifier",
            evaluators=["mcmetrics"],
            evaluator_config={"mcmetrics": {"label_list": list(range(9))}},
        )
