"""A classification report from a state: per-class rows, averages, most-confused pairs.

The per-class numbers come from :func:`mlflow_mcmetrics.functional.classification_scores`,
the same call whose values the callback logs as metrics, so the report and the metrics agree
to the last bit.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import numpy as np

from mlflow_mcmetrics import functional
from mlflow_mcmetrics.naming import metric_key

__all__ = [
    "ARTIFACT_DIR",
    "CURVE_PAYLOADS",
    "calibration_payload",
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
    "roc_curves_payload",
    "thresholds_payload",
    "to_json",
    "to_markdown",
]

#: The run's artifact folder for everything this package logs.
ARTIFACT_DIR = "mcmetrics"
#: The report's single-number scores beyond the P/R/F1 averages, with their names in Markdown.
SUMMARY = {
    "gmean": "G-mean (geometric mean of per-class recalls)",
    "f1_worst": "worst class's F1",
    "recall_worst": "worst class's recall",
    "f1_worst_10pct": "mean F1 of the worst 10 % of classes",
    "classes_recall_0": "classes with recall 0",
    "map": "mean average precision",
    "roc_auc_macro": "macro ROC AUC (one-vs-rest)",
    "balanced_accuracy": "balanced accuracy",
    "mcc": "Matthews correlation",
    "cohen_kappa": "Cohen's kappa",
    "ece": "expected calibration error (top label, 15 bins)",
}
#: The :data:`SUMMARY` scores a comparison table shows when every run has them, with their
#: column names.
COMPARED_NAMES = {
    "gmean": "G-mean",
    "f1_worst": "worst-class F1",
    "map": "mAP",
    "roc_auc_macro": "macro ROC AUC",
    "balanced_accuracy": "balanced acc.",
    "mcc": "MCC",
    "cohen_kappa": "kappa",
    "ece": "ECE",
}
#: Single-number scores of a split (those in a split's scores), logged as ``{prefix}{name}``.
SPLIT_SCORES = (
    "f1_macro",
    "f1_micro",
    "f1_weighted",
    "precision_macro",
    "recall_macro",
    "map",
    "roc_auc_macro",
    "balanced_accuracy",
    "mcc",
    "cohen_kappa",
    "ece",
    "gmean",
    "f1_worst",
    "recall_worst",
    "f1_worst_10pct",
    "classes_recall_0",
    *(f"{name}_{group}" for name in ("recall", "f1") for group in functional.SHOT_GROUPS),
)
#: Long-tail group names in tables.
GROUP_NAMES = {"many": "many-shot", "medium": "medium-shot", "few": "few-shot"}
#: Per-class scores, logged as ``{prefix}{name}/{class}`` for every scored class.
PER_CLASS = ("precision", "recall", "f1", "ap", "roc_auc")
#: Per-class scores of the classes in ``threshold_labels`` (binary: class 1; multilabel: all).
PER_THRESHOLD_LABEL = ("threshold", "f1_at_threshold")


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
    groups: functional.ShotGroups | None = None,
) -> dict:
    """The report as a dict (what ``to_json``/``to_markdown`` render).

    ``scores`` may pass the :func:`~.functional.classification_scores` already computed for
    ``state`` (the callback does, so that report and metrics are one computation), with
    ``groups=groups.groups`` when ``groups`` (the long-tail groups, :func:`~.functional.
    shot_groups`) is given. Each class row says whether the class has samples in the split
    (``no_samples``); each average how many classes it covers.
    """
    labels = list(range(state.num_classes)) if labels is None else list(labels)
    if scores is None or (groups is not None and "group" not in scores):
        scores = functional.classification_scores(
            state,
            labels=labels,
            zero_division=zero_division,
            groups=None if groups is None else groups.groups,
        )
    per_class_keys = [k for k in REPORT_PER_CLASS if k in scores]
    classes = [
        {
            "index": label,
            "name": class_names[label],
            **{k: float(scores[k][i]) for k in per_class_keys},
            "no_samples": bool(scores["support"][i] == 0),
        }
        for i, label in enumerate(labels)
    ]
    rows = {row["index"]: row for row in classes}
    for position, label in enumerate(scores.get("threshold_labels", [])):
        for name in PER_THRESHOLD_LABEL:
            rows[label][name] = float(scores[name][position])
    with_samples = int(np.sum(np.asarray(scores["support"]) > 0))
    averages = {
        average: {
            "precision": scores[f"precision_{average}"],
            "recall": scores[f"recall_{average}"],
            "f1": scores[f"f1_{average}"],
            "classes": len(labels),
            "classes_with_samples": with_samples,
        }
        for average in ("macro", "micro", "weighted")
    }
    report = {
        "classes": classes,
        "averages": averages,
        "support": float(np.sum(scores["support"])),
        "most_confused": []
        if state.confusion_matrix is None
        else most_confused_pairs(state.confusion_matrix, class_names, labels),
    }
    if groups is not None:
        for row in classes:
            row["group"] = str(groups.groups[row["index"]])
            row["training_samples"] = float(groups.counts[row["index"]])
        report["groups"] = _group_rows(groups, scores, labels)
    report.update({name: scores[name] for name in SUMMARY if name in scores})
    return report


#: The per-class arrays of :func:`functional.classification_scores` the report shows.
REPORT_PER_CLASS = (
    "precision",
    "recall",
    "f1",
    "specificity",
    "iba",
    "support",
    "ap",
    "ap_lower",
    "ap_upper",
    "roc_auc",
    "roc_auc_lower",
    "roc_auc_upper",
)


def _group_rows(groups: functional.ShotGroups, scores: dict, labels: Sequence[int]) -> dict:
    """The report's long-tail section: the rule, and per group its classes (with samples in
    the split), their range of training samples and the group's logged recall and F1."""
    scored_groups = np.asarray(scores["group"])
    present = np.asarray(scores["support"]) > 0
    counts = groups.counts[np.asarray(labels, dtype=int)]
    rows = []
    for name in functional.SHOT_GROUPS:
        members = scored_groups == name
        rows.append(
            {
                "group": name,
                "classes": int(members.sum()),
                "classes_with_samples": int((members & present).sum()),
                "training_samples": [float(counts[members].min()), float(counts[members].max())]
                if members.any()
                else None,
                "recall": scores[f"recall_{name}"],
                "f1": scores[f"f1_{name}"],
            }
        )
    return {"rule": groups.rule, "thresholds": list(groups.thresholds), "rows": rows}


