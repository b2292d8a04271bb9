"""Pure NumPy math: classification state -> scores, curves and averages.

Nothing here imports Keras or MLflow. The Keras metric (:mod:`mlflow_mcmetrics.metrics`)
accumulates the same state on the device; these functions turn it into numbers, with
scikit-learn's definitions and parameter names (``labels``, ``average``, ``zero_division``).

The state of one split is a :class:`ClassificationState`:

* ``confusion_matrix``: ``(C, C)`` counts, rows = true class, columns = predicted class, or
  ``(C, 2, 2)`` for multilabel in :func:`sklearn.metrics.multilabel_confusion_matrix` layout
  (``[[tn, fp], [fn, tp]]`` per label).
* ``score_histogram``: ``(2, C, T)`` or ``None``; ``[1, c, b]`` counts the samples that are
  positive for class ``c`` with score in bin ``b``, ``[0, c, b]`` the negatives. Bin ``b`` holds
  scores in ``[b / T, (b + 1) / T)`` (see :func:`score_bins`); the last bin also holds 1.0.

The functions are split like torchmetrics' functional API: *update* (predictions -> state,
:func:`state_from_predictions`, one formatter per task) and *compute* (state -> numbers, named
by what they compute from: ``*_from_confusion_matrix``, ``*_from_histogram``).

>>> state = state_from_predictions([0, 1, 1, 2], [[0.8, 0.1, 0.1], [0.2, 0.7, 0.1],
...                                               [0.6, 0.3, 0.1], [0.1, 0.2, 0.7]])
>>> state.confusion_matrix
array([[1., 0., 0.],
       [1., 1., 0.],
       [0., 0., 1.]])
>>> round(classification_scores(state)["f1_macro"], 4)
0.7778
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from scipy.special import digamma

from mlflow_mcmetrics.validation import TASKS, check_arguments

__all__ = [
    "DEFAULT_PR_THRESHOLDS",
    "TASKS",
    "ClassificationState",
    "average_precision_from_histogram",
    "classification_scores",
    "f1_macro_from_stat_scores",
    "merge_states",
    "precision_recall_curve_from_histogram",
    "precision_recall_f1_from_confusion_matrix",
    "score_bins",
    "stat_scores_from_confusion_matrix",
    "state_from_predictions",
]

Task = Literal["multiclass", "binary", "multilabel"]
Average = Literal["micro", "macro", "weighted"] | None

#: Uniform score bins per class for PR curves. Measured on the MLproject's digits CNN
#: (benchmarks/README.md): binned AP within 0.0002 of scikit-learn's after training and
#: within 0.009 after 3 epochs, when scores are bunched in 0.01-0.4 (1000 bins: 0.002 and
#: 0.034; logit-spaced bins did worse in both). The update touches only the bins a batch
#: fills, so its cost does not depend on this; the state is 2 x 2 x C x 4096 float32 (64 MB
#: for 1000 classes).
DEFAULT_PR_THRESHOLDS = 4096


@dataclasses.dataclass(frozen=True)
class ClassificationState:
    """Accumulated statistics of one split (see the module docstring for the layout)."""

    confusion_matrix: np.ndarray
    score_histogram: np.ndarray | None = None

    @property
    def num_classes(self) -> int:
        return int(self.confusion_matrix.shape[0])

    @property
    def num_samples(self) -> float:
        """(Weighted) number of samples (each label's 2x2 of a multilabel state counts all)."""
        counted = self.confusion_matrix[0] if self.is_multilabel else self.confusion_matrix
        return float(counted.sum())

    @property
    def is_multilabel(self) -> bool:
        return self.confusion_matrix.ndim == 3


def _divide(numerator, denominator, zero_division: float, xp: Any = np):
    """``numerator / denominator`` with ``zero_division`` where the denominator is 0.

    ``xp`` is the array namespace: NumPy here, ``keras.ops`` in the Keras metric's ``result()``.
    """
    undefined = denominator == 0
    return xp.where(undefined, zero_division, numerator / xp.where(undefined, 1.0, denominator))


def _nanaverage(values, weights=None, xp: Any = np):
    """Average ignoring NaNs, as scikit-learn; all-zero weights fall back to the plain mean."""
    defined = xp.logical_not(xp.isnan(values))
    counted = xp.where(defined, 1.0, 0.0)
    if weights is not None:
        weighted = xp.where(defined, weights, 0.0)
        counted = xp.where(xp.sum(weighted) > 0, weighted, counted)
    total = xp.sum(counted)
    mean = xp.sum(xp.where(defined, values, 0.0) * counted) / xp.where(total > 0, total, 1.0)
    return xp.where(total > 0, mean, float("nan"))


def _resolve_labels(num_classes: int, labels) -> np.ndarray:
    if labels is None:
        return np.arange(num_classes)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must be class indices in [0, {num_classes}), got {labels}.")
    return labels


def score_bins(scores: np.ndarray, num_bins: int) -> np.ndarray:
    """Histogram bin of each score in ``[0, 1]``: ``floor(score * num_bins)``, 1.0 in the last.

    Bin ``b`` therefore corresponds to the decision rule ``score >= b / num_bins``, which is
    what makes a cumulative sum over bins a precision-recall curve. Computed in float32, as
    the Keras metric does on the device, so both put a score in the same bin.

    >>> score_bins([0.0, 0.249, 0.25, 0.999, 1.0], 4)
    array([0, 0, 1, 3, 3])
    """
    bins = np.floor(np.asarray(scores, dtype=np.float32) * np.float32(num_bins)).astype(np.int64)
    return np.clip(bins, 0, num_bins - 1)


# -- update: one formatter per task, (y_true, y_score) -> (positive, predicted, scores) --------
def _format_multiclass(y_true, y_score, threshold):
    """Argmax decision; ``y_true`` holds class indices."""
    num_classes = y_score.shape[1]
    labels = np.asarray(y_true).astype(np.int64).reshape(-1)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"Labels must be in [0, {num_classes}); got {np.unique(labels)}.")
    positive = labels[:, None] == np.arange(num_classes)[None, :]
    predicted = np.argmax(y_score, axis=1)[:, None] == np.arange(num_classes)[None, :]
    return positive, predicted, y_score


