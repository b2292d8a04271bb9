"""The Keras callback: moves the metric state to the host once per epoch and logs it to MLflow."""

from __future__ import annotations

import atexit
import base64
import concurrent.futures
import dataclasses
import functools
import io
import json
import os
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence

import keras
import mlflow
import numpy as np
from mlflow.tracking import MlflowClient

from mlflow_mcmetrics import functional, plots, report
from mlflow_mcmetrics.metrics import ClassificationMetrics
from mlflow_mcmetrics.naming import class_key_components, metric_key
from mlflow_mcmetrics.outbox import Outbox, bounded_http
from mlflow_mcmetrics.render import RenderProcess
from mlflow_mcmetrics.report import ARTIFACT_DIR

__all__ = [
    "ARTIFACT_DIR",
    "MCMetricsCallback",
    "find_metric",
    "first_classification_metric",
    "is_chief",
    "metric_scores",
]

#: Callbacks logging a fit() that has not reached on_train_end. One whose fit() raised is
#: closed when the next fit() in its run's thread starts, or at exit (see _close_unfinished_fits).
_UNFINISHED_FITS: set["MCMetricsCallback"] = set()
#: Stepped images are logged as ``{prefix}plots/confusion_matrix`` and ``{prefix}plots/pr_curves``:
#: the MLflow UI groups charts by the key before ``/``, so they get a section of their own.
IMAGE_SECTION = "plots"
#: Largest share of wall time that drawing per-epoch images may take (see _log_epoch_images).
RENDER_TIME_SHARE = 0.1

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
        candidates += keras.tree.flatten([config.get("metrics") or [], config.get("weighted_metrics") or []])
    return first_classification_metric(candidates)


def metric_scores(state: functional.ClassificationState, metric: ClassificationMetrics) -> dict:
    """:func:`functional.classification_scores` of ``state`` with ``metric``'s scored classes
    and ``zero_division``: what the callback logs for a split."""
    return functional.classification_scores(state, labels=metric.scored_labels, zero_division=metric.zero_division)