def to_json(report: dict) -> str:
    return json.dumps(report, indent=2, allow_nan=True)


def _cell(value: float) -> str:
    return f"{value:g}" if float(value).is_integer() else f"{value:.4f}"


def _interval(lower: float, upper: float) -> str:
    return f"[{lower:.4f}, {upper:.4f}]"


def _grouping_rule(groups: dict) -> str:
    low, high = (f"{edge:g}" for edge in groups["thresholds"])
    if groups["rule"] == "thresholds":
        return (
            f"Groups by training samples per class: many-shot > {high}, medium-shot "
            f"{low}–{high}, few-shot < {low}."
        )
    return (
        f"Groups: thirds of the classes by training samples (by the thresholds {low} and "
        f"{high} a group would be empty)."
    )


def to_markdown(report: dict, *, title: str = "Classification report") -> str:
    """The report as Markdown tables (per class, long-tail groups, averages, summary scores,
    most-confused pairs)."""
    rows = report["classes"]
    has = {
        key: any(key in row for row in rows)
        for key in ("group", "specificity", "ap", "roc_auc", "threshold")
    }
    header = ["class"]
    header += ["group", "training samples"] if has["group"] else []
    header += ["precision", "recall", "F1"]
    header += ["specificity", "IBA"] if has["specificity"] else []
    header += ["support"]
    header += ["AP", "AP tie interval"] if has["ap"] else []
    header += ["ROC AUC", "ROC AUC tie interval"] if has["roc_auc"] else []
    header += ["F1-optimal threshold", "F1 there"] if has["threshold"] else []
    lines = [f"# {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["name"].replace("|", "\\|")]
        if has["group"]:
            cells += [row["group"], _cell(row["training_samples"])]
        cells += [_cell(row[k]) for k in ("precision", "recall", "f1")]
        if has["specificity"]:
            cells += [_cell(row["specificity"]), _cell(row["iba"])]
        cells.append(_cell(row["support"]) + (" (no samples)" if row["no_samples"] else ""))
        if has["ap"]:
            cells += [_cell(row["ap"]), _interval(row["ap_lower"], row["ap_upper"])]
        if has["roc_auc"]:
            cells += [_cell(row["roc_auc"]), _interval(row["roc_auc_lower"], row["roc_auc_upper"])]
        if has["threshold"]:
            cells += [_cell(row[k]) if k in row else "" for k in PER_THRESHOLD_LABEL]
        lines.append("| " + " | ".join(cells) + " |")
    if has["specificity"]:
        lines += [
            "",
            "Specificity and IBA (index-balanced accuracy, alpha 0.1, squared G-mean) as "
            "imbalanced-learn's `classification_report_imbalanced`.",
        ]
    if "groups" in report:
        lines += [
            "",
            "## Long-tail groups",
            "",
            _grouping_rule(report["groups"]),
            "Macro recall and F1 over each group's classes with samples in this split.",
            "",
            "| group | classes | with samples | training samples per class | macro recall | "
            "macro F1 |",
            "|---|---|---|---|---|---|",
        ]
        for group in report["groups"]["rows"]:
            span = group["training_samples"]
            span = "" if span is None else "–".join(dict.fromkeys(_cell(v) for v in span))
            lines.append(
                f"| {GROUP_NAMES[group['group']]} | {group['classes']} | "
                f"{group['classes_with_samples']} | {span} | {_cell(group['recall'])} | "
                f"{_cell(group['f1'])} |"
            )
    lines += ["", "| average | precision | recall | F1 | classes |", "|---|---|---|---|---|"]
    for name, row in report["averages"].items():
        lines.append(
            f"| {name} | {_cell(row['precision'])} | {_cell(row['recall'])} | "
            f"{_cell(row['f1'])} | {row['classes']} ({row['classes_with_samples']} with "
            "samples) |"
        )
    absent = [row["name"] for row in rows if row["no_samples"]]
    if absent:
        lines += [
            "",
            f"No samples in this split: {', '.join(absent)}. Macro and weighted averages count "
            "such a class with `zero_division`; the long-tail and spread scores leave it out.",
        ]
    summary = [name for name in SUMMARY if name in report]
    if summary:
        lines += ["", "| score | value |", "|---|---|"]
        lines += [f"| {SUMMARY[name]} | {_cell(report[name])} |" for name in summary]
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


#: Up to this many scored classes, ``class_keys="auto"`` logs every class's precision, recall and
#: F1 as step metrics; beyond it none (the per-class table, history and dashboard have them):
#: MLflow's UI draws one chart per key and its SQL store writes one row per key and epoch.
KEYED_CLASSES_MAX = 100
#: The per-class families logged as step metrics unless ``class_keys="all"``. Average precision
#: and ROC AUC per class are in the per-class table: as keys their sections (``ap``, ``roc_auc``)
#: sort first in the MLflow UI and bury the averages.
KEYED_FAMILIES = ("precision", "recall", "f1", *PER_THRESHOLD_LABEL)


def keyed_classes(
    class_keys: str | Sequence[str], class_names: Sequence[str], labels: Sequence[int]
) -> tuple[list[int], tuple[str, ...], list[str]]:
    """Which of ``labels`` get per-class step metrics, of which families, and the names in a
    ``class_keys`` list that name no class.

    ``class_keys``: ``"auto"`` (precision, recall, F1 and thresholds for every class up to
    :data:`KEYED_CLASSES_MAX` classes, none beyond), ``"all"`` (every family for every class),
    or a list of class names to watch (precision, recall, F1 and thresholds for those).

    >>> keyed_classes("auto", ["a", "b", "c"], [0, 1, 2])[0]
    [0, 1, 2]
    >>> keyed_classes(["c", "x"], ["a", "b", "c"], [0, 1, 2])
    ([2], ('precision', 'recall', 'f1', 'threshold', 'f1_at_threshold'), ['x'])
    """
    if class_keys == "all":
        return list(labels), PER_CLASS + PER_THRESHOLD_LABEL, []
    if class_keys == "auto":
        return (list(labels) if len(labels) <= KEYED_CLASSES_MAX else []), KEYED_FAMILIES, []
    position = {name: index for index, name in enumerate(class_names)}
    wanted = [str(name) for name in class_keys]
    keyed = sorted({position[name] for name in wanted if name in position} & set(labels))
    return keyed, KEYED_FAMILIES, [name for name in wanted if name not in position]


def metric_values(
    scores: dict,
    labels: Sequence[int],
    components: Sequence[str],
    prefix: str,
    keyed: Sequence[int] | None = None,
    families: Sequence[str] = PER_CLASS + PER_THRESHOLD_LABEL,
) -> dict[str, float]:
    """The SPEC's step metrics of one split from :func:`functional.classification_scores`,
    keyed ``{prefix}f1_macro``, ``{prefix}f1/{class}`` etc. (``components``: the metric-key
    component of each class, from :func:`mlflow_mcmetrics.naming.class_key_components``).
    Per-class values only of the ``families`` and the classes in ``keyed`` (default: all; see
    :func:`keyed_classes`).

    >>> from mlflow_mcmetrics import functional
    >>> state = functional.state_from_predictions([0, 1, 1], [[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    >>> scores = functional.classification_scores(state)
    >>> values = metric_values(scores, [0, 1], ["cat", "dog"], "val_")
    >>> round(values["val_f1_macro"], 4), values["val_recall/dog"]
    (0.6667, 0.5)
    """
    values = {
        metric_key(prefix, name): float(scores[name]) for name in SPLIT_SCORES if name in scores
    }
    keyed = set(labels if keyed is None else keyed)
    for name in families:
        scored = scores.get("threshold_labels", []) if name in PER_THRESHOLD_LABEL else labels
        if name in scores:
            for position, label in enumerate(scored):
                if label in keyed:
                    key = metric_key(prefix, name, components[label])
                    values[key] = float(scores[name][position])
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
    layout); multilabel: one ``[[tn, fp], [fn, tp]]`` per label. Not for a state that keeps
    no confusion matrix (many classes: per-class counts only)."""
    matrix = state.confusion_matrix
    if matrix is None:
        raise ValueError("This state keeps per-class counts only, no confusion matrix.")
    if np.all(matrix == np.round(matrix)):  # unweighted counts: write 3, not 3.0
        matrix = matrix.astype(np.int64)
    return {
        "labels": list(class_names),
        "matrix": matrix.tolist(),
        "epoch": epoch,
        "split": split,
    }


def _bin_thresholds(state: functional.ClassificationState) -> list[float]:
    """The histogram's bin edges: bin ``b`` is positive when ``score >= thresholds[b]``."""
    num_bins = state.score_histogram.shape[2]
    return (np.arange(num_bins) / num_bins).tolist()


