"""The Keras callback: moves the metric state to the host once per epoch and logs it to MLflow."""

from __future__ import annotations

import time
import warnings
from collections import defaultdict
from collections.abc import Sequence

import keras
import mlflow
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mlflow_mcmetrics import functional
from mlflow_mcmetrics.metrics import ClassificationMetrics
from mlflow_mcmetrics.naming import class_key_components, metric_key

__all__ = ["MCMetricsCallback", "find_metric", "first_classification_metric"]

_AVERAGES = ("f1_macro", "f1_micro", "f1_weighted", "precision_macro", "recall_macro", "map")
_PER_CLASS = ("precision", "recall", "f1", "ap")
_SPLIT_PREFIXES = {"train": "", "val": "val_"}


def first_classification_metric(candidates) -> ClassificationMetrics | None:
    """The first :class:`ClassificationMetrics` among ``candidates`` or the metrics they hold."""
    pending = list(candidates)
    while pending:
        candidate = pending.pop(0)
        if isinstance(candidate, ClassificationMetrics):
            return candidate
        pending.extend(getattr(candidate, "metrics", None) or [])
    return None


def find_metric(model: keras.Model) -> ClassificationMetrics | None:
    """The first :class:`ClassificationMetrics` compiled into ``model`` (or tracked by it)."""
    candidates = list(model.metrics)
    compile_config = getattr(model, "_compile_config", None)
    if compile_config is not None:
        # Compiled metrics only appear in model.metrics after the first train/test step.
        config = compile_config.config
        candidates += keras.tree.flatten([config.get("metrics") or [], config.get("weighted_metrics") or []])
    return first_classification_metric(candidates)


def epoch_scores(
    state: functional.ClassificationState,
    metric: ClassificationMetrics,
    components: Sequence[str],
    prefix: str,
) -> dict[str, float]:
    """The SPEC's step metrics of one split, keyed ``{prefix}f1/{class}`` etc."""
    labels = metric.scored_labels
    scores = functional.classification_scores(
        state, labels=labels, zero_division=metric.zero_division
    )
    values = {metric_key(prefix, name): float(scores[name]) for name in _AVERAGES if name in scores}
    for name in _PER_CLASS:
        if name in scores:
            for position, label in enumerate(labels):
                values[metric_key(prefix, name, components[label])] = float(scores[name][position])
    return values