class MCMetricsCallback(keras.callbacks.Callback):
    """Logs a :class:`ClassificationMetrics` state to MLflow: step metrics every epoch, artifacts.

    At the end of every epoch it reads the metric state (one device-to-host copy per split),
    computes per-class precision/recall/F1 (and AP with PR curves on) with
    :mod:`mlflow_mcmetrics.functional`, and logs them with ``step=epoch``: training values
    without prefix, validation values with ``val_``. The training state is read in
    ``on_test_begin``, before Keras resets the metrics for validation.

    Every ``log_every_n_epochs`` epochs (and for the last epoch) it also logs
    ``mcmetrics/epochs/{epoch:04d}/{split}_confusion_matrix.json`` and ``..._pr_curves.json``,
    and the confusion-matrix and PR-curve images of the report split (validation if present,
    else training) as time-stepped images (keys ``{prefix}plots/confusion_matrix``,
    ``{prefix}plots/pr_curves``, a section of their own in the MLflow UI). Images are drawn in
    a low-priority child process (:mod:`mlflow_mcmetrics.render`) and logged from a background
    thread: an epoch whose images would queue behind a render still running gets none (its
    JSON is always logged). When training ends: ``mcmetrics/confusion_matrix.png``,
    ``pr_curves.png``, ``f1_by_epoch.png`` and ``classification_report.json``/``.md`` for the
    last epoch.

    Args:
        class_names: one name per class (default ``"0"`` .. ``"C-1"``).
        metric: the metric to read; by default the first ``ClassificationMetrics`` compiled
            into the model.
        log_train: log the training split too (validation is always logged when present).
        log_to_mlflow: ``False`` only fills :attr:`history`. In multi-worker training only
            the chief logs (see :func:`is_chief`); every worker keeps the history.
        confusion_matrix: log confusion-matrix artifacts.
        log_every_n_epochs: artifact frequency; step metrics are logged every epoch.
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
        confusion_matrix: bool = True,
        log_every_n_epochs: int = 1,
        skip_keras_logs: bool = False,
        run_id: str | None = None,
    ):
        super().__init__()
        if log_every_n_epochs < 1:
            raise ValueError(f"log_every_n_epochs must be >= 1, got {log_every_n_epochs}.")
        self.class_names = None if class_names is None else [str(n) for n in class_names]
        self.metric = metric
        self.log_train = log_train
        self.log_to_mlflow = log_to_mlflow
        self.confusion_matrix = confusion_matrix
        self.log_every_n_epochs = log_every_n_epochs
        self.skip_keras_logs = skip_keras_logs
        self.run_id = run_id
        self.history: dict[str, list[float]] = defaultdict(list)
        self.class_keys: list[str] = []
        self._client: MlflowClient | None = None
        self._outbox: Outbox | None = None
        self._run_id: str | None = None
        self._owned_run = None
        self._train_state: functional.ClassificationState | None = None
        self._validated = False
        self._last_epoch: _EpochResult | None = None
        self._f1_by_epoch: dict[str, list[np.ndarray]] = defaultdict(list)
        self._renderer: concurrent.futures.ThreadPoolExecutor | None = None
        self._render_process: RenderProcess | None = None
        self._rendering: concurrent.futures.Future | None = None
        self._next_render = 0.0

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
        self.history.clear()  # like keras.callbacks.History: one fit() at a time
        self._last_epoch = None
        self._f1_by_epoch.clear()
        if self.log_to_mlflow and is_chief():
            self._start_logging()

    def _start_logging(self):
        self._client = MlflowClient()
        self._run_id = self.run_id
        if self._run_id is None:
            active = mlflow.active_run()
            raised = _unfinished_fit_that_started(active)
            if raised is not None:
                # A fit() that raised (KeyboardInterrupt, an error) never reached
                # on_train_end: close its run as MLflow autologging does, don't log into it.
                raised._finish("KILLED")
                active = None
            if active is None:
                active = self._owned_run = mlflow.start_run()
            self._run_id = active.info.run_id
        _UNFINISHED_FITS.add(self)
        metric = self.metric
        params = {
            "mcmetrics.task": metric.task,
            "mcmetrics.num_classes": metric.num_classes,
            "mcmetrics.from_logits": metric.from_logits,
            "mcmetrics.threshold": metric.threshold,
            "mcmetrics.ignore_class": metric.ignore_class,
            "mcmetrics.pr_thresholds": metric.pr_thresholds,
        }
        self._outbox = Outbox(self._run_id, self._client)
        self._outbox.put({"kind": "params", "params": {key: str(value) for key, value in params.items()}})
        labels = report.labels_payload(self.class_names, self.class_keys, metric.ignore_class)
        self._outbox.put({"kind": "text", "artifact_file": f"{ARTIFACT_DIR}/labels.json", "text": json.dumps(labels, indent=2)})
        self._renderer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="mcmetrics-render")
        self._render_process = RenderProcess()

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
        splits: dict[str, functional.ClassificationState] = {}
        if self.log_train:
            splits["train"] = self._train_state if self._validated else self._read_state("train")
        if self._validated:
            splits["val"] = self._read_state("val")
        for split in [split for split, state in splits.items() if state.num_samples == 0]:
            # An empty split (e.g. validation_data with no rows) would log zero_division values
            # as if they were scores: log nothing for it instead.
            warnings.warn(
                f"mlflow_mcmetrics counted no {split} samples in epoch {epoch}, so nothing is logged for "
                f"that split: check that the {'validation_data' if split == 'val' else 'training data'} "
                "is not empty (and its labels are in range).",
                stacklevel=2,
            )
            del splits[split]
        if not splits:
            return
        result = _EpochResult(epoch, {split: self._scores(state) for split, state in splits.items()}, splits)
        values = {}
        for split, scores in result.scores.items():
            values.update(report.metric_values(scores, self.metric.scored_labels, self.class_keys, _SPLIT_PREFIXES[split]))
            self._f1_by_epoch[split].append(scores["f1"])
        for key, value in values.items():
            self.history[key].append(value)
        self._last_epoch = result
        if self._client is None:
            return
        if self.skip_keras_logs and logs:
            values = {key: value for key, value in values.items() if key not in logs}
        self._outbox.flush()  # retry what an outage left queued, once per epoch
        timestamp = int(time.time() * 1000)
        self._outbox.put({"kind": "metrics", "metrics": [[key, value, timestamp, epoch] for key, value in values.items()]})
        if epoch % self.log_every_n_epochs == 0:
            self._log_epoch_json(result)
            idle = self._rendering is None or self._rendering.done()
            if idle and time.monotonic() >= self._next_render:
                self._rendering = self._renderer.submit(self._log_epoch_images, result)

    def _scores(self, state):
        return metric_scores(state, self.metric)

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

    # -- artifacts ---------------------------------------------------------------------------
    def _log_json(self, make_payload: Callable[[], dict], artifact_file: str) -> None:
        """Queue ``make_payload()`` as compact JSON; the outbox's sender builds it (a 1000-class
        state takes half a second to serialise), so the training thread does not."""

        def record():
            # Compact: indented, a 1000-class matrix is 11 MB instead of 2.
            return {"kind": "text", "artifact_file": artifact_file, "text": json.dumps(make_payload(), separators=(",", ":"))}

        self._outbox.put(record)

    def _log_epoch_json(self, result: "_EpochResult") -> None:
        folder = f"{ARTIFACT_DIR}/epochs/{result.epoch:04d}"
        labels = self.metric.scored_labels
        for split, state in result.states.items():
            if self.confusion_matrix:
                self._log_json(
                    functools.partial(report.confusion_matrix_payload, state, self.class_names, result.epoch, split),
                    f"{folder}/{split}_confusion_matrix.json",
                )
            if state.score_histogram is not None:
                self._log_json(
                    functools.partial(report.pr_curves_payload, state, self.class_names, labels, result.scores[split]),
                    f"{folder}/{split}_pr_curves.json",
                )
        result.json_logged = True

    def _draw(self, result: "_EpochResult") -> dict[str, np.ndarray]:
        """The report split's confusion-matrix and PR-curve images, by artifact stem, drawn
        in the render process (see :mod:`mlflow_mcmetrics.render`)."""
        split = result.report_split
        title = f"{'Validation' if split == 'val' else 'Training'}, epoch {result.epoch}"
        return self._render_process.draw(
            state=result.states[split], scores=result.scores[split], class_names=self.class_names,
            labels=self.metric.scored_labels, zero_division=self.metric.zero_division, title=title,
            confusion_matrix=self.confusion_matrix,
        )

    def _log_epoch_images(self, result: "_EpochResult") -> dict[str, np.ndarray]:
        """Draw the report split's figures and log them as time-stepped images.

        Drawing takes about a second of CPU (in a low-priority process), so the next drawing
        may start only after ``1 / RENDER_TIME_SHARE`` times this one's duration: images then
        take at most that share of wall time, however short the epochs are.
        """
        started = time.monotonic()
        prefix = _SPLIT_PREFIXES[result.report_split]
        images = self._draw(result)
        try:
            with bounded_http():
                for stem, image in images.items():
                    key = metric_key(prefix, IMAGE_SECTION, stem)
                    self._client.log_image(self._run_id, image, key=key, step=result.epoch, synchronous=True)
        except Exception as error:  # noqa: BLE001 - stepped images are best effort; values are not
            warnings.warn(f"mlflow_mcmetrics skipped epoch {result.epoch}'s images: {error}", stacklevel=2)
        finished = time.monotonic()
        self._next_render = finished + (finished - started) * (1 / RENDER_TIME_SHARE - 1)
        result.images = images
        return images

    def _log_final_artifacts(self, result: "_EpochResult") -> None:
        """The last finished epoch: its per-epoch artifacts if not logged yet, the PNGs, reports."""
        if not result.json_logged:
            self._log_epoch_json(result)
        images = dict(result.images or self._log_epoch_images(result))
        split = result.report_split
        names = [self.class_names[label] for label in self.metric.scored_labels]
        images["f1_by_epoch"] = plots.figure_to_array(
            plots.plot_f1_by_epoch(np.stack(self._f1_by_epoch[split]), names, title=f"F1 by class and epoch ({split})")
        )
        for stem, image in images.items():
            self._outbox.put({"kind": "png", "artifact_file": f"{ARTIFACT_DIR}/{stem}.png", "png": _png_base64(image)})
        document = report.classification_report(
            result.states[split], self.class_names, labels=self.metric.scored_labels,
            zero_division=self.metric.zero_division, scores=result.scores[split],
        )
        document.update(epoch=result.epoch, split=split)
        self._outbox.put({"kind": "text", "artifact_file": f"{ARTIFACT_DIR}/classification_report.json",
                          "text": report.to_json(document)})
        markdown = report.to_markdown(document, title=f"Classification report — {split}, epoch {result.epoch}")
        self._outbox.put({"kind": "text", "artifact_file": f"{ARTIFACT_DIR}/classification_report.md", "text": markdown})

    def on_train_end(self, logs=None):
        self._wait_for_images()
        if self._client is not None and self._last_epoch is not None:
            self._log_final_artifacts(self._last_epoch)
        self._finish("FINISHED")

    def _wait_for_images(self) -> None:
        if self._renderer is not None:
            self._renderer.shutdown(wait=True)
            self._renderer = None

    def _owns(self, run_id: str) -> bool:
        return self._owned_run is not None and self._owned_run.info.run_id == run_id

    def _finish(self, status: str) -> None:
        """Deliver what is queued (or spool it), stop the render process, and end the run this
        callback started with ``status``."""
        _UNFINISHED_FITS.discard(self)
        self._wait_for_images()
        if self._client is not None:
            self._render_process.close()
            self._outbox.close()
            self._client = None
        if self._owned_run is not None:
            run_id, self._owned_run = self._owned_run.info.run_id, None
            active = mlflow.active_run()
            if active is not None and active.info.run_id == run_id:
                mlflow.end_run(status)
            else:  # started in another thread, whose run stack this one cannot pop
                MlflowClient().set_terminated(run_id, status)


def _unfinished_fit_that_started(run) -> MCMetricsCallback | None:
    if run is None:
        return None
    return next((fit for fit in list(_UNFINISHED_FITS) if fit._owns(run.info.run_id)), None)


@atexit.register
def _close_unfinished_fits() -> None:
    """Runs before MLflow's own exit handler (registered earlier), which would end the active
    run as FINISHED and drop what the sender thread still holds: a fit() that raised gets its
    queued records delivered or spooled, and the run it started is ended as KILLED."""
    for fit in list(_UNFINISHED_FITS):
        fit._finish("KILLED")


def _png_base64(image: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


@dataclasses.dataclass
class _EpochResult:
    epoch: int
    scores: dict[str, dict]
    states: dict[str, functional.ClassificationState]
    json_logged: bool = False
    images: dict[str, np.ndarray] | None = None

    @property
    def report_split(self) -> str:
        return "val" if "val" in self.states else "train"