def pr_curves_payload(
    state: functional.ClassificationState,
    class_names: Sequence[str],
    labels: Sequence[int],
    scores: dict,
) -> dict:
    """``{split}_pr_curves.json``: the bin thresholds, and per scored class the curve at the
    thresholds where its recall changes, its average precision and the tie interval
    ``average_precision_bounds``."""
    points = functional.precision_recall_points_from_histogram(state.score_histogram)
    curves = {}
    for position, label in enumerate(labels):
        precision, recall, thresholds = points[label]
        curves[class_names[label]] = {
            "thresholds": thresholds.tolist(),
            "precision": np.round(precision, 6).tolist(),
            "recall": np.round(recall, 6).tolist(),
            "average_precision": float(scores["ap"][position]),
            "average_precision_bounds": [
                float(scores["ap_lower"][position]),
                float(scores["ap_upper"][position]),
            ],
        }
    return {
        "labels": [class_names[label] for label in labels],
        "thresholds": _bin_thresholds(state),
        "curves": curves,
    }


def _floats(values) -> list:
    """JSON-ready floats; NaN (an empty bin, an undefined score) becomes ``null``."""
    return [None if np.isnan(value) else float(value) for value in values]


def roc_curves_payload(
    state: functional.ClassificationState,
    class_names: Sequence[str],
    labels: Sequence[int],
    scores: dict,
) -> dict:
    """``{split}_roc_curves.json``: per scored class the one-vs-rest ROC curve at the
    thresholds where it changes, its AUC and the tie interval ``roc_auc_bounds`` (``null``
    for a class without positives or negatives)."""
    points = functional.roc_points_from_histogram(state.score_histogram)
    curves = {}
    for position, label in enumerate(labels):
        auc, lower, upper = _floats(
            [scores[k][position] for k in ("roc_auc", "roc_auc_lower", "roc_auc_upper")]
        )
        fpr, tpr, thresholds = points[label]
        curves[class_names[label]] = {
            "thresholds": thresholds.tolist(),
            "fpr": np.round(fpr, 6).tolist(),
            "tpr": np.round(tpr, 6).tolist(),
            "roc_auc": auc,
            "roc_auc_bounds": [lower, upper],
        }
    return {
        "labels": [class_names[label] for label in labels],
        "thresholds": _bin_thresholds(state),
        "curves": curves,
    }


