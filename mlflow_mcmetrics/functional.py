"""Pure NumPy math: classification state -> scores, curves and averages.

Nothing here imports Keras or MLflow. The Keras metric (:mod:`mlflow_mcmetrics.metrics`)
accumulates the same state on the device; these functions turn it into numbers, with
scikit-learn's definitions and parameter names (``labels``, ``average``, ``zero_division``).

The state of one split is a :class:`ClassificationState`:

* ``confusion_matrix``: ``(C, C)`` counts, rows = true class, columns = predicted class, or
  ``(C, 2, 2)`` for multilabel in :func:`sklearn.metrics.multilabel_confusion_matrix` layout
  (``[[tn, fp], [fn, tp]]`` per label); ``None`` for a multiclass or binary state kept without
  one (the Keras metric's default beyond :data:`DENSE_CONFUSION_MATRIX_MAX_CLASSES` classes, see
  :func:`state_counts`).
* ``stat_scores``: ``(3, C)`` per class ``[true positives, predicted, support]``, what
  precision, recall, F1, balanced accuracy, MCC and Cohen's kappa need, exactly. Derived from
  the confusion matrix when there is one; given when there is none.
* ``score_histogram``: ``(2, C, T)`` or ``None``; ``[1, c, b]`` counts the samples that are
  positive for class ``c`` with score in bin ``b``, ``[0, c, b]`` the negatives. Bin ``b`` holds
  scores in ``[b / T, (b + 1) / T)`` (see :func:`score_bins`); the last bin also holds 1.0.
* ``calibration``: ``(3, B)`` or ``None`` (multiclass and binary, kept beside the histogram):
  per bin of top-label confidence (the largest class score, ``B`` equal-width bins as
  :func:`score_bins`), the weighted count of samples, of correctly classified samples (argmax
  equals the label) and the sum of their confidences: what expected calibration error needs,
  exactly.

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
import functools
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np
from scipy.special import digamma

from mlflow_mcmetrics.validation import TASKS, check_arguments

__all__ = [
    "CALIBRATION_BINS",
    "COUNT_BYTES",
    "DEFAULT_PR_THRESHOLDS",
    "DENSE_CONFUSION_MATRIX_MAX_CLASSES",
    "SHOT_GROUPS",
    "SHOT_THRESHOLDS",
    "STATE_BUDGET_BYTES",
    "TASKS",
    "ClassificationState",
    "ShotGroups",
    "agreement_scores_from_confusion_matrix",
    "agreement_scores_from_stat_scores",
    "average_precision_from_histogram",
    "calibration_state",
    "classification_scores",
    "default_pr_thresholds",
    "dense_confusion_matrix_by_default",
    "expected_calibration_error",
    "f1_macro_from_stat_scores",
    "f1_optimal_threshold_from_histogram",
    "geometric_mean_from_stat_scores",
    "group_scores_from_stat_scores",
    "merge_states",
    "precision_recall_curve_from_histogram",
    "precision_recall_points_from_histogram",
    "precision_recall_f1_from_confusion_matrix",
    "precision_recall_f1_from_stat_scores",
    "reliability_bins",
    "reliability_curve_from_histogram",
    "roc_auc_from_histogram",
    "roc_curve_from_histogram",
    "roc_points_from_histogram",
    "score_bins",
    "shot_groups",
    "specificity_iba_from_stat_scores",
    "spread_from_stat_scores",
    "stat_scores_from_confusion_matrix",
    "state_counts",
    "state_from_predictions",
    "top_label_reliability",
]

Task = Literal["multiclass", "binary", "multilabel"]
Average = Literal["micro", "macro", "weighted"] | None

#: Uniform score bins per class for PR curves, the most the Keras metric keeps by default
#: (fewer beyond 2,997 classes: :func:`default_pr_thresholds`). Measured on the
#: MLproject's digits CNN (benchmarks/README.md): binned AP within 0.0002 of scikit-learn's
#: after training and within 0.009 after 3 epochs, when scores are bunched in 0.01-0.4 (1000
#: bins: 0.002 and 0.034; logit-spaced bins did worse in both). The update touches only the
#: bins a batch fills, so its cost does not depend on this; the state is 2 x 2 x C x 4096
#: float32 (64 MB for 1000 classes).
DEFAULT_PR_THRESHOLDS = 4096

#: Device memory the Keras metric's state may take by default, per metric (SPEC section 3:
#: 256 MB at 10,000 classes). An explicit ``pr_thresholds`` or ``confusion_matrix=True`` is
#: honoured beyond it.
STATE_BUDGET_BYTES = 256 * 2**20
#: Bytes per count in the Keras metric's state: a float32 pair (exact integers up to 2**36,
#: see ``metrics.ExactCounts``).
COUNT_BYTES = 8
#: Largest number of classes whose dense ``(C, C)`` confusion matrix the Keras metric keeps by
#: default: 4096**2 counts are 128 MiB, half of :data:`STATE_BUDGET_BYTES`, the other half
#: left to the score histograms. Beyond it a multiclass state holds only the per-class
#: ``stat_scores`` (P/R/F1 and the agreement scores stay exact; the off-diagonal cells, i.e.
#: which classes are confused with which, are given up).
DENSE_CONFUSION_MATRIX_MAX_CLASSES = 4096

#: Equal-width confidence bins of the expected calibration error (Guo et al. 2017).
CALIBRATION_BINS = 15

#: The long-tail groups of classes, head to tail (see :func:`shot_groups`).
SHOT_GROUPS = ("many", "medium", "few")
#: Training samples per class that separate few- from medium- and medium- from many-shot
#: classes (Liu et al. 2019, ImageNet-LT; Kang et al. 2020).
SHOT_THRESHOLDS = (20, 100)


def dense_confusion_matrix_by_default(num_classes: int, task: str = "multiclass") -> bool:
    """Whether the Keras metric keeps the dense confusion matrix by default: always for
    ``multilabel`` (``(C, 2, 2)`` is O(C)), up to :data:`DENSE_CONFUSION_MATRIX_MAX_CLASSES`
    classes otherwise.

    >>> dense_confusion_matrix_by_default(4096), dense_confusion_matrix_by_default(4097)
    (True, False)
    """
    return task == "multilabel" or num_classes <= DENSE_CONFUSION_MATRIX_MAX_CLASSES


def state_counts(
    num_classes: int, task: str, pr_thresholds: int, *, confusion_matrix: bool = True
) -> int:
    """Counts in the Keras metric's state (each :data:`COUNT_BYTES` on the device): the
    confusion matrix (``C * C``, multilabel ``C * 4``; none with ``confusion_matrix=False``),
    the per-class ``[true positives, predicted, support]`` (``3 * C``, not multilabel), 2
    rejected-row counters, and with ``pr_thresholds = T > 0`` the score histograms
    (``2 * T * C``) and, not multilabel, the calibration counts (``3 * CALIBRATION_BINS``).

    >>> state_counts(10, "multiclass", 4096) * COUNT_BYTES  # 10 classes: 657 kB
    656776
    """
    matrix = 4 * num_classes if task == "multilabel" else num_classes**2
    counts = (matrix if confusion_matrix else 0) + 2 + 2 * pr_thresholds * num_classes
    if task != "multilabel":
        counts += 3 * num_classes + (3 * CALIBRATION_BINS if pr_thresholds else 0)
    return counts


def default_pr_thresholds(
    num_classes: int, task: str = "multiclass", *, confusion_matrix: bool | None = None
) -> int:
    """The Keras metric's score bins for ``pr_thresholds="auto"``: the largest power of two up
    to :data:`DEFAULT_PR_THRESHOLDS` whose state (:func:`state_counts`) fits in
    :data:`STATE_BUDGET_BYTES`; 0 (no curves) if not even one bin does.

    Powers of two, so that coarser bins are unions of finer ones. With the default layout
    (``confusion_matrix=None``: :func:`dense_confusion_matrix_by_default`): 4096 bins up to
    2,997 classes, 2048 up to 4,094, 1024 at 4,095-4,096 (where the dense matrix takes half
    the budget), 2048 again from 4,097 (no matrix) to 8,185, 1024 up to 16,360, then halving
    as C doubles (128 at 100,000 classes).

    >>> [default_pr_thresholds(c) for c in (10, 2000, 3000, 4096, 4097, 10_000, 100_000)]
    [4096, 4096, 2048, 1024, 2048, 1024, 128]
    """
    if confusion_matrix is None:
        confusion_matrix = dense_confusion_matrix_by_default(num_classes, task)
    bins = DEFAULT_PR_THRESHOLDS
    while bins and (
        state_counts(num_classes, task, bins, confusion_matrix=confusion_matrix) * COUNT_BYTES
        > STATE_BUDGET_BYTES
    ):
        bins //= 2
    return bins


@dataclasses.dataclass(frozen=True)
class ClassificationState:
    """Accumulated statistics of one split (see the module docstring for the layout).

    Give ``confusion_matrix``, or, for a multiclass or binary state kept without one,
    ``stat_scores``. With a confusion matrix, ``stat_scores`` are always its own (its
    diagonal, column and row sums: a ``dataclasses.replace`` of the matrix cannot leave
    stale ones).

    >>> state = ClassificationState(stat_scores=np.array([[3, 4], [5, 5], [4, 6]]))
    >>> state.num_classes, state.num_samples, state.confusion_matrix is None
    (2, 10.0, True)
    """

    confusion_matrix: np.ndarray | None = None
    score_histogram: np.ndarray | None = None
    calibration: np.ndarray | None = None
    stat_scores: np.ndarray | None = None

    def __post_init__(self):
        if self.confusion_matrix is not None:
            stat_scores = np.stack(stat_scores_from_confusion_matrix(self.confusion_matrix))
        elif self.stat_scores is not None:
            stat_scores = np.asarray(self.stat_scores, dtype=np.float64)
            if stat_scores.ndim != 2 or len(stat_scores) != 3:
                raise ValueError(
                    "stat_scores must be (3, C): per class [true positives, predicted, "
                    f"support], got shape {stat_scores.shape}."
                )
        else:
            raise ValueError("A ClassificationState needs a confusion_matrix or stat_scores.")
        object.__setattr__(self, "stat_scores", stat_scores)

    @property
    def num_classes(self) -> int:
        return int(self.stat_scores.shape[1])

    @property
    def num_samples(self) -> float:
        """(Weighted) number of samples (each label's 2x2 of a multilabel state counts all)."""
        if self.is_multilabel:
            return float(self.confusion_matrix[0].sum())
        return float(self.stat_scores[2].sum())

    @property
    def is_multilabel(self) -> bool:
        return self.confusion_matrix is not None and self.confusion_matrix.ndim == 3

    def __reduce__(self):
        # Pickled (to the render processes) as the non-zero cells of each mostly empty array:
        # a 2000-class state is 160 MB dense and about 2 MB so; sending it took 1.4 s. The
        # stat scores only where there is no matrix to derive them from.
        stat_scores = self.stat_scores if self.confusion_matrix is None else None
        arrays = (self.confusion_matrix, self.score_histogram, self.calibration, stat_scores)
        return _state_from_cells, tuple(_nonzero_cells(array) for array in arrays)


def _nonzero_cells(array: np.ndarray | None):
    """``array``, or ``(shape, flat indices, values)`` of its non-zero cells where smaller."""
    if array is None:
        return None
    flat = np.asarray(array).reshape(-1)
    cells = np.flatnonzero(flat)
    if 2 * cells.size >= flat.size:  # an index and a value per cell
        return array
    return np.shape(array), cells, flat[cells]


def _state_from_cells(*arrays) -> ClassificationState:
    def dense(array):
        if array is None or isinstance(array, np.ndarray):
            return array
        shape, cells, values = array
        result = np.zeros(shape, dtype=values.dtype)
        result.reshape(-1)[cells] = values
        return result

    return ClassificationState(*(dense(array) for array in arrays))


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
    if np.any((y_score < 0) | (y_score > 1)):
        raise ValueError(
            "y_score must hold probabilities in [0, 1]; for logits apply softmax (multiclass) "
            "or sigmoid (binary, multilabel) first."
        )
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
    calibration = None
    if num_bins and task != "multilabel":
        calibration = calibration_state(
            np.argmax(positive, axis=1), y_score, weights, CALIBRATION_BINS
        )
    return ClassificationState(confusion.reshape(confusion_shape), histogram, calibration)


def calibration_state(
    y_true: np.ndarray, y_score: np.ndarray, weights: np.ndarray, num_bins: int = CALIBRATION_BINS
) -> np.ndarray:
    """``(3, num_bins)``: per top-label confidence bin, the weighted count of samples, of
    correctly classified ones (argmax equals ``y_true``) and the sum of their confidences.

    >>> calibration_state(np.array([0, 1]), np.array([[0.9, 0.1], [0.8, 0.2]]), np.ones(2), 2)
    array([[0. , 2. ],
           [0. , 1. ],
           [0. , 1.7]])
    """
    confidence = np.max(y_score, axis=1)
    correct = np.argmax(y_score, axis=1) == y_true
    cells = np.arange(3)[:, None] * num_bins + score_bins(confidence, num_bins)[None, :]
    values = np.stack([weights, weights * correct, weights * confidence])
    return np.bincount(cells.ravel(), weights=values.ravel(), minlength=3 * num_bins).reshape(
        3, num_bins
    )


def merge_states(*states: ClassificationState) -> ClassificationState:
    """Sum the states of several batches (or replicas) into one (with a confusion matrix only
    if every state has one)."""

    def total(parts):
        return None if any(part is None for part in parts) else sum(parts)

    return ClassificationState(
        confusion_matrix=total([s.confusion_matrix for s in states]),
        score_histogram=total([s.score_histogram for s in states]),
        calibration=total([s.calibration for s in states]),
        stat_scores=sum(s.stat_scores for s in states),
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
    return precision_recall_f1_from_stat_scores(
        *stat_scores_from_confusion_matrix(confusion_matrix),
        labels=labels,
        average=average,
        zero_division=zero_division,
    )


def precision_recall_f1_from_stat_scores(
    true_positives,
    predicted,
    support,
    *,
    labels: Sequence[int] | None = None,
    average: Average = None,
    zero_division: float = 0.0,
):
    """:func:`precision_recall_f1_from_confusion_matrix` from the per-class true positives,
    predicted positives and support alone (all it reads of the matrix): a state without a
    confusion matrix gets the same values.

    >>> precision, recall, f1, _ = precision_recall_f1_from_stat_scores(
    ...     [3, 4], [5, 5], [4, 6], average="macro")
    >>> round(precision, 4), round(recall, 4), round(f1, 4)
    (0.7, 0.7083, 0.697)
    """
    check_arguments(zero_division=zero_division)
    if average not in (None, "micro", "macro", "weighted"):
        raise ValueError(f"average must be None, 'micro', 'macro' or 'weighted', got {average!r}.")
    true_positives, predicted, support = (
        np.asarray(values, dtype=np.float64) for values in (true_positives, predicted, support)
    )
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


def _counts_at_or_above(score_histogram: np.ndarray) -> np.ndarray:
    """``(2, C, T)``: per class, the negatives and positives with a score in bin ``b`` or
    above, i.e. the false and true positives of the decision rule ``score >= b / T``."""
    histogram = np.asarray(score_histogram, dtype=np.float64)
    return np.cumsum(histogram[..., ::-1], axis=-1)[..., ::-1]


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
    false_positives, true_positives = _counts_at_or_above(score_histogram)
    num_bins = true_positives.shape[1]
    precision = _divide(true_positives, true_positives + false_positives, 1.0)
    recall = _divide(true_positives, true_positives[:, :1], 0.0)
    end = np.ones((true_positives.shape[0], 1))
    return (
        np.concatenate([precision, end], axis=1),
        np.concatenate([recall, 0 * end], axis=1),
        np.arange(num_bins) / num_bins,
    )


class _NonemptyBins(NamedTuple):
    classes: np.ndarray
    bins: np.ndarray
    at_or_above: np.ndarray
    held: np.ndarray
    totals: np.ndarray


def _nonempty_bins(score_histogram: np.ndarray) -> _NonemptyBins:
    """The bins that hold samples, class by class, with the counts at or above each.

    Only these bins move a PR or ROC curve, and a 2000-class, 4096-bin histogram is mostly
    empty: past one scan for them, the work is proportional to their number, and no
    ``(2, C, T)`` array is allocated (filling a fresh one took longer than the sums).

    Returns:
        ``(classes, bins, at_or_above, held, totals)``: the bins sorted by class then bin;
        ``at_or_above`` ``(2, K)`` the negatives and positives in that bin or above (the false
        and true positives of ``score >= bin / T``); ``held`` ``(2, K)`` those in the bin;
        ``totals`` ``(2, C)`` each class's negatives and positives.
    """
    histogram = np.asarray(score_histogram, dtype=np.float64)
    classes, bins = np.nonzero(np.any(histogram != 0, axis=0))
    held = histogram[:, classes, bins]
    # Sums from the last bin of the last class down, less what the later classes hold.
    suffix = np.cumsum(held[:, ::-1], axis=1)[:, ::-1]
    class_ends = np.searchsorted(classes, np.arange(1, histogram.shape[1] + 1))
    after_class = np.concatenate([suffix, np.zeros((2, 1))], axis=1)[:, class_ends]
    return _NonemptyBins(
        classes, bins, suffix - after_class[:, classes], held, histogram.sum(axis=2)
    )


def _sum_by_class(classes: np.ndarray, num_classes: int) -> Callable[[np.ndarray], np.ndarray]:
    """A function of ``values`` (one per row of ``classes``): their ``(C,)`` sums by class."""
    return functools.partial(np.bincount, classes, minlength=num_classes)


def _split_by_class(classes: np.ndarray, num_classes: int, *columns: np.ndarray) -> list:
    """Per class, its slice of each of ``columns`` (rows sorted by ``classes``)."""
    bounds = np.searchsorted(classes, np.arange(num_classes + 1))
    return [
        [column[start:stop] for column in columns]
        for start, stop in zip(bounds[:-1], bounds[1:], strict=True)
    ]


def precision_recall_points_from_histogram(score_histogram: np.ndarray) -> list:
    """Per class, its binned precision-recall curve where it changes.

    The points of :func:`precision_recall_curve_from_histogram` at the bins that hold
    positives (where recall changes: the points average precision sums over), then the end
    point (precision 1, recall 0); bins that add only negatives lower precision between two
    such points and are left out. The work is proportional to the bins that hold samples,
    not to ``C * T``.

    Returns:
        One ``(precision, recall, thresholds)`` per class, ``precision`` and ``recall`` one
        longer than ``thresholds`` (the rules ``score >= thresholds``, ascending), as
        scikit-learn's ``precision_recall_curve``.

    >>> histogram = np.array([[[2, 1, 0]], [[1, 0, 3]]])  # one class, 3 bins
    >>> precision_recall_points_from_histogram(histogram)
    [(array([0.57142857, 1.        , 1.        ]),
      array([1.  , 0.75, 0.  ]),
      array([0.        , 0.66666667]))]
    """
    num_classes, num_bins = np.shape(score_histogram)[1:]
    classes, bins, (false_positives, true_positives), held, totals = _nonempty_bins(score_histogram)
    kept = held[1] != 0
    classes, bins = classes[kept], bins[kept]
    false_positives, true_positives = false_positives[kept], true_positives[kept]
    return [
        (np.append(precision, 1.0), np.append(recall, 0.0), kept_bins / num_bins)
        for precision, recall, kept_bins in _split_by_class(
            classes,
            num_classes,
            true_positives / (true_positives + false_positives),
            true_positives / totals[1, classes],
            bins,
        )
    ]


def roc_points_from_histogram(score_histogram: np.ndarray) -> list:
    """Per class, its binned one-vs-rest ROC curve where it changes.

    The points of :func:`roc_curve_from_histogram` at the bins that hold samples, then the
    end point (nothing predicted: 0, 0); the work is proportional to those bins.

    Returns:
        One ``(fpr, tpr, thresholds)`` per class, ``fpr`` and ``tpr`` one longer than
        ``thresholds`` (the rules ``score >= thresholds``, ascending). A rate with nothing
        to count is 0.

    >>> histogram = np.array([[[2, 1, 0]], [[1, 0, 3]]])  # one class, 3 bins
    >>> roc_points_from_histogram(histogram)
    [(array([1.        , 0.33333333, 0.        , 0.        ]),
      array([1.  , 0.75, 0.75, 0.  ]),
      array([0.        , 0.33333333, 0.66666667]))]
    """
    num_classes, num_bins = np.shape(score_histogram)[1:]
    classes, bins, (false_positives, true_positives), _, totals = _nonempty_bins(score_histogram)
    return [
        (np.append(fpr, 0.0), np.append(tpr, 0.0), kept_bins / num_bins)
        for fpr, tpr, kept_bins in _split_by_class(
            classes,
            num_classes,
            _divide(false_positives, totals[0, classes], 0.0),
            _divide(true_positives, totals[1, classes], 0.0),
            bins,
        )
    ]


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
    return _average_precision(_nonempty_bins(score_histogram))


def _average_precision(nonempty: _NonemptyBins):
    classes, _, (false_through, true_through), (tied_negatives, ranked), totals = nonempty
    num_classes = totals.shape[1]
    # Only bins holding positives add to AP and its bounds: at most N of the C * T bins.
    # Ranked from the highest bin down: "before" = counts in strictly higher bins.
    kept = ranked != 0
    classes, ranked, tied_negatives = classes[kept], ranked[kept], tied_negatives[kept]
    true_through, false_through = true_through[kept], false_through[kept]
    true_before, false_before = true_through - ranked, false_through - tied_negatives
    per_class = _sum_by_class(classes, num_classes)
    ap = per_class(ranked * true_through / (true_through + false_through))
    upper = per_class(_sum_of_precisions(true_before, false_before, ranked, 0.0))
    lower = per_class(_sum_of_precisions(true_before, false_before, ranked, tied_negatives))
    total = totals[1]
    return _divide(ap, total, 0.0), _divide(lower, total, 0.0), _divide(upper, total, 0.0)


def roc_curve_from_histogram(score_histogram: np.ndarray):
    """Per-class binned one-vs-rest ROC curves.

    Returns:
        ``(fpr, tpr, thresholds)``: ``fpr`` and ``tpr`` are ``(C, T + 1)`` for the decision
        rules ``score >= thresholds[b]``, ``thresholds = b / T``, followed by the end point
        (nothing predicted: 0, 0), laid out as :func:`precision_recall_curve_from_histogram`.
        A rate with nothing to count (a class without positives or negatives) is 0.

    >>> histogram = np.array([[[2, 1]], [[1, 3]]])  # one class, 2 bins: negatives, positives
    >>> roc_curve_from_histogram(histogram)
    (array([[1.        , 0.33333333, 0.        ]]), array([[1.  , 0.75, 0.  ]]), array([0. , 0.5]))
    """
    false_positives, true_positives = _counts_at_or_above(score_histogram)
    num_classes, num_bins = true_positives.shape
    end = np.zeros((num_classes, 1))
    return (
        np.concatenate([_divide(false_positives, false_positives[:, :1], 0.0), end], axis=1),
        np.concatenate([_divide(true_positives, true_positives[:, :1], 0.0), end], axis=1),
        np.arange(num_bins) / num_bins,
    )


def roc_auc_from_histogram(score_histogram: np.ndarray):
    """Per-class one-vs-rest ROC AUC from binned scores, with its tie interval.

    The binned value is the area under the binned ROC curve: the chance that a positive
    scores above a negative, a tie (same bin) counting one half, which is scikit-learn's
    ``roc_auc_score`` with every bin one tied score. Inside a bin the samples could have been
    ranked in any order: positives above negatives gives the upper bound, below the lower.
    Any exact AUC of scores that fall into these bins (scikit-learn's on the raw scores,
    weighted or not, included) lies in ``[lower, upper]``.

    Returns:
        ``(auc, lower, upper)``, each ``(C,)``; NaN for a class without positives or without
        negatives (where scikit-learn raises).

    >>> histogram = np.array([[[2, 1]], [[1, 3]]])  # one class, 2 bins: negatives, positives
    >>> [values.round(4) for values in roc_auc_from_histogram(histogram)]
    [array([0.7083]), array([0.5]), array([0.9167])]
    """
    return _roc_auc(_nonempty_bins(score_histogram))


def _roc_auc(nonempty: _NonemptyBins):
    classes, _, (negatives_at_or_above, _), (negatives, positives), totals = nonempty
    num_classes = totals.shape[1]
    per_class = _sum_by_class(classes, num_classes)
    pairs = totals[1] * totals[0]
    outranked = per_class(positives * (totals[0, classes] - negatives_at_or_above))
    tied = per_class(positives * negatives)
    nan = float("nan")
    return (
        _divide(outranked + 0.5 * tied, pairs, nan),
        _divide(outranked, pairs, nan),
        _divide(outranked + tied, pairs, nan),
    )


def f1_optimal_threshold_from_histogram(score_histogram: np.ndarray):
    """Per class, the decision threshold among the bin edges that maximises F1.

    The rule is ``score >= threshold``. Edges whose rules make the same decisions on this
    split form a plateau of equal F1; the middle edge of the first highest plateau is chosen,
    the one farthest from the scores on either side.

    Returns:
        ``(thresholds, f1)``, each ``(C,)``; NaN for a class without positives.

    >>> histogram = np.array([[[3, 0, 0, 1]], [[0, 0, 1, 2]]])  # negatives, positives
    >>> f1_optimal_threshold_from_histogram(histogram)  # edges 0.25 and 0.5 both give 6/7
    (array([0.25]), array([0.85714286]))
    """
    false_positives, true_positives = _counts_at_or_above(score_histogram)
    num_classes, num_bins = true_positives.shape
    support = true_positives[:, :1]
    f1 = _divide(2.0 * true_positives, support + true_positives + false_positives, 0.0)
    best = f1.max(axis=1, keepdims=True)
    at_best = f1 == best
    start = np.argmax(at_best, axis=1)
    below_after_start = ~at_best & (np.arange(num_bins) > start[:, None])
    end = np.where(
        below_after_start.any(axis=1), np.argmax(below_after_start, axis=1) - 1, num_bins - 1
    )
    chosen = (start + end) // 2
    defined = support[:, 0] > 0
    return (
        np.where(defined, chosen / num_bins, np.nan),
        np.where(defined, best[:, 0], np.nan),
    )


def reliability_bins(num_bins: int, most: int = 20) -> int:
    """The largest divisor of a histogram's ``num_bins`` not above ``most``: how many
    equal-width bins the per-class reliability curves are read at (4096 -> 16, 200 -> 20).

    >>> reliability_bins(4096), reliability_bins(200), reliability_bins(7)
    (16, 20, 7)
    """
    return max(d for d in range(1, min(most, num_bins) + 1) if num_bins % d == 0)


def reliability_curve_from_histogram(score_histogram: np.ndarray, num_bins: int):
    """Per-class reliability curves: the fraction of positives among the samples whose score
    for the class falls in each of ``num_bins`` equal-width bins.

    This is scikit-learn's ``calibration_curve(strategy="uniform")`` ``prob_true`` at its
    non-empty bins (scikit-learn puts a score on an inner edge in the lower bin, this the
    upper, as :func:`score_bins`). The mean score in a bin lies inside the bin.

    Args:
        score_histogram: ``(2, C, T)``; ``T`` must be a multiple of ``num_bins`` (see
            :func:`reliability_bins`).

    Returns:
        ``(fraction_of_positives, counts, edges)``: ``(C, num_bins)`` (NaN for an empty bin),
        ``(C, num_bins)`` and the ``num_bins + 1`` bin edges.

    >>> histogram = np.array([[[2, 1, 0, 1]], [[0, 1, 1, 3]]])  # one class, 4 bins
    >>> fraction, counts, edges = reliability_curve_from_histogram(histogram, 2)
    >>> fraction, counts, edges
    (array([[0.25, 0.8 ]]), array([[4., 5.]]), array([0. , 0.5, 1. ]))
    """
    negatives, positives = np.asarray(score_histogram, dtype=np.float64)
    num_classes, histogram_bins = positives.shape
    if num_bins < 1 or histogram_bins % num_bins:
        raise ValueError(
            f"num_bins must divide the histogram's {histogram_bins} bins, got {num_bins}."
        )

    def grouped(values):
        return values.reshape(num_classes, num_bins, histogram_bins // num_bins).sum(axis=2)

    counts = grouped(positives + negatives)
    fraction = _divide(grouped(positives), counts, float("nan"))
    return fraction, counts, np.linspace(0.0, 1.0, num_bins + 1)


def top_label_reliability(calibration: np.ndarray):
    """Top-label reliability from a calibration state (see :func:`calibration_state`).

    Returns:
        ``(accuracy, confidence, counts, edges)``: per confidence bin the share of correct
        predictions and the mean confidence (NaN for an empty bin), the counts, and the bin
        edges.

    >>> top_label_reliability(np.array([[0.0, 2.0], [0.0, 1.0], [0.0, 1.7]]))
    (array([nan, 0.5]), array([ nan, 0.85]), array([0., 2.]), array([0. , 0.5, 1. ]))
    """
    count, correct, confidence = np.asarray(calibration, dtype=np.float64)
    nan = float("nan")
    return (
        _divide(correct, count, nan),
        _divide(confidence, count, nan),
        count,
        np.linspace(0.0, 1.0, len(count) + 1),
    )


def expected_calibration_error(calibration: np.ndarray) -> float:
    """Top-label expected calibration error from a calibration state (see
    :func:`calibration_state`): ``sum_b |correct_b - confidence_b| / N``, the gap between
    accuracy and mean confidence of each bin weighted by its share of samples. NaN when
    nothing was counted.

    >>> expected_calibration_error(np.array([[0.0, 2.0], [0.0, 1.0], [0.0, 1.7]]))
    0.35
    """
    count, correct, confidence = np.asarray(calibration, dtype=np.float64)
    return float(_divide(np.abs(correct - confidence).sum(), count.sum(), float("nan")))


def agreement_scores_from_confusion_matrix(confusion_matrix: np.ndarray) -> dict[str, float]:
    """Balanced accuracy, Matthews correlation and Cohen's kappa of a ``(C, C)`` matrix.

    Exactly scikit-learn's ``balanced_accuracy_score`` (classes without samples left out),
    ``matthews_corrcoef`` (0.0 where undefined) and ``cohen_kappa_score`` (NaN where
    undefined) on the predictions the matrix counts. They read only the diagonal and the row
    and column sums: :func:`agreement_scores_from_stat_scores`.

    >>> scores = agreement_scores_from_confusion_matrix(np.array([[3, 1], [2, 4]]))
    >>> {name: round(value, 4) for name, value in scores.items()}
    {'balanced_accuracy': 0.7083, 'mcc': 0.4082, 'cohen_kappa': 0.4}
    """
    return agreement_scores_from_stat_scores(*stat_scores_from_confusion_matrix(confusion_matrix))


def agreement_scores_from_stat_scores(true_positives, predicted, support) -> dict[str, float]:
    """:func:`agreement_scores_from_confusion_matrix` from the per-class true positives,
    predicted and support of a multiclass (or binary) state.

    With ``N`` samples, ``c`` of them correct, ``p`` predicted and ``t`` true per class:
    MCC is ``(c * N - t . p) / sqrt((N**2 - p . p) * (N**2 - t . t))`` (scikit-learn's
    multiclass formula), and Cohen's kappa ``1 - (N - c) / (N - t . p / N)``: scikit-learn
    sums the off-diagonal cells of the confusion matrix and of ``outer(p, t) / N``, which
    are ``N - c`` and ``N - t . p / N``. Nothing else of the matrix enters.

    >>> scores = agreement_scores_from_stat_scores([3, 4], [5, 5], [4, 6])
    >>> {name: round(value, 4) for name, value in scores.items()}
    {'balanced_accuracy': 0.7083, 'mcc': 0.4082, 'cohen_kappa': 0.4}
    """
    true_positives, predicted, support = (
        np.asarray(values, dtype=np.float64) for values in (true_positives, predicted, support)
    )
    correct, total = true_positives.sum(), support.sum()
    present = support > 0
    recall = true_positives[present] / support[present]
    covariance = correct * total - support @ predicted
    variances = (total**2 - predicted @ predicted) * (total**2 - support @ support)
    # The chance disagreement as scikit-learn sums it, over the off-diagonal cells only: zero
    # exactly when both sides hold a single class (the "total - t.p / total" form leaves a
    # rounding residue there, and kappa would be 1 where it is undefined).
    expected_disagreement = predicted @ (total - support) / total if total else 0.0
    nan = float("nan")
    return {
        "balanced_accuracy": float(recall.mean()) if recall.size else nan,
        "mcc": float(covariance / np.sqrt(variances)) if variances else 0.0,
        "cohen_kappa": float(1.0 - (total - correct) / expected_disagreement)
        if expected_disagreement
        else nan,
    }


class ShotGroups(NamedTuple):
    """The long-tail group of each class (see :func:`shot_groups`)."""

    #: ``(C,)`` ``"many"``, ``"medium"`` or ``"few"``; ``""`` for a class left out of ``labels``.
    groups: np.ndarray
    #: ``"thresholds"`` (by training samples) or ``"thirds"`` (of the classes by count).
    rule: str
    #: The ``shot_thresholds`` given (also when the rule became ``"thirds"``).
    thresholds: tuple[float, float]
    #: Classes per group, in :data:`SHOT_GROUPS` order.
    sizes: dict[str, int]
    #: ``(C,)`` the training samples per class the groups were made from.
    counts: np.ndarray


def shot_groups(
    class_counts: Sequence[float] | np.ndarray,
    shot_thresholds: tuple[float, float] = SHOT_THRESHOLDS,
    *,
    labels: Sequence[int] | None = None,
) -> ShotGroups:
    """Many-, medium- and few-shot classes by their training samples, as the long-tailed
    recognition literature reports results (ImageNet-LT, Places-LT, iNaturalist).

    With ``shot_thresholds=(low, high)``: many-shot ``count > high``, medium-shot
    ``low <= count <= high``, few-shot ``count < low``. This is Balanced Meta-Softmax's code
    (``> 100`` and ``< 20``, github.com/jiawei-ren/BalancedMetaSoftmax-Classification,
    ``utils.shot_acc``); OLTR's code, where the split comes from, puts the edges the other
    way (``>= 100`` many, ``<= 20`` few; github.com/zhmiao/OpenLongTailRecognition-OLTR),
    so a class with exactly 20 or 100 samples is medium-shot here and few- or many-shot
    there.

    When a group would be empty (small data where no class reaches ``high``, or large data
    where every class does), the classes are split into thirds by count instead: sorted by
    count, most first, ties in class order, the first ``ceil(C / 3)`` are many-shot and the
    rest halved the same way (``np.array_split``: 10 classes give 4, 3, 3), so classes with
    equal counts can fall into neighbouring groups.

    Args:
        class_counts: ``(C,)`` training samples per class; the data's, not a resampled
            stream's (oversampling would make every class look many-shot).
        shot_thresholds: ``(low, high)``, ``0 <= low <= high``.
        labels: the classes to group (default: all); the others get ``""``.

    >>> grouped = shot_groups([104, 74, 53, 38, 27, 19, 14, 10, 7, 5])  # the MLproject's digits
    >>> grouped.groups.tolist()
    ['many', 'medium', 'medium', 'medium', 'medium', 'few', 'few', 'few', 'few', 'few']
    >>> grouped.rule, grouped.sizes
    ('thresholds', {'many': 1, 'medium': 4, 'few': 5})
    >>> shot_groups([50, 40, 30, 20, 10]).groups.tolist()  # no class above 100: thirds
    ['many', 'many', 'medium', 'medium', 'few']
    """
    counts = np.asarray(class_counts, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(counts)) or np.any(counts < 0):
        raise ValueError(f"class_counts must be finite and non-negative, got {counts}.")
    low, high = (float(edge) for edge in shot_thresholds)
    if not 0 <= low <= high:
        raise ValueError(
            f"shot_thresholds must be (low, high) with 0 <= low <= high, got {shot_thresholds}."
        )
    labels = _resolve_labels(len(counts), labels)
    scored = counts[labels]
    grouped = np.where(scored > high, "many", np.where(scored < low, "few", "medium"))
    rule = "thresholds"
    if not all(np.any(grouped == name) for name in SHOT_GROUPS):
        rule = "thirds"
        grouped = np.empty(len(labels), dtype=grouped.dtype)
        most_first = np.argsort(-scored, kind="stable")
        for name, part in zip(SHOT_GROUPS, np.array_split(most_first, 3), strict=True):
            grouped[part] = name
    groups = np.full(len(counts), "", dtype="<U6")
    groups[labels] = grouped
    sizes = {name: int(np.sum(grouped == name)) for name in SHOT_GROUPS}
    return ShotGroups(groups, rule, (low, high), sizes, counts)


def _present(support: np.ndarray, labels) -> np.ndarray:
    """The classes of ``labels`` with samples in the split (support > 0)."""
    labels = _resolve_labels(len(support), labels)
    return labels[np.asarray(support)[labels] > 0]


def _recall_f1_of(true_positives, predicted, support, classes):
    """Recall and F1 of ``classes``, each of which has samples (so both are defined)."""
    true_positives, predicted, support = (
        np.asarray(values, dtype=np.float64)[classes]
        for values in (true_positives, predicted, support)
    )
    return true_positives / support, 2.0 * true_positives / (support + predicted)


def group_scores_from_stat_scores(
    true_positives, predicted, support, groups, *, labels: Sequence[int] | None = None
) -> dict[str, dict[str, float]]:
    """Per long-tail group, the macro recall (the literature's per-group accuracy) and macro
    F1 over its classes that have samples in the split.

    A class without samples in the split (a tail class missing from Keras' unshuffled
    ``validation_split``) is left out, as OLTR's and Balanced Meta-Softmax's ``shot_acc``
    and scikit-learn's ``balanced_accuracy_score`` leave it out: counting it as recall 0
    (scikit-learn's ``zero_division=0``) would score a failure that did not happen, right in
    the group read for the tail. So each value equals scikit-learn's
    ``recall_score``/``f1_score(labels=<the group's classes with samples>, average="macro")``
    whatever ``zero_division``; ``classes`` and ``classes_with_samples`` say what it covers.
    A group without any class with samples has NaN scores.

    Args:
        true_positives, predicted, support: per-class stat scores
            (:func:`stat_scores_from_confusion_matrix`).
        groups: ``(C,)`` group name per class (:attr:`ShotGroups.groups`).
        labels: the classes to score (default: all).

    Returns:
        ``{group: {"recall", "f1", "classes", "classes_with_samples"}}`` for each of
        :data:`SHOT_GROUPS`.

    >>> scores = group_scores_from_stat_scores(
    ...     [8, 3, 0], [9, 4, 1], [10, 4, 0], ["many", "few", "few"])
    >>> scores["few"]
    {'recall': 0.75, 'f1': 0.75, 'classes': 2, 'classes_with_samples': 1}
    """
    support = np.asarray(support, dtype=np.float64)
    labels = _resolve_labels(len(support), labels)
    groups = np.asarray(groups)
    result = {}
    for name in SHOT_GROUPS:
        members = labels[groups[labels] == name]
        present = _present(support, members)
        recall, f1 = _recall_f1_of(true_positives, predicted, support, present)
        result[name] = {
            "recall": float(recall.mean()) if present.size else float("nan"),
            "f1": float(f1.mean()) if present.size else float("nan"),
            "classes": int(members.size),
            "classes_with_samples": int(present.size),
        }
    return result


def geometric_mean_from_stat_scores(
    true_positives, support, *, labels: Sequence[int] | None = None, correction: float = 0.0
) -> float:
    """Geometric mean of the per-class recalls of the classes with samples in the split.

    imbalanced-learn's ``geometric_mean_score(average="multiclass", correction=...)`` with
    ``labels`` the classes that have samples: a recall of 0 is replaced by ``correction``
    first (with the default 0.0 one class never recognised makes the G-mean 0). Classes
    without samples are left out, as in :func:`group_scores_from_stat_scores` (imbalanced-learn
    with every class in ``labels`` counts them as recall 0). For a binary state it is
    ``sqrt(sensitivity * specificity)``. NaN when no class has samples.

    >>> geometric_mean_from_stat_scores([8, 1, 0], [10, 5, 0])
    0.4
    >>> round(geometric_mean_from_stat_scores([8, 0], [10, 5], correction=0.001), 4)
    0.0283
    """
    present = _present(np.asarray(support), labels)
    if not present.size:
        return float("nan")
    recall = (
        np.asarray(true_positives, np.float64)[present] / np.asarray(support, np.float64)[present]
    )
    recall[recall == 0] = correction
    if np.any(recall == 0):
        return 0.0
    return float(np.exp(np.mean(np.log(recall))))


def specificity_iba_from_stat_scores(
    true_positives,
    predicted,
    support,
    total: float,
    *,
    alpha: float = 0.1,
    zero_division: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-class specificity and index-balanced accuracy, as imbalanced-learn's
    ``classification_report_imbalanced`` (its ``spe`` and ``iba`` columns).

    Specificity is the true-negative rate ``tn / (tn + fp)`` of the class one-vs-rest, with
    ``tn = total - predicted - support + true_positives``. IBA (García et al. 2009) with
    imbalanced-learn's defaults (``alpha=0.1``, squared G-mean) is
    ``(1 + alpha * (recall - specificity)) * recall * specificity``. An undefined recall or
    specificity is ``zero_division`` (imbalanced-learn always uses 0).

    Args:
        true_positives, predicted, support: per-class stat scores.
        total: the samples in the split (a multilabel state: per label, ``N``).

    >>> specificity, iba = specificity_iba_from_stat_scores([3, 4], [5, 5], [4, 6], 10)
    >>> specificity.round(4), iba.round(4)
    (array([0.6667, 0.75  ]), array([0.5042, 0.4958]))
    """
    true_positives, predicted, support = (
        np.asarray(values, dtype=np.float64) for values in (true_positives, predicted, support)
    )
    true_negatives = total - predicted - support + true_positives
    specificity = _divide(true_negatives, total - support, zero_division)
    recall = _divide(true_positives, support, zero_division)
    return specificity, (1.0 + alpha * (recall - specificity)) * recall * specificity


def spread_from_stat_scores(
    true_positives, predicted, support, *, labels: Sequence[int] | None = None
) -> dict[str, float]:
    """How the per-class scores spread, over the classes with samples in the split: the worst
    class's F1 and recall, the mean F1 of the worst 10 % of them (``ceil(n / 10)`` classes,
    at least one) and how many have recall 0 (never recognised).

    Classes without samples are left out as in :func:`group_scores_from_stat_scores` (their
    recall is undefined; a wrong prediction of one already lowers another class's recall).
    NaN scores (and 0 classes) when no class has samples.

    >>> spread_from_stat_scores([8, 3, 0, 0], [9, 4, 2, 0], [10, 4, 1, 0])
    {'f1_worst': 0.0, 'recall_worst': 0.0, 'f1_worst_10pct': 0.0, 'classes_recall_0': 1}
    """
    present = _present(np.asarray(support), labels)
    if not present.size:
        nan = float("nan")
        return {"f1_worst": nan, "recall_worst": nan, "f1_worst_10pct": nan, "classes_recall_0": 0}
    recall, f1 = _recall_f1_of(true_positives, predicted, support, present)
    worst = -(-present.size // 10)
    return {
        "f1_worst": float(f1.min()),
        "recall_worst": float(recall.min()),
        "f1_worst_10pct": float(np.sort(f1)[:worst].mean()),
        "classes_recall_0": int(np.sum(recall == 0)),
    }


def _stat_scores_of(state: ClassificationState) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class true positives, predicted and support of a state: all the long-tail scores
    read, so that they need no confusion matrix."""
    true_positives, predicted, support = state.stat_scores
    return true_positives, predicted, support


def _long_tail_scores(
    state: ClassificationState, labels: np.ndarray, zero_division: float, groups, correction
) -> dict[str, float | np.ndarray]:
    """The long-tail part of :func:`classification_scores`."""
    true_positives, predicted, support = _stat_scores_of(state)
    specificity, iba = specificity_iba_from_stat_scores(
        true_positives, predicted, support, state.num_samples, zero_division=zero_division
    )
    scores: dict[str, float | np.ndarray] = {
        "specificity": specificity[labels],
        "iba": iba[labels],
        **spread_from_stat_scores(true_positives, predicted, support, labels=labels),
    }
    if not state.is_multilabel:
        scores["gmean"] = geometric_mean_from_stat_scores(
            true_positives, support, labels=labels, correction=correction
        )
    if groups is not None:
        groups = np.asarray(groups)
        if groups.shape != support.shape:
            raise ValueError(
                f"groups must name the group of each of the {len(support)} classes, got "
                f"shape {groups.shape}."
            )
        scores["group"] = groups[labels]
        by_group = group_scores_from_stat_scores(
            true_positives, predicted, support, groups, labels=labels
        )
        for name, group in by_group.items():
            scores[f"recall_{name}"] = group["recall"]
            scores[f"f1_{name}"] = group["f1"]
    return scores


def classification_scores(
    state: ClassificationState,
    *,
    labels=None,
    zero_division: float = 0.0,
    task: Task | None = None,
    groups: Sequence[str] | np.ndarray | None = None,
    gmean_correction: float = 0.0,
) -> dict[str, float | np.ndarray]:
    """Every score the product logs, for one split.

    Precision, recall, F1, their averages and the agreement scores come from the state's
    per-class ``stat_scores``: a state without a confusion matrix gets the same values.

    Args:
        state: the split's :class:`ClassificationState`.
        labels: the class indices to score and average over (default: all).
        zero_division: value of an undefined precision, recall or F1.
        task: ``"binary"`` adds the F1-optimal decision threshold of class 1 (the one the
            model's single unit scores); a multilabel state has one per label. By default
            ``"multilabel"`` for a multilabel state, else ``"multiclass"``.
        groups: ``(C,)`` the long-tail group of each class (:attr:`ShotGroups.groups`):
            adds the group scores.
        gmean_correction: imbalanced-learn's ``correction`` of ``gmean`` (a recall of 0
            counts as this).

    Returns:
        A dict with per-class arrays over ``labels``: ``precision``, ``recall``, ``f1``,
        ``support`` and, with a histogram, ``ap``, ``ap_lower``, ``ap_upper``, ``roc_auc``,
        ``roc_auc_lower``, ``roc_auc_upper``; floats ``f1_macro``, ``f1_micro``,
        ``f1_weighted``, ``precision_macro``, ``recall_macro`` (and ``precision_micro``,
        ``recall_micro``, ``precision_weighted``, ``recall_weighted`` for the report), with a
        histogram ``map`` and ``roc_auc_macro`` (means over ``labels``, NaN AUCs left out),
        for multiclass and binary states ``balanced_accuracy``, ``mcc``, ``cohen_kappa``
        and, with a calibration state, ``ece``. Binary and multilabel with a histogram add
        ``threshold`` and ``f1_at_threshold`` (:func:`f1_optimal_threshold_from_histogram`)
        over the classes in ``threshold_labels``.

        Always: per class ``specificity`` and ``iba``
        (:func:`specificity_iba_from_stat_scores`) and the spread of the per-class scores
        over the classes with samples (:func:`spread_from_stat_scores`: ``f1_worst``,
        ``recall_worst``, ``f1_worst_10pct``, ``classes_recall_0``); for multiclass and binary
        states ``gmean`` (:func:`geometric_mean_from_stat_scores`; a multilabel state's
        labels are not one decision, and imbalanced-learn defines none for it). With
        ``groups``: per class ``group``, and ``recall_many``, ``recall_medium``,
        ``recall_few``, ``f1_many``, ``f1_medium``, ``f1_few``
        (:func:`group_scores_from_stat_scores`).
    """
    labels = _resolve_labels(state.num_classes, labels)
    task = task or ("multilabel" if state.is_multilabel else "multiclass")

    def averaged(average):
        return precision_recall_f1_from_stat_scores(
            *state.stat_scores, labels=labels, average=average, zero_division=zero_division
        )

    precision, recall, f1, support = averaged(None)
    precision_macro, recall_macro, f1_macro, _ = averaged("macro")
    precision_micro, recall_micro, f1_micro, _ = averaged("micro")
    precision_weighted, recall_weighted, f1_weighted, _ = averaged("weighted")
    scores: dict[str, float | np.ndarray] = {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "support": support,
        "f1_macro": f1_macro,
        "f1_micro": f1_micro,
        "f1_weighted": f1_weighted,
        "precision_macro": precision_macro,
        "recall_macro": recall_macro,
        "precision_micro": precision_micro,
        "recall_micro": recall_micro,
        "precision_weighted": precision_weighted,
        "recall_weighted": recall_weighted,
    }
    if not state.is_multilabel:
        scores.update(agreement_scores_from_stat_scores(*state.stat_scores))
    scores.update(_long_tail_scores(state, labels, zero_division, groups, gmean_correction))
    if state.calibration is not None:
        scores["ece"] = expected_calibration_error(state.calibration)
    histogram = state.score_histogram
    if histogram is not None:
        nonempty = _nonempty_bins(histogram)
        ap, ap_lower, ap_upper = (v[labels] for v in _average_precision(nonempty))
        auc, auc_lower, auc_upper = (v[labels] for v in _roc_auc(nonempty))
        scores.update(
            ap=ap,
            ap_lower=ap_lower,
            ap_upper=ap_upper,
            map=float(ap.mean()) if ap.size else 0.0,
            roc_auc=auc,
            roc_auc_lower=auc_lower,
            roc_auc_upper=auc_upper,
            roc_auc_macro=float(_nanaverage(auc)) if auc.size else float("nan"),
        )
        if task in ("binary", "multilabel"):
            threshold_labels = labels[labels == 1] if task == "binary" else labels
            thresholds, f1_at_threshold = f1_optimal_threshold_from_histogram(
                histogram[:, threshold_labels]
            )
            scores.update(
                threshold_labels=threshold_labels,
                threshold=thresholds,
                f1_at_threshold=f1_at_threshold,
            )
    return scores
