"""Exact epoch-level per-class classification metrics for Keras, logged to MLflow.

``import mlflow_mcmetrics`` is cheap: Keras, TensorFlow and MLflow are imported on first use
of the names that need them, so :mod:`mlflow_mcmetrics.functional` works without them.

``from mlflow_mcmetrics import ClassificationMetrics`` (and ``import mlflow_mcmetrics.losses``)
registers those classes with Keras' serialization, so that a model compiled with them loads
with ``keras.models.load_model`` without ``custom_objects``. A bare ``import mlflow_mcmetrics``
registers nothing: ``mlflow.tensorflow`` pickles Keras' whole registry into every model it logs,
and a model trained under ``autolog()`` alone must load where this package is not installed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_LAZY = {
    "autolog": "mlflow_mcmetrics.autologging",
    "ClassificationMetrics": "mlflow_mcmetrics.metrics",
    "MCMetricsCallback": "mlflow_mcmetrics.callback",
    "MCMetricsWarning": "mlflow_mcmetrics.events",
    "flush": "mlflow_mcmetrics.sender",
    "per_class_history": "mlflow_mcmetrics.logger",
}

__all__ = [*_LAZY, "functional", "__version__"]

if TYPE_CHECKING:
    from mlflow_mcmetrics.autologging import autolog as autolog
    from mlflow_mcmetrics.callback import MCMetricsCallback as MCMetricsCallback
    from mlflow_mcmetrics.events import MCMetricsWarning as MCMetricsWarning
    from mlflow_mcmetrics.logger import per_class_history as per_class_history
    from mlflow_mcmetrics.metrics import ClassificationMetrics as ClassificationMetrics
    from mlflow_mcmetrics.sender import flush as flush


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        if name == "ClassificationMetrics":
            module.register_with_keras()
        value = getattr(module, name)
        globals()[name] = value
        return value
    if name == "functional":
        return importlib.import_module("mlflow_mcmetrics.functional")
    raise AttributeError(f"module 'mlflow_mcmetrics' has no attribute {name!r}")
