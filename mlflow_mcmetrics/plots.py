"""Figures of a classification state: confusion matrix, PR and ROC curves, reliability
diagrams, F1 by epoch.

Every function returns a :class:`matplotlib.figure.Figure` built without ``pyplot``, so
nothing leaks into a global figure registry and the functions are safe off the main thread.
They stay readable from 2 to 1000 classes: cell numbers are written up to
``ANNOTATE_MAX_CLASSES`` classes, tick labels thinned beyond ``TICK_LABELS_MAX``, a
confusion matrix of more than ``MATRIX_CELLS_MAX`` classes a side drawn in blocks of classes,
and PR curves drawn as small multiples up to ``PR_PANELS_MAX`` classes, beyond that for the
best and worst classes by AP with the rest summarised.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mlflow_mcmetrics import functional, report

__all__ = [
    "figure_to_png",
    "plot_calibration",
    "plot_comparison",
    "plot_confusion_matrix",
    "plot_f1_by_epoch",
    "plot_pr_curves",
    "plot_roc_and_calibration",
    "plot_roc_curves",
    "plot_state",
]

ANNOTATE_MAX_CLASSES = 30
TICK_LABELS_MAX = 50
PR_PANELS_MAX = 20
#: Beyond this many classes a side, the confusion matrix is drawn as sums over square blocks
#: of classes: the figure has fewer pixels than cells (a pixel showed one cell of its block,
#: hiding the others' errors), and drawing 2000 x 2000 cells took 1.4 s.
MATRIX_CELLS_MAX = 400


def figure_to_png(figure: Figure) -> bytes:
    """Render ``figure`` (Agg) to PNG bytes, e.g. for ``log_image`` or ``log_artifact``."""
    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)
    return buffer.getvalue()


def _set_class_ticks(axis, names: Sequence[str], which: str) -> None:
    step = max(1, int(np.ceil(len(names) / TICK_LABELS_MAX)))
    positions = np.arange(0, len(names), step)
    labels = [str(names[i])[:20] for i in positions]
    if which == "x":
        axis.set_xticks(
            positions,
            labels,
            rotation=90 if len(names) > 10 else 45,
            ha="center" if len(names) > 10 else "right",
            fontsize=7 if len(names) > 20 else 9,
        )
    else:
        axis.set_yticks(positions, labels, fontsize=7 if len(names) > 20 else 9)


def _heatmap(axis, values, names, title, fmt, colorbar_label, figure, vmax=None, block=1):
    """``values`` as an image on class coordinates (a cell per ``block`` x ``block`` classes)."""
    end = len(values) * block - 0.5
    image = axis.imshow(
        values,
        cmap="Blues",
        vmin=0,
        vmax=vmax,
        interpolation="nearest",
        extent=(-0.5, end, end, -0.5),
    )
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04, label=colorbar_label)
    axis.set_title(title)
    axis.set_xlabel("Predicted class")
    axis.set_ylabel("True class")
    _set_class_ticks(axis, names, "x")
    _set_class_ticks(axis, names, "y")
    if len(names) <= ANNOTATE_MAX_CLASSES:
        threshold = (np.nanmax(values) if vmax is None else vmax) / 2
        for (row, column), value in np.ndenumerate(values):
            axis.text(
                column,
                row,
                format(value, fmt),
                ha="center",
                va="center",
                fontsize=7 if len(names) > 12 else 9,
                color="white" if value > threshold else "black",
                # Inside their cells: constrained layout need not measure them.
                in_layout=False,
            )


def plot_confusion_matrix(
    confusion_matrix: np.ndarray, class_names: Sequence[str], *, title: str = "Confusion matrix"
) -> Figure:
    """Counts and row-normalised rates (recall on the diagonal) side by side.

    Rows are true classes, columns predicted classes, as in scikit-learn. A multilabel
    ``(C, 2, 2)`` matrix is drawn as one small 2×2 panel per label (up to 30, then the 30
    labels with the most errors).
    """
    confusion_matrix = np.asarray(confusion_matrix, dtype=float)
    if confusion_matrix.ndim == 3:
        return _plot_multilabel_confusion(confusion_matrix, class_names, title)
    num_classes = len(class_names)
    side = min(12.0, max(4.5, 0.35 * num_classes + 2.5))
    figure = Figure(figsize=(2 * side + 1.5, side), layout="constrained")
    counts_axis, rates_axis = figure.subplots(1, 2)
    block = int(np.ceil(num_classes / MATRIX_CELLS_MAX))
    if block > 1:
        blocks = int(np.ceil(num_classes / block))
        padded = np.zeros((blocks * block, blocks * block))
        padded[:num_classes, :num_classes] = confusion_matrix
        confusion_matrix = padded.reshape(blocks, block, blocks, block).sum(axis=(1, 3))
    totals = confusion_matrix.sum(axis=1, keepdims=True)
    rates = np.divide(
        confusion_matrix, totals, out=np.zeros_like(confusion_matrix), where=totals > 0
    )
    integral = np.all(confusion_matrix == np.round(confusion_matrix))
    in_blocks = "" if block == 1 else f", in blocks of {block} × {block} classes"
    _heatmap(
        counts_axis,
        confusion_matrix,
        class_names,
        "Counts" + in_blocks,
        ".0f" if integral else ".1f",
        "samples",
        figure,
        block=block,
    )
    _heatmap(
        rates_axis,
        rates,
        class_names,
        "Normalised by true class (recall on the diagonal)" + in_blocks,
        ".2f",
        "fraction of the true class",
        figure,
        vmax=1.0,
        block=block,
    )
    figure.suptitle(title)
    return figure


def _plot_multilabel_confusion(matrices, names, title):
    errors = matrices[:, 0, 1] + matrices[:, 1, 0]
    shown = np.sort(np.argsort(-errors, kind="stable")[:ANNOTATE_MAX_CLASSES])
    columns = min(6, len(shown))
    rows = int(np.ceil(len(shown) / columns))
    figure = Figure(figsize=(2.2 * columns, 2.2 * rows + 0.6), layout="constrained")
    axes = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel()
    for axis, label in zip(axes[: len(shown)], shown, strict=True):
        matrix = matrices[label]
        axis.imshow(matrix, cmap="Blues", vmin=0)
        for (row, column), value in np.ndenumerate(matrix):
            axis.text(
                column,
                row,
                f"{value:.0f}",
                ha="center",
                va="center",
                fontsize=8,
                color="white" if value > matrix.max() / 2 else "black",
            )
        axis.set_title(str(names[label])[:24], fontsize=9)
        axis.set_xticks([0, 1], ["pred 0", "pred 1"], fontsize=7)
        axis.set_yticks([0, 1], ["true 0", "true 1"], fontsize=7)
    for axis in axes[len(shown) :]:
        axis.set_visible(False)
    suffix = (
        "" if len(shown) == len(names) else f" ({len(shown)} of {len(names)} labels, most errors)"
    )
    figure.suptitle(title + suffix)
    return figure


def plot_pr_curves(
    precision: np.ndarray,
    recall: np.ndarray,
    average_precision: np.ndarray,
    class_names: Sequence[str],
    *,
    prevalence: np.ndarray,
    operating_points: np.ndarray | None = None,
    title: str = "Precision-recall curves",
) -> Figure:
    """One PR curve per class with its AP, the no-skill line and the operating point.

    Args:
        precision, recall: each class's curve points: ``(C, K)``, or one array per class
            (such as :func:`functional.precision_recall_points_from_histogram` gives).
        average_precision: ``(C,)`` AP per class, shown in each legend.
        class_names: ``C`` names.
        prevalence: ``(C,)`` fraction of positives per class: the precision of a classifier
            without skill (dashed line).
        operating_points: ``(C, 2)`` (recall, precision) of the decision actually used
            (argmax, or the threshold), marked on each curve.
    """
    average_precision = np.asarray(average_precision, dtype=float)
    figure, panels, summary = _class_panels(average_precision, "AP")
    for axis, label in panels:
        axis.step(
            recall[label],
            precision[label],
            where="post",
            color="tab:blue",
            lw=1.5,
            label=f"AP {average_precision[label]:.3f}",
        )
        axis.axhline(
            prevalence[label],
            color="grey",
            ls="--",
            lw=1,
            label=f"no skill {prevalence[label]:.2f}",
        )
        if operating_points is not None:
            axis.plot(*operating_points[label], "o", color="tab:red", ms=5, label="operating point")
        _finish_panel(axis, class_names[label], "lower left")
    return _finish_panels(figure, "Recall", "Precision", title, summary)


_UNIT_TICKS = (0.0, 0.5, 1.0)


def _finish_panel(axis, class_name: str, legend_location: str) -> None:
    axis.set_title(str(class_name)[:28], fontsize=9)
    axis.set_xlim(-0.02, 1.02)
    axis.set_ylim(-0.02, 1.05)
    # Fixed ticks: matplotlib's tick locator and its labels' layout were most of a figure's time.
    axis.set_xticks(_UNIT_TICKS)
    axis.set_yticks(_UNIT_TICKS)
    axis.tick_params(labelsize=7)
    axis.legend(fontsize=6, loc=legend_location)


def _finish_panels(figure: Figure, xlabel: str, ylabel: str, title: str, summary: str | None):
    figure.supxlabel(xlabel)
    figure.supylabel(ylabel)
    figure.suptitle(title if summary is None else f"{title}\n{summary}", fontsize=10)
    return figure


def _class_panels(values: np.ndarray, name: str):
    """A grid of one small panel per class, or beyond :data:`PR_PANELS_MAX` classes for the
    best and worst half of that many by ``values`` (NaN last).

    Returns ``(figure, [(axis, class index)], summary)``; ``summary`` is None when every class
    has a panel, else a line that says which are shown and how the rest are distributed.
    """
    num_classes = len(values)
    order = np.argsort(-np.nan_to_num(values, nan=-np.inf), kind="stable")
    if num_classes <= PR_PANELS_MAX:
        shown, summary = list(range(num_classes)), None
    else:
        half = PR_PANELS_MAX // 2
        shown = [*order[:half], *order[-half:]]
        summary = (
            f"{num_classes} classes: panels show the {half} best and {half} worst by {name}; "
            f"median {name} {np.nanmedian(values):.3f}, "
            f"{name} < 0.5 for {int((values < 0.5).sum())} classes"
        )
    columns = min(5, len(shown))
    rows = int(np.ceil(len(shown) / columns))
    # Fixed margins in inches instead of constrained layout (half of the drawing time): every
    # panel has the same short labels, so the space they need is known.
    width, height = 3.0 * columns, 2.8 * rows + (1.2 if summary else 1.0)
    figure = Figure(figsize=(width, height))
    figure.subplots_adjust(
        left=0.75 / width,
        right=1 - 0.15 / width,
        bottom=0.6 / height,
        top=1 - (0.85 if summary else 0.6) / height,
        wspace=0.3,
        hspace=0.45,
    )
    axes = np.atleast_1d(figure.subplots(rows, columns, squeeze=False)).ravel()
    for axis in axes[len(shown) :]:
        axis.set_visible(False)
    return figure, list(zip(axes[: len(shown)], shown, strict=True)), summary


def plot_roc_curves(
    fpr: np.ndarray,
    tpr: np.ndarray,
    roc_auc: np.ndarray,
    class_names: Sequence[str],
    *,
    title: str = "ROC curves",
) -> Figure:
    """One one-vs-rest ROC curve per class with its AUC (laid out as :func:`plot_pr_curves`).

    Args:
        fpr, tpr: each class's curve points: ``(C, K)``, or one array per class.
        roc_auc: ``(C,)`` AUC per class (NaN for a class without positives or negatives).
        class_names: ``C`` names.
    """
    roc_auc = np.asarray(roc_auc, dtype=float)
    figure, panels, summary = _class_panels(roc_auc, "ROC AUC")
    for axis, label in panels:
        axis.plot(
            fpr[label], tpr[label], color="tab:blue", lw=1.5, label=f"AUC {roc_auc[label]:.3f}"
        )
        axis.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="no skill")
        _finish_panel(axis, class_names[label], "lower right")
    return _finish_panels(figure, "False positive rate", "True positive rate", title, summary)


#: Classes with the largest calibration error drawn in the class-wise reliability diagram.
CALIBRATION_WORST_CLASSES = 5


def plot_calibration(
    state: functional.ClassificationState,
    class_names: Sequence[str],
    labels: Sequence[int],
    *,
    title: str = "Calibration",
) -> Figure:
    """Reliability diagrams: the top-label one (accuracy against mean confidence per
    confidence bin, with the ECE; multiclass and binary), and the class-wise curves (fraction
    of positives per score bin) of the :data:`CALIBRATION_WORST_CLASSES` scored classes whose
    curves are farthest from the diagonal."""
    panels = 2 if state.calibration is not None else 1
    figure = Figure(figsize=(5.0 * panels, 4.6), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, panels))
    for axis in axes:
        axis.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="perfectly calibrated")
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1.02)
    if state.calibration is not None:
        accuracy, confidence, counts, edges = functional.top_label_reliability(state.calibration)
        ece = functional.expected_calibration_error(state.calibration)
        filled = counts > 0
        axis = axes[0]
        axis.bar(
            edges[:-1][filled],
            accuracy[filled],
            width=np.diff(edges)[filled],
            align="edge",
            color="tab:blue",
            edgecolor="white",
            alpha=0.8,
            label="accuracy",
        )
        # Over each bar its mean confidence: the vertical gap is what ECE averages.
        centres = (edges[:-1] + edges[1:])[filled] / 2
        axis.plot(
            centres, confidence[filled], "_", color="tab:red", ms=14, mew=2, label="mean confidence"
        )
        axis.set_title(f"Top label: ECE {ece:.3f}", fontsize=10)
        axis.set_xlabel("Confidence")
        axis.set_ylabel("Accuracy")
        axis.legend(fontsize=7, loc="upper left")
    num_bins = functional.reliability_bins(state.score_histogram.shape[2])
    fraction, counts, edges = functional.reliability_curve_from_histogram(
        state.score_histogram, num_bins
    )
    centres = (edges[:-1] + edges[1:]) / 2
    labels = np.asarray(labels)
    # Each class's count-weighted distance of its curve from the diagonal.
    gaps = np.nansum(counts * np.abs(fraction - centres), axis=1) / np.maximum(
        counts.sum(axis=1), 1.0
    )
    worst = labels[np.argsort(-gaps[labels], kind="stable")[:CALIBRATION_WORST_CLASSES]]
    axis = axes[-1]
    largest = max(counts[worst].max(), 1.0)
    for index, label in enumerate(worst):
        filled = counts[label] > 0
        color = f"C{index}"
        axis.plot(centres[filled], fraction[label][filled], "-", lw=1, alpha=0.6, color=color)
        # Bins with few samples jump around: the marker area shows how many each holds.
        axis.scatter(
            centres[filled],
            fraction[label][filled],
            s=6 + 60 * counts[label][filled] / largest,
            color=color,
            label=f"{str(class_names[label])[:20]} ({gaps[label]:.3f})",
        )
    axis.set_title(
        f"Class-wise, {len(worst)} least calibrated of {len(labels)} (marker area: samples)",
        fontsize=10,
    )
    axis.set_xlabel(f"Score for the class ({num_bins} bins, bin centres)")
    axis.set_ylabel("Fraction of positives")
    axis.legend(fontsize=7, loc="upper left")
    figure.suptitle(title)
    return figure


def plot_roc_and_calibration(
    state: functional.ClassificationState,
    scores: dict,
    class_names: Sequence[str],
    labels: Sequence[int],
    *,
    title: str = "",
) -> dict[str, Figure]:
    """The ROC-curve and reliability figures of one split with a score histogram, by artifact
    stem (``roc_curves``, ``calibration``); ``scores`` as in :func:`plot_state`."""
    points = functional.roc_points_from_histogram(state.score_histogram)
    names = [class_names[label] for label in labels]
    return {
        "roc_curves": plot_roc_curves(
            [points[label][0] for label in labels],
            [points[label][1] for label in labels],
            scores["roc_auc"],
            names,
            title=f"ROC — {title}",
        ),
        "calibration": plot_calibration(state, class_names, labels, title=f"Calibration — {title}"),
    }


def plot_f1_by_epoch(
    f1: np.ndarray, class_names: Sequence[str], *, title: str = "F1 by class and epoch"
) -> Figure:
    """A class × epoch heatmap of F1 (``f1`` is ``(epochs, C)``)."""
    f1 = np.asarray(f1, dtype=float)
    num_epochs, num_classes = f1.shape
    height = min(24.0, max(3.0, 0.3 * num_classes + 1.5))
    figure = Figure(
        figsize=(min(16.0, max(5.0, 0.25 * num_epochs + 3)), height), layout="constrained"
    )
    axis = figure.subplots()
    image = axis.imshow(
        f1.T, cmap="viridis", vmin=0, vmax=1, aspect="auto", interpolation="nearest"
    )
    figure.colorbar(image, ax=axis, label="F1")
    axis.set_xlabel("Epoch")
    axis.set_ylabel("Class")
    _set_class_ticks(axis, class_names, "y")
    epoch_step = max(1, int(np.ceil(num_epochs / 20)))
    axis.set_xticks(np.arange(0, num_epochs, epoch_step))
    axis.set_title(title)
    return figure


def plot_comparison(table: dict, *, title: str = "F1 per class by loss") -> Figure:
    """Grouped bars of per-class F1 (mean ± std over runs) for each group of a
    :func:`mlflow_mcmetrics.report.comparison_table`, and macro F1 beside them."""
    classes, rows = table["classes"], table["rows"]
    figure = Figure(figsize=(min(18.0, 3 + 0.9 * len(classes)), 4.5), layout="constrained")
    per_class_axis, macro_axis = figure.subplots(1, 2, width_ratios=[max(len(classes), 3), 2])
    width = 0.8 / max(len(rows), 1)
    positions = np.arange(len(classes))
    for index, row in enumerate(rows):
        means = [row["f1"][c][0] for c in classes]
        stds = [row["f1"][c][1] for c in classes]
        per_class_axis.bar(
            positions + (index - (len(rows) - 1) / 2) * width,
            means,
            width,
            yerr=stds,
            label=row["group"],
            capsize=2,
        )
        macro_axis.bar(
            index, row["f1_macro"][0], yerr=row["f1_macro"][1], capsize=3, color=f"C{index}"
        )
    per_class_axis.set_xticks(
        positions, [str(c)[:12] for c in classes], rotation=45 if len(classes) > 10 else 0
    )
    per_class_axis.set_ylim(0, 1.05)
    per_class_axis.set_ylabel(f"{table['prefix']}F1")
    per_class_axis.set_xlabel("class (head → tail)")
    per_class_axis.legend(fontsize=8, ncols=min(4, len(rows)))
    if table["tail_classes"]:
        first_tail = classes.index(table["tail_classes"][0])
        per_class_axis.axvspan(first_tail - 0.5, len(classes) - 0.5, color="grey", alpha=0.12, lw=0)
        per_class_axis.text(first_tail - 0.4, 1.0, "tail", fontsize=8, color="grey")
    macro_axis.set_xticks(range(len(rows)), [row["group"] for row in rows], rotation=45, ha="right")
    macro_axis.set_ylim(0, 1.05)
    macro_axis.set_title("macro F1")
    figure.suptitle(title)
    return figure


def plot_state(
    state: functional.ClassificationState,
    scores: dict,
    class_names: Sequence[str],
    labels: Sequence[int],
    *,
    zero_division: float = 0.0,
    title: str = "",
    confusion_matrix: bool = True,
) -> dict[str, Figure]:
    """The confusion-matrix and (with a score histogram) PR-curve figures of one split, by
    artifact stem (``confusion_matrix``, ``pr_curves``), for the scored ``labels``.

    ``scores`` is :func:`functional.classification_scores` of ``state`` for ``labels``: the
    legends show the very AP values that were logged.
    """
    names = [class_names[label] for label in labels]
    figures = {}
    if confusion_matrix:
        matrix = state.confusion_matrix
        # A multilabel state holds one 2x2 per label; a multiclass one is C x C.
        matrix = matrix[labels] if matrix.ndim == 3 else matrix[np.ix_(labels, labels)]
        figures["confusion_matrix"] = plot_confusion_matrix(
            matrix, names, title=f"Confusion matrix — {title}"
        )
    if state.score_histogram is not None:
        points = functional.precision_recall_points_from_histogram(state.score_histogram)
        figures["pr_curves"] = plot_pr_curves(
            [points[label][0] for label in labels],
            [points[label][1] for label in labels],
            scores["ap"],
            names,
            prevalence=scores["support"] / max(state.num_samples, 1.0),
            operating_points=report.operating_points(state, labels, zero_division),
            title=f"Precision-recall — {title}",
        )
    return figures
