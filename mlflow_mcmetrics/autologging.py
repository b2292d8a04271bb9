"""``mlflow_mcmetrics.autolog()``: per-class metrics for every ``fit()``, as MLflow's autologging.

One patch, through MLflow's ``safe_patch`` (so ``disable=True``, ``silent``, ``exclusive`` and
MLflow's autologging test mode behave as in MLflow's own integrations):
``keras.callbacks.CallbackList.__init__``, when ``fit()`` builds its callback list, instruments the
model's classification outputs for that fit (:mod:`mlflow_mcmetrics.instrument`) and adds an
exception-safe :class:`MCMetricsCallback`.

Why this place: ``compile()`` is left alone, so compile configs, ``load_model`` and ``evaluate()``
are exactly what they are without this package. ``fit()`` itself is patched by
``mlflow.keras.autolog`` (and ``mlflow.tensorflow``); ``CallbackList`` is built inside the original
``fit`` whoever patched it, so both integrations stay active in either order, MLflow's managed run
is already active when our callback starts, and the model is built when Keras can build it
before training (every backend but TensorFlow without a distribution strategy, where the metric
is created in the first step instead).
"""

from __future__ import annotations

import importlib.metadata
import inspect
from collections.abc import Mapping, Sequence

import keras
from mlflow.entities import LoggedModelStatus
from mlflow.tracking import MlflowClient
from mlflow.utils.autologging_utils import (
    ExceptionSafeClass,
    autologging_integration,
    get_autologging_config,
    safe_patch,
)

from mlflow_mcmetrics.callback import MCMetricsCallback
from mlflow_mcmetrics.events import logger
from mlflow_mcmetrics.instrument import FitInstrumentation, classification_outputs
from mlflow_mcmetrics.metrics import DEFAULT_PR_THRESHOLDS
from mlflow_mcmetrics.validation import check_arguments

__all__ = ["INTEGRATION_NAME", "TESTED_VERSIONS", "autolog"]

INTEGRATION_NAME = "mlflow_mcmetrics"
#: ``{distribution: (lowest, highest)}`` versions CI runs the tests with (README: "Versions").
TESTED_VERSIONS = {"keras": ("3.11.0", "3.15.1"), "mlflow": ("3.0.0", "3.17.2")}


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("+")[0].split(".")[:3] if part.isdigit())


def untested_versions() -> list[str]:
    """The installed distributions of :data:`TESTED_VERSIONS` outside their tested range."""
    untested = []
    for name, (lowest, highest) in TESTED_VERSIONS.items():
        installed = importlib.metadata.version(name)
        if (
            not _version_tuple(lowest)
            <= _version_tuple(installed)[: len(_version_tuple(highest))]
            <= _version_tuple(highest)
        ):
            untested.append(f"{name}=={installed} (tested: {lowest} to {highest})")
    return untested


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
    """The callback ``autolog()`` adds: reads the metrics of its :class:`FitInstrumentation`
    and removes it when training ends.

    ``ExceptionSafeClass`` marks it for MLflow's autologging test mode as safe to pass to
    ``fit()``; the methods it wraps (those defined here) and the ``guarded`` ones of
    :class:`MCMetricsCallback` turn errors into warnings, except under that test mode.
    """

    def __init__(
        self, instrumentation: FitInstrumentation, mlflow_callback, run_tags: dict, **kwargs
    ):
        super().__init__(**kwargs)
        self.instrumentation = instrumentation
        self._mlflow_callback = mlflow_callback
        self._model_id = getattr(mlflow_callback, "model_id", None)
        self._run_tags = run_tags

    def _metrics_by_output(self):
        return self.instrumentation.metrics or None

    def _start_run(self):
        super()._start_run()
        if (
            self._fit_run is not None
            and self._mlflow_callback is not None
            and self._model_id is None
        ):
            # mlflow.tensorflow's callback does not say which model its fit() will log.
            self._model_id = _pending_logged_model(self._fit_run.run_id)

    def _abandon(self):
        self.instrumentation.detach()

    def on_train_end(self, logs=None):
        try:
            super().on_train_end(logs)
        finally:
            self.instrumentation.detach()


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
    task = _config("task")
    outputs, skipped = classification_outputs(model, task, _config("from_logits"))
    if skipped and not _config("silent"):
        logger.info("mlflow_mcmetrics: no per-class metrics for %s.", "; ".join(skipped))
    if not outputs:
        return original(self, *args, **kwargs)
    instrumentation = FitInstrumentation(
        model,
        outputs,
        {
            "threshold": _config("threshold"),
            "ignore_class": _config("ignore_class"),
            "pr_thresholds": _config("pr_thresholds") if _config("pr_curves") else 0,
            "zero_division": _config("zero_division"),
        },
    )
    instrumentation.attach()
    mlflow_callback = _mlflow_keras_callback(callbacks)
    callback = _AutologCallback(
        instrumentation,
        mlflow_callback,
        {"mlflow.autologging": INTEGRATION_NAME, **(_config("extra_tags") or {})},
        class_names=_config("class_names"),
        log_train=_config("log_train"),
        confusion_matrix=_config("confusion_matrix"),
        log_every_n_epochs=_config("log_every_n_epochs"),
        wait_for_figures=_config("wait_for_figures"),
        skip_keras_logs=mlflow_callback is not None,
        silent=_config("silent"),
    )
    # The user's list is left as it was: the original gets a copy with our callback added,
    # in the same position (positional or keyword) as the user's.
    if "callbacks" in kwargs or len(args) < 1:
        kwargs = {**kwargs, "callbacks": [*callbacks, callback]}
    else:
        args = ([*callbacks, callback], *args[1:])
    return original(self, *args, **kwargs)