def calibration_payload(
    state: functional.ClassificationState,
    class_names: Sequence[str],
    labels: Sequence[int],
    scores: dict,
) -> dict:
    """``{split}_calibration.json``: per scored class the reliability curve (fraction of
    positives per equal-width score bin, ``null`` where a bin is empty, and the bin counts);
    for multiclass and binary also the top-label reliability (accuracy and mean confidence per
    confidence bin) and the expected calibration error ``ece`` it gives."""
    num_bins = functional.reliability_bins(state.score_histogram.shape[2])
    fraction, counts, edges = functional.reliability_curve_from_histogram(
        state.score_histogram, num_bins
    )
    payload = {
        "labels": [class_names[label] for label in labels],
        "classes": {
            "bin_edges": edges.tolist(),
            "curves": {
                class_names[label]: {
                    "fraction_of_positives": _floats(fraction[label]),
                    "count": counts[label].tolist(),
                }
                for label in labels
            },
        },
    }
    if state.calibration is not None:
        accuracy, confidence, count, edges = functional.top_label_reliability(state.calibration)
        payload["top_label"] = {
            "bin_edges": edges.tolist(),
            "count": count.tolist(),
            "accuracy": _floats(accuracy),
            "confidence": _floats(confidence),
            "ece": scores["ece"],
        }
    return payload


