"""The Keras callback: moves the metric state to the host once per epoch and hands records on.

The callback reads each classification output's :class:`ClassificationMetrics` state, turns it
into the SPEC's values with :mod:`mlflow_mcmetrics.functional` and :mod:`mlflow_mcmetrics.report`,
and queues them in the run's outbox (:mod:`mlflow_mcmetrics.outbox`). Which run, and how it
ends, is :mod:`mlflow_mcmetrics.runs`; drawing happens in :mod:`mlflow_mcmetrics.render`.
"""

from __future__ import annotations

import base64
import concurrent.futures
import dataclasses
import functools
import json
import os
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence

import keras
import numpy as np

from mlflow_mcmetrics import functional, pages, report
from mlflow_mcmetrics.events import guarded, warn
from mlflow_mcmetrics.metrics import ClassificationMetrics
from mlflow_mcmetrics.naming import class_key_components, metric_key
from mlflow_mcmetrics.render import RenderProcess, renderer
from mlflow_mcmetrics.report import ARTIFACT_DIR
from mlflow_mcmetrics.runs import FitRun, start_fit_run
from mlflow_mcmetrics.validation import check_arguments

__all__ = [
    "ARTIFACT_DIR",
    "MCMetricsCallback",
    "find_metric",
    "first_classification_metric",
    "is_chief",
    "metric_scores",
]

#: Stepped images are logged as ``{prefix}plots/confusion_matrix`` and ``{prefix}plots/pr_curves``:
#: the MLflow UI groups charts by the key before ``/``, so they get a section of their own.
IMAGE_SECTION = "plots"
#: Largest share of wall time that drawing per-epoch images may take (see _log_epoch_images).
RENDER_TIME_SHARE = 0.1
#: How long before the end of training the second render process is started: it takes about
#: a second to import matplotlib, and draws the end-of-training figures beside the first.
RENDER_WARM_UP_S = 2.0
#: With ``log_every_n_epochs="auto"``: the artifacts of the first epoch ending at least this
#: long after training started or after the previous artifacts, and the last epoch's. On
#: sub-second epochs per-epoch artifacts would cost more than training (benchmarks/README.md);
#: on epochs longer than this, every epoch gets them.
AUTO_ARTIFACT_INTERVAL_S = 30.0

_SPLIT_PREFIXES = {"train": "", "val": "val_"}


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
        candidates += keras.tree.flatten(
            [config.get("metrics") or [], config.get("weighted_metrics") or []]
        )
    return first_classification_metric(candidates)


def metric_scores(state: functional.ClassificationState, metric: ClassificationMetrics) -> dict:
    """:func:`functional.classification_scores` of ``state`` with ``metric``'s scored classes
    and ``zero_division``: what the callback logs for a split."""
    return functional.classification_scores(
        state, labels=metric.scored_labels, zero_division=metric.zero_division, task=metric.task
    )


def _png_base64(png: bytes) -> str:
    return base64.b64encode(png).decode("ascii")


@dataclasses.dataclass
class _EpochResult:
    epoch: int
    scores: dict[str, dict]
    states: dict[str, functional.ClassificationState]
    json_logged: bool = False
    images: dict[str, bytes] | None = None  # PNG by artifact stem

    @property
    def report_split(self) -> str:
        return "val" if "val" in self.states else "train"


@dataclasses.dataclass
class _OutputLog:
    """What the callback keeps for one classification output."""

    name: str | None  # the Keras output name of a multi-output model, else None
    metric: ClassificationMetrics
    class_names: list[str]
    class_keys: list[str]
    states: dict[str, functional.ClassificationState] = dataclasses.field(default_factory=dict)
    last_epoch: _EpochResult | None = None
    best_epoch: _EpochResult | None = None  # the epoch an EarlyStopping may restore
    f1_by_epoch: dict[str, list[np.ndarray]] = dataclasses.field(
        default_factory=lambda: defaultdict(list)
    )
    dashboard_epochs: list[dict] = dataclasses.field(default_factory=list)

    def prefix(self, split: str) -> str:
        """Key prefix of a split, as Keras prefixes its logs: ``val_``, ``val_{output}_``."""
        return _SPLIT_PREFIXES[split] + (f"{self.name}_" if self.name else "")

    @property
    def artifact_dir(self) -> str:
        return ARTIFACT_DIR if self.name is None else f"{ARTIFACT_DIR}/{self.name}"

    @property
    def param_prefix(self) -> str:
        return "mcmetrics." if self.name is None else f"mcmetrics.{self.name}."


