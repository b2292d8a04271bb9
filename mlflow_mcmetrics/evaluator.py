"""``mlflow.models.evaluate(..., evaluators=["mcmetrics"])``: the per-class metrics and
artifacts of this package for any logged classifier, so that a model trained elsewhere (a
scikit-learn pipeline, a Keras model trained without this package) compares with the
MLproject's runs on the same terms::

    mlflow.models.evaluate(model_uri, data, targets="label", model_type="classifier",
                           evaluators=["mcmetrics"], evaluator_config={"class_names": names})

It logs ``test_precision/{class}``, ``test_recall/{class}``, ``test_f1/{class}``,
``test_ap/{class}``, ``test_roc_auc/{class}``, the averages and agreement scores
(``test_f1_macro``, ``test_balanced_accuracy``, ``test_mcc``, ``test_cohen_kappa``,
``test_ece`` ...) and, for a binary model, ``test_threshold/{class}`` — exactly the keys the
MLproject logs for its test split — and ``mcmetrics/test/`` (confusion matrix, PR and ROC
curves, reliability curves as JSON and PNG, the classification report, binary:
``thresholds.json``) plus ``mcmetrics/labels.json``. The model is asked for class scores
where it has them (``predict_proba`` of a scikit-learn classifier, a Keras model's softmax
or sigmoid output), so the curve-based scores come with it; a model that only returns labels
gets precision, recall, F1 and the agreement scores only.

Registered under the entry point group ``mlflow.model_evaluator`` as ``mcmetrics``. Keras and
TensorFlow are not imported here.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence

import mlflow
import numpy as np
from mlflow.entities import Metric
from mlflow.models.evaluation.artifacts import (
    ImageEvaluationArtifact,
    JsonEvaluationArtifact,
    TextEvaluationArtifact,
)
from mlflow.models.evaluation.base import EvaluationResult, ModelEvaluator
from scipy.special import expit, softmax

from mlflow_mcmetrics import artifacts, functional, plots, report
from mlflow_mcmetrics.naming import class_key_components
from mlflow_mcmetrics.validation import check_arguments

__all__ = ["EvaluatorConfig", "MCMetricsEvaluator"]


@dataclasses.dataclass(frozen=True)
class EvaluatorConfig:
    """``evaluator_config`` of the ``mcmetrics`` evaluator.

    Attributes:
        label_list: the classes, in the order of the model's score columns (MLflow's name for
            it). Default: a scikit-learn model's ``classes_``, else ``0 .. C-1`` for C score
            columns, else the sorted labels seen in targets and predictions.
        class_names: display names, one per class (default: the labels as text).
        split: names the split: metric prefix ``{split}_`` and artifact folder
            ``mcmetrics/{split}/``. Default ``"test"``, as the MLproject's held-out split.
        from_logits: the model's scores are logits (softmax / sigmoid applied here).
        threshold: decision threshold for a model with one sigmoid output.
        pr_thresholds: score bins of the PR curves (0 for none), as the Keras metric.
        zero_division: the value of an undefined ratio, as scikit-learn's.
    """

    label_list: Sequence | None = None
    class_names: Sequence[str] | None = None
    split: str = "test"
    from_logits: bool = False
    threshold: float = 0.5
    pr_thresholds: int = functional.DEFAULT_PR_THRESHOLDS
    zero_division: float = 0.0

    def __post_init__(self):
        check_arguments(
            threshold=self.threshold,
            pr_thresholds=self.pr_thresholds,
            zero_division=self.zero_division,
        )

    @classmethod
    def from_dict(cls, config: dict | None) -> EvaluatorConfig:
        config = dict(config or {})
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ValueError(
                f"Unknown evaluator_config key(s) {unknown} for the mcmetrics evaluator; valid "
                f"keys: {sorted(known)}."
            )
        return cls(**config)


@dataclasses.dataclass
class _Predictions:
    """What the model gave for one dataset, with the task it implies."""

    task: str  # "multiclass" or "binary"
    scores: np.ndarray | None  # (N, C) class scores, (N,) positive-class scores, or None
    labels: np.ndarray | None  # (N,) predicted labels when there are no scores
    label_list: list | None  # the classes of the score columns, when the model knows them


class MCMetricsEvaluator(ModelEvaluator):
    """The ``mcmetrics`` model evaluator (see the module docstring)."""

    name = "mcmetrics"

    @classmethod
    def can_evaluate(cls, *, model_type, evaluator_config, **kwargs) -> bool:
        return model_type == "classifier"

    def evaluate(
        self,
        *,
        model_type,
        dataset,
        run_id,
        evaluator_config,
        model=None,
        predictions=None,
        **kwargs,
    ):
        config = EvaluatorConfig.from_dict(evaluator_config)
        if dataset.labels_data is None:
            raise ValueError(
                "The mcmetrics evaluator needs the true labels: pass targets= to "
                "mlflow.models.evaluate()."
            )
        y_true = np.asarray(dataset.labels_data).reshape(-1)
        predicted = _predict(model, dataset, predictions)
        label_list = _label_list(config, predicted, y_true)
        class_names = [str(name) for name in (config.class_names or label_list)]
        if len(class_names) != len(label_list):
            raise ValueError(
                f"Got {len(class_names)} class_names for {len(label_list)} classes {label_list}."
            )
        state = _state(config, predicted, _class_indices(y_true, label_list, "target"), label_list)
        labels = list(range(len(label_list)))
        scores = functional.classification_scores(
            state, labels=labels, zero_division=config.zero_division, task=predicted.task
        )
        class_keys = class_key_components(class_names)
        values = report.metric_values(scores, labels, class_keys, f"{config.split}_")

        client = mlflow.MlflowClient()
        timestamp = int(time.time() * 1000)
        client.log_batch(
            run_id, metrics=[Metric(key, value, timestamp, 0) for key, value in values.items()]
        )
        return EvaluationResult(
            metrics=values,
            artifacts=_log_artifacts(
                client, run_id, config, state, scores, class_names, class_keys
            ),
            run_id=run_id,
        )


def _predict(model, dataset, output_column: str | None) -> _Predictions:
    if model is None:
        output, label_list = dataset.predictions_data, None
    else:
        raw_model = _raw_model(model)
        if hasattr(raw_model, "predict_proba") and hasattr(raw_model, "classes_"):
            output, label_list = (
                raw_model.predict_proba(dataset.features_data),
                list(raw_model.classes_),
            )
        else:
            output, label_list = model.predict(dataset.features_data), None
    if hasattr(output, "columns") and output_column is not None:
        output = output[output_column]
    output = np.asarray(output)
    if output.ndim == 2 and output.shape[1] == 1:
        output = output[:, 0]
    if output.ndim == 2:
        return _Predictions("multiclass", output.astype(np.float64), None, label_list)
    if output.ndim == 1 and output.dtype.kind == "f" and np.any(output != np.round(output)):
        return _Predictions("binary", output.astype(np.float64), None, label_list)
    if output.ndim == 1:
        return _Predictions("multiclass", None, output, label_list)
    raise ValueError(
        f"Unsupported model output of shape {output.shape}: expected (N,), (N, 1) or (N, C)."
    )


def _raw_model(model):
    try:
        return model.get_raw_model()
    except (AttributeError, NotImplementedError):
        return None


def _label_list(config: EvaluatorConfig, predicted: _Predictions, y_true: np.ndarray) -> list:
    if config.label_list is not None:
        label_list = list(config.label_list)
    elif predicted.label_list is not None:
        label_list = predicted.label_list
    elif predicted.task == "binary":
        label_list = [0, 1]
    elif predicted.scores is not None:
        label_list = list(range(predicted.scores.shape[1]))
    else:
        label_list = np.unique(np.concatenate([y_true, predicted.labels])).tolist()
    if (
        predicted.scores is not None
        and predicted.task == "multiclass"
        and len(label_list) != predicted.scores.shape[1]
    ):
        raise ValueError(
            f"The model gives {predicted.scores.shape[1]} score columns for {len(label_list)} "
            f"classes {label_list}: "
            "pass evaluator_config={'label_list': [...]} with one class per column."
        )
    return label_list


def _class_indices(values: np.ndarray, label_list: list, what: str) -> np.ndarray:
    positions = {label: index for index, label in enumerate(label_list)}
    unknown = sorted({value for value in values.tolist() if value not in positions}, key=str)
    if unknown:
        raise ValueError(
            f"{what} label(s) {unknown[:10]} are not among the classes {label_list}: pass "
            "evaluator_config={'label_list': [...]} with every class."
        )
    return np.array([positions[value] for value in values.tolist()], dtype=np.int64)


def _state(config: EvaluatorConfig, predicted: _Predictions, y_true: np.ndarray, label_list: list):
    scores = predicted.scores
    if scores is None:  # labels only: a one-hot "score" gives the same argmax, no PR curves
        scores = np.eye(len(label_list))[_class_indices(predicted.labels, label_list, "predicted")]
        return functional.state_from_predictions(y_true, scores, task="multiclass", num_bins=0)
    if config.from_logits:
        scores = expit(scores) if predicted.task == "binary" else softmax(scores, axis=1)
    if np.any((scores < 0) | (scores > 1)):
        raise ValueError(
            "The model's scores are not probabilities (some lie outside [0, 1]): if it outputs "
            "logits, pass "
            "evaluator_config={'from_logits': True}."
        )
    return functional.state_from_predictions(
        y_true,
        scores,
        task=predicted.task,
        threshold=config.threshold,
        num_bins=config.pr_thresholds,
    )


def _log_artifacts(client, run_id, config, state, scores, class_names, class_keys) -> dict:
    """``mcmetrics/labels.json`` and ``mcmetrics/{split}/...`` (the files of
    :mod:`mlflow_mcmetrics.artifacts`, as the training path writes them); returns the
    EvaluationResult's artifacts, keyed by file name."""
    folder = f"{report.ARTIFACT_DIR}/{config.split}"
    artifact_uri = client.get_run(run_id).info.artifact_uri
    labels = list(range(len(class_names)))
    options = dict(split=config.split, epoch=None)
    texts = {
        **artifacts.split_files(state, scores, class_names, labels, **options),
        **artifacts.report_files(
            state, scores, class_names, labels, zero_division=config.zero_division, **options
        ),
    }
    client.log_text(
        run_id,
        json.dumps(report.labels_payload(class_names, class_keys), indent=2),
        f"{report.ARTIFACT_DIR}/labels.json",
    )
    logged = {}
    for file_name, text in texts.items():
        client.log_text(run_id, text, f"{folder}/{file_name}")
        artifact_class = (
            JsonEvaluationArtifact if file_name.endswith(".json") else TextEvaluationArtifact
        )
        logged[file_name] = artifact_class(uri=f"{artifact_uri}/{folder}/{file_name}")
    figures = plots.plot_state(
        state, scores, class_names, labels, zero_division=config.zero_division, title=config.split
    )
    if state.score_histogram is not None:
        figures.update(
            plots.plot_roc_and_calibration(state, scores, class_names, labels, title=config.split)
        )
    for stem, figure in figures.items():
        client.log_figure(run_id, figure, f"{folder}/{stem}.png")
        logged[f"{stem}.png"] = ImageEvaluationArtifact(uri=f"{artifact_uri}/{folder}/{stem}.png")
    return logged