#: The per-epoch curve artifacts of a split with a score histogram: ``{split}_{stem}.json``.
CURVE_PAYLOADS = {
    "pr_curves": pr_curves_payload,
    "roc_curves": roc_curves_payload,
    "calibration": calibration_payload,
}


def thresholds_payload(
    class_names: Sequence[str], scores: dict, epoch: int | None, split: str
) -> dict:
    """``mcmetrics/thresholds.json``: per label the F1-maximising decision threshold of
    ``split`` (binary: of class 1, the model's single unit) and the F1 it gives there.

    >>> payload = thresholds_payload(["no", "yes"], {"threshold_labels": [1],
    ...     "threshold": [0.375], "f1_at_threshold": [0.8]}, 4, "val")
    >>> payload["thresholds"], payload["rule"]
    ({'yes': 0.375}, 'score >= threshold')
    """
    names = [class_names[label] for label in scores["threshold_labels"]]
    return {
        "rule": "score >= threshold",
        "split": split,
        "epoch": epoch,
        "thresholds": dict(zip(names, _floats(scores["threshold"]), strict=True)),
        "f1": dict(zip(names, _floats(scores["f1_at_threshold"]), strict=True)),
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
    groups: Mapping[str, str] | None = None,
) -> dict:
    """Per-class, per-long-tail-group and macro F1 of several runs, grouped (e.g. by loss):
    mean and std over the runs of each group.

    The question it answers: which loss helps the tail without hurting the head. So beside
    macro F1 each row has the many-, medium- and few-shot F1 of its runs: per run the mean
    F1 of the group's classes (the group's macro F1, as ``{prefix}f1_many`` etc. on a split
    where every class has samples), then mean ± std over the runs.

    Args:
        results: ``(group, metrics)`` per run; ``metrics`` holds ``{prefix}f1/{class}`` and
            ``{prefix}f1_macro``.
        class_keys: the class key components, in the order to show (head classes first).
        prefix: ``"test_"``, ``"val_"`` or ``""``.
        groups: the long-tail group of each class key (from the training counts, see
            :func:`~.functional.shot_groups`); without it no group columns.

    Returns:
        ``{"prefix", "classes", "group_classes": {group: [class]}, "tail_classes" (the
        few-shot ones), "scores", "rows": [{"group", "runs", "f1_macro": [mean, std],
        "group_f1": {group: [mean, std]}, "f1": {class: [mean, std]}, "scores": {name:
        [mean, std]}}]}``, groups of runs in first-seen order; ``scores`` are the
        :data:`COMPARED_NAMES` scores (G-mean, worst-class F1, mAP, ...) that every run has.
    """
    by_group: dict[str, list[dict[str, float]]] = {}
    for group, metrics in results:
        by_group.setdefault(group, []).append(metrics)
    group_classes = {
        name: [c for c in class_keys if groups.get(c) == name]
        for name in functional.SHOT_GROUPS
        if groups is not None and any(groups.get(c) == name for c in class_keys)
    }
    summary = [
        name
        for name in COMPARED_NAMES
        if all(f"{prefix}{name}" in metrics for _, metrics in results)
    ]
    rows = []
    for group, runs in by_group.items():
        per_class = {c: np.array([m[f"{prefix}f1/{c}"] for m in runs]) for c in class_keys}
        rows.append(
            {
                "group": group,
                "runs": len(runs),
                "f1_macro": _mean_std([m[f"{prefix}f1_macro"] for m in runs]),
                "group_f1": {
                    name: _mean_std(np.nanmean([per_class[c] for c in members], axis=0))
                    for name, members in group_classes.items()
                },
                "f1": {c: _mean_std(v) for c, v in per_class.items()},
                "scores": {
                    name: _mean_std([m[f"{prefix}{name}"] for m in runs]) for name in summary
                },
            }
        )
    return {
        "prefix": prefix,
        "classes": list(class_keys),
        "group_classes": group_classes,
        "tail_classes": group_classes.get("few", []),
        "scores": summary,
        "rows": rows,
    }


