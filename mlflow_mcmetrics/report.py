"""A classification report from a state: per-class rows, averages, most-confused pairs.

The per-class numbers come from :func:`mlflow_mcmetrics.functional.classification_scores`,
the same call whose values the callback logs as metrics, so the report and the metrics agree
to the last bit.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from mlflow_mcmetrics import functional
from mlflow_mcmetrics.naming import metric_key

__all__ = [
    "ARTIFACT_DIR",
    "classification_report",
    "comparison_table",
    "comparison_to_csv",
    "comparison_to_markdown",
    "confusion_matrix_payload",
    "labels_payload",
    "metric_values",
    "most_confused_pairs",
    "operating_points",
    "pr_curves_payload",
    "to_json",
    "to_markdown",
]


def most_confused_pairs(
    confusion_matrix: np.ndarray, class_names: Sequence[str], labels: Sequence[int], top: int = 10
):
    """The largest off-diagonal cells among ``labels``.

    Returns ``[{true, predicted, count, fraction_of_true}]``, largest count first.

    >>> most_confused_pairs([[1, 0, 0], [1, 1, 0], [0, 0, 1]], ["a", "b", "c"], [0, 1, 2])
    [{'true': 'b', 'predicted': 'a', 'count': 1.0, 'fraction_of_true': 0.5}]
    """
    matrix = np.asarray(confusion_matrix, dtype=float)
    if matrix.ndim != 2:
        return []
    labels = np.asarray(labels)
    sub = matrix[np.ix_(labels, labels)].copy()
    np.fill_diagonal(sub, 0)
    totals = matrix[labels].sum(axis=1)
    order = np.argsort(-sub, axis=None, kind="stable")[:top]
    pairs = []
    for flat in order:
        row, column = np.unravel_index(flat, sub.shape)
        if sub[row, column] <= 0:
            break
        pairs.append(
            {
                "true": class_names[labels[row]],
                "predicted": class_names[labels[column]],
                "count": float(sub[row, column]),
                "fraction_of_true": float(sub[row, column] / totals[row]) if totals[row] else 0.0,
            }
        )
    return pairs


def classification_report(
    state: functional.ClassificationState,
    class_names: Sequence[str],
    *,
    labels: Sequence[int] | None = None,
    zero_division: float = 0.0,
    scores: dict | None = None,
) -> dict:
    """The report as a dict (what ``to_json``/``to_markdown`` render).

    ``scores`` may pass the :func:`~.functional.classification_scores` already computed for
    ``state`` (the callback does, so that report and metrics are one computation).
    """
    labels = list(range(state.num_classes)) if labels is None else list(labels)
    if scores is None:
        scores = functional.classification_scores(state, labels=labels, zero_division=zero_division)
    per_class_keys = [
        k
        for k in ("precision", "recall", "f1", "support", "ap", "ap_lower", "ap_upper")
        if k in scores
    ]
    classes = [
        {
            "index": label,
            "name": class_names[label],
            **{k: float(scores[k][i]) for k in per_class_keys},
        }
        for i, label in enumerate(labels)
    ]
    averages = {}
    for average in ("macro", "micro", "weighted"):
        precision, recall, f1, _ = functional.precision_recall_f1_from_confusion_matrix(
            state.confusion_matrix, labels=labels, average=average, zero_division=zero_division
        )
        averages[average] = {"precision": precision, "recall": recall, "f1": f1}
    report = {
        "classes": classes,
        "averages": averages,
        "support": float(np.sum(scores["support"])),
        "most_confused": most_confused_pairs(state.confusion_matrix, class_names, labels),
    }
    if "map" in scores:
        report["map"] = scores["map"]
    return report


def to_json(report: dict) -> str:
    return json.dumps(report, indent=2, allow_nan=True)


def _cell(value: float) -> str:
    return f"{value:g}" if float(value).is_integer() else f"{value:.4f}"


def to_markdown(report: dict, *, title: str = "Classification report") -> str:
    """The report as Markdown tables (per class, averages, most-confused pairs)."""
    has_ap = "ap" in report["classes"][0] if report["classes"] else False
    header = ["class", "precision", "recall", "F1", "support"] + (
        ["AP", "AP tie interval"] if has_ap else []
    )
    lines = [f"# {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in report["classes"]:
        cells = [
            row["name"].replace("|", "\\|"),
            *(_cell(row[k]) for k in ("precision", "recall", "f1", "support")),
        ]
        if has_ap:
            cells += [_cell(row["ap"]), f"[{row['ap_lower']:.4f}, {row['ap_upper']:.4f}]"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| average | precision | recall | F1 |", "|---|---|---|---|"]
    for name, row in report["averages"].items():
        lines.append(
            f"| {name} | {_cell(row['precision'])} | {_cell(row['recall'])} | {_cell(row['f1'])} |"
        )
    if "map" in report:
        lines += ["", f"Mean average precision: {report['map']:.4f}"]
    if report["most_confused"]:
        lines += [
            "",
            "## Most confused pairs",
            "",
            "| true | predicted as | count | share of true |",
            "|---|---|---|---|",
        ]
        for pair in report["most_confused"]:
            lines.append(
                f"| {pair['true']} | {pair['predicted']} | {pair['count']:g} | "
                f"{pair['fraction_of_true']:.1%} |"
            )
    return "\n".join(lines) + "\n"


#: The run's artifact folder for everything this package logs.
ARTIFACT_DIR = "mcmetrics"
AVERAGES = ("f1_macro", "f1_micro", "f1_weighted", "precision_macro", "recall_macro", "map")
PER_CLASS = ("precision", "recall", "f1", "ap")


def metric_values(
    scores: dict, labels: Sequence[int], components: Sequence[str], prefix: str
) -> dict[str, float]:
    """The SPEC's step metrics of one split from :func:`functional.classification_scores`,
    keyed ``{prefix}f1_macro``, ``{prefix}f1/{class}`` etc. (``components``: the metric-key
    component of each class, from :func:`mlflow_mcmetrics.naming.class_key_components`).

    >>> from mlflow_mcmetrics import functional
    >>> state = functional.state_from_predictions([0, 1, 1], [[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    >>> scores = functional.classification_scores(state)
    >>> values = metric_values(scores, [0, 1], ["cat", "dog"], "val_")
    >>> round(values["val_f1_macro"], 4), values["val_recall/dog"]
    (0.6667, 0.5)
    """
    values = {metric_key(prefix, name): float(scores[name]) for name in AVERAGES if name in scores}
    for name in PER_CLASS:
        if name in scores:
            for position, label in enumerate(labels):
                values[metric_key(prefix, name, components[label])] = float(scores[name][position])
    return values


def labels_payload(
    class_names: Sequence[str], class_keys: Sequence[str], ignore_class: int | None = None
) -> dict:
    """``mcmetrics/labels.json``: class index -> name -> metric-key component."""
    return {
        "labels": [
            {"index": index, "name": name, "key": key}
            for index, (name, key) in enumerate(zip(class_names, class_keys, strict=True))
        ],
        "ignore_class": ignore_class,
    }


def confusion_matrix_payload(
    state: functional.ClassificationState, class_names: Sequence[str], epoch: int | None, split: str
) -> dict:
    """``{split}_confusion_matrix.json``: rows = true class, columns = predicted (scikit-learn's
    layout); multilabel: one ``[[tn, fp], [fn, tp]]`` per label."""
    matrix = state.confusion_matrix
    if np.all(matrix == np.round(matrix)):  # unweighted counts: write 3, not 3.0
        matrix = matrix.astype(np.int64)
    return {
        "labels": list(class_names),
        "matrix": matrix.tolist(),
        "epoch": epoch,
        "split": split,
    }


def _curve_points(precision, recall, thresholds):
    """The curve at the bins that hold positives (where recall changes: the points average
    precision sums over), plus scikit-learn's end point (recall 0, precision 1). Bins that add
    only negatives lower precision between two such points and are dropped."""
    keep = np.flatnonzero(recall[:-1] != recall[1:])
    return {
        "thresholds": thresholds[keep].tolist(),
        "precision": np.round(np.append(precision[keep], 1.0), 6).tolist(),
        "recall": np.round(np.append(recall[keep], 0.0), 6).tolist(),
    }


def pr_curves_payload(
    state: functional.ClassificationState,
    class_names: Sequence[str],
    labels: Sequence[int],
    scores: dict,
) -> dict:
    """``{split}_pr_curves.json``: the bin thresholds, and per scored class the curve at the
    thresholds where its recall changes, its average precision and the tie interval
    ``average_precision_bounds``."""
    precision, recall, thresholds = functional.precision_recall_curve_from_histogram(
        state.score_histogram
    )
    curves = {}
    for position, label in enumerate(labels):
        curves[class_names[label]] = {
            **_curve_points(precision[label], recall[label], thresholds),
            "average_precision": float(scores["ap"][position]),
            "average_precision_bounds": [
                float(scores["ap_lower"][position]),
                float(scores["ap_upper"][position]),
            ],
        }
    return {
        "labels": [class_names[label] for label in labels],
        "thresholds": thresholds.tolist(),  # bin b: positive when score >= thresholds[b]
        "curves": curves,
    }


def operating_points(
    state: functional.ClassificationState, labels: Sequence[int], zero_division: float = 0.0
) -> np.ndarray:
    """``(len(labels), 2)`` (recall, precision) of the decisions actually taken (argmax or
    threshold), from the confusion matrix."""
    precision, recall, _, _ = functional.precision_recall_f1_from_confusion_matrix(
        state.confusion_matrix, labels=labels, zero_division=zero_division
    )
    return np.stack([recall, precision], axis=1)


def comparison_table(
    results: Sequence[tuple[str, dict[str, float]]],
    class_keys: Sequence[str],
    prefix: str,
    tail: int = 3,
) -> dict:
    """Per-class F1 and macro F1 of several runs, grouped (e.g. by loss): mean and std.

    Args:
        results: ``(group, metrics)`` per run; ``metrics`` holds ``{prefix}f1/{class}`` and
            ``{prefix}f1_macro``.
        class_keys: the class key components, in the order to show (head classes first).
        prefix: ``"test_"``, ``"val_"`` or ``""``.
        tail: how many of the last classes make the "tail" column.

    Returns:
        ``{"prefix", "classes", "tail_classes", "rows": [{"group", "runs", "f1_macro":
        [mean, std], "tail_f1": [mean, std], "f1": {class: [mean, std]}}]}``, groups in
        first-seen order.
    """
    groups: dict[str, list[dict[str, float]]] = {}
    for group, metrics in results:
        groups.setdefault(group, []).append(metrics)
    tail_classes = list(class_keys[-tail:])
    rows = []
    for group, runs in groups.items():
        per_class = {c: np.array([m[f"{prefix}f1/{c}"] for m in runs]) for c in class_keys}
        macro = np.array([m[f"{prefix}f1_macro"] for m in runs])
        tail_f1 = np.mean([per_class[c] for c in tail_classes], axis=0)
        rows.append(
            {
                "group": group,
                "runs": len(runs),
                "f1_macro": [float(macro.mean()), float(macro.std())],
                "tail_f1": [float(tail_f1.mean()), float(tail_f1.std())],
                "f1": {c: [float(v.mean()), float(v.std())] for c, v in per_class.items()},
            }
        )
    return {
        "prefix": prefix,
        "classes": list(class_keys),
        "tail_classes": tail_classes,
        "rows": rows,
    }


def comparison_to_csv(table: dict) -> str:
    columns = ["group", "runs", "f1_macro", "f1_macro_std", "tail_f1", "tail_f1_std"]
    columns += [f"f1/{c}{suffix}" for c in table["classes"] for suffix in ("", "_std")]
    lines = [",".join(columns)]
    for row in table["rows"]:
        cells = [
            row["group"],
            str(row["runs"]),
            *map(str, row["f1_macro"]),
            *map(str, row["tail_f1"]),
        ]
        cells += [str(v) for c in table["classes"] for v in row["f1"][c]]
        lines.append(",".join(cells))
    return "\n".join(lines) + "\n"


def comparison_to_markdown(table: dict) -> str:
    def cell(mean_std):
        mean, std = mean_std
        return f"{mean:.3f}" if std == 0 else f"{mean:.3f} ± {std:.3f}"

    header = [
        "loss",
        "runs",
        "macro F1",
        f"tail-{len(table['tail_classes'])} F1",
        *table["classes"],
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table["rows"]:
        cells = [row["group"], str(row["runs"]), cell(row["f1_macro"]), cell(row["tail_f1"])]
        cells += [cell(row["f1"][c]) for c in table["classes"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
