"""Where a fit's results go: a :class:`FitLogger` turns them into records of the run's journal.

The callback (:mod:`mlflow_mcmetrics.callback`) hands over each epoch's scores and states; this
module decides what becomes of them and knows nothing of Keras:

* step metrics every epoch, linked to MLflow's logged model for the values the model ends with;
* the artifacts of an epoch (:mod:`mlflow_mcmetrics.artifacts`) every ``log_every_n_epochs``
  (``"auto"``: at most every :data:`AUTO_ARTIFACT_INTERVAL_S` seconds), built on a worker thread;
* the confusion matrix and PR curves of those epochs as time-stepped images, drawn in the
  render processes (:mod:`mlflow_mcmetrics.render`) for at most :data:`RENDER_TIME_SHARE` of
  the wall time;
* at the end, the final epoch's reports, figures, dashboard and per-class history, and the end
  of the run (:mod:`mlflow_mcmetrics.lifecycle`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np

from mlflow_mcmetrics import artifacts, functional, pages, report
from mlflow_mcmetrics.events import guarded
from mlflow_mcmetrics.lifecycle import start_fit_run
from mlflow_mcmetrics.naming import metric_key
from mlflow_mcmetrics.render import RENDERER

__all__ = ["EpochResult", "FitLogger", "Output", "per_class_history"]

#: Stepped images are logged as ``{prefix}plots/confusion_matrix`` and ``{prefix}plots/pr_curves``:
#: the MLflow UI groups charts by the key before ``/``, so they get a section of their own.
IMAGE_SECTION = "plots"
#: Largest share of wall time that drawing per-epoch images may take.
RENDER_TIME_SHARE = 0.1
#: How long before the end of training the second render process is started: it takes about
#: a second to import matplotlib, and draws the end-of-training figures beside the first.
RENDER_WARM_UP_S = 2.0
#: With ``log_every_n_epochs="auto"``: the artifacts of the first epoch ending at least this
#: long after training started or after the previous artifacts, and the last epoch's. On
#: sub-second epochs per-epoch artifacts would cost more than training (benchmarks/README.md).
AUTO_ARTIFACT_INTERVAL_S = 30.0
_SPLIT_PREFIXES = {"train": "", "val": "val_"}


@dataclasses.dataclass
class Output:
    """A classification output of the model: its metric, class names and long-tail groups."""

    name: str | None  # the Keras output name of a multi-output model, else None
    metric: Any  # the ClassificationMetrics that counts it
    class_names: list[str]
    class_keys: list[str]
    groups: functional.ShotGroups | None = None

    def prefix(self, split: str) -> str:
        """Key prefix of a split, as Keras prefixes its logs: ``val_``, ``val_{output}_``."""
        return _SPLIT_PREFIXES[split] + (f"{self.name}_" if self.name else "")

    @property
    def artifact_dir(self) -> str:
        return report.ARTIFACT_DIR if self.name is None else f"{report.ARTIFACT_DIR}/{self.name}"


@dataclasses.dataclass
class EpochResult:
    """One output's epoch: the state and scores of each split."""

    epoch: int
    states: dict[str, functional.ClassificationState]
    scores: dict[str, dict]
    images: dict[str, bytes] | None = None  # its stepped images, once drawn
    files_logged: bool = False

    @property
    def split(self) -> str:
        """The split figures and reports describe: validation if there is one."""
        return "val" if "val" in self.states else "train"


