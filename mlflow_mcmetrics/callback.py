"""The Keras callback: reads the metric state once per epoch, scores it, hands the result on.

As thin as MLflow's ``MlflowCallback``: its configuration, the model's classification outputs,
state -> scores -> :attr:`MCMetricsCallback.history`, and one hand-over per epoch to a
:class:`~mlflow_mcmetrics.logger.FitLogger`, which owns the run, the artifacts and the figures.
"""

from __future__ import annotations

import inspect
import json
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence

import keras

from mlflow_mcmetrics import functional, report
from mlflow_mcmetrics.events import guarded, warn
from mlflow_mcmetrics.logger import EpochResult, FitLogger, Output
from mlflow_mcmetrics.metrics import ClassificationMetrics
from mlflow_mcmetrics.naming import class_key_components
from mlflow_mcmetrics.validation import check_arguments

__all__ = ["MCMetricsCallback", "find_metric", "is_chief", "metric_scores"]


def is_chief() -> bool:
    """Whether this process logs in multi-worker training: the ``chief`` task of ``TF_CONFIG``
    (worker 0 when the cluster has no chief), JAX process 0, else True. Every worker still
    reads the state each epoch: under MultiWorkerMirroredStrategy that read is a collective."""
    config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    task = config.get("task") or {}
    if task:
        if "chief" in (config.get("cluster") or {}):
            return task.get("type") == "chief"
        return task.get("type") == "worker" and int(task.get("index", 0)) == 0
    if keras.backend.backend() == "jax":
        import jax

        return jax.process_index() == 0
    return True


def find_metric(model: keras.Model) -> ClassificationMetrics | None:
    """The first :class:`ClassificationMetrics` compiled into ``model`` (or tracked by it)."""
    pending = list(model.metrics)
    compile_config = getattr(model, "_compile_config", None)
    if compile_config is not None:  # compiled metrics join model.metrics at the first step
        config = compile_config.config
        pending += keras.tree.flatten([config.get("metrics"), config.get("weighted_metrics")])
    while pending:
        candidate = pending.pop(0)
        if isinstance(candidate, ClassificationMetrics):
            return candidate
        pending.extend(getattr(candidate, "metrics", None) or [])
    return None


def metric_scores(state, metric: ClassificationMetrics, groups=None) -> dict:
    """:func:`functional.classification_scores` of ``state`` with ``metric``'s scored classes
    and ``zero_division`` (and the long-tail ``groups``): what the callback logs for a split."""
    return functional.classification_scores(
        state,
        labels=metric.scored_labels,
        zero_division=metric.zero_division,
        task=metric.task,
        groups=None if groups is None else groups.groups,
    )


