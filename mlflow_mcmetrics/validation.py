"""The one home of every argument rule.

The functional API, the Keras metric, the callback, ``autolog()`` and the evaluator take the
same arguments; each of them calls :func:`check_arguments` with the ones it has, as
torchmetrics' functional and class forms share one ``_*_arg_validation``. Pure Python: no
NumPy, Keras or MLflow.

>>> check_arguments(task="multiclass", num_classes=10, threshold=0.5, zero_division=0.0)
>>> check_arguments(task="binary", num_classes=3)
Traceback (most recent call last):
    ...
ValueError: task='binary' has num_classes=2 (one sigmoid unit), got 3.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

__all__ = ["TASKS", "check_arguments"]

TASKS: tuple[str, ...] = ("multiclass", "binary", "multilabel")


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_integer(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _check_task(task: Any) -> None:
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; expected one of {TASKS}.")


def _check_task_or_auto(task: Any) -> None:
    if task != "auto" and task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; expected 'auto' or one of {TASKS}.")


def _check_threshold(threshold: Any) -> None:
    if not (_is_number(threshold) and 0.0 < threshold < 1.0):
        raise ValueError(f"threshold must be in (0, 1), got {threshold!r}.")


def _check_pr_thresholds(pr_thresholds: Any) -> None:
    if pr_thresholds == "auto":
        return
    if not (_is_integer(pr_thresholds) and pr_thresholds >= 0):
        raise ValueError(
            "pr_thresholds must be 'auto' (chosen from the number of classes) or >= 0 "
            f"(0 turns PR curves off), got {pr_thresholds!r}."
        )


def _check_confusion_matrix(confusion_matrix: Any) -> None:
    if not (confusion_matrix == "auto" or isinstance(confusion_matrix, bool)):
        raise ValueError(
            f"confusion_matrix must be True, False or 'auto', got {confusion_matrix!r}."
        )


def _check_zero_division(zero_division: Any) -> None:
    if not (
        _is_number(zero_division) and (zero_division in (0.0, 1.0) or math.isnan(zero_division))
    ):
        raise ValueError(
            f"zero_division must be 0.0, 1.0 or numpy.nan, got {zero_division!r} "
            "(scikit-learn's 'warn' is not supported: pick the value to report)."
        )


def _check_log_every_n_epochs(log_every_n_epochs: Any) -> None:
    if log_every_n_epochs == "auto":
        return
    if not (_is_integer(log_every_n_epochs) and log_every_n_epochs >= 1):
        raise ValueError(f"log_every_n_epochs must be >= 1 or 'auto', got {log_every_n_epochs!r}.")


_SINGLE_RULES = {
    "task": _check_task,
    "threshold": _check_threshold,
    "pr_thresholds": _check_pr_thresholds,
    "confusion_matrix": _check_confusion_matrix,
    "zero_division": _check_zero_division,
    "log_every_n_epochs": _check_log_every_n_epochs,
}


def check_arguments(*, allow_auto_task: bool = False, **arguments: Any) -> None:
    """Raise a ``ValueError`` naming the first argument that breaks its rule.

    Only the arguments passed are checked; rules that relate two arguments (``num_classes``
    and ``ignore_class`` against ``task``) apply when ``task`` is passed with them.

    Args:
        allow_auto_task: accept ``task="auto"`` (``autolog()`` decides it per model); the
            rules that need the task are then left to the metric it creates.
        task: one of :data:`TASKS`.
        num_classes: ``C`` >= 2 (exactly 2 for ``binary``; >= 1 for ``multilabel``).
        threshold: decision threshold of ``binary`` and ``multilabel`` tasks, in (0, 1).
        ignore_class: a class index of a ``multiclass`` or ``binary`` task, or None.
        pr_thresholds: score bins per class, >= 0, or ``"auto"`` (chosen from the number of
            classes by the Keras metric).
        confusion_matrix: ``True``, ``False`` or ``"auto"``.
        zero_division: 0.0, 1.0 or NaN.
        log_every_n_epochs: ``"auto"`` or an integer >= 1.
    """
    unknown = set(arguments) - set(_SINGLE_RULES) - {"num_classes", "ignore_class"}
    if unknown:
        raise TypeError(f"check_arguments() got unknown argument(s) {sorted(unknown)}.")
    for name, rule in _SINGLE_RULES.items():
        if name in arguments:
            (_check_task_or_auto if name == "task" and allow_auto_task else rule)(arguments[name])
    task = arguments.get("task")
    if task == "auto":
        return
    num_classes = arguments.get("num_classes")
    if task is not None and num_classes is not None:
        if not _is_integer(num_classes):
            raise ValueError(f"num_classes must be an integer, got {num_classes!r}.")
        if task == "binary" and num_classes != 2:
            raise ValueError(
                f"task='binary' has num_classes=2 (one sigmoid unit), got {num_classes}."
            )
        if num_classes < (1 if task == "multilabel" else 2):
            raise ValueError(
                f"num_classes must be at least 2 for task={task!r}, got {num_classes} "
                "(a single sigmoid unit is task='binary' with num_classes=2)."
            )
    ignore_class = arguments.get("ignore_class")
    if task is not None and ignore_class is not None:
        in_range = num_classes is None or 0 <= ignore_class < num_classes
        if task == "multilabel" or not _is_integer(ignore_class) or not in_range:
            raise ValueError(
                f"ignore_class must be a class index in [0, {num_classes}) for a multiclass or "
                f"binary task, got {ignore_class!r} with task={task!r}."
            )