@autologging_integration(INTEGRATION_NAME)
def autolog(
    class_names: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
    task: str = "auto",
    from_logits: bool | str = "auto",
    threshold: float = 0.5,
    ignore_class: int | None = None,
    log_train: bool = True,
    confusion_matrix: bool = True,
    pr_curves: bool = True,
    pr_thresholds: int = DEFAULT_PR_THRESHOLDS,
    log_every_n_epochs: int | str = "auto",
    wait_for_figures: bool = True,
    zero_division: float = 0.0,
    disable: bool = False,
    exclusive: bool = False,
    disable_for_unsupported_versions: bool = False,
    silent: bool = False,
    extra_tags: dict[str, str] | None = None,
) -> None:
    """Log exact per-class precision, recall, F1 and AP of every Keras ``fit()`` to MLflow.

    Call it before or after ``compile()``, with or without ``mlflow.autolog()`` /
    ``mlflow.keras.autolog()`` (then everything lands in the same run, no key twice). A run
    is started when none is active. Only classification outputs are instrumented (see
    :mod:`mlflow_mcmetrics.instrument` for the rules); a model without one is left alone.

    Args:
        class_names: one name per class (default ``"0"`` .. ``"C-1"``; binary: 2 names); for a
            multi-output model a dict ``{output name: names}``.
        task: ``"auto"`` (from the output layer and the loss), ``"multiclass"``,
            ``"binary"`` or ``"multilabel"``.
        from_logits: ``"auto"`` or whether the model outputs logits.
        threshold: decision threshold for binary and multilabel tasks.
        ignore_class: class index left out everywhere (e.g. a padding id).
        log_train: log training-split metrics as well as validation.
        confusion_matrix: log confusion-matrix artifacts.
        pr_curves: accumulate score histograms (and calibration counts) and log what they
            give: average precision, ROC AUC, ECE, decision thresholds, and the PR, ROC and
            reliability curves. ``False`` turns all of these off.
        pr_thresholds: score bins per class of those histograms.
        log_every_n_epochs: artifact frequency: every n-th epoch, or ``"auto"`` (the first
            epoch ending 30 s or more after training started or after the previous artifacts,
            and the last; step metrics are logged every epoch).
        wait_for_figures: ``fit()`` returns once the end-of-training figures are logged.
            ``False``: they are drawn while your code goes on after ``fit()`` (about a second
            less per fit at 10 classes); ``mlflow_mcmetrics.flush()`` and the interpreter's
            exit wait for them.
        zero_division: value of undefined precision/recall/F1 (0.0, 1.0 or NaN).
        disable: undo a previous ``autolog()``.
        exclusive: do not log into runs the user started.
        disable_for_unsupported_versions: do nothing with Keras/MLflow versions outside the
            tested range (as MLflow's integrations).
        silent: suppress this integration's event logs and warnings.
        extra_tags: tags for the runs this integration starts.
    """
    if disable:
        return
    # Checked now, so that a wrong argument fails here rather than at the next fit().
    metric_options = dict(
        threshold=threshold, pr_thresholds=pr_thresholds, zero_division=zero_division
    )
    check_arguments(
        allow_auto_task=True,
        task=task,
        ignore_class=ignore_class,
        log_every_n_epochs=log_every_n_epochs,
        **metric_options,
    )
    if disable_for_unsupported_versions and (untested := untested_versions()):
        logger.warning(
            "mlflow_mcmetrics.autolog() is off for untested versions: %s.", ", ".join(untested)
        )
        return
    safe_patch(
        INTEGRATION_NAME, keras.callbacks.CallbackList, "__init__", _patched_callback_list_init
    )