class MCMetricsCallback(keras.callbacks.Callback):
    """Logs :class:`ClassificationMetrics` states to MLflow: step metrics every epoch, artifacts.

    At the end of every epoch it copies the state of each split to the host (one copy per
    split: the training state in ``on_test_begin``, before Keras resets the metrics for
    validation), scores it with :mod:`mlflow_mcmetrics.functional` and logs the values with
    ``step=epoch``: training values without prefix, validation values with ``val_``.
    Artifacts, figures and the run are :class:`~mlflow_mcmetrics.logger.FitLogger`'s.
    Argument errors (class names that do not match the output) raise when training starts;
    after that, no error in computing, drawing or delivering stops training: each becomes one
    :class:`~mlflow_mcmetrics.MCMetricsWarning`.

    Args:
        class_names: one name per class (default ``"0"`` .. ``"C-1"``); for several outputs a
            dict ``{output name: names}``, or a list for the outputs of that many classes.
        metric: the metric to read; by default the first ``ClassificationMetrics`` compiled
            into the model.
        log_train: log the training split too (validation is always logged when present).
        log_to_mlflow: ``False`` only fills :attr:`history`. In multi-worker training only
            the chief logs (see :func:`is_chief`); every worker keeps the history.
        class_keys: which classes get per-class step metrics: ``"auto"`` (every class up to
            100 classes), ``"all"`` (every family for every class) or a list of class names
            to watch (:func:`~mlflow_mcmetrics.report.keyed_classes`). Every value is in the
            per-class tables and history either way.
        class_counts: training samples per class (the data's, when a sampler resamples it)
            for the long-tail groups; default: the first epoch's training split.
        shot_thresholds: ``(low, high)``: few-shot classes have fewer than ``low`` training
            samples, many-shot more than ``high`` (:func:`functional.shot_groups`).
        skip_keras_logs: leave out keys that are in Keras' epoch ``logs`` (such as
            ``val_f1_macro``) because another callback, like MLflow's, logs them already.
        early_stopping: an ``EarlyStopping(restore_best_weights=True)`` coming before this
            callback: the final artifacts and the values linked to MLflow's logged model then
            describe the epoch whose weights it restores (also logged once more at the step
            after the last epoch, as MLflow's autologging logs its own).
        strict_class_names: class names that do not fit an output raise; ``False``
            (``autolog()``): the others get default names, with one warning.
        instrumentation: the :class:`~mlflow_mcmetrics.instrument.FitInstrumentation`
            ``autolog()`` attached for this fit (its metrics are read, and it is detached
            when training ends).
        silent: no warnings from this callback.
        logging: the :class:`~mlflow_mcmetrics.logger.FitLogger`'s arguments:
            ``confusion_matrix``, ``log_every_n_epochs`` (an integer or ``"auto"``: every 30
            s of training at most), ``wait_for_figures``, ``run_id`` (default: the active run,
            or a new one ended with the fit), ``tags`` (of a run started here),
            ``logged_model``.

    Attributes:
        history: ``{key: [value per epoch]}`` of every step metric computed, logged or not.
        class_keys: the metric-key component of each class name (of the first output).
    """

    def __init__(
        self,
        class_names: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
        *,
        metric: ClassificationMetrics | None = None,
        log_train: bool = True,
        log_to_mlflow: bool = True,
        class_keys: str | Sequence[str] = "auto",
        class_counts: Sequence[float] | Mapping[str, Sequence[float]] | None = None,
        shot_thresholds: tuple[float, float] = functional.SHOT_THRESHOLDS,
        skip_keras_logs: bool = False,
        early_stopping: keras.callbacks.EarlyStopping | None = None,
        strict_class_names: bool = True,
        instrumentation=None,
        silent: bool = False,
        **logging,
    ):
        super().__init__()
        check_arguments(log_every_n_epochs=logging.get("log_every_n_epochs", "auto"))
        inspect.signature(FitLogger).bind(**logging)  # a wrong name fails here, not in fit()
        self.class_names, self.metric, self.log_train = class_names, metric, log_train
        self.log_to_mlflow, self.class_counts = log_to_mlflow, class_counts
        self.class_keys_option, self.shot_thresholds = class_keys, shot_thresholds
        self.skip_keras_logs, self.early_stopping = skip_keras_logs, early_stopping
        self.strict_class_names, self.instrumentation = strict_class_names, instrumentation
        self.silent, self.logging = silent, logging
        self.history: dict[str, list[float]] = defaultdict(list)
        self.class_keys: list[str] = []
        self._outputs: list[Output] = []
        self._keyed: dict[str | None, tuple] = {}  # per output: keyed classes and families
        self._logger: FitLogger | None = None

    # -- the outputs ---------------------------------------------------------------------------
    def _per_output(self, given, metric, output: str | None, what: str, unfit: list):
        """``given`` (a list, or a dict by output) for ``output`` if it has one per class."""
        value = given.get(output) if isinstance(given, Mapping) else given
        if value is not None and len(value) != metric.num_classes:
            where = f"output {output!r}" if output else "a model"
            unfit.append(f"{len(value)} {what} for {where} with {metric.num_classes}")
            return None
        return value

    def _resolve(self) -> bool:
        """Find the metrics and name their classes; False while they do not exist yet (a model
        built at its first step). Names that fit no output raise, or warn (autolog())."""
        if self._outputs:
            return True
        if self.instrumentation is not None:
            metrics = self.instrumentation.metrics
        else:
            metric = self.metric or find_metric(self.model)
            if metric is None:
                raise ValueError(
                    "MCMetricsCallback found no ClassificationMetrics in the model: pass metrics="
                    "[mlflow_mcmetrics.ClassificationMetrics(num_classes)] to compile(), or call "
                    "mlflow_mcmetrics.autolog()."
                )
            metrics = {None: metric}
        if not metrics:
            return False
        unfit, counts_unfit, outputs = [], [], []
        for output, metric in metrics.items():
            names = self._per_output(self.class_names, metric, output, "class names", unfit)
            names = [str(name) for name in (names or range(metric.num_classes))]
            outputs.append(Output(output, metric, names, class_key_components(names)))
            counts = self._per_output(
                self.class_counts, metric, output, "class counts", counts_unfit
            )
            if counts is not None:
                outputs[-1].groups = functional.shot_groups(
                    counts, self.shot_thresholds, labels=metric.scored_labels
                )
        message = f"Got {'; '.join(unfit)} classes"
        if unfit and self.strict_class_names:
            if self.instrumentation is not None:
                self.instrumentation.detach()
            raise ValueError(
                f"{message}: pass one name per class (binary models have 2 classes: "
                "negative, positive)."
            )
        if unfit or counts_unfit:
            warn(
                f"mlflow_mcmetrics got {'; '.join(unfit + counts_unfit)} classes, and uses the "
                "defaults there (names '0', '1', ...; counts of the training split): pass one "
                "per class, or a dict {output name: values} for a multi-output model.",
                silent=self.silent,
            )
        self._outputs, self.class_keys = outputs, outputs[0].class_keys
        for output in outputs:
            keyed, families, unknown = report.keyed_classes(
                self.class_keys_option, output.class_names, output.metric.scored_labels
            )
            self._keyed[output.name] = keyed, families
            if unknown:
                warn(
                    f"mlflow_mcmetrics: class_keys names no class named {unknown[0]!r}"
                    + (f" (nor {len(unknown) - 1} more)" if len(unknown) > 1 else "")
                    + "; the others are logged.",
                    silent=self.silent,
                )
        self._start_logging()
        return True

    @guarded("start logging")
    def _start_logging(self) -> None:
        """The fit's logger (its run starts now), told about the outputs known so far."""
        if self._logger is None and self.log_to_mlflow and is_chief():
            epochs = (self.params or {}).get("epochs")
            self._logger = FitLogger(planned_epochs=epochs, silent=self.silent, **self.logging)
        if self._logger is not None:
            for output in self._outputs:
                self._logger.add(output)  # once each

    # -- per split -----------------------------------------------------------------------------
    def on_train_begin(self, logs=None):
        self.history.clear()  # like keras.callbacks.History: one fit() at a time
        self._outputs, self._logger, self._unfed, self._validated = [], None, set(), False
        self._states, self._last, self._best = defaultdict(dict), {}, None
        self._absent: set[tuple] = set()
        undecided = self.instrumentation is not None and self.instrumentation.undecided
        # A subclassed model's outputs are decided at its first step, its run then too, so that
        # a model that turns out not to classify gets none.
        if not self._resolve() and not undecided:
            self._start_logging()

    def _begin_split(self, split: str) -> None:
        if self.instrumentation is not None:
            self.instrumentation.split = split
            self.instrumentation.reset()

    def on_epoch_begin(self, epoch, logs=None):
        self._states.clear()
        self._validated = False
        self._begin_split("train")

    def on_test_begin(self, logs=None):
        # fit() runs validation through evaluate(), which resets the metrics right after this
        # hook: the training state of the epoch must be read now.
        if self.log_train:
            self._read("train")
        self._validated = True
        self._begin_split("val")

    def on_test_end(self, logs=None):
        self._read("val")  # now: another callback's on_epoch_end may evaluate() other data

    def _read(self, split: str) -> None:
        if self._resolve():  # raises on class names that do not fit (strict)
            self._copy(split)

    @guarded("read the metric state")
    def _copy(self, split: str) -> None:
        """Copy each output's state of ``split`` to the host, once per epoch, if it was fed."""
        if self._outputs[0].name in self._states.get(split, {}):
            return
        if self.instrumentation is not None and split not in self.instrumentation.fed:
            if split not in self._unfed:
                self._unfed.add(split)
                step = "train_step" if split == "train" else "test_step"
                warn(
                    f"mlflow_mcmetrics logs no {split} metrics: the model's {step} does not call "
                    "self.compute_metrics(x, y, y_pred, sample_weight), which is where the metric "
                    f"sees the predictions (Keras' own {step} does). Call it in your {step}, or "
                    "update a ClassificationMetrics there and pass it to MCMetricsCallback.",
                    silent=self.silent,
                )
            return
        for output in self._outputs:
            state, (invalid, nonfinite) = output.metric.state()
            if invalid:
                warn(
                    f"{invalid:g} {split} samples had labels outside [0, "
                    f"{output.metric.num_classes}) and were left out of the metrics: check the "
                    "labels and the model's output width.",
                    silent=self.silent,
                )
            if nonfinite:
                warn(
                    f"{nonfinite:g} {split} predictions were NaN or infinite and were left out "
                    "of the metrics: training has probably diverged.",
                    silent=self.silent,
                )
            self._states[split][output.name] = state

    # -- per epoch -----------------------------------------------------------------------------
    def on_epoch_end(self, epoch, logs=None):
        if self.log_train:
            self._read("train")  # an epoch without validation
        if self._validated:
            self._read("val")  # a custom loop that calls no on_test_end
        if self._resolve():
            self._log_epoch(epoch, logs or {})

    @guarded("compute and log this epoch's metrics")
    def _log_epoch(self, epoch: int, logs: dict) -> None:
        results, values = {}, {}
        for output in self._outputs:
            states = {s: by_output[output.name] for s, by_output in self._states.items()}
            states = {
                split: state
                for split, state in states.items()
                if self._counted(split, state, epoch)
            }
            if not states:
                continue
            if output.groups is None and "train" in states:
                output.groups = functional.shot_groups(
                    states["train"].stat_scores[2],
                    self.shot_thresholds,
                    labels=output.metric.scored_labels,
                )
                if self._logger is not None:
                    self._logger.log_groups(output)
            result = EpochResult(epoch, states, {})
            keyed, families = self._keyed[output.name]
            for split, state in states.items():
                scores = result.scores[split] = metric_scores(state, output.metric, output.groups)
                values.update(
                    report.metric_values(
                        scores,
                        output.metric.scored_labels,
                        output.class_keys,
                        output.prefix(split),
                        keyed,
                        families,
                    )
                )
                self._name_absent(output, split, scores)
            results[output.name] = self._last[output.name] = result
        for key, value in values.items():
            self.history[key].append(value)
        logged = {k: v for k, v in values.items() if not (self.skip_keras_logs and k in logs)}
        stopping = self.early_stopping
        if stopping is not None and getattr(stopping, "best_epoch", None) == epoch:
            self._best = (dict(results), logged)  # the EarlyStopping just took this epoch
        if self._logger is not None and results:
            stopped = getattr(self.model, "stop_training", False)  # not set outside fit()
            last = epoch + 1 == (self.params or {}).get("epochs") or bool(stopped)
            restored = last and self._restored(epoch)
            self._logger.log_epoch(epoch, results, logged, last=last, link=last and not restored)
            if restored:
                self._logger.log_restored(epoch + 1, self._best[1])

    def _counted(self, split: str, state: functional.ClassificationState, epoch: int) -> bool:
        if state.num_samples:
            return True
        # An empty split would log zero_division values as if they were scores.
        data = "validation_data" if split == "val" else "training data"
        warn(
            f"mlflow_mcmetrics counted no {split} samples in epoch {epoch}, so nothing is "
            "logged for that split: "
            f"check that the {data} is not empty (and its labels are in range).",
            silent=self.silent,
        )
        return False

    def _name_absent(self, output: Output, split: str, scores: dict) -> None:
        """One warning per output and split naming the classes it has no samples of."""
        absent = [
            output.class_names[label]
            for label, support in zip(output.metric.scored_labels, scores["support"], strict=True)
            if not support
        ]
        if absent and (output.name, split) not in self._absent:
            self._absent.add((output.name, split))
            warn(
                f"mlflow_mcmetrics: the {split} split has no samples of {len(absent)} class(es) "
                f"({', '.join(absent[:10])}{', ...' if len(absent) > 10 else ''}); their scores "
                "are zero_division values, left out of the group scores and marked in the report.",
                silent=self.silent,
            )

    def _restored(self, last_epoch: int) -> bool:
        """Whether :attr:`early_stopping` restores another epoch's weights, whose values were
        kept."""
        stopping = self.early_stopping
        return (
            stopping is not None
            and stopping.best_weights is not None
            and self._best is not None
            and getattr(stopping, "best_epoch", last_epoch) != last_epoch
        )

    def on_train_end(self, logs=None):
        try:
            self._finish()
        finally:
            if self.instrumentation is not None:
                self.instrumentation.detach()

    @guarded("finish logging")
    def _finish(self) -> None:
        if self._logger is None:
            return
        restored = bool(self._last) and self._restored(max(r.epoch for r in self._last.values()))
        final = self._best[0] if restored else self._last
        note = " (the weights EarlyStopping restored)" if restored else ""
        self._logger.finish(final, note=note)