class MCMetricsCallback(keras.callbacks.Callback):
    """Logs a :class:`ClassificationMetrics` state to MLflow as step metrics, once per epoch.

    At the end of every epoch it reads the metric state (one device-to-host copy per split),
    computes per-class precision/recall/F1 (and AP with PR curves on) with
    :mod:`mlflow_mcmetrics.functional`, and logs them with ``step=epoch``: training values
    without prefix, validation values with ``val_``. The training state is read in
    ``on_test_begin``, before Keras resets the metrics for validation.

    Args:
        class_names: one name per class (default ``"0"`` .. ``"C-1"``).
        metric: the metric to read; by default the first ``ClassificationMetrics`` compiled
            into the model.
        log_train: log the training split too (validation is always logged when present).
        log_to_mlflow: ``False`` only fills :attr:`history`.
        skip_keras_logs: leave out keys that are in Keras' epoch ``logs`` (such as
            ``val_f1_macro``) because another callback, like MLflow's own autologging
            callback, logs those already.
        run_id: the run to log to; by default the active run, or a new one that this
            callback ends when training ends.

    Attributes:
        history: ``{key: [value per epoch]}`` of everything computed, logged or not.
        class_keys: the metric-key component of each class name.
    """

    def __init__(
        self,
        class_names: Sequence[str] | None = None,
        *,
        metric: ClassificationMetrics | None = None,
        log_train: bool = True,
        log_to_mlflow: bool = True,
        skip_keras_logs: bool = False,
        run_id: str | None = None,
    ):
        super().__init__()
        self.class_names = None if class_names is None else [str(n) for n in class_names]
        self.metric = metric
        self.log_train = log_train
        self.log_to_mlflow = log_to_mlflow
        self.skip_keras_logs = skip_keras_logs
        self.run_id = run_id
        self.history: dict[str, list[float]] = defaultdict(list)
        self.class_keys: list[str] = []
        self._client: MlflowClient | None = None
        self._run_id: str | None = None
        self._owned_run = None
        self._train_state: functional.ClassificationState | None = None
        self._validated = False

    # -- set-up ------------------------------------------------------------------------------
    def on_train_begin(self, logs=None):
        if self.metric is None:
            self.metric = find_metric(self.model)
        if self.metric is None:
            raise ValueError(
                "MCMetricsCallback found no ClassificationMetrics in the model: pass "
                "metrics=[mlflow_mcmetrics.ClassificationMetrics(num_classes)] to compile(), "
                "or call mlflow_mcmetrics.autolog() before compile()."
            )
        num_classes = self.metric.num_classes
        names = self.class_names or [str(index) for index in range(num_classes)]
        if len(names) != num_classes:
            raise ValueError(
                f"Got {len(names)} class names for a model with {num_classes} classes: pass one "
                f"name per class (binary models have 2 classes: negative, positive)."
            )
        self.class_names = names
        self.class_keys = class_key_components(names)
        if self.log_to_mlflow:
            self._start_logging()

    def _start_logging(self):
        self._client = MlflowClient()
        self._run_id = self.run_id
        if self._run_id is None:
            active = mlflow.active_run()
            if active is None:
                active = self._owned_run = mlflow.start_run()
            self._run_id = active.info.run_id
        metric = self.metric
        params = {
            "mcmetrics.task": metric.task,
            "mcmetrics.num_classes": metric.num_classes,
            "mcmetrics.from_logits": metric.from_logits,
            "mcmetrics.threshold": metric.threshold,
            "mcmetrics.ignore_class": metric.ignore_class,
            "mcmetrics.pr_thresholds": metric.pr_thresholds,
        }
        try:
            for key, value in params.items():
                self._client.log_param(self._run_id, key, value)
        except MlflowException as error:  # params are immutable: a second fit() into one run
            warnings.warn(f"mlflow_mcmetrics kept the run's earlier params: {error.message}", stacklevel=2)
        self._client.log_dict(
            self._run_id,
            {
                "labels": [
                    {"index": index, "name": name, "key": key}
                    for index, (name, key) in enumerate(zip(self.class_names, self.class_keys))
                ],
                "ignore_class": metric.ignore_class,
            },
            "mcmetrics/labels.json",
        )

    # -- per epoch ---------------------------------------------------------------------------
    def on_epoch_begin(self, epoch, logs=None):
        self._train_state = None
        self._validated = False

    def on_test_begin(self, logs=None):
        # fit() runs validation through evaluate(), which resets the metrics right after this
        # hook: the training state of the epoch must be read now.
        if self._train_state is None and self.log_train:
            self._train_state = self._read_state("train")
        self._validated = True

    def on_epoch_end(self, epoch, logs=None):
        values: dict[str, float] = {}
        if self.log_train:
            train_state = self._train_state if self._validated else self._read_state("train")
            values.update(epoch_scores(train_state, self.metric, self.class_keys, ""))
        if self._validated:
            values.update(epoch_scores(self._read_state("val"), self.metric, self.class_keys, "val_"))
        for key, value in values.items():
            self.history[key].append(value)
        if self.skip_keras_logs and logs:
            values = {key: value for key, value in values.items() if key not in logs}
        if self._client is not None:
            timestamp = int(time.time() * 1000)
            self._client.log_batch(
                self._run_id,
                metrics=[Metric(key, value, timestamp, epoch) for key, value in values.items()],
            )

    def _read_state(self, split: str) -> functional.ClassificationState:
        state, rejected = self.metric.state()
        invalid_labels, nonfinite = rejected
        if invalid_labels:
            warnings.warn(
                f"{invalid_labels:g} {split} samples had labels outside [0, "
                f"{self.metric.num_classes}) and were left out of the metrics: check the labels "
                "and the model's output width.",
                stacklevel=2,
            )
        if nonfinite:
            warnings.warn(
                f"{nonfinite:g} {split} predictions were NaN or infinite and were left out of "
                "the metrics: training has probably diverged.",
                stacklevel=2,
            )
        return state

    def on_train_end(self, logs=None):
        if self._owned_run is not None:
            mlflow.end_run()
            self._owned_run = None