class FitLogger:
    """The records of one fit (see the module docstring).

    Args:
        run_id, tags: the run (default: the active one, or a new one with these tags).
        confusion_matrix: log confusion-matrix artifacts.
        log_every_n_epochs: artifact frequency, an integer or ``"auto"``.
        wait_for_figures: ``finish`` returns once the figures are in the journal.
        planned_epochs: the ``epochs`` of ``fit()``, if known.
        logged_model: gives the id of the model MLflow's autologging logs from the run.
        silent: no warnings.
    """

    def __init__(
        self,
        *,
        run_id: str | None = None,
        tags: dict | None = None,
        confusion_matrix: bool = True,
        log_every_n_epochs: int | str = "auto",
        wait_for_figures: bool = True,
        planned_epochs: int | None = None,
        logged_model: Callable[[str], str | None] | None = None,
        silent: bool = False,
    ):
        self.outputs: list[Output] = []
        self.confusion_matrix = confusion_matrix
        self.log_every_n_epochs = log_every_n_epochs
        self.wait_for_figures = wait_for_figures
        self.planned_epochs = planned_epochs
        self.silent = silent
        self.run = start_fit_run(run_id, silent=silent, tags=tags)
        self.model_id = logged_model(self.run.run_id) if logged_model else None
        RENDERER.start()  # its imports are done (at low priority) before the first figure
        self._worker = concurrent.futures.ThreadPoolExecutor(1, "mcmetrics-artifacts")
        self._drawing: concurrent.futures.Future | None = None
        self._started = self._last_artifacts = time.monotonic()
        self._next_render = 0.0
        self._epochs = 0
        self._dashboard: dict[str | None, list[dict]] = defaultdict(list)
        self._history: dict[str | None, list[dict]] = defaultdict(list)
        self._f1: dict[tuple, list[np.ndarray]] = defaultdict(list)
        self._tables: list[str] = []

    # -- records ------------------------------------------------------------------------------
    def _text(self, path: str, text: str) -> None:
        self.run.log({"kind": "artifact", "path": path}, text.encode(), path.rsplit("/", 1)[-1])

    def _pngs(self, output: Output, images: dict[str, bytes]) -> None:
        for stem, png in images.items():
            path = f"{output.artifact_dir}/{stem}.png"
            self.run.log({"kind": "artifact", "path": path}, png, f"{stem}.png")

    def log_params(self, output: Output, params: dict) -> None:
        """``mcmetrics.{name}`` (``mcmetrics.{output}.{name}`` for a multi-output model)."""
        prefix = "mcmetrics." if output.name is None else f"mcmetrics.{output.name}."
        self.run.log({"kind": "params", "params": {prefix + k: str(v) for k, v in params.items()}})

    def add(self, output: Output) -> None:
        """An output to log (its params and ``labels.json`` now; its groups, when known)."""
        if any(known is output for known in self.outputs):
            return
        self.outputs.append(output)
        metric = output.metric
        self.log_params(
            output,
            {
                name: getattr(metric, name)
                for name in (
                    "task",
                    "num_classes",
                    "from_logits",
                    "threshold",
                    "ignore_class",
                    "pr_thresholds",
                )
            },
        )
        labels = report.labels_payload(output.class_names, output.class_keys, metric.ignore_class)
        self._text(f"{output.artifact_dir}/labels.json", json.dumps(labels, indent=2))
        if output.groups is not None:
            self.log_groups(output)

    def log_groups(self, output: Output) -> None:
        """The long-tail grouping of ``output`` as params: the rule and each group's size."""
        groups = output.groups
        low, high = groups.thresholds
        rule = (
            f"training samples: many > {high:g}, medium {low:g}-{high:g}, few < {low:g}"
            if groups.rule == "thresholds"
            else "thirds of the classes by training samples"
        )
        sizes = ", ".join(f"{group} {size}" for group, size in groups.sizes.items())
        self.log_params(output, {"shot_groups": rule, "shot_group_sizes": sizes})

    # -- per epoch ----------------------------------------------------------------------------
    def log_epoch(
        self, epoch: int, results: dict, values: dict[str, float], *, last: bool, link: bool
    ) -> None:
        """An epoch's step metrics (linked to MLflow's model when ``link``: the values the
        model ends with) and, when due, its artifacts and images."""
        timestamp = int(time.time() * 1000)
        record = {
            "kind": "metrics",
            "metrics": [[k, v, timestamp, epoch] for k, v in values.items()],
        }
        if self.model_id is not None:
            if link:
                record["model_id"] = self.model_id
            if epoch == 0:
                # MLflow's model logging copies every step-0 metric of the run onto its model
                # and, with more than 100 keys at step 0, fails on a duplicate insert (MLflow
                # 3.17's SqlAlchemyStore._log_model_metrics): epoch 0 goes after it.
                record["after_model"] = self.model_id
        self.run.log(record)
        self._epochs += 1
        if self._ends_soon(epoch):
            RENDERER.start(processes=2)
        due = self._artifacts_due(epoch) and not last  # the last epoch's come with the end
        if due:
            self._last_artifacts = time.monotonic()
        pairs = [
            (output, results[output.name]) for output in self.outputs if output.name in results
        ]
        for output, result in pairs:  # here, so that the final figure has every epoch's
            for split, scores in result.scores.items():
                self._f1[output.name, split].append(np.asarray(scores["f1"]))
        self._worker.submit(self._keep, pairs, due)
        if due:
            self._worker.submit(self._epoch_files, pairs)
            idle = self._drawing is None or self._drawing.done()
            if idle and time.monotonic() >= self._next_render:
                self._drawing = self._worker.submit(self._stepped_images, pairs)

    def log_restored(self, step: int, values: dict[str, float]) -> None:
        """The values of the epoch whose weights the model ended with, once more at ``step``
        (after the last epoch), linked to MLflow's logged model, as MLflow logs its own."""
        rows = [[k, v, int(time.time() * 1000), step] for k, v in values.items()]
        record = {"kind": "metrics", "metrics": rows}
        if self.model_id is not None:
            record["model_id"] = self.model_id
        self.run.log(record)

    def _ends_soon(self, epoch: int) -> bool:
        """Whether training probably ends within :data:`RENDER_WARM_UP_S` (at the mean epoch
        duration so far), or with the next epoch."""
        if not self.planned_epochs:
            return False
        mean_epoch = (time.monotonic() - self._started) / self._epochs
        remaining = self.planned_epochs - 1 - epoch
        return remaining * mean_epoch <= RENDER_WARM_UP_S or remaining <= 1

    def _artifacts_due(self, epoch: int) -> bool:
        if self.log_every_n_epochs != "auto":
            return epoch % self.log_every_n_epochs == 0
        return time.monotonic() - self._last_artifacts >= AUTO_ARTIFACT_INTERVAL_S

    @guarded("keep this epoch's per-class values")
    def _keep(self, pairs, curves: bool) -> None:
        """The epoch's rows of the per-class history and its dashboard record."""
        for output, result in pairs:
            labels = output.metric.scored_labels
            for split, scores in result.scores.items():
                rows = {"epoch": [result.epoch] * len(labels), "split": [split] * len(labels)}
                rows.update(
                    artifacts.per_class_rows(
                        scores, output.class_names, labels, groups=output.groups
                    )
                )
                self._history[output.name].append(rows)
            split = result.split
            train = result.states.get("train")
            self._dashboard[output.name].append(
                pages.epoch_record(
                    result.epoch,
                    split,
                    result.states[split],
                    result.scores[split],
                    labels,
                    curves=curves,
                    train_support=None if train is None else train.stat_scores[2],
                )
            )

    @guarded("log this epoch's artifacts")
    def _epoch_files(self, pairs) -> None:
        for output, result in pairs:
            folder = f"{output.artifact_dir}/epochs/{result.epoch:04d}"
            tables = []
            for split, state in result.states.items():
                files = artifacts.split_files(
                    state,
                    result.scores[split],
                    output.class_names,
                    output.metric.scored_labels,
                    split=split,
                    epoch=result.epoch,
                    confusion_matrix=self.confusion_matrix,
                    groups=output.groups,
                )
                for name, text in files.items():
                    self._text(f"{folder}/{split}_{name}", text)
                tables.append(f"{folder}/{split}_per_class.json")
            result.files_logged = True
            self._register_tables(tables)

    def _register_tables(self, paths: list[str]) -> None:
        """Make the Artifacts tab show the per-class tables as tables (``mlflow.log_table``'s
        run tag), the latest ones where the tag cannot hold all."""
        current = [{"path": path, "type": "table"} for path in self._tables]
        entries = artifacts.registered_tables(current, paths)
        self._tables = [entry["path"] for entry in entries]
        self.run.log(
            {"kind": "tags", "tags": {artifacts.LOGGED_ARTIFACTS_TAG: json.dumps(entries)}}
        )

    def _draw(self, output: Output, result: EpochResult) -> dict[str, bytes]:
        """The result's confusion-matrix and PR-curve images, by stem, drawn once."""
        if result.images is None:
            split = result.split
            title = f"{'Validation' if split == 'val' else 'Training'}, epoch {result.epoch}"
            result.images = RENDERER.call(
                {
                    "figure": "plot_state",
                    "state": result.states[split],
                    "scores": result.scores[split],
                    "class_names": output.class_names,
                    "labels": output.metric.scored_labels,
                    "zero_division": output.metric.zero_division,
                    "title": f"{output.name}: {title}" if output.name else title,
                    "confusion_matrix": self.confusion_matrix,
                }
            )
            for stem, png in result.images.items():
                key = metric_key(output.prefix(split), IMAGE_SECTION, stem)
                self.run.log(
                    {"kind": "image", "key": key, "step": result.epoch}, png, f"{stem}.png"
                )
        return result.images

    @guarded("draw this epoch's images")
    def _stepped_images(self, pairs) -> None:
        """Draw the images (about a second of CPU in a low-priority process); the next drawing
        may start only ``1 / RENDER_TIME_SHARE`` times this one's duration later."""
        started = time.monotonic()
        for output, result in pairs:
            self._draw(output, result)
        finished = time.monotonic()
        self._next_render = finished + (finished - started) * (1 / RENDER_TIME_SHARE - 1)

    # -- the end ------------------------------------------------------------------------------
    def finish(self, final: dict, *, status: str = "FINISHED", note: str = "") -> None:
        """The final epoch's artifacts, reports, dashboard, history and figures, then the end of
        the fit (:meth:`~.lifecycle.FitRun.finish`). ``note``: said in the report's title."""
        drawing = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="mcmetrics-final")
        for output in self.outputs:
            result = final.get(output.name)
            if result is None:
                continue
            if not result.files_logged:
                self._worker.submit(self._epoch_files, [(output, result)])
            self._worker.submit(self._reports, output, result, note)
            # Side by side in the two render processes: the epoch's images, the final ones.
            for job in (self._final_epoch_images, self._final_figures):
                future = drawing.submit(job, output, result)
                if not self.wait_for_figures:
                    self.run.drawing(future)
        self._worker.shutdown(wait=True)
        # Without waiting, the drawing threads finish after fit() returns (flush() and the
        # interpreter's exit wait for them).
        drawing.shutdown(wait=self.wait_for_figures)
        self.run.finish(status)

    @guarded("log the final reports")
    def _reports(self, output: Output, result: EpochResult, note: str) -> None:
        """``classification_report.json``/``.md``, ``thresholds.json``, ``dashboard.html``
        and ``per_class_history.parquet``."""
        split, labels, metric = result.split, output.metric.scored_labels, output.metric
        files = artifacts.report_files(
            result.states[split],
            result.scores[split],
            output.class_names,
            labels,
            split=split,
            epoch=result.epoch,
            zero_division=metric.zero_division,
            groups=output.groups,
            note=note,
        )
        for name, text in files.items():
            self._text(f"{output.artifact_dir}/{name}", text)
        records = self._dashboard[output.name]
        final = next((r for r in records if r["epoch"] == result.epoch), None)
        if final is not None and "curves" not in final:
            pages.add_curves(final, result.states[split], labels)
        if records:
            data = pages.dashboard_data(
                "Per-class scores" + (f" — output {output.name}" if output.name else ""),
                output.class_names,
                labels,
                metric.task,
                records,
                ignore_class=metric.ignore_class,
                groups=output.groups,
            )
            self._text(f"{output.artifact_dir}/dashboard.html", pages.dashboard_html(data))
        rows = self._history[output.name]
        if rows:
            columns = {name: np.concatenate([row[name] for row in rows]) for name in rows[0]}
            path = f"{output.artifact_dir}/per_class_history.parquet"
            parquet = artifacts.history_parquet(columns)
            self.run.log({"kind": "artifact", "path": path}, parquet, "per_class_history.parquet")

    @guarded("draw the last epoch's images")
    def _final_epoch_images(self, output: Output, result: EpochResult) -> None:
        self._pngs(output, self._draw(output, result))

    @guarded("draw the end-of-training figures")
    def _final_figures(self, output: Output, result: EpochResult) -> None:
        """``f1_by_epoch.png`` and, with score histograms, ``roc_curves.png`` and
        ``calibration.png``."""
        split, labels = result.split, output.metric.scored_labels
        f1 = self._f1[output.name, split]
        images = RENDERER.call(
            {
                "figure": "plot_f1_by_epoch",
                "f1": np.stack(f1),
                "class_names": [output.class_names[label] for label in labels],
                "title": f"F1 by class and epoch ({split})",
            }
        )
        if result.states[split].score_histogram is not None:
            images.update(
                RENDERER.call(
                    {
                        "figure": "plot_roc_and_calibration",
                        "state": result.states[split],
                        "scores": result.scores[split],
                        "class_names": output.class_names,
                        "labels": labels,
                        "title": f"{'Validation' if split == 'val' else 'Training'}, "
                        f"epoch {result.epoch}",
                    }
                )
            )
        self._pngs(output, images)


def per_class_history(run_id: str, output: str | None = None):
    """Every per-class value of every epoch of a run, as a pandas DataFrame.

    One row per epoch, split and class: ``epoch``, ``split`` (``train``/``val``), ``index``,
    ``class``, ``precision``, ``recall``, ``f1``, ``support``, ``ap``, ``roc_auc``, ``group``
    and ``training_samples``, from the run's ``mcmetrics/per_class_history.parquet``
    (``mcmetrics/{output}/...`` for an output of a multi-output model).
    """
    import mlflow
    import pandas as pd

    folder = report.ARTIFACT_DIR if output is None else f"{report.ARTIFACT_DIR}/{output}"
    path = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path=f"{folder}/per_class_history.parquet"
    )
    return pd.read_parquet(path)