def _format_binary(y_true, y_score, threshold):
    """One positive-class probability per sample, ``> threshold``; two classes in the state."""
    positive_score = y_score.reshape(-1)
    y_score = np.stack([1.0 - positive_score, positive_score], axis=1)
    positive, _, _ = _format_multiclass(y_true, y_score, threshold)
    predicted_class = (positive_score > threshold).astype(np.int64)
    return positive, np.stack([predicted_class == 0, predicted_class == 1], axis=1), y_score


def _format_multilabel(y_true, y_score, threshold):
    """``C`` independent labels, 0/1 each, ``> threshold``."""
    positive = np.asarray(y_true).astype(np.int64).reshape(y_score.shape).astype(bool)
    return positive, y_score > threshold, y_score


_FORMATTERS = {
    "multiclass": _format_multiclass,
    "binary": _format_binary,
    "multilabel": _format_multilabel,
}


def state_from_predictions(
    y_true: Sequence | np.ndarray,
    y_score: Sequence | np.ndarray,
    *,
    task: Task = "multiclass",
    threshold: float = 0.5,
    ignore_class: int | None = None,
    num_bins: int = 0,
    sample_weight: Sequence | np.ndarray | None = None,
) -> ClassificationState:
    """State of one batch of predictions, from NumPy arrays (probabilities, not logits).

    Args:
        y_true: class indices ``(N,)`` for ``multiclass``/``binary``; 0/1 ``(N, C)`` for
            ``multilabel``.
        y_score: probabilities ``(N, C)``; ``(N,)`` or ``(N, 1)`` for ``binary`` (the
            probability of class 1).
        task: ``"multiclass"`` (argmax), ``"binary"`` or ``"multilabel"`` (``> threshold``).
        threshold: decision threshold for ``binary`` and ``multilabel``.
        ignore_class: samples whose true class is this index are left out.
        num_bins: score-histogram bins for PR curves; 0 for none.
        sample_weight: ``(N,)`` weights.

    Returns:
        The :class:`ClassificationState`; add states of several batches with
        :func:`merge_states`.

    >>> state_from_predictions([1, 0, 1], [0.9, 0.4, 0.3], task="binary").confusion_matrix
    array([[1., 0.],
           [1., 1.]])
    """
    check_arguments(task=task, threshold=threshold, pr_thresholds=num_bins)
    y_score = np.asarray(y_score, dtype=np.float64)
    if y_score.ndim == 1:
        y_score = y_score[:, None]
    num_samples = y_score.shape[0]
    weights = (
        np.ones(num_samples) if sample_weight is None else np.asarray(sample_weight, np.float64)
    )
    if ignore_class is not None:
        check_arguments(
            task=task,
            ignore_class=ignore_class,
            num_classes=2 if task == "binary" else y_score.shape[1],
        )
        keep = np.asarray(y_true).reshape(-1) != ignore_class
        y_true, y_score, weights = (
            np.asarray(y_true).reshape(-1)[keep],
            y_score[keep],
            weights[keep],
        )
    positive, predicted, y_score = _FORMATTERS[task](y_true, y_score, threshold)
    num_classes = y_score.shape[1]

    if task == "multilabel":
        cells = np.arange(num_classes) * 4 + positive * 2 + predicted
        confusion_weights = np.repeat(weights, num_classes)
        confusion_shape: tuple[int, ...] = (num_classes, 2, 2)
    else:
        cells = np.argmax(positive, axis=1) * num_classes + np.argmax(predicted, axis=1)
        confusion_weights = weights
        confusion_shape = (num_classes, num_classes)
    confusion = np.bincount(
        cells.reshape(-1), weights=confusion_weights, minlength=int(np.prod(confusion_shape))
    )

    histogram = None
    if num_bins:
        cells = (
            positive.astype(np.int64) * num_classes * num_bins
            + np.arange(num_classes)[None, :] * num_bins
            + score_bins(y_score, num_bins)
        )
        histogram = np.bincount(
            cells.reshape(-1),
            weights=np.repeat(weights, num_classes),
            minlength=2 * num_classes * num_bins,
        ).reshape(2, num_classes, num_bins)
    return ClassificationState(confusion.reshape(confusion_shape), histogram)


