"""What ``autolog()`` patches into Keras once Keras is imported (see :mod:`.autologging`).

One patch, through MLflow's ``safe_patch``: ``keras.callbacks.CallbackList.__init__``, when
``fit()`` builds its callback list, instruments the model's classification outputs for that fit
(:mod:`mlflow_mcmetrics.instrument`) and adds an exception-safe :class:`MCMetricsCallback`.

Why this place: ``compile()`` is left alone, so compile configs, ``load_model`` and ``evaluate()``
are exactly what they are without this package. ``fit()`` itself is patched by
``mlflow.keras.autolog`` (and ``mlflow.tensorflow``); ``CallbackList`` is built inside the original
``fit`` whoever patched it, so both integrations stay active in either order, MLflow's managed run
is already active when our callback starts, and the model is built when Keras can build it
before training (every backend but TensorFlow without a distribution strategy, where the metric
is created in the first step instead).
"""

from __future__ import annotations

import inspect

import keras
from mlflow.entities import LoggedModelStatus
from mlflow.tracking import MlflowClient
from mlflow.utils.autologging_utils import ExceptionSafeClass, get_autologging_config, safe_patch

from mlflow_mcmetrics.autologging import INTEGRATION_NAME
from mlflow_mcmetrics.callback import MCMetricsCallback
from mlflow_mcmetrics.instrument import FitInstrumentation

__all__ = ["patch"]


def _config(key: str):
    return get_autologging_config(INTEGRATION_NAME, key)


def _mlflow_keras_callback(callbacks) -> keras.callbacks.Callback | None:
    """MLflow's Keras/TensorFlow autologging callback, which logs the epoch ``logs`` (our
    ``f1_macro``/``val_f1_macro`` included) itself, and links them to the model it logs."""
    for callback in callbacks:
        cls = type(callback)
        if cls.__name__ == "MlflowCallback" and cls.__module__.startswith("mlflow."):
            return callback
    return None


def _pending_logged_model(run_id: str) -> str | None:
    """The logged model MLflow's autologging created for the fit starting in ``run_id``."""
    client = MlflowClient()
    experiment_id = client.get_run(run_id).info.experiment_id
    models = client.search_logged_models(
        [experiment_id], filter_string=f"source_run_id = '{run_id}'"
    )
    pending = [model for model in models if model.status == LoggedModelStatus.PENDING]
    return pending[-1].model_id if pending else None


class _AutologCallback(MCMetricsCallback, metaclass=ExceptionSafeClass):
    """The callback ``autolog()`` adds. ``ExceptionSafeClass`` marks it for MLflow's autologging
    test mode as safe to pass to ``fit()``; its own hooks turn errors into warnings, except
    under that test mode."""


def _callbacks_argument(bound: inspect.BoundArguments) -> list:
    callbacks = bound.arguments.get("callbacks")
    return list(keras.tree.flatten(callbacks)) if callbacks else []


def _patched_callback_list_init(original, self, *args, **kwargs):
    bound = inspect.signature(original).bind(self, *args, **kwargs)
    model = bound.arguments.get("model")
    callbacks = _callbacks_argument(bound)
    # Only fit() asks for a History callback; evaluate() and predict() are left alone.
    if (
        not bound.arguments.get("add_history")
        or model is None
        or any(isinstance(c, MCMetricsCallback) for c in callbacks)
    ):
        return original(self, *args, **kwargs)
    instrumentation = FitInstrumentation(
        model,
        _config("task"),
        _config("from_logits"),
        {
            "threshold": _config("threshold"),
            "ignore_class": _config("ignore_class"),
            "pr_thresholds": _config("pr_thresholds") if _config("pr_curves") else 0,
            "zero_division": _config("zero_division"),
        },
        weighted_metrics=_config("weighted_metrics"),
        silent=_config("silent"),
    )
    if not instrumentation.active:
        return original(self, *args, **kwargs)
    mlflow_callback = _mlflow_keras_callback(callbacks)

    def logged_model(run_id: str) -> str | None:
        # mlflow.tensorflow's callback does not say which model its fit() will log.
        if mlflow_callback is None:
            return None
        return getattr(mlflow_callback, "model_id", None) or _pending_logged_model(run_id)

    callback = _AutologCallback(
        class_names=_config("class_names"),
        log_train=_config("log_train"),
        confusion_matrix=_config("confusion_matrix"),
        log_every_n_epochs=_config("log_every_n_epochs"),
        wait_for_figures=_config("wait_for_figures"),
        class_keys=_config("class_keys"),
        class_counts=_config("class_counts"),
        shot_thresholds=_config("shot_thresholds"),
        skip_keras_logs=mlflow_callback is not None,
        early_stopping=next(
            (
                c
                for c in callbacks
                if isinstance(c, keras.callbacks.EarlyStopping) and c.restore_best_weights
            ),
            None,
        ),
        strict_class_names=False,
        instrumentation=instrumentation,
        logged_model=logged_model,
        tags={"mlflow.autologging": INTEGRATION_NAME, **(_config("extra_tags") or {})},
        silent=_config("silent"),
    )
    instrumentation.attach()  # once nothing of ours can fail before fit() removes it again
    # The user's list is left as it was: the original gets a copy with our callback added,
    # in the same position (positional or keyword) as the user's.
    if "callbacks" in kwargs or len(args) < 1:
        kwargs = {**kwargs, "callbacks": [*callbacks, callback]}
    else:
        args = ([*callbacks, callback], *args[1:])
    return original(self, *args, **kwargs)


def patch(keras_module=keras) -> None:
    """Patch ``keras_module.callbacks.CallbackList.__init__`` (see the module docstring)."""
    safe_patch(
        INTEGRATION_NAME,
        keras_module.callbacks.CallbackList,
        "__init__",
        _patched_callback_list_init,
    )
