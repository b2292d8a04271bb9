"""The Keras metric: accumulates a confusion matrix and score histograms on the device.

:class:`ClassificationMetrics` does no host work per batch. Its state is the layout that
:mod:`mlflow_mcmetrics.functional` computes scores from (see
:class:`~.functional.ClassificationState`); :meth:`ClassificationMetrics.state` copies it to the
host once. It works in ``compile(metrics=...)``, in ``weighted_metrics`` (then it also receives
``sample_weight``) and in custom training loops, under ``jit_compile=True``, ``tf.distribute``
strategies and every Keras 3 backend.

A batch touches only the cells it changes: each count is scattered into the state
(:func:`scatter_into`), so an update costs O(N * C) whatever the number of classes squared or
of histogram bins. Counts are exact far beyond float32's 2**24 (see :class:`ExactCounts`).
On TensorFlow, large batches are scattered by XLA even in steps that are not compiled with it
(:meth:`ExactCounts.scatter_add`), and Keras' eager ``result()`` and ``reset_state()`` calls
run compiled (:meth:`ClassificationMetrics._eagerly_compiled`).
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
from keras import ops

from mlflow_mcmetrics import functional
from mlflow_mcmetrics.functional import DEFAULT_PR_THRESHOLDS, ClassificationState
from mlflow_mcmetrics.validation import check_arguments

__all__ = [
    "DEFAULT_PR_THRESHOLDS",
    "ClassificationMetrics",
    "ExactCounts",
    "register_with_keras",
    "scatter_into",
]

REGISTERED_NAME = "mlflow_mcmetrics>ClassificationMetrics"

try:
    from keras.src.backend import get_keras_mask
except ImportError:  # not public API; the attribute is where Keras 3 has kept masks since 3.0

    def get_keras_mask(x):
        return getattr(x, "_keras_mask", None)


def scatter_into(variable: keras.Variable, indices, updates=None, *, add: bool = False):
    """Sparse access to a 1-D state variable, in place, with each backend's own ops.

    ``updates=None`` reads ``variable[indices]``; otherwise ``variable[indices] += updates``
    (``add=True``; repeated indices add up) or ``= updates`` (repeats must carry the same
    value). Each backend's own sparse ops, so the cost is O(len(indices)), not O(variable
    size): TensorFlow's resource gather/scatter (on the replica's copy under
    ``tf.distribute``; XLA-compatible; a dense read of a variable that is also scattered into
    would copy all of it), JAX's ``.at[]`` (in place when the trainer donates the state, as
    Keras' does), PyTorch's ``index_add_``/``index_copy_``.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        if updates is None:
            return tf.raw_ops.ResourceGather(
                resource=variable.handle, indices=indices, dtype=variable.dtype
            )
        scatter = tf.raw_ops.ResourceScatterAdd if add else tf.raw_ops.ResourceScatterUpdate
        scatter(resource=variable.handle, indices=indices, updates=updates)
    elif updates is None:
        return ops.take(variable.value, indices)
    elif backend == "jax":
        cells = variable.value.at[indices]
        variable.assign(cells.add(updates) if add else cells.set(updates))
    elif backend == "torch":
        indices = indices.long()
        if add:
            variable.value.index_add_(0, indices, updates)
        else:
            variable.value.index_copy_(0, indices, updates)
    else:
        reduction = "add" if add else None
        variable.assign(
            ops.scatter_update(
                variable.value, ops.expand_dims(indices, -1), updates, reduction=reduction
            )
        )
    return None


def _tf_function(cache: dict[str, Any], method, **options):
    """``method`` as a ``tf.function``, kept in its owner's ``cache``: traced once per owner."""
    import tensorflow as tf

    if method.__name__ not in cache:
        cache[method.__name__] = tf.function(method, autograph=False, **options)
    return cache[method.__name__]


#: Cells that every batch must touch for TensorFlow to scatter them with XLA (see
#: ExactCounts.scatter_add): launching XLA costs about 0.1 ms, more than it saves on small
#: batches (10 classes, batch 32: 0.3 ms without XLA, 0.4 ms with it).
XLA_MIN_CELLS = 256


