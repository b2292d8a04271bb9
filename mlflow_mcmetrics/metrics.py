"""The Keras metric: accumulates a confusion matrix and score histograms on the device.

:class:`ClassificationMetrics` does no host work per batch. Its state is the layout that
:mod:`mlflow_mcmetrics.functional` computes scores from (see :class:`~.functional.ClassificationState`);
:meth:`ClassificationMetrics.state` copies it to the host once. It works in ``compile(metrics=...)``,
in ``weighted_metrics`` (then it also receives ``sample_weight``) and in custom training loops,
under ``jit_compile=True``, ``tf.distribute`` strategies and every Keras 3 backend.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from mlflow_mcmetrics.functional import DEFAULT_PR_THRESHOLDS, TASKS, ClassificationState, check_zero_division

__all__ = ["DEFAULT_PR_THRESHOLDS", "ClassificationMetrics", "register_with_keras"]

REGISTERED_NAME = "mlflow_mcmetrics>ClassificationMetrics"

try:
    from keras.src.backend import get_keras_mask
except ImportError:  # not public API; the attribute is where Keras 3 has kept masks since 3.0

    def get_keras_mask(x):
        return getattr(x, "_keras_mask", None)


def _weights_like(sample_weight, mask, shape):
    """One weight per prediction row: sample weights times the Keras mask (padding = 0)."""
    weights = ops.ones(shape, dtype="float32")
    for extra in (sample_weight, mask):
        if extra is None:
            continue
        extra = ops.cast(extra, "float32")
        while len(extra.shape) > len(shape):
            extra = ops.squeeze(extra, axis=-1)
        while len(extra.shape) < len(shape):
            extra = ops.expand_dims(extra, axis=-1)
        weights = weights * extra
    return weights


class ClassificationMetrics(keras.metrics.Metric):
    """Exact epoch-level per-class precision, recall, F1 and PR curves for Keras models.

    The metric keeps a ``(C, C)`` confusion matrix (``(C, 2, 2)`` for multilabel) and, with
    ``pr_thresholds > 0``, per-class histograms of the scores of positive and negative samples.
    Updating costs O(N * C) whatever the number of bins. ``result()`` is the macro F1, so
    ``val_f1_macro`` works with ``EarlyStopping`` and ``ModelCheckpoint``; the callback
    (:class:`mlflow_mcmetrics.MCMetricsCallback`) turns the full state into per-class values.

    Args:
        num_classes: output width ``C``; for ``task="binary"`` (one sigmoid unit) pass 2.
        task: ``"multiclass"`` (argmax over ``C`` scores; sparse or one-hot labels),
            ``"binary"`` (one unit, class 1 when its probability ``> threshold``) or
            ``"multilabel"`` (``C`` independent units, each ``> threshold``).
        from_logits: whether predictions are logits (softmax/sigmoid is applied here).
        threshold: decision threshold for ``binary`` and ``multilabel``, in (0, 1).
        ignore_class: a class index whose samples are left out (e.g. a padding id); it is
            also left out of the averages. Masked timesteps (``mask_zero=True``) are always
            left out.
        pr_thresholds: number of score bins per class for PR curves; 0 turns them off.
        zero_division: value of an undefined precision/recall/F1 (0.0, 1.0 or NaN).
        name: metric name; the logs get ``name`` and ``val_`` + ``name``.

    Counts are float32: exact for up to 2**24 samples per cell and epoch.

    The class registers itself with Keras' serialization (as ``mlflow_mcmetrics>ClassificationMetrics``)
    when it is first used or read as ``mlflow_mcmetrics.ClassificationMetrics``, not on import:
    ``mlflow.tensorflow`` pickles Keras' whole registry into every model it logs, and a model
    trained under ``autolog()`` alone must load where this package is not installed.
    """

    def __init__(
        self,
        num_classes: int,
        task: str = "multiclass",
        from_logits: bool = False,
        threshold: float = 0.5,
        ignore_class: int | None = None,
        pr_thresholds: int = DEFAULT_PR_THRESHOLDS,
        zero_division: float = 0.0,
        name: str = "f1_macro",
        dtype=None,
    ):
        super().__init__(name=name, dtype=dtype)
        if type(self) is ClassificationMetrics:
            register_with_keras()
        # Higher is better: EarlyStopping/ModelCheckpoint/ReduceLROnPlateau with mode="auto".
        self._direction = "up"
        if task not in TASKS:
            raise ValueError(f"Unknown task {task!r}; expected one of {TASKS}.")
        if int(num_classes) < 2 and task != "multilabel":
            raise ValueError(
                f"num_classes must be at least 2 for task={task!r}, got {num_classes} "
                "(a single sigmoid unit is task='binary' with num_classes=2)."
            )
        if task == "binary" and int(num_classes) != 2:
            raise ValueError(f"task='binary' has num_classes=2, got {num_classes}.")
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}.")
        if pr_thresholds < 0:
            raise ValueError(f"pr_thresholds must be >= 0 (0 turns PR curves off), got {pr_thresholds}.")
        if ignore_class is not None and (task == "multilabel" or not 0 <= ignore_class < num_classes):
            raise ValueError(
                f"ignore_class must be a class index in [0, {num_classes}) for a multiclass or "
                f"binary task, got {ignore_class} with task={task!r}."
            )
        self.num_classes = int(num_classes)
        self.task = task
        self.from_logits = bool(from_logits)
        self.threshold = float(threshold)
        self.ignore_class = ignore_class
        self.pr_thresholds = int(pr_thresholds)
        self.zero_division = check_zero_division(zero_division)

        confusion_shape = (
            (self.num_classes, 2, 2) if task == "multilabel" else (self.num_classes,) * 2
        )
        self.confusion_matrix = self.add_variable(
            shape=confusion_shape, initializer="zeros", dtype="float32", name="confusion_matrix"
        )
        self.score_histogram = (
            self.add_variable(
                shape=(2, self.num_classes, self.pr_thresholds),
                initializer="zeros",
                dtype="float32",
                name="score_histogram",
            )
            if self.pr_thresholds
            else None
        )
        # [labels outside the valid range, predictions with NaN/inf], both left out of the state.
        self.rejected_counts = self.add_variable(
            shape=(2,), initializer="zeros", dtype="float32", name="rejected_counts"
        )

    # -- format: (y_true, y_pred) of any supported layout -> flat rows --------------------------
    def _format(self, y_true, y_pred, sample_weight):
        mask = get_keras_mask(y_pred)
        y_pred = ops.convert_to_tensor(y_pred)
        y_true = ops.convert_to_tensor(y_true)
        width = self.num_classes if self.task != "binary" else 1
        if y_pred.shape[-1] != width:
            raise ValueError(
                f"ClassificationMetrics(task={self.task!r}, num_classes={self.num_classes}) "
                f"expects predictions whose last axis is {width}, got shape {tuple(y_pred.shape)}."
            )
        sample_shape = tuple(y_pred.shape[:-1])
        weights = _weights_like(sample_weight, mask, ops.shape(y_pred)[:-1])

        scores = ops.cast(y_pred, "float32")
        if self.from_logits:
            scores = ops.softmax(scores, axis=-1) if self.task == "multiclass" else ops.sigmoid(scores)
        finite = ops.all(ops.isfinite(scores), axis=-1)
        scores = ops.where(ops.expand_dims(finite, -1), scores, ops.zeros_like(scores))

        if self.task == "multilabel":
            labels = ops.cast(ops.reshape(y_true, ops.shape(y_pred)), "int32")
            valid = ops.all(ops.logical_or(labels == 0, labels == 1), axis=-1)
            labels = ops.where(ops.expand_dims(valid, -1), labels, ops.zeros_like(labels))
            predicted = ops.cast(scores > self.threshold, "int32")
        else:
            one_hot_labels = (
                self.task == "multiclass"
                and len(y_true.shape) == len(y_pred.shape)
                and y_true.shape[-1] == self.num_classes
            )
            if one_hot_labels:
                labels = ops.cast(ops.argmax(y_true, axis=-1), "int32")
            else:
                labels = ops.cast(ops.reshape(y_true, ops.shape(y_pred)[:-1]), "int32")
            valid = ops.logical_and(labels >= 0, labels < self.num_classes)
            if self.ignore_class is not None:
                weights = weights * ops.cast(labels != self.ignore_class, "float32")
            labels = ops.where(valid, labels, ops.zeros_like(labels))
            if self.task == "binary":
                positive = ops.squeeze(scores, axis=-1)
                predicted = ops.cast(positive > self.threshold, "int32")
                scores = ops.stack([1.0 - positive, positive], axis=-1)
            else:
                predicted = ops.cast(ops.argmax(scores, axis=-1), "int32")

        counted = ops.cast(ops.logical_and(valid, finite), "float32")
        rejected = ops.stack(
            [
                ops.sum(weights * ops.cast(ops.logical_not(valid), "float32")),
                ops.sum(weights * ops.cast(ops.logical_not(finite), "float32")),
            ]
        )
        # One row per sample (per timestep for sequences); -1 where a sample axis is dynamic.
        rows = int(np.prod(sample_shape)) if None not in sample_shape else -1
        return (
            ops.reshape(labels, (rows, *labels.shape[len(sample_shape):])),
            ops.reshape(predicted, (rows, *predicted.shape[len(sample_shape):])),
            ops.reshape(scores, (rows, scores.shape[-1])),
            ops.reshape(weights * counted, (rows,)),
            rejected,
        )

    # -- update: flat rows -> counts (segment sums: exact, O(N * C), XLA-safe) ------------------
    def update_state(self, y_true, y_pred, sample_weight=None):
        labels, predicted, scores, weights, rejected = self._format(y_true, y_pred, sample_weight)
        num_classes = self.num_classes
        classes = ops.arange(num_classes, dtype="int32")
        if self.task == "multilabel":
            cells = classes * 4 + labels * 2 + predicted
            cell_weights = ops.broadcast_to(ops.expand_dims(weights, -1), ops.shape(cells))
        else:
            cells = labels * num_classes + predicted
            cell_weights = weights
        confusion = ops.segment_sum(
            ops.reshape(cell_weights, (-1,)),
            ops.reshape(cells, (-1,)),
            num_segments=int(np.prod(self.confusion_matrix.shape)),
        )
        self.confusion_matrix.assign_add(ops.reshape(confusion, self.confusion_matrix.shape))
        self.rejected_counts.assign_add(rejected)
        if self.score_histogram is not None:
            self.score_histogram.assign_add(self._histogram(labels, scores, weights, classes))

    def _histogram(self, labels, scores, weights, classes):
        """This batch's ``(2, C, T)`` score histogram: every score of every class in one
        segment sum; positives in a second one, which for multiclass/binary is over the N
        true-class scores only (not N * C); negatives = all - positives."""
        num_classes, num_bins = self.num_classes, self.pr_thresholds
        bins = ops.clip(ops.cast(ops.floor(scores * num_bins), "int32"), 0, num_bins - 1)
        row_weights = ops.broadcast_to(ops.expand_dims(weights, -1), ops.shape(bins))
        every = ops.segment_sum(
            ops.reshape(row_weights, (-1,)),
            ops.reshape(classes * num_bins + bins, (-1,)),
            num_segments=num_classes * num_bins,
        )
        if self.task == "multilabel":
            positive_weights = ops.reshape(row_weights * ops.cast(labels, "float32"), (-1,))
            positive_cells = ops.reshape(classes * num_bins + bins, (-1,))
        else:
            true_bins = ops.squeeze(ops.take_along_axis(bins, ops.expand_dims(labels, -1), axis=-1), axis=-1)
            positive_weights, positive_cells = weights, labels * num_bins + true_bins
        positives = ops.segment_sum(positive_weights, positive_cells, num_segments=num_classes * num_bins)
        return ops.reshape(ops.stack([every - positives, positives]), (2, num_classes, num_bins))

    # -- compute ---------------------------------------------------------------------------------
    @property
    def scored_labels(self) -> list[int]:
        """The class indices that are scored and averaged (all but ``ignore_class``)."""
        return [c for c in range(self.num_classes) if c != self.ignore_class]

    def result(self):
        """Macro F1 over :attr:`scored_labels`, as scikit-learn's ``f1_score(average="macro")``."""
        confusion = ops.convert_to_tensor(self.confusion_matrix)
        if self.task == "multilabel":
            true_positives = confusion[:, 1, 1]
            predicted = true_positives + confusion[:, 0, 1]
            support = true_positives + confusion[:, 1, 0]
        else:
            true_positives = ops.diagonal(confusion)
            predicted = ops.sum(confusion, axis=0)
            support = ops.sum(confusion, axis=1)
        denominator = support + predicted
        undefined = denominator == 0
        f1 = ops.where(
            undefined,
            self.zero_division,
            2.0 * true_positives / ops.where(undefined, 1.0, denominator),
        )
        f1 = ops.take(f1, ops.convert_to_tensor(self.scored_labels, dtype="int32"))
        defined = ops.logical_not(ops.isnan(f1))
        count = ops.sum(ops.cast(defined, "float32"))
        total = ops.sum(ops.where(defined, f1, 0.0))
        return ops.where(count > 0, total / ops.maximum(count, 1.0), float("nan"))

    def reset_state(self):
        for variable in self.variables:
            variable.assign(ops.zeros(variable.shape, dtype=variable.dtype))

    def state(self) -> tuple[ClassificationState, np.ndarray]:
        """Copy the state to the host in one transfer.

        Returns:
            ``(state, rejected)``: the :class:`~.functional.ClassificationState` and the
            weighted counts of rows left out for ``[invalid labels, non-finite predictions]``.
        """
        flat = ops.convert_to_numpy(
            ops.concatenate([ops.reshape(ops.convert_to_tensor(v), (-1,)) for v in self.variables])
        ).astype(np.float64)
        parts, offset = [], 0
        for variable in self.variables:
            size = int(np.prod(variable.shape))
            parts.append(flat[offset : offset + size].reshape(variable.shape))
            offset += size
        histogram = parts[1] if self.score_histogram is not None else None
        return ClassificationState(parts[0], histogram), parts[-1]

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "task": self.task,
            "from_logits": self.from_logits,
            "threshold": self.threshold,
            "ignore_class": self.ignore_class,
            "pr_thresholds": self.pr_thresholds,
            "zero_division": self.zero_division,
        }


def register_with_keras() -> None:
    """Make :class:`ClassificationMetrics` known to ``keras.models.load_model`` (idempotent)."""
    if keras.saving.get_registered_name(ClassificationMetrics) != REGISTERED_NAME:
        keras.saving.register_keras_serializable(package="mlflow_mcmetrics")(ClassificationMetrics)