class MCMetricsCallback(keras.callbacks.Callback):
    """Logs :class:`ClassificationMetrics` states to MLflow: step metrics every epoch, artifacts.

    At the end of every epoch it reads the metric state (one device-to-host copy per split),
    computes per-class precision/recall/F1 (and AP with PR curves on) with
    :mod:`mlflow_mcmetrics.functional`, and logs them with ``step=epoch``: training values
    without prefix, validation values with ``val_``. The training state is read in
    ``on_test_begin``, before Keras resets the metrics for validation.

    Every ``log_every_n_epochs`` epochs (by default ``"auto"``: at most every
    :data:`AUTO_ARTIFACT_INTERVAL_S` seconds of training), and for the last epoch, it also logs
    ``mcmetrics/epochs/{epoch:04d}/{split}_confusion_matrix.json`` and ``..._pr_curves.json``,
    and the confusion-matrix and PR-curve images of the report split (validation if present,
    else training) as time-stepped images (keys ``{prefix}plots/confusion_matrix``,
    ``{prefix}plots/pr_curves``). Images are drawn in a low-priority child process and at most
    :data:`RENDER_TIME_SHARE` of wall time. When training ends: ``mcmetrics/confusion_matrix.png``,
    ``pr_curves.png``, ``f1_by_epoch.png`` and ``classification_report.json``/``.md`` for the
    last epoch.

    Argument errors (class names that do not match the output) raise when training starts;
    after that, no error in computing, drawing or delivering stops training: each becomes one
    :class:`~mlflow_mcmetrics.MCMetricsWarning`.

    Args:
        class_names: one name per class (default ``"0"`` .. ``"C-1"``); for several outputs a
            dict ``{output name: names}``.
        metric: the metric to read; by default the first ``ClassificationMetrics`` compiled
            into the model.
        log_train: log the training split too (validation is always logged when present).
        log_to_mlflow: ``False`` only fills :attr:`history`. In multi-worker training only
            the chief logs (see :func:`is_chief`); every worker keeps the history.
        confusion_matrix: log confusion-matrix artifacts.
        log_every_n_epochs: artifact frequency, an integer or ``"auto"`` (time-based, see
            :data:`AUTO_ARTIFACT_INTERVAL_S`); step metrics are logged every epoch.
        wait_for_figures: ``fit()`` returns once the end-of-training figures are logged.
            ``False``: they are drawn after ``fit()`` returns, and the outbox keeps their place
            (:class:`~.outbox.Outbox`); :func:`~.outbox.flush` and the interpreter's exit wait
            for them.
        skip_keras_logs: leave out keys that are in Keras' epoch ``logs`` (such as
            ``val_f1_macro``) because another callback, like MLflow's own autologging
            callback, logs those already.
        early_stopping: an ``EarlyStopping(restore_best_weights=True)`` of the same fit: the
            final artifacts and the values linked to MLflow's logged model then describe the
            epoch whose weights it restores (whose values are also logged once more at the
            step after the last epoch, as MLflow's autologging logs its own).
        strict_class_names: class names that do not fit an output raise when training
            starts; ``False`` (``autolog()``): they go to the outputs they fit, the others get
            default names, with one warning.
        run_id: the run to log to; by default the active run, or a new one that this
            callback ends when training ends.
        silent: no warnings from this callback.

    Attributes:
        history: ``{key: [value per epoch]}`` of everything computed, logged or not.
        class_keys: the metric-key component of each class name (of the first output).
    """

    def __init__(
        self,
        class_names: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
        *,
        metric: ClassificationMetrics | None = None,
        log_train: bool = True,
        log_to_mlflow: bool = True,
        confusion_matrix: bool = True,
        log_every_n_epochs: int | str = "auto",
        wait_for_figures: bool = True,
        skip_keras_logs: bool = False,
        early_stopping: keras.callbacks.EarlyStopping | None = None,
        strict_class_names: bool = True,
        run_id: str | None = None,
        silent: bool = False,
    ):
        super().__init__()
        check_arguments(log_every_n_epochs=log_every_n_epochs)
        self.class_names = class_names
        self.metric = metric
        self.log_train = log_train
        self.log_to_mlflow = log_to_mlflow
        self.confusion_matrix = confusion_matrix
        self.log_every_n_epochs = log_every_n_epochs
        self.wait_for_figures = wait_for_figures
        self.skip_keras_logs = skip_keras_logs
        self.early_stopping = early_stopping
        self.strict_class_names = strict_class_names
        self.run_id = run_id
        self.silent = silent
        self.history: dict[str, list[float]] = defaultdict(list)
        self.class_keys: list[str] = []
        self._outputs: list[_OutputLog] = []
        self._fit_run: FitRun | None = None
        self._model_id: str | None = None
        self._run_tags: dict | None = None
        self._renderer: concurrent.futures.ThreadPoolExecutor | None = None
        self._render_process: RenderProcess | None = None
        self._rendering: concurrent.futures.Future | None = None
        self._next_render = 0.0
        self._train_start = 0.0  # time.monotonic() of on_train_begin
        self._epochs_done = 0  # epochs logged since then
        self._last_artifacts = 0.0  # time.monotonic() of training start or the last artifacts
        self._best_values: dict[str, float] | None = None  # of the epoch EarlyStopping keeps
        self._reported_unfed: set[str] = set()
        self._may_log = False

    # -- which metrics, which run --------------------------------------------------------------
    def _metrics_by_output(self) -> dict[str | None, ClassificationMetrics] | None:
        """The metrics to read, by output name; None while they do not exist yet."""
        metric = self.metric or find_metric(self.model)
        if metric is None:
            raise ValueError(
                "MCMetricsCallback found no ClassificationMetrics in the model: pass "
                "metrics=[mlflow_mcmetrics.ClassificationMetrics(num_classes)] to compile(), "
                "or call mlflow_mcmetrics.autolog()."
            )
        return {None: metric}

    def _class_names(self, metrics: Mapping[str | None, ClassificationMetrics]) -> dict:
        """Each output's class names: :attr:`class_names` where they fit its width, else
        ``"0"`` .. ``"C-1"``. Names that fit no output raise (``strict_class_names``) or warn."""
        given = self.class_names
        names, unfit = {}, []
        for output, metric in metrics.items():
            candidate = given.get(output) if isinstance(given, Mapping) else given
            if candidate is not None and len(candidate) != metric.num_classes:
                where = f"output {output!r}" if output else "a model"
                unfit.append(f"{len(candidate)} class names for {where} with {metric.num_classes}")
                candidate = None
            names[output] = [str(name) for name in (candidate or range(metric.num_classes))]
        if unfit and self.strict_class_names:
            raise ValueError(
                f"Got {'; '.join(unfit)} classes: pass one name per class (binary models have "
                "2 classes: negative, positive)."
            )
        if unfit:
            warn(
                f"mlflow_mcmetrics got {'; '.join(unfit)} classes, and logs default names "
                "('0', '1', ...) there: pass one name per class, or a dict {output name: "
                "names} for a multi-output model. Training goes on.",
                silent=self.silent,
            )
        return names

    def _resolve_outputs(self) -> bool:
        """Find the metrics and name their classes (see :meth:`_class_names`); False while the
        metrics do not exist yet (an unbuilt model builds them in its first step)."""
        if self._outputs:
            return True
        try:
            metrics = self._metrics_by_output()
            if not metrics:
                return False
            names = self._class_names(metrics)
        except ValueError:
            self._abandon()
            raise
        self._outputs = [
            _OutputLog(output, metric, names[output], class_key_components(names[output]))
            for output, metric in metrics.items()
        ]
        self.class_keys = self._outputs[0].class_keys
        if self._fit_run is not None:
            self._log_run_description()
        elif self._may_log:
            self._start_run()
        return True

    def _abandon(self) -> None:
        """Called when an argument error stops training (see :meth:`_resolve_outputs`)."""

    def _outputs_expected(self) -> bool:
        """Whether the fit has metrics to log before they exist (so its run starts with it)."""
        return True

    def _begin_split(self, split: str) -> None:
        """Called as the steps of ``split`` begin (``autolog()`` resets its metrics there)."""

    def _fed(self, split: str) -> bool:
        """Whether the steps of ``split`` fed the metrics (unknown here: assumed)."""
        return True

    def on_train_begin(self, logs=None):
        self.history.clear()  # like keras.callbacks.History: one fit() at a time
        self._train_start = self._last_artifacts = time.monotonic()
        self._epochs_done = 0
        self._outputs = []
        self._reported_unfed = set()
        self._best_values: dict[str, float] | None = None
        self._may_log = self.log_to_mlflow and is_chief()
        # A subclassed model's outputs are decided at its first step: its run starts then,
        # so that a model that turns out not to classify gets none.
        if not self._resolve_outputs() and self._may_log and self._outputs_expected():
            self._start_run()

    @guarded("start logging")
    def _start_run(self) -> None:
        self._fit_run = start_fit_run(self.run_id, silent=self.silent, tags=self._run_tags)
        self._fit_run.on_finish = self._wait_for_images
        self._renderer = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="mcmetrics-render"
        )
        # Started now (if not running yet), so that its imports are done (at low priority)
        # before the first figure.
        self._render_process = renderer()
        self._render_process.start()
        if self._outputs:
            self._log_run_description()

    def _log_run_description(self) -> None:
        outbox = self._fit_run.outbox
        for output in self._outputs:
            metric = output.metric
            params = {
                "task": metric.task,
                "num_classes": metric.num_classes,
                "from_logits": metric.from_logits,
                "threshold": metric.threshold,
                "ignore_class": metric.ignore_class,
                "pr_thresholds": metric.pr_thresholds,
            }
            outbox.put(
                {
                    "kind": "params",
                    "params": {output.param_prefix + k: str(v) for k, v in params.items()},
                }
            )
            labels = report.labels_payload(
                output.class_names, output.class_keys, metric.ignore_class
            )
            outbox.put(
                {
                    "kind": "text",
                    "artifact_file": f"{output.artifact_dir}/labels.json",
                    "text": json.dumps(labels, indent=2),
                }
            )

    # -- per epoch ---------------------------------------------------------------------------
    def on_epoch_begin(self, epoch, logs=None):
        for output in self._outputs:
            output.states.clear()
        self._begin_split("train")

    def on_test_begin(self, logs=None):
        # fit() runs validation through evaluate(), which resets the metrics right after this
        # hook: the training state of the epoch must be read now.
        if self.log_train:
            self._read_split("train")
        self._begin_split("val")

    def on_test_end(self, logs=None):
        # Read now: another callback's on_epoch_end may evaluate() other data with the model.
        self._read_split("val")

    def _read_split(self, split: str) -> None:
        """Copy each output's state of ``split`` to the host, once per epoch, if it was fed."""
        if not self._resolve_outputs():
            return
        if not self._fed(split):
            if split not in self._reported_unfed:
                self._reported_unfed.add(split)
                step = "train_step" if split == "train" else "test_step"
                warn(
                    f"mlflow_mcmetrics logs no {split} metrics: the model's {step} does not "
                    "call self.compute_metrics(x, y, y_pred, sample_weight), which is where "
                    f"the metric sees the predictions (Keras' own {step} does). Call it in "
                    f"your {step}, or update a ClassificationMetrics there yourself and log it "
                    "with MCMetricsCallback(metric=...).",
                    silent=self.silent,
                )
            return
        for output in self._outputs:
            if split not in output.states:
                output.states[split] = self._read_state(output, split)

    def on_epoch_end(self, epoch, logs=None):
        if not self._resolve_outputs():
            return
        self._log_epoch(epoch, logs or {})

    @guarded("compute and log this epoch's metrics")
    def _log_epoch(self, epoch: int, logs: dict) -> None:
        values: dict[str, float] = {}
        results = []
        for output in self._outputs:
            result = self._epoch_result(output, epoch)
            if result is None:
                continue
            results.append((output, result))
            for split, scores in result.scores.items():
                values.update(
                    report.metric_values(
                        scores, output.metric.scored_labels, output.class_keys, output.prefix(split)
                    )
                )
                output.f1_by_epoch[split].append(scores["f1"])
        for key, value in values.items():
            self.history[key].append(value)
        if self.skip_keras_logs:
            values = {key: value for key, value in values.items() if key not in logs}
        stopping = self.early_stopping
        if stopping is not None and getattr(stopping, "best_epoch", None) == epoch:
            # This callback comes after the EarlyStopping: it has just taken this epoch as best.
            self._best_values = values
            for output, result in results:
                output.best_epoch = result
        if self._fit_run is None or not results:
            return
        outbox = self._fit_run.outbox
        outbox.flush()  # retry what an outage left queued, once per epoch
        timestamp = int(time.time() * 1000)
        record = {
            "kind": "metrics",
            "metrics": [[k, v, timestamp, epoch] for k, v in values.items()],
        }
        if self._model_id is not None:
            # MLflow's Keras autologging links the run's metrics to the model it logs: ours are
            # linked for the last epoch only, the values the model ends with. Linking every
            # epoch made MLflow's model logging load them all (7 000 rows for the MLproject's
            # fit, 0.8 s); re-sending the last epoch linked once it is known to be last
            # duplicates run rows, which MLflow 3.0's log_batch rejects beyond 100 keys. The
            # last epoch is known here: Keras' `epochs`, or `stop_training` set by the
            # callbacks before this one (EarlyStopping & co.; this callback comes last).
            if self._is_last(epoch) and self._restored_epoch(epoch) is None:
                record["model_id"] = self._model_id
            if epoch == 0:
                # MLflow's model logging copies every step-0 metric of the run onto its model
                # and, with more than 100 keys at step 0, fails on a duplicate insert (MLflow
                # 3.17's SqlAlchemyStore._log_model_metrics): epoch 0 arrives after it.
                record["after_model"] = self._model_id
        outbox.put(record)
        if self._is_last(epoch) and self._restored_epoch(epoch) is not None:
            # The model ends with the restored epoch's weights: its values once more, after the
            # last epoch, linked to MLflow's logged model (as MLflow logs its own).
            restored = {
                "kind": "metrics",
                "metrics": [[k, v, timestamp, epoch + 1] for k, v in self._best_values.items()],
            }
            if self._model_id is not None:
                restored["model_id"] = self._model_id
            outbox.put(restored)
        self._epochs_done += 1
        if self._ends_soon(epoch):
            self._render_process.start(processes=2)
        artifacts_due = self._artifacts_due(epoch)
        for output, result in results:
            self._record_for_dashboard(output, result, curves=artifacts_due)
        if artifacts_due:
            self._last_artifacts = time.monotonic()
            for output, result in results:
                self._log_epoch_json(output, result)
            idle = self._rendering is None or self._rendering.done()
            if idle and time.monotonic() >= self._next_render:
                self._rendering = self._renderer.submit(self._log_epoch_images, results)

    @staticmethod
    def _record_for_dashboard(output: _OutputLog, result: _EpochResult, curves: bool) -> None:
        """Keep this epoch's compact view of the report split for ``dashboard.html``: sparse
        matrix and scores every epoch (O(C^2) at most), curves with the epoch's artifacts."""
        split = result.report_split
        train = result.states.get("train")
        output.dashboard_epochs.append(
            pages.epoch_record(
                result.epoch,
                split,
                result.states[split],
                result.scores[split],
                output.metric.scored_labels,
                curves=curves,
                train_support=None
                if train is None
                else functional.stat_scores_from_confusion_matrix(train.confusion_matrix)[2],
            )
        )

    def _is_last(self, epoch: int) -> bool:
        """Whether ``epoch`` is the fit's last: Keras' ``epochs``, or ``stop_training`` set by
        the callbacks before this one (EarlyStopping & co.; under ``autolog()`` this one comes
        last)."""
        return epoch + 1 == self._planned_epochs or bool(self.model.stop_training)

    def _restored_epoch(self, last_epoch: int) -> int | None:
        """The epoch whose weights :attr:`early_stopping` restores when training ends, if it
        is not ``last_epoch`` and its values were kept."""
        stopping = self.early_stopping
        if stopping is None or stopping.best_weights is None or self._best_values is None:
            return None
        restored = getattr(stopping, "best_epoch", None)
        return None if restored in (None, last_epoch) else restored

    def _final_result(self, output: _OutputLog) -> _EpochResult | None:
        """The epoch the final artifacts describe: the restored one, else the last."""
        last = output.last_epoch
        if last is not None and self._restored_epoch(last.epoch) is not None:
            return output.best_epoch
        return last

    @property
    def _planned_epochs(self) -> int | None:
        """The ``epochs`` of the running ``fit()`` (None in a loop that does not say)."""
        return (self.params or {}).get("epochs")

    def _ends_soon(self, epoch: int) -> bool:
        """Whether training will probably end within :data:`RENDER_WARM_UP_S` (at the
        mean epoch duration so far), or ends with the next epoch."""
        epochs = self._planned_epochs
        if not epochs:
            return False
        mean_epoch = (time.monotonic() - self._train_start) / self._epochs_done
        return (epochs - 1 - epoch) * mean_epoch <= RENDER_WARM_UP_S or epoch >= epochs - 2

    def _artifacts_due(self, epoch: int) -> bool:
        if self.log_every_n_epochs != "auto":
            return epoch % self.log_every_n_epochs == 0
        return time.monotonic() - self._last_artifacts >= AUTO_ARTIFACT_INTERVAL_S

    def _epoch_result(self, output: _OutputLog, epoch: int) -> _EpochResult | None:
        if self.log_train:
            self._read_split("train")  # an epoch without validation
        splits = dict(output.states)
        for split in [split for split, state in splits.items() if state.num_samples == 0]:
            # An empty split (e.g. validation_data with no rows) would log zero_division values
            # as if they were scores: log nothing for it instead.
            warn(
                f"mlflow_mcmetrics counted no {split} samples in epoch {epoch}, so nothing is "
                "logged for "
                "that split: check that the "
                f"{'validation_data' if split == 'val' else 'training data'} "
                "is not empty (and its labels are in range).",
                silent=self.silent,
            )
            del splits[split]
        if not splits:
            return None
        scores = {split: metric_scores(state, output.metric) for split, state in splits.items()}
        output.last_epoch = _EpochResult(epoch, scores, splits)
        return output.last_epoch

    def _read_state(self, output: _OutputLog, split: str) -> functional.ClassificationState:
        state, rejected = output.metric.state()
        invalid_labels, nonfinite = rejected
        if invalid_labels:
            warn(
                f"{invalid_labels:g} {split} samples had labels outside [0, "
                f"{output.metric.num_classes}) "
                "and were left out of the metrics: check the labels and the model's output width.",
                silent=self.silent,
            )
        if nonfinite:
            warn(
                f"{nonfinite:g} {split} predictions were NaN or infinite and were left out of "
                "the metrics: training has probably diverged.",
                silent=self.silent,
            )
        return state

    # -- artifacts ---------------------------------------------------------------------------
    def _log_json(self, make_payload: Callable[[], dict], artifact_file: str) -> None:
        """Queue ``make_payload()`` as compact JSON; the outbox's sender builds it (a 1000-class
        state takes half a second to serialise), so the training thread does not."""

        def record():
            # Compact: indented, a 1000-class matrix is 11 MB instead of 2.
            return {
                "kind": "text",
                "artifact_file": artifact_file,
                "text": json.dumps(make_payload(), separators=(",", ":")),
            }

        self._fit_run.outbox.put(record)

    def _log_epoch_json(self, output: _OutputLog, result: _EpochResult) -> None:
        folder = f"{output.artifact_dir}/epochs/{result.epoch:04d}"
        labels = output.metric.scored_labels
        for split, state in result.states.items():
            if self.confusion_matrix:
                self._log_json(
                    functools.partial(
                        report.confusion_matrix_payload,
                        state,
                        output.class_names,
                        result.epoch,
                        split,
                    ),
                    f"{folder}/{split}_confusion_matrix.json",
                )
            if state.score_histogram is not None:
                for stem, payload in report.CURVE_PAYLOADS.items():
                    self._log_json(
                        functools.partial(
                            payload, state, output.class_names, labels, result.scores[split]
                        ),
                        f"{folder}/{split}_{stem}.json",
                    )
        result.json_logged = True

    def _draw(self, output: _OutputLog, result: _EpochResult) -> dict[str, bytes]:
        """The report split's confusion-matrix and PR-curve images, by artifact stem, drawn
        in the render process (see :mod:`mlflow_mcmetrics.render`)."""
        split = result.report_split
        return self._render_process.draw(
            figure="plot_state",
            state=result.states[split],
            scores=result.scores[split],
            class_names=output.class_names,
            labels=output.metric.scored_labels,
            zero_division=output.metric.zero_division,
            title=self._title(output, result),
            confusion_matrix=self.confusion_matrix,
        )

    def _draw_epoch_images(self, output: _OutputLog, result: _EpochResult) -> list[dict]:
        """Draw the epoch's images; returns their time-stepped image records."""
        result.images = self._draw(output, result)
        prefix = output.prefix(result.report_split)
        return [
            {
                "kind": "image",
                "key": metric_key(prefix, IMAGE_SECTION, stem),
                "step": result.epoch,
                "png": _png_base64(image),
            }
            for stem, image in result.images.items()
        ]

    @staticmethod
    def _title(output: _OutputLog, result: _EpochResult) -> str:
        split = result.report_split
        title = f"{'Validation' if split == 'val' else 'Training'}, epoch {result.epoch}"
        return f"{output.name}: {title}" if output.name else title

    @guarded("draw this epoch's images")
    def _log_epoch_images(self, results: list[tuple[_OutputLog, _EpochResult]]) -> None:
        """Draw each output's figures and queue them as time-stepped images.

        Drawing takes about a second of CPU (in a low-priority process), so the next drawing
        may start only after ``1 / RENDER_TIME_SHARE`` times this one's duration: images then
        take at most that share of wall time, however short the epochs are.
        """
        started = time.monotonic()
        for output, result in results:
            for record in self._draw_epoch_images(output, result):
                self._fit_run.outbox.put(record)
        finished = time.monotonic()
        self._next_render = finished + (finished - started) * (1 / RENDER_TIME_SHARE - 1)

    @guarded("log the final artifacts")
    def _log_final_artifacts(
        self, output: _OutputLog, drawing: concurrent.futures.Executor
    ) -> None:
        """The last finished epoch: its per-epoch artifacts if not logged yet, the reports,
        and the figures, drawn on ``drawing`` (in the render processes) meanwhile: the outbox
        keeps their place (see :class:`~.outbox.Outbox`)."""
        result = self._final_result(output)
        if not result.json_logged:
            self._log_epoch_json(output, result)
        outbox = self._fit_run.outbox
        # Side by side in two render processes: the epoch's images, the end-of-training ones.
        outbox.put(drawing.submit(self._epoch_image_records, output, result))
        outbox.put(drawing.submit(self._final_image_records, output, result))
        self._log_reports(output, result)

    @staticmethod
    def _png_records(output: _OutputLog, images: dict[str, bytes]) -> list[dict]:
        return [
            {
                "kind": "png",
                "artifact_file": f"{output.artifact_dir}/{stem}.png",
                "png": _png_base64(image),
            }
            for stem, image in images.items()
        ]

    @guarded("draw the last epoch's images")
    def _epoch_image_records(self, output: _OutputLog, result: _EpochResult) -> list[dict]:
        """The last epoch's time-stepped images (if not drawn yet) and their PNG artifacts."""
        stepped = [] if result.images is not None else self._draw_epoch_images(output, result)
        return stepped + self._png_records(output, result.images)

    @guarded("draw the end-of-training figures")
    def _final_image_records(self, output: _OutputLog, result: _EpochResult) -> list[dict]:
        """``f1_by_epoch.png`` and, with PR curves on, ``roc_curves.png`` and
        ``calibration.png``."""
        images = {}
        split = result.report_split
        labels = output.metric.scored_labels
        names = [output.class_names[label] for label in labels]
        images.update(
            self._render_process.draw(
                figure="plot_f1_by_epoch",
                f1=np.stack(output.f1_by_epoch[split]),
                class_names=names,
                title=f"F1 by class and epoch ({split})",
            )
        )
        if result.states[split].score_histogram is not None:
            images.update(
                self._render_process.draw(
                    figure="plot_roc_and_calibration",
                    state=result.states[split],
                    scores=result.scores[split],
                    class_names=output.class_names,
                    labels=labels,
                    title=self._title(output, result),
                )
            )
        return self._png_records(output, images)

    @guarded("log the final reports")
    def _log_reports(self, output: _OutputLog, result: _EpochResult) -> None:
        """``thresholds.json``, ``classification_report.json``/``.md`` and ``dashboard.html``."""
        split = result.report_split
        labels = output.metric.scored_labels
        scores = result.scores[split]
        outbox = self._fit_run.outbox
        if "threshold" in scores:
            outbox.put(
                {
                    "kind": "text",
                    "artifact_file": f"{output.artifact_dir}/thresholds.json",
                    "text": json.dumps(
                        report.thresholds_payload(output.class_names, scores, result.epoch, split),
                        indent=2,
                    ),
                }
            )
        document = report.classification_report(
            result.states[split],
            output.class_names,
            labels=labels,
            zero_division=output.metric.zero_division,
            scores=scores,
        )
        document.update(epoch=result.epoch, split=split)
        outbox.put(
            {
                "kind": "text",
                "artifact_file": f"{output.artifact_dir}/classification_report.json",
                "text": report.to_json(document),
            }
        )
        markdown = report.to_markdown(
            document, title=f"Classification report — {split}, epoch {result.epoch}"
        )
        outbox.put(
            {
                "kind": "text",
                "artifact_file": f"{output.artifact_dir}/classification_report.md",
                "text": markdown,
            }
        )
        self._log_dashboard(output, result)

    def _log_dashboard(self, output: _OutputLog, result: _EpochResult) -> None:
        """``dashboard.html`` of the epochs recorded, the last one with its curves."""
        records = output.dashboard_epochs
        final = next((r for r in records if r["epoch"] == result.epoch), None)
        if final is None:
            return
        split = result.report_split
        if "curves" not in final:
            pages.add_curves(final, result.states[split], output.metric.scored_labels)
        metric = output.metric
        data = pages.dashboard_data(
            "Per-class scores" + (f" — output {output.name}" if output.name else ""),
            output.class_names,
            metric.scored_labels,
            metric.task,
            records,
            ignore_class=metric.ignore_class,
        )
        self._fit_run.outbox.put(
            {
                "kind": "text",
                "artifact_file": f"{output.artifact_dir}/dashboard.html",
                "text": pages.dashboard_html(data),
            }
        )

    def on_train_end(self, logs=None):
        if self._fit_run is None:
            return
        self._wait_for_images()
        drawing = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="mcmetrics-final")
        for output in self._outputs:
            if output.last_epoch is not None:
                self._log_final_artifacts(output, drawing)
        # Without waiting, its threads finish the figures after fit() returns (the interpreter
        # waits for them at exit).
        drawing.shutdown(wait=self.wait_for_figures)
        self._finish("FINISHED")

    @guarded("finish the run")
    def _finish(self, status: str) -> None:
        """Deliver what is queued (or spool it) and end the run this callback started."""
        fit_run, self._fit_run = self._fit_run, None
        if fit_run is not None:
            fit_run.finish(status)

    def _wait_for_images(self) -> None:
        if self._renderer is not None:
            self._renderer.shutdown(wait=True)
            self._renderer = None