class ExactCounts:
    """Weighted counts in one flat state, kept as a float32 pair, exact far past float32's 2**24.

    The state is named segments (the confusion matrix, the score histogram, ...) laid end to
    end in two variables, so that a batch is one scatter and an epoch's reset and read are
    one operation each. ``recent`` receives the updates; after each update, the whole
    multiples of :attr:`CARRY` in a touched cell move to ``carried``. ``carried`` holds only
    multiples of 2**12 (exact up to 2**36) and ``recent`` stays below 2**12 plus one batch
    (integer counts there are exact; fractional weights round as a float32 sum of that much,
    not of the whole count). A count is ``carried + recent`` in float64 on the host: exact
    integers up to 2**36 per cell, where a float32 counter stops at 2**24.

    Args:
        metric: the metric that owns the variables.
        segments: ``{name: shape}``, in the order they are laid out.
    """

    CARRY = 2.0**12
    TRANSPOSE_BLOCK = 256

    def __init__(self, metric: keras.metrics.Metric, segments: dict[str, tuple[int, ...]]):
        self.shapes = dict(segments)
        self.offsets: dict[str, int] = {}
        size = 0
        for name, shape in self.shapes.items():
            self.offsets[name] = size
            size += math.prod(shape)
        self.recent = metric.add_variable(
            shape=(size,), initializer="zeros", dtype="float32", name="counts"
        )
        self.carried = metric.add_variable(
            shape=(size,), initializer="zeros", dtype="float32", name="counts_carried"
        )
        self._compiled: dict[str, Any] = {}  # see scatter_add()

    def scatter_add(
        self,
        cells: dict[str, Any],
        weights: dict[str, Any],
        *,
        only_batch_size_varies: bool = False,
    ) -> None:
        """Add ``weights[name]`` at the flat positions ``cells[name]`` of each segment named
        (repeats add up): O(number of cells), whatever the segments' sizes.

        On TensorFlow, when every batch touches at least :data:`XLA_MIN_CELLS` cells (as far
        as the static shapes tell: a batch may have one row), the cells are scattered by an
        XLA-compiled function even in a step that is not compiled with XLA (Keras does not use
        XLA on CPU): TensorFlow's own scatter kernels take about 60 ns a cell, which made the
        update of 1000 classes 5x slower than under XLA. XLA compiles once per number of
        cells, so only when ``only_batch_size_varies`` (the predictions' other dimensions
        are static): a fit then meets two sizes, its full and its last batch, where
        sequences of varying length would meet one per length. Under a ``tf.distribute``
        strategy (where Keras does not use XLA either) the scatters run as they are.
        """
        indices = ops.concatenate(
            [ops.reshape(self.offsets[n] + ops.cast(c, "int32"), (-1,)) for n, c in cells.items()]
        )
        updates = ops.concatenate(
            [ops.reshape(ops.cast(weights[n], "float32"), (-1,)) for n in cells]
        )
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            fewest_cells = sum(math.prod(size or 1 for size in c.shape) for c in cells.values())
            if (
                only_batch_size_varies
                and fewest_cells >= XLA_MIN_CELLS
                and not tf.distribute.has_strategy()
            ):
                # reduce_retracing: one trace for every batch size (XLA compiles each size).
                compiled = _tf_function(
                    self._compiled, self._add, jit_compile=True, reduce_retracing=True
                )
                compiled(indices, updates)
                return
        self._add(indices, updates)

    def _add(self, indices, updates) -> None:
        scatter_into(self.recent, indices, updates, add=True)
        recent = scatter_into(self.recent, indices)
        moved = ops.floor(recent / self.CARRY) * self.CARRY
        # Repeated cells read and write the same values: the move happens once per cell.
        carried = scatter_into(self.carried, indices)
        scatter_into(self.recent, indices, recent - moved)
        scatter_into(self.carried, indices, carried + moved)

    def read(self, name: str):
        """One segment on the device (float32, in its shape), read sparsely: O(its size)."""
        indices = ops.arange(
            self.offsets[name], self.offsets[name] + math.prod(self.shapes[name]), dtype="int32"
        )
        total = scatter_into(self.carried, indices) + scatter_into(self.recent, indices)
        return ops.reshape(total, self.shapes[name])

    def reset(self) -> None:
        for variable in (self.recent, self.carried):
            variable.assign(ops.zeros(variable.shape, dtype=variable.dtype))

    def to_numpy(self, axes: dict[str, tuple[int, ...]] | None = None) -> dict[str, np.ndarray]:
        """Every segment on the host as float64, the segments named in ``axes`` transposed so.

        One transfer per variable (stacking them first would copy both on the device, 3x
        slower for a 2000-class state), then the pair is added straight into each segment's
        own C-contiguous float64 array: converting, adding and transposing one after the
        other filled three fresh arrays as large, 0.3 s for a 2000-class state instead of
        0.12 s. A transposed segment is added in blocks of :attr:`TRANSPOSE_BLOCK` along its
        last axis, so that reads and writes both stay within the cache (2x faster).
        """
        carried = ops.convert_to_numpy(self.carried.value)
        recent = ops.convert_to_numpy(self.recent.value)
        segments = {}
        for name, shape in self.shapes.items():
            order = (axes or {}).get(name, tuple(range(len(shape))))
            cells = slice(self.offsets[name], self.offsets[name] + math.prod(shape))
            pair = [part[cells].reshape(shape).transpose(order) for part in (carried, recent)]
            segment = np.empty(pair[0].shape)
            if order == tuple(range(len(shape))):
                np.add(*pair, out=segment, dtype=np.float64)
            else:
                for start in range(0, segment.shape[-1], self.TRANSPOSE_BLOCK):
                    block = np.s_[..., start : start + self.TRANSPOSE_BLOCK]
                    np.add(pair[0][block], pair[1][block], out=segment[block], dtype=np.float64)
            segments[name] = segment
        return segments


