"""Self-contained interactive pages: ``mcmetrics/dashboard.html`` per run, ``comparison.html``
per comparison.

The MLflow UI shows an ``.html`` artifact in a sandboxed iframe that runs scripts, so a page
that carries its data, JavaScript and CSS inline is the per-class view the UI lacks. It needs
no network. The JavaScript and CSS live in ``static/`` beside this module; here the data is
gathered (compactly: sparse confusion matrices, thinned curves, rounded scores) and the page
assembled.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping, Sequence
from importlib import resources

import numpy as np

from mlflow_mcmetrics import functional, report

__all__ = [
    "add_curves",
    "comparison_data",
    "comparison_html",
    "dashboard_data",
    "dashboard_html",
    "epoch_record",
]

#: Curve points per class and epoch: at most this many...
MAX_CURVE_POINTS = 50
#: ...and at least this many, within about this many curve numbers per epoch (so that 1000
#: classes x 10 epochs stays a few MB).
MIN_CURVE_POINTS = 8
CURVE_NUMBERS_PER_EPOCH = 20_000
#: The page shows 4 decimals; 6 keep the numbers equal to the logged ones at that precision.
DECIMALS = 6
CURVE_DECIMALS = 3
#: Per-class scores shown on the dashboard, when the split has them.
PER_CLASS = ("precision", "recall", "f1", "support", "ap", "roc_auc")


def _values(values, decimals: int = DECIMALS) -> list:
    """Rounded floats, integers as integers, NaN as null (JSON has no NaN)."""
    values = np.round(np.asarray(values, dtype=np.float64), decimals)
    return [
        None if np.isnan(value) else int(value) if value.is_integer() else float(value)
        for value in values.tolist()
    ]


def _thinned(xs: Sequence[float], ys: Sequence[float], points: int) -> list[list]:
    """At most ``points`` of a curve's points, evenly spaced along it, both ends kept."""
    xs, ys = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
    if len(xs) > points:
        keep = np.unique(np.linspace(0, len(xs) - 1, points).round().astype(int))
        xs, ys = xs[keep], ys[keep]
    return [_values(xs, CURVE_DECIMALS), _values(ys, CURVE_DECIMALS)]


def _sparse_matrix(matrix: np.ndarray) -> list:
    """``[flat index, count, flat index, count, ...]`` of the non-zero cells (row-major; a
    multilabel matrix as ``C x [tn, fp, fn, tp]``)."""
    flat = np.asarray(matrix, dtype=np.float64).reshape(-1)
    cells = np.flatnonzero(flat)
    pairs = np.empty(2 * len(cells))
    pairs[0::2], pairs[1::2] = cells, flat[cells]
    return _values(pairs)


def _curves(state: functional.ClassificationState, labels: Sequence[int]) -> dict:
    points = int(
        np.clip(
            CURVE_NUMBERS_PER_EPOCH // (4 * max(len(labels), 1)), MIN_CURVE_POINTS, MAX_CURVE_POINTS
        )
    )
    pr_points = functional.precision_recall_points_from_histogram(state.score_histogram)
    roc_points = functional.roc_points_from_histogram(state.score_histogram)
    num_bins = functional.reliability_bins(state.score_histogram.shape[2])
    fraction, _, edges = functional.reliability_curve_from_histogram(
        state.score_histogram, num_bins
    )
    pr, roc = [], []
    for label in labels:
        precision, recall, _ = pr_points[label]
        pr.append(_thinned(recall, precision, points))
        fpr, tpr, _ = roc_points[label]
        roc.append(_thinned(fpr[::-1], tpr[::-1], points))
    return {
        "pr": pr,
        "roc": roc,
        "reliability": {
            "centres": _values((edges[:-1] + edges[1:]) / 2),
            "fractions": [_values(fraction[label], CURVE_DECIMALS) for label in labels],
        },
    }


