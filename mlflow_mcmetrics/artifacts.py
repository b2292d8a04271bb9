"""Every file this package logs, built from a split's state and scores (no Keras, no MLflow).

One builder for the training path (:mod:`mlflow_mcmetrics.logger`) and the evaluator
(:mod:`mlflow_mcmetrics.evaluator`), so both write one JSON layout. Each function returns
``{file name: text}``; the caller decides the folder (``mcmetrics/epochs/0004/`` with a
``val_`` prefix, ``mcmetrics/``, ``mcmetrics/test/``).

The per-class table is MLflow's table format (``mlflow.log_table``'s JSON: ``{"columns",
"data"}``), so the Artifacts tab shows it as a sortable table once it is registered in the
run's ``mlflow.loggedArtifacts`` tag (:func:`registered_tables`).
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence

import numpy as np

from mlflow_mcmetrics import functional, report

__all__ = [
    "LOGGED_ARTIFACTS_TAG",
    "TABLE_COLUMNS",
    "history_parquet",
    "per_class_rows",
    "registered_tables",
    "report_files",
    "split_files",
]

#: MLflow's run tag listing the artifacts its UI shows as tables (``mlflow.log_table``).
LOGGED_ARTIFACTS_TAG = "mlflow.loggedArtifacts"
#: MLflow's limit on a tag value.
MAX_TAG_LENGTH = 8000
#: The per-class table's columns, in order; ``ap`` and ``roc_auc`` are null without curves.
TABLE_COLUMNS = (
    "class",
    "index",
    "precision",
    "recall",
    "f1",
    "support",
    "ap",
    "roc_auc",
    "group",
    "training_samples",
)


def _json(payload: dict) -> str:
    # Compact: indented, a 1000-class matrix is 11 MB instead of 2.
    return json.dumps(payload, separators=(",", ":"))


def per_class_rows(
    scores: dict,
    class_names: Sequence[str],
    labels: Sequence[int],
    *,
    groups: functional.ShotGroups | None = None,
) -> dict[str, list]:
    """The per-class columns of :data:`TABLE_COLUMNS` over ``labels`` (NaN for a value the
    split does not have)."""
    missing = [float("nan")] * len(labels)

    def column(name):
        return np.asarray(scores[name], dtype=np.float64).tolist() if name in scores else missing

    return {
        "class": [class_names[label] for label in labels],
        "index": [int(label) for label in labels],
        **{
            name: column(name) for name in ("precision", "recall", "f1", "support", "ap", "roc_auc")
        },
        "group": [str(groups.groups[label]) if groups else "" for label in labels],
        "training_samples": [float(groups.counts[label]) if groups else None for label in labels],
    }


def split_files(
    state: functional.ClassificationState,
    scores: dict,
    class_names: Sequence[str],
    labels: Sequence[int],
    *,
    split: str,
    epoch: int | None,
    confusion_matrix: bool = True,
    groups: functional.ShotGroups | None = None,
) -> dict[str, str]:
    """A split's files: ``confusion_matrix.json`` (with a matrix), ``pr_curves.json``,
    ``roc_curves.json``, ``calibration.json`` (with score histograms) and ``per_class.json``
    (the per-class table)."""
    files = {}
    if confusion_matrix and state.confusion_matrix is not None:
        files["confusion_matrix.json"] = _json(
            report.confusion_matrix_payload(state, class_names, epoch, split)
        )
    if state.score_histogram is not None:
        for stem, payload in report.CURVE_PAYLOADS.items():
            files[f"{stem}.json"] = _json(payload(state, class_names, labels, scores))
    rows = per_class_rows(scores, class_names, labels, groups=groups)
    table = {
        "columns": list(TABLE_COLUMNS),
        "data": [list(row) for row in zip(*(rows[name] for name in TABLE_COLUMNS), strict=True)],
    }
    # NaN is not JSON: MLflow's tables write null.
    files["per_class.json"] = json.dumps(table, separators=(",", ":")).replace("NaN", "null")
    return files


def report_files(
    state: functional.ClassificationState,
    scores: dict,
    class_names: Sequence[str],
    labels: Sequence[int],
    *,
    split: str,
    epoch: int | None,
    zero_division: float = 0.0,
    groups: functional.ShotGroups | None = None,
    note: str = "",
) -> dict[str, str]:
    """``classification_report.json`` and ``.md`` and, with decision thresholds (binary,
    multilabel), ``thresholds.json``; ``note`` goes into the report's title (e.g. which
    epoch's weights the model ended with)."""
    document = report.classification_report(
        state, class_names, labels=labels, zero_division=zero_division, scores=scores, groups=groups
    )
    document.update(epoch=epoch, split=split)
    title = f"Classification report — {split}" + ("" if epoch is None else f", epoch {epoch}")
    files = {
        "classification_report.json": report.to_json(document),
        "classification_report.md": report.to_markdown(document, title=title + note),
    }
    if "threshold" in scores:
        files["thresholds.json"] = json.dumps(
            report.thresholds_payload(class_names, scores, epoch, split), indent=2
        )
    return files


def history_parquet(columns: dict[str, np.ndarray]) -> bytes:
    """The long-format per-class history (one row per epoch, split and class) as Parquet."""
    import pandas as pd

    frame = pd.DataFrame(columns)
    for name in ("split", "class", "group"):
        frame[name] = frame[name].astype("category")
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def registered_tables(current: list[dict], paths: Sequence[str]) -> list[dict]:
    """``mlflow.loggedArtifacts`` with ``paths`` added as tables, the oldest tables left out
    where the list would not fit MLflow's tag limit (their files stay)."""
    entries = current + [{"path": path, "type": "table"} for path in paths]
    while len(json.dumps(entries)) > MAX_TAG_LENGTH and entries:
        entries.pop(0)
    return entries