# -- format: one function per task, (y_true, scores) -> (labels, predicted, valid) -------------
# Multiclass and binary give one class index per row, multilabel a 0/1 per row and class.
def _format_multiclass(y_true, scores, threshold):
    """Argmax decision; labels are class indices or one-hot rows."""
    num_classes = scores.shape[-1]
    if len(y_true.shape) == len(scores.shape) and y_true.shape[-1] == num_classes:
        labels = ops.argmax(y_true, axis=-1)
    else:
        labels = ops.reshape(y_true, ops.shape(scores)[:-1])
    labels = ops.cast(labels, "int32")
    valid = ops.logical_and(labels >= 0, labels < num_classes)
    return ops.where(valid, labels, 0), ops.cast(ops.argmax(scores, axis=-1), "int32"), valid


def _format_binary(y_true, scores, threshold):
    """One sigmoid unit (``scores`` holds both classes): class 1 above ``threshold``."""
    labels = ops.cast(ops.reshape(y_true, ops.shape(scores)[:-1]), "int32")
    valid = ops.logical_or(labels == 0, labels == 1)
    return ops.where(valid, labels, 0), ops.cast(scores[..., 1] > threshold, "int32"), valid


def _format_multilabel(y_true, scores, threshold):
    """``C`` independent 0/1 labels, each predicted above ``threshold``."""
    labels = ops.cast(ops.reshape(y_true, ops.shape(scores)), "int32")
    valid = ops.all(ops.logical_or(labels == 0, labels == 1), axis=-1)
    labels = ops.where(ops.expand_dims(valid, -1), labels, 0)
    return labels, ops.cast(scores > threshold, "int32"), valid


_FORMATTERS = {
    "multiclass": _format_multiclass,
    "binary": _format_binary,
    "multilabel": _format_multilabel,
}