def _mean_std(values: Sequence[float]) -> list[float]:
    """``[mean, std]`` over the runs where the value is defined (NaN where none is)."""
    values = np.asarray(values, dtype=float)
    defined = values[~np.isnan(values)]
    if not defined.size:
        return [float("nan"), float("nan")]
    return [float(defined.mean()), float(defined.std())]


def comparison_to_csv(table: dict) -> str:
    groups = list(table["group_classes"])
    columns = ["group", "runs", "f1_macro", "f1_macro_std"]
    columns += [f"f1_{name}{suffix}" for name in groups for suffix in ("", "_std")]
    columns += [f"{name}{suffix}" for name in table["scores"] for suffix in ("", "_std")]
    columns += [f"f1/{c}{suffix}" for c in table["classes"] for suffix in ("", "_std")]
    lines = [",".join(columns)]
    for row in table["rows"]:
        cells = [row["group"], str(row["runs"]), *map(str, row["f1_macro"])]
        cells += [str(v) for name in groups for v in row["group_f1"][name]]
        cells += [str(v) for name in table["scores"] for v in row["scores"][name]]
        cells += [str(v) for c in table["classes"] for v in row["f1"][c]]
        lines.append(",".join(cells))
    return "\n".join(lines) + "\n"


def comparison_to_markdown(table: dict) -> str:
    """The comparison as a Markdown table: mean ± std over each row's runs (the mean alone
    where every run agrees)."""

    def cell(mean_std):
        mean, std = mean_std
        return f"{mean:.3f}" if std == 0 else f"{mean:.3f} ± {std:.3f}"

    header = [
        "loss",
        "runs",
        "macro F1",
        *(
            f"{GROUP_NAMES[name]} F1 ({len(members)})"
            for name, members in table["group_classes"].items()
        ),
        *(COMPARED_NAMES[name] for name in table["scores"]),
        *table["classes"],
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table["rows"]:
        cells = [row["group"], str(row["runs"]), cell(row["f1_macro"])]
        cells += [cell(row["group_f1"][name]) for name in table["group_classes"]]
        cells += [cell(row["scores"][name]) for name in table["scores"]]
        cells += [cell(row["f1"][c]) for c in table["classes"]]
        lines.append("| " + " | ".join(cells) + " |")
    if table["group_classes"]:
        lines += [
            "",
            "Group F1: per run the mean F1 of the group's classes ("
            + "; ".join(
                f"{GROUP_NAMES[name]}: {', '.join(members)}"
                for name, members in table["group_classes"].items()
            )
            + "), then mean ± std over the runs.",
        ]
    return "\n".join(lines) + "\n"