def merge_states(*states: ClassificationState) -> ClassificationState:
    """Sum the states of several batches (or replicas) into one."""
    histograms = [s.score_histogram for s in states]
    return ClassificationState(
        confusion_matrix=sum(s.confusion_matrix for s in states),
        score_histogram=None if any(h is None for h in histograms) else sum(histograms),
    )


# -- compute -------------------------------------------------------------------------------------
def stat_scores_from_confusion_matrix(
    confusion_matrix: np.ndarray, xp: Any = np
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class true positives, predicted positives and actual positives (support).

    Accepts a multiclass ``(C, C)`` or a multilabel ``(C, 2, 2)`` confusion matrix, in the
    array namespace ``xp`` (the Keras metric's ``result()`` passes ``keras.ops``).

    >>> stat_scores_from_confusion_matrix(np.array([[3, 1], [2, 4]]))
    (array([3., 4.]), array([5., 5.]), array([4., 6.]))
    """
    if xp is np:
        confusion_matrix = np.asarray(confusion_matrix, dtype=np.float64)
    if len(confusion_matrix.shape) == 3:
        true_positives = confusion_matrix[:, 1, 1]
        predicted = true_positives + confusion_matrix[:, 0, 1]
        support = true_positives + confusion_matrix[:, 1, 0]
    else:
        true_positives = xp.diagonal(confusion_matrix)
        predicted = xp.sum(confusion_matrix, axis=0)
        support = xp.sum(confusion_matrix, axis=1)
    return true_positives, predicted, support


def f1_macro_from_stat_scores(
    true_positives, predicted, support, zero_division: float = 0.0, xp: Any = np
):
    """Macro F1 over the classes given (NaN F1s left out), in the array namespace ``xp``.

    The Keras metric's ``result()`` calls it with ``xp=keras.ops`` on its per-class counts.

    >>> true_positives, predicted, support = np.array([[3.0, 0.0], [5.0, 0.0], [4.0, 0.0]])
    >>> float(f1_macro_from_stat_scores(true_positives, predicted, support))
    0.3333333333333333
    """
    return _nanaverage(_divide(2.0 * true_positives, support + predicted, zero_division, xp), xp=xp)


def precision_recall_f1_from_confusion_matrix(
    confusion_matrix: np.ndarray,
    *,
    labels: Sequence[int] | None = None,
    average: Average = None,
    zero_division: float = 0.0,
):
    """scikit-learn's ``precision_recall_fscore_support`` (beta = 1), from a confusion matrix.

    Args:
        confusion_matrix: ``(C, C)`` or multilabel ``(C, 2, 2)``.
        labels: class indices to score and average over (default: all), e.g. every class but
            a padding class.
        average: ``None`` for per-class arrays, or ``"micro"``, ``"macro"``, ``"weighted"``.
        zero_division: value for an undefined ratio (0.0, 1.0 or NaN; NaN is left out of
            averages, as in scikit-learn).

    Returns:
        ``(precision, recall, f1, support)``: arrays over ``labels`` for ``average=None``,
        otherwise floats and ``support=None``.

    >>> precision, recall, f1, _ = precision_recall_f1_from_confusion_matrix(
    ...     np.array([[3, 1], [2, 4]]), average="macro")
    >>> round(precision, 4), round(recall, 4), round(f1, 4)
    (0.7, 0.7083, 0.697)
    """
    check_arguments(zero_division=zero_division)
    if average not in (None, "micro", "macro", "weighted"):
        raise ValueError(f"average must be None, 'micro', 'macro' or 'weighted', got {average!r}.")
    true_positives, predicted, support = stat_scores_from_confusion_matrix(confusion_matrix)
    labels = _resolve_labels(len(support), labels)
    true_positives, predicted, support = true_positives[labels], predicted[labels], support[labels]
    if average == "micro":
        true_positives, predicted, support = (
            true_positives.sum(keepdims=True),
            predicted.sum(keepdims=True),
            support.sum(keepdims=True),
        )
    precision = _divide(true_positives, predicted, zero_division)
    recall = _divide(true_positives, support, zero_division)
    f1 = _divide(2 * true_positives, support + predicted, zero_division)
    if average is None:
        return precision, recall, f1, support
    weights = support if average == "weighted" else None
    return (
        float(_nanaverage(precision, weights)),
        float(_nanaverage(recall, weights)),
        float(_nanaverage(f1, weights)),
        None,
    )


def precision_recall_curve_from_histogram(score_histogram: np.ndarray):
    """Per-class binned precision-recall curves.

    Args:
        score_histogram: ``(2, C, T)`` negative/positive score counts.

    Returns:
        ``(precision, recall, thresholds)``: ``precision`` and ``recall`` are ``(C, T + 1)``
        for the decision rules ``score >= thresholds[b]``, ``thresholds = b / T`` for
        ``b = 0..T-1``, followed by the end point (nothing predicted: precision 1, recall 0)
        as in scikit-learn. Recall is 0 for a class without positives.

    >>> histogram = np.array([[[2, 1]], [[1, 3]]])  # one class, 2 bins: negatives, positives
    >>> precision, recall, thresholds = precision_recall_curve_from_histogram(histogram)
    >>> precision, recall, thresholds
    (array([[0.57142857, 0.75      , 1.        ]]), array([[1.  , 0.75, 0.  ]]), array([0. , 0.5]))
    """
    negatives, positives = np.asarray(score_histogram, dtype=np.float64)
    num_bins = positives.shape[1]
    # Predicted positive at bin b = every sample in bins >= b: reversed cumulative sums.
    true_positives = np.cumsum(positives[:, ::-1], axis=1)[:, ::-1]
    false_positives = np.cumsum(negatives[:, ::-1], axis=1)[:, ::-1]
    precision = _divide(true_positives, true_positives + false_positives, 1.0)
    recall = _divide(true_positives, true_positives[:, :1], 0.0)
    end = np.ones((positives.shape[0], 1))
    return (
        np.concatenate([precision, end], axis=1),
        np.concatenate([recall, 0 * end], axis=1),
        np.arange(num_bins) / num_bins,
    )


def _sum_of_precisions(true_before, false_before, positives, negatives_first):
    """``sum_{j=1..p} (a + j) / (a + j + b)``: the precisions at ``p`` positives ranked in a row.

    ``a``/``b`` are the true/false positives ranked before them. It equals
    ``p - b * (digamma(a + b + p + 1) - digamma(a + b + 1))``, which keeps the bound O(C * T)
    instead of O(N).
    """
    false_total = false_before + negatives_first
    start = true_before + false_total + 1.0
    harmonic = digamma(start + positives) - digamma(start)
    return positives - false_total * harmonic


def average_precision_from_histogram(score_histogram: np.ndarray):
    """Per-class average precision from binned scores, with its tie interval.

    The binned value is scikit-learn's ``average_precision_score`` (the step-wise sum
    ``sum_n (R_n - R_{n-1}) P_n``) with every bin treated as one tied score. The samples
    inside a bin could have been ranked in any order; ranking each bin's positives first
    gives the highest AP, negatives first the lowest. Any exact AP of scores that fall into
    these bins (scikit-learn's on the raw scores included) lies in ``[lower, upper]``;
    the bounds assume unit sample weights.

    Returns:
        ``(ap, lower, upper)``, each ``(C,)``. A class without positives has AP 0, as in
        scikit-learn.

    >>> histogram = np.array([[[2, 1]], [[1, 3]]])  # one class, 2 bins: negatives, positives
    >>> ap, lower, upper = average_precision_from_histogram(histogram)
    >>> ap.round(4), lower.round(4), upper.round(4)
    (array([0.7054]), array([0.622]), array([0.95]))
    """
    negatives, positives = np.asarray(score_histogram, dtype=np.float64)
    # Walk from the highest bin down; "before" = counts in strictly higher bins.
    positives, negatives = positives[:, ::-1], negatives[:, ::-1]
    true_positives = np.cumsum(positives, axis=1)
    false_positives = np.cumsum(negatives, axis=1)
    total = true_positives[:, -1]
    # Only bins holding positives add to AP and its bounds: at most N of the C * T bins.
    classes, bins = np.nonzero(positives)
    ranked = positives[classes, bins]
    true_through, false_through = true_positives[classes, bins], false_positives[classes, bins]
    true_before, tied_negatives = true_through - ranked, negatives[classes, bins]
    false_before = false_through - tied_negatives

    def per_class(values):
        return np.bincount(classes, weights=values, minlength=positives.shape[0])

    ap = per_class(ranked * true_through / (true_through + false_through))
    upper = per_class(_sum_of_precisions(true_before, false_before, ranked, 0.0))
    lower = per_class(_sum_of_precisions(true_before, false_before, ranked, tied_negatives))
    return _divide(ap, total, 0.0), _divide(lower, total, 0.0), _divide(upper, total, 0.0)


def classification_scores(
    state: ClassificationState,
    *,
    labels=None,
    zero_division: float = 0.0,
) -> dict[str, float | np.ndarray]:
    """Every score the product logs, for one split.

    Returns a dict with per-class arrays over ``labels`` (``precision``, ``recall``, ``f1``,
    ``support`` and, when the state has a histogram, ``ap``, ``ap_lower``, ``ap_upper``) and
    floats ``f1_macro``, ``f1_micro``, ``f1_weighted``, ``precision_macro``, ``recall_macro``
    and ``map`` (mean AP over ``labels``).
    """
    labels = _resolve_labels(state.num_classes, labels)

    def averaged(average):
        return precision_recall_f1_from_confusion_matrix(
            state.confusion_matrix, labels=labels, average=average, zero_division=zero_division
        )

    precision, recall, f1, support = averaged(None)
    precision_macro, recall_macro, f1_macro, _ = averaged("macro")
    scores: dict[str, float | np.ndarray] = {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "support": support,
        "f1_macro": f1_macro,
        "f1_micro": averaged("micro")[2],
        "f1_weighted": averaged("weighted")[2],
        "precision_macro": precision_macro,
        "recall_macro": recall_macro,
    }
    if state.score_histogram is not None:
        ap, lower, upper = (
            values[labels] for values in average_precision_from_histogram(state.score_histogram)
        )
        scores.update(
            ap=ap, ap_lower=lower, ap_upper=upper, map=float(ap.mean()) if ap.size else 0.0
        )
    return scores