def _score_bins(scores, num_bins: int):
    """:func:`functional.score_bins` in ``keras.ops`` (float32, as there): the bin of each
    score in ``[0, 1]``, 1.0 in the last."""
    return ops.clip(ops.cast(ops.floor(scores * num_bins), "int32"), 0, num_bins - 1)


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
    ``pr_thresholds > 0``, per-class histograms of the scores of positive and negative samples
    (PR and ROC curves, AP, ROC AUC, reliability curves, decision thresholds) and, for
    multiclass and binary, the top-label calibration counts that expected calibration error
    needs (15 bins, O(N) per batch).
    An update costs O(N * C) whatever the number of bins: it adds only to the cells the batch
    touches. ``result()`` is the macro F1 (O(C), from per-class counts kept beside the matrix),
    so ``val_f1_macro`` works with ``EarlyStopping`` and ``ModelCheckpoint``; the callback
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
        pr_thresholds: number of score bins per class for PR and ROC curves, reliability
            curves and decision thresholds (and the calibration counts); 0 turns them off.
        zero_division: value of an undefined precision/recall/F1 (0.0, 1.0 or NaN).
        name: metric name; the logs get ``name`` and ``val_`` + ``name``.

    Counts are exact integers up to 2**36 per cell and epoch (:class:`ExactCounts`).

    The class registers itself with Keras' serialization (as
    ``mlflow_mcmetrics>ClassificationMetrics``) when it is first used or read as
    ``mlflow_mcmetrics.ClassificationMetrics``, not on import: ``mlflow.tensorflow`` pickles
    Keras' whole registry into every model it logs, and a model trained under ``autolog()``
    alone must load where this package is not installed.
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
        check_arguments(
            task=task,
            num_classes=num_classes,
            threshold=threshold,
            ignore_class=ignore_class,
            pr_thresholds=pr_thresholds,
            zero_division=zero_division,
        )
        self.num_classes = int(num_classes)
        self.task = task
        self.from_logits = bool(from_logits)
        self.threshold = float(threshold)
        self.ignore_class = ignore_class
        self.pr_thresholds = int(pr_thresholds)
        self.zero_division = float(zero_division)

        num_classes = self.num_classes
        segments = {
            "confusion_matrix": (num_classes, 2, 2)
            if task == "multilabel"
            else (num_classes, num_classes),
            # [labels outside the valid range, predictions with NaN/inf], both left out.
            "rejected": (2,),
        }
        if task != "multilabel":
            # [true positives, predicted, support] per class, so that result() is O(C) every
            # step (a multilabel confusion matrix is O(C) already and holds them).
            segments["stat_scores"] = (3, num_classes)
        if self.pr_thresholds:
            # Bins before classes, unlike functional's (2, C, T): a batch's scores bunch in a
            # few bins across all classes, so its cells share cache lines (T=16384 costs as 200).
            segments["score_histogram"] = (2, self.pr_thresholds, num_classes)
            if task != "multilabel":
                # [count, correct, confidence sum] per top-label confidence bin: exact ECE.
                segments["calibration"] = (3, functional.CALIBRATION_BINS)
        self._counts = ExactCounts(self, segments)
        self._compiled: dict[str, Any] = {}  # see _eagerly_compiled()

    def _format(self, y_true, y_pred, sample_weight):
        """Any supported layout (sparse/one-hot/multilabel labels, sequences, masks) -> flat
        ``(labels, predicted, scores, weights, rejected)``, one row per sample (per timestep)."""
        mask = get_keras_mask(y_pred)
        y_pred = ops.convert_to_tensor(y_pred)
        y_true = ops.convert_to_tensor(y_true)
        width = 1 if self.task == "binary" else self.num_classes
        if y_pred.shape[-1] != width:
            raise ValueError(
                f"ClassificationMetrics(task={self.task!r}, num_classes={self.num_classes}) "
                f"expects predictions whose last axis is {width}, got shape {tuple(y_pred.shape)}."
            )
        weights = _weights_like(sample_weight, mask, ops.shape(y_pred)[:-1])
        scores = ops.cast(y_pred, "float32")
        if self.from_logits:
            scores = (
                ops.softmax(scores, axis=-1) if self.task == "multiclass" else ops.sigmoid(scores)
            )
        if self.task == "binary":
            scores = ops.concatenate([1.0 - scores, scores], axis=-1)
        finite = ops.all(ops.isfinite(scores), axis=-1)
        scores = ops.where(ops.expand_dims(finite, -1), scores, 0.0)
        labels, predicted, valid = _FORMATTERS[self.task](y_true, scores, self.threshold)
        if self.ignore_class is not None:
            weights = weights * ops.cast(
                ops.logical_or(ops.logical_not(valid), labels != self.ignore_class), "float32"
            )
        rejected = ops.stack(
            [
                ops.sum(weights * ops.cast(ops.logical_not(valid), "float32")),
                ops.sum(weights * ops.cast(ops.logical_not(finite), "float32")),
            ]
        )
        weights = weights * ops.cast(ops.logical_and(valid, finite), "float32")
        per_class = self.task == "multilabel"

        def rows(x, classes_axis):
            return ops.reshape(x, (-1, self.num_classes) if classes_axis else (-1,))

        return (
            rows(labels, per_class),
            rows(predicted, per_class),
            rows(scores, True),
            ops.reshape(weights, (-1,)),
            rejected,
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        labels, predicted, scores, weights, rejected = self._format(y_true, y_pred, sample_weight)
        num_classes = self.num_classes
        classes = ops.arange(num_classes, dtype="int32")
        row_weights = ops.expand_dims(weights, -1)
        if self.task == "multilabel":
            # labels, predicted: (R, C) 0/1
            class_weights = ops.broadcast_to(row_weights, ops.shape(labels))
            cells = {"confusion_matrix": classes * 4 + labels * 2 + predicted}
            cell_weights = {"confusion_matrix": class_weights}
            positive = labels
        else:
            # labels, predicted: (R,) class indices
            cells = {
                "confusion_matrix": labels * num_classes + predicted,
                "stat_scores": ops.stack(
                    [labels, num_classes + predicted, 2 * num_classes + labels]
                ),
            }
            cell_weights = {
                "confusion_matrix": weights,
                "stat_scores": ops.stack(
                    [weights * ops.cast(labels == predicted, "float32"), weights, weights]
                ),
            }
            positive = ops.cast(ops.expand_dims(labels, -1) == classes, "int32")
        cells["rejected"] = ops.arange(2, dtype="int32")
        cell_weights["rejected"] = rejected
        if self.pr_thresholds:
            num_bins = self.pr_thresholds
            bins = _score_bins(scores, num_bins)
            cells["score_histogram"] = (positive * num_bins + bins) * num_classes + classes
            cell_weights["score_histogram"] = ops.broadcast_to(row_weights, ops.shape(bins))
            if self.task != "multilabel":
                cells["calibration"], cell_weights["calibration"] = self._calibration_cells(
                    labels, scores, weights
                )
        # The static shape as given (a list has none): converting again would copy the batch.
        shape = tuple(y_pred.shape) if hasattr(y_pred, "shape") else np.shape(y_pred)
        self._counts.scatter_add(
            cells, cell_weights, only_batch_size_varies=None not in shape[1:-1]
        )

    @staticmethod
    def _calibration_cells(labels, scores, weights):
        """Cells and weights of :func:`functional.calibration_state`: the top-label confidence
        of each row, whether its argmax is right, in ``CALIBRATION_BINS`` equal-width bins."""
        num_bins = functional.CALIBRATION_BINS
        confidence = ops.max(scores, axis=-1)
        correct = ops.cast(ops.cast(ops.argmax(scores, axis=-1), "int32") == labels, "float32")
        bins = _score_bins(confidence, num_bins)
        return (
            ops.stack([bins, num_bins + bins, 2 * num_bins + bins]),
            ops.stack([weights, weights * correct, weights * confidence]),
        )

    @property
    def scored_labels(self) -> list[int]:
        """The class indices that are scored and averaged (all but ``ignore_class``)."""
        return [c for c in range(self.num_classes) if c != self.ignore_class]

    def _eagerly_compiled(self, method):
        """``method()``, as one ``tf.function`` call when TensorFlow would run it eagerly.

        Keras calls ``result()`` and ``reset_state()`` eagerly at the start and end of every
        epoch and evaluation, where TensorFlow dispatches their ops one by one from Python:
        1-4 ms a call, a third of this metric's cost per epoch on sub-second epochs. Compiled,
        a call takes 0.2 ms. The other backends dispatch eager ops in microseconds.
        """
        if keras.backend.backend() != "tensorflow":
            return method()
        import tensorflow as tf

        if not tf.executing_eagerly():
            return method()
        return _tf_function(self._compiled, method)()

    def result(self):
        """Macro F1 over :attr:`scored_labels`, as scikit-learn's ``f1_score(average="macro")``."""
        return self._eagerly_compiled(self._f1_macro)

    def _f1_macro(self):
        scored = ops.convert_to_tensor(self.scored_labels, dtype="int32")
        if self.task == "multilabel":
            stat_scores = ops.stack(
                functional.stat_scores_from_confusion_matrix(
                    self._counts.read("confusion_matrix"), xp=ops
                )
            )
        else:
            stat_scores = self._counts.read("stat_scores")
        stat_scores = ops.take(stat_scores, scored, axis=1)
        true_positives, predicted, support = stat_scores[0], stat_scores[1], stat_scores[2]
        return functional.f1_macro_from_stat_scores(
            true_positives, predicted, support, self.zero_division, xp=ops
        )

    def reset_state(self):
        self._eagerly_compiled(self._counts.reset)

    def state(self) -> tuple[ClassificationState, np.ndarray]:
        """Copy the state to the host.

        Returns:
            ``(state, rejected)``: the :class:`~.functional.ClassificationState` (float64
            counts) and the weighted counts of rows left out for ``[invalid labels,
            non-finite predictions]``.
        """
        # The histogram is kept bins before classes (see __init__); functional's is (2, C, T).
        segments = self._counts.to_numpy(axes={"score_histogram": (0, 2, 1)})
        state = ClassificationState(
            segments["confusion_matrix"],
            segments.get("score_histogram"),
            segments.get("calibration"),
        )
        return state, segments["rejected"]

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
