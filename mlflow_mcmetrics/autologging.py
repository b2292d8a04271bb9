"""``mlflow_mcmetrics.autolog()``: per-class metrics for every ``fit()``, like ``mlflow.keras.autolog``.

Two patches, both through MLflow's ``safe_patch`` (so ``disable=True``, ``silent`` and
``exclusive`` behave as in MLflow's own integrations):

* ``keras.Model.compile`` adds a :class:`ClassificationMetrics` to the compiled metrics (a
  copy of the user's list; the list itself is left alone).
* ``keras.callbacks.CallbackList.__init__``, when ``fit()`` builds its callback list, adds an
  :class:`MCMetricsCallback`. A model compiled before ``autolog()`` gets the metric here, by
  recompiling with its own compile arguments (the optimizer object, and so its state, is kept).

Why not patch ``keras.Model.fit``: ``mlflow.keras.autolog`` (and ``mlflow.tensorflow``)
patch it, and gorilla patches of one attribute do not stack: each stores the unpatched
original and the last one applied wins, so the other integration would silently stop
logging. ``CallbackList`` is built inside the original ``fit`` whoever patched it, so both
integrations stay active in either order, and MLflow's managed run is already active when
our callback starts.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from collections.abc import Sequence

import keras
from mlflow.utils.autologging_utils import (
    autologging_integration,
    get_autologging_config,
    safe_patch,
)

from mlflow_mcmetrics.callback import MCMetricsCallback, find_metric, first_classification_metric
from mlflow_mcmetrics.functional import TASKS
from mlflow_mcmetrics.metrics import DEFAULT_PR_THRESHOLDS, ClassificationMetrics

__all__ = ["INTEGRATION_NAME", "autolog", "infer_task"]

INTEGRATION_NAME = "mlflow_mcmetrics"

_BINARY_LOSSES = {"binary_crossentropy", "bce", "binary_focal_crossentropy", "weighted_binary_crossentropy"}


def _config(key: str):
    return get_autologging_config(INTEGRATION_NAME, key)


def _loss_name_and_logits(loss) -> tuple[str, bool | None]:
    """The snake_case name of a compiled loss and its ``from_logits``, where it says."""
    if isinstance(loss, str):
        return loss, None
    if isinstance(loss, keras.losses.Loss):
        # Keras' built-in losses wrap a function (BinaryCrossentropy.fn = binary_crossentropy).
        name = getattr(getattr(loss, "fn", None), "__name__", None) or loss.name
        return name, loss.get_config().get("from_logits")
    return getattr(loss, "__name__", ""), None


def _output_activation(model: keras.Model) -> str | None:
    layer = model.layers[-1] if model.layers else None
    activation = getattr(layer, "activation", None)
    return getattr(activation, "__name__", None)


def infer_task(model: keras.Model, loss, task: str = "auto", from_logits="auto"):
    """``(task, num_classes, from_logits)`` from the output layer and the compiled loss.

    Explicit ``task``/``from_logits`` win. One output unit is ``binary`` (2 classes); a
    binary cross-entropy loss over several units is ``multilabel``; anything else with
    several units is ``multiclass``. ``from_logits`` follows the output activation (softmax
    or sigmoid: probabilities; linear: logits), else the loss's own ``from_logits``.

    Returns ``None`` when the model's output is not known yet (an unbuilt model).
    """
    outputs = getattr(model, "outputs", None) if model.built else None
    if not outputs:
        return None
    if len(outputs) != 1:
        raise ValueError(
            f"mlflow_mcmetrics.autolog() supports single-output models; this one has "
            f"{len(outputs)} outputs. Add ClassificationMetrics to compile(metrics={{output: "
            "[...]}}) for the output you want and pass MCMetricsCallback(metric=...) to fit()."
        )
    width = outputs[0].shape[-1]
    loss_name, loss_logits = _loss_name_and_logits(loss)
    activation = _output_activation(model)
    if task == "auto":
        if width == 1:
            task = "binary"
        elif loss_name in _BINARY_LOSSES:
            task = "multilabel"
        else:
            task = "multiclass"
    if from_logits == "auto":
        if activation in ("softmax", "sigmoid"):
            from_logits = False
        elif activation == "linear":
            from_logits = True
        else:
            from_logits = bool(loss_logits)
    num_classes = 2 if task == "binary" else int(width)
    return task, num_classes, bool(from_logits)


def _make_metric(model: keras.Model, loss) -> ClassificationMetrics | None:
    inferred = infer_task(model, loss, _config("task"), _config("from_logits"))
    if inferred is None:
        return None
    task, num_classes, from_logits = inferred
    return ClassificationMetrics(
        num_classes,
        task=task,
        from_logits=from_logits,
        threshold=_config("threshold"),
        ignore_class=_config("ignore_class"),
        pr_thresholds=_config("pr_thresholds") if _config("pr_curves") else 0,
        zero_division=_config("zero_division"),
    )


def _with_metric(metrics, metric: ClassificationMetrics):
    """A copy of compile()'s ``metrics`` argument with ``metric`` added, or None if its
    layout (a per-output dict) leaves no single place for it."""
    if metrics is None:
        return [metric]
    if isinstance(metrics, (str, keras.metrics.Metric)) or callable(metrics):
        return [metrics, metric]
    if isinstance(metrics, (list, tuple)):
        return [*metrics, metric]
    return None


def _patched_compile(original, self, *args, **kwargs):
    arguments = inspect.signature(original).bind(self, *args, **kwargs).arguments
    arguments.pop("self", None)
    already_there = first_classification_metric(
        keras.tree.flatten([arguments.get("metrics") or [], arguments.get("weighted_metrics") or []])
    )
    metric = None if already_there else _make_metric(self, arguments.get("loss"))
    metrics = _with_metric(arguments.get("metrics"), metric) if metric is not None else None
    if metrics is not None:
        arguments["metrics"] = metrics
    return original(self, **arguments)


def _recompile_with_metric(model: keras.Model) -> ClassificationMetrics | None:
    """Add the metric to a model compiled before autolog() was called."""
    compile_arguments = dict(model._compile_config.config)
    metric = _make_metric(model, compile_arguments.get("loss"))
    metrics = _with_metric(compile_arguments.get("metrics"), metric) if metric else None
    if metrics is None:
        warnings.warn(
            "mlflow_mcmetrics.autolog() could not add its metric to this model (its output is "
            "not known yet, or compile() got per-output metrics): call autolog() before "
            "compile(), or add ClassificationMetrics to compile() yourself.",
            stacklevel=3,
        )
        return None
    # The metric's variables must belong to the model's tf.distribute strategy (TF backend).
    strategy = getattr(model, "distribute_strategy", None)
    with strategy.scope() if strategy is not None else contextlib.nullcontext():
        model.compile(**{**compile_arguments, "metrics": metrics})
    return metric


def _logs_keras_epoch_logs(callback) -> bool:
    """Whether ``callback`` is MLflow's Keras/TensorFlow autologging callback, which logs the
    epoch ``logs`` (our ``f1_macro``/``val_f1_macro`` included) itself."""
    cls = type(callback)
    return cls.__name__ == "MlflowCallback" and cls.__module__.startswith("mlflow.")


def _patched_callback_list_init(
    original, self, callbacks=None, add_history=False, add_progbar=False, model=None, **params
):
    # Only fit() asks for a History callback; evaluate() and predict() are left alone.
    if add_history and model is not None:
        callbacks = list(keras.tree.flatten(callbacks) if callbacks else [])
        if not any(isinstance(cb, MCMetricsCallback) for cb in callbacks):
            metric = find_metric(model) or _recompile_with_metric(model)
            if metric is not None:
                callbacks.append(
                    MCMetricsCallback(
                        class_names=_config("class_names"),
                        metric=metric,
                        log_train=_config("log_train"),
                        confusion_matrix=_config("confusion_matrix"),
                        log_every_n_epochs=_config("log_every_n_epochs"),
                        skip_keras_logs=any(_logs_keras_epoch_logs(cb) for cb in callbacks),
                    )
                )
    return original(
        self, callbacks, add_history=add_history, add_progbar=add_progbar, model=model, **params
    )


@autologging_integration(INTEGRATION_NAME)
def autolog(
    class_names: Sequence[str] | None = None,
    task: str = "auto",
    from_logits: bool | str = "auto",
    threshold: float = 0.5,
    ignore_class: int | None = None,
    log_train: bool = True,
    confusion_matrix: bool = True,
    pr_curves: bool = True,
    pr_thresholds: int = DEFAULT_PR_THRESHOLDS,
    log_every_n_epochs: int = 1,
    zero_division: float = 0.0,
    disable: bool = False,
    exclusive: bool = False,
    silent: bool = False,
) -> None:
    """Log exact per-class precision, recall, F1 and AP of every Keras ``fit()`` to MLflow.

    Call it before or after ``compile()``, with or without ``mlflow.autolog()`` /
    ``mlflow.keras.autolog()`` (then everything lands in the same run, no key twice). A run
    is started when none is active.

    Args:
        class_names: one name per class (default ``"0"`` .. ``"C-1"``; binary: 2 names).
        task: ``"auto"`` (from the output layer and the loss), ``"multiclass"``,
            ``"binary"`` or ``"multilabel"``.
        from_logits: ``"auto"`` or whether the model outputs logits.
        threshold: decision threshold for binary and multilabel tasks.
        ignore_class: class index left out everywhere (e.g. a padding id).
        log_train: log training-split metrics as well as validation.
        confusion_matrix: log confusion-matrix artifacts.
        pr_curves: accumulate score histograms and log average precision and PR curves.
        pr_thresholds: score bins per class for PR curves.
        log_every_n_epochs: artifact frequency (step metrics are logged every epoch).
        zero_division: value of undefined precision/recall/F1 (0.0, 1.0 or NaN).
        disable: undo a previous ``autolog()``.
        exclusive: do not log into runs the user started.
        silent: suppress this integration's event logs and warnings.
    """
    if disable:
        return
    if task != "auto" and task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; expected 'auto' or one of {TASKS}.")
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}.")
    if pr_thresholds < 0:
        raise ValueError(f"pr_thresholds must be >= 0 (0 turns PR curves off), got {pr_thresholds}.")
    if log_every_n_epochs < 1:
        raise ValueError(f"log_every_n_epochs must be >= 1, got {log_every_n_epochs}.")
    safe_patch(INTEGRATION_NAME, keras.Model, "compile", _patched_compile)
    safe_patch(INTEGRATION_NAME, keras.callbacks.CallbackList, "__init__", _patched_callback_list_init)
