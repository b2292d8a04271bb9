"""Exact epoch-level per-class classification metrics for Keras, logged to MLflow.

``import mlflow_mcmetrics`` is cheap: Keras, TensorFlow and MLflow are imported on first use
of the names that need them, so :mod:`mlflow_mcmetrics.functional` works without them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_LAZY = {
    "autolog": "mlflow_mcmetrics.autologging",
    "ClassificationMetrics": "mlflow_mcmetrics.metrics",
    "MCMetricsCallback": "mlflow_mcmetrics.callback",
}

__all__ = [*_LAZY, "functional", "__version__"]

if TYPE_CHECKING:
    from mlflow_mcmetrics.autologging import autolog
    from mlflow_mcmetrics.callback import MCMetricsCallback
    from mlflow_mcmetrics.metrics import ClassificationMetrics


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name == "functional":
        return importlib.import_module("mlflow_mcmetrics.functional")
    raise AttributeError(f"module 'mlflow_mcmetrics' has no attribute {name!r}")