def epoch_record(
    epoch: int,
    split: str,
    state: functional.ClassificationState,
    scores: dict,
    labels: Sequence[int],
    *,
    curves: bool,
    train_support: np.ndarray | None = None,
) -> dict:
    """One epoch of the dashboard: the split's per-class scores and averages, its confusion
    matrix (sparse; none when the state keeps per-class counts only) and, with ``curves`` and
    a score histogram, its PR, ROC and reliability curves (thinned). ``scores`` is
    :func:`functional.classification_scores` of ``state`` for the scored ``labels``;
    ``train_support`` the training split's samples per class this epoch, from which
    :func:`dashboard_data` groups the classes when it is given no groups."""
    record = {
        "epoch": epoch,
        "split": split,
        "scores": {name: _values(scores[name]) for name in PER_CLASS if name in scores},
        "averages": {
            name: _values([scores[name]])[0] for name in report.SPLIT_SCORES if name in scores
        },
    }
    if state.confusion_matrix is not None:
        record["matrix"] = _sparse_matrix(state.confusion_matrix)
    if train_support is not None:
        record["train_support"] = _values(train_support)
    if "threshold" in scores:
        record["thresholds"] = {
            "labels": [int(label) for label in scores["threshold_labels"]],
            "values": _values(scores["threshold"]),
            "f1": _values(scores["f1_at_threshold"]),
        }
    if curves:
        add_curves(record, state, labels)
    return record


def add_curves(record: dict, state: functional.ClassificationState, labels: Sequence[int]) -> None:
    """Give ``record`` its epoch's curves (nothing without a score histogram)."""
    if state.score_histogram is not None:
        record["curves"] = _curves(state, labels)


def dashboard_data(
    title: str,
    class_names: Sequence[str],
    labels: Sequence[int],
    task: str,
    records: Sequence[dict],
    ignore_class: int | None = None,
    *,
    groups: functional.ShotGroups | None = None,
) -> dict:
    """The dashboard's data: the records of one split (that of the last record), in order,
    and the long-tail group of each class: ``groups``, else grouped by the training support
    of the first record that has it (the first epoch's; :func:`functional.shot_groups`)."""
    split = records[-1]["split"]
    if groups is None:
        support = next((r["train_support"] for r in records if "train_support" in r), None)
        if support is not None:
            groups = functional.shot_groups(support, labels=labels)
    return {
        "title": title,
        "task": task,
        "split": split,
        "classes": list(class_names),
        "labels": [int(label) for label in labels],
        "ignore_class": ignore_class,
        "groups": None
        if groups is None
        else {
            "rule": groups.rule,
            "thresholds": list(groups.thresholds),
            "sizes": groups.sizes,
            "of_class": groups.groups.tolist(),
            "counts": _values(groups.counts),
        },
        # The groups carry the training counts: a record's own copy would only add size.
        "epochs": [
            {key: value for key, value in record.items() if key != "train_support"}
            for record in records
            if record["split"] == split
        ],
    }


def comparison_data(
    table: dict,
    run_ids: Mapping[str, Sequence[str]],
    *,
    title: str,
    group_by: str = "loss",
    train_counts: Mapping[str, float] | None = None,
) -> dict:
    """The comparison page's data: a :func:`report.comparison_table` (with its long-tail
    groups) with the run ids of each group of runs and, when known, each class's training
    count (the table's class order is kept: head to tail)."""
    return {
        **table,
        "score_names": {name: report.COMPARED_NAMES[name] for name in table["scores"]},
        "group_names": report.GROUP_NAMES,
        "title": title,
        "group_by": group_by,
        "run_ids": {group: list(ids) for group, ids in run_ids.items()},
        "train_counts": dict(train_counts) if train_counts is not None else None,
    }


def _asset(name: str) -> str:
    return (resources.files("mlflow_mcmetrics") / "static" / name).read_text(encoding="utf-8")


def _page(title: str, data: dict, script: str) -> str:
    """``static/page.html`` with the title, the CSS, the data (as JSON that cannot end its
    ``<script>`` element) and the scripts inline, each put in once (a marker inside one of
    them stays as it is)."""
    parts = {
        "title": html.escape(title),
        "style": _asset("page.css"),
        # No "<" at all in the JSON (\u003c is the same string to the parser): nothing in a
        # class name can close the element or open a comment inside it.
        "data": json.dumps(data, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c"),
        "script": _asset("charts.js") + "\n" + _asset(script),
    }
    return re.sub(r"\{\{(\w+)\}\}", lambda marker: parts[marker.group(1)], _asset("page.html"))


def dashboard_html(data: dict) -> str:
    """``mcmetrics/dashboard.html`` for :func:`dashboard_data`."""
    return _page(data["title"], data, "dashboard.js")


def comparison_html(data: dict) -> str:
    """``comparison.html`` for :func:`comparison_data`."""
    return _page(data["title"], data, "comparison.js")
