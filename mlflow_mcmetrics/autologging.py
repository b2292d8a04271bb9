"""``mlflow_mcmetrics.autolog()``: per-class metrics for every ``fit()``, as MLflow's autologging.

``autolog()`` imports neither Keras nor TensorFlow. It registers a post-import hook (MLflow's own
mechanism, as ``mlflow.autolog()`` uses for its integrations) that patches Keras the moment the
user's code imports it, or at once if it is imported already, so MLflow's integrations see the
import order they would see without this package (importing Keras early breaks
``mlflow.tensorflow``'s own hook, and MLflow then logs the run through ``mlflow.keras``).

The patch itself is :mod:`mlflow_mcmetrics.keras_patch`: one ``safe_patch`` of
``keras.callbacks.CallbackList.__init__``, so that ``disable=True``, ``silent``, ``exclusive``
and MLflow's autologging test mode behave as in MLflow's own integrations.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping, Sequence

from mlflow.utils.autologging_utils import autologging_integration, autologging_is_disabled
from mlflow.utils.import_hooks import register_post_import_hook

from mlflow_mcmetrics.events import logger
from mlflow_mcmetrics.functional import SHOT_THRESHOLDS
from mlflow_mcmetrics.validation import check_arguments

__all__ = ["INTEGRATION_NAME", "TESTED_VERSIONS", "autolog"]

INTEGRATION_NAME = "mlflow_mcmetrics"
#: ``{distribution: (lowest, highest)}`` versions CI runs the tests with (documentation:
#: "Distributed training and backends", section "Versions").
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


def _patch_keras(keras_module) -> None:
    """The post-import hook: patch Keras, unless ``autolog(disable=True)`` came in between."""
    if autologging_is_disabled(INTEGRATION_NAME):
        return
    from mlflow_mcmetrics import keras_patch

    keras_patch.patch(keras_module)


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
    pr_thresholds: int | str = "auto",
    log_every_n_epochs: int | str = "auto",
    wait_for_figures: bool = True,
    zero_division: float = 0.0,
    class_keys: str | Sequence[str] = "auto",
    shot_thresholds: tuple[float, float] = SHOT_THRESHOLDS,
    class_counts: Sequence[float] | Mapping[str, Sequence[float]] | None = None,
    weighted_metrics: bool = False,
    disable: bool = False,
    exclusive: bool = False,
    disable_for_unsupported_versions: bool = False,
    silent: bool = False,
    extra_tags: dict[str, str] | None = None,
) -> None:
    """Log exact per-class precision, recall, F1 and AP of every Keras ``fit()`` to MLflow.

    Call it before or after ``import keras`` and ``compile()``, with or without
    ``mlflow.autolog()`` / ``mlflow.keras.autolog()`` (then everything lands in the same run, no
    key twice). A run is started when none is active. Only classification outputs are
    instrumented (see :mod:`mlflow_mcmetrics.instrument` for the rules); a model without one
    is left alone.

    Args:
        class_names: one name per class (default ``"0"`` .. ``"C-1"``; binary: 2 names); for a
            multi-output model a dict ``{output name: names}``, or a list for the outputs of
            that many classes. Names that fit no output are left out with a warning; training
            goes on with default names there.
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
        pr_thresholds: score bins per class of those histograms; ``"auto"``: 4096, fewer
            beyond 2,997 classes so that the state stays within 256 MB (1024 at 10,000).
        log_every_n_epochs: artifact frequency: every n-th epoch, or ``"auto"`` (the first
            epoch ending 30 s or more after training started or after the previous artifacts,
            and the last; step metrics are logged every epoch).
        wait_for_figures: ``fit()`` returns once the end-of-training figures are logged.
            ``False``: they are drawn while your code goes on after ``fit()`` (about a second
            less per fit at 10 classes); ``mlflow_mcmetrics.flush()`` and the interpreter's
            exit wait for them.
        zero_division: value of undefined precision/recall/F1 (0.0, 1.0 or NaN).
        class_keys: which classes get per-class step metrics: ``"auto"`` (precision, recall
            and F1 of every class up to 100 classes, none beyond), ``"all"`` (every per-class
            family, AP and ROC AUC too) or a list of class names to watch. Every per-class
            value is in the per-class tables, ``per_class_history(run_id)`` and the dashboard.
        shot_thresholds: ``(low, high)`` training samples per class: few-shot below ``low``,
            many-shot above ``high`` (the long-tail groups' scores ``f1_few`` & co.).
        class_counts: the training samples per class of your data, for those groups (give
            them when a sampler resamples the training stream); default: the first epoch's
            training split.
        weighted_metrics: count each sample with its ``sample_weight`` (and ``class_weight``),
            as Keras' ``compile(weighted_metrics=...)`` does. By default samples are counted,
            as Keras' ``metrics=`` do: weights shape the loss, not the logged counts.
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
    if not (class_keys in ("auto", "all") or isinstance(class_keys, (list, tuple))):
        raise ValueError(
            f"class_keys must be 'auto', 'all' or a list of class names, got {class_keys!r}."
        )
    check_arguments(
        allow_auto_task=True,
        task=task,
        ignore_class=ignore_class,
        log_every_n_epochs=log_every_n_epochs,
        threshold=threshold,
        pr_thresholds=pr_thresholds,
        zero_division=zero_division,
    )
    if disable_for_unsupported_versions and (untested := untested_versions()):
        logger.warning(
            "mlflow_mcmetrics.autolog() is off for untested versions: %s.", ", ".join(untested)
        )
        return
    register_post_import_hook(_patch_keras, "keras", overwrite=True)
