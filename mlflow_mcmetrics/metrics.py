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

import functools
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
    value). ``indices`` of any shape, ``updates`` of the same: flattening a ``(N, C)`` block
    of cells first makes XLA recover each cell's row and column by integer division. Each
    backend's own sparse ops, so the cost is O(len(indices)), not O(variable size):
    TensorFlow's resource gather/scatter (on the replica's copy under
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
        from jax import lax

        # lax's own scatter, not .at[]: that flattens the indices and wraps negative ones,
        # two passes that write the cells out (4 ns a cell) before scattering them.
        scatter = lax.scatter_add if add else lax.scatter
        variable.assign(
            scatter(
                variable.value,
                ops.expand_dims(indices, -1),
                updates,
                lax.ScatterDimensionNumbers(
                    update_window_dims=(),
                    inserted_window_dims=(0,),
                    scatter_dims_to_operand_dims=(0,),
                ),
                mode=lax.GatherScatterMode.PROMISE_IN_BOUNDS,
            )
        )
    elif backend == "torch":
        indices, updates = indices.reshape(-1).long(), updates.reshape(-1)
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


#: Cells that a batch must touch for TensorFlow to run the update with XLA (see
#: ClassificationMetrics.update_state): launching XLA costs about 0.1 ms, more than it saves
#: on small batches.
XLA_MIN_CELLS = 256


class ExactCounts:
    """Counts in one flat state, kept as a float32 pair, exact far past float32's 2**24.

    The state is named segments (the confusion matrix, the score histogram, ...) laid end to
    end in two variables, so that a batch is one scatter and an epoch's reset and read are
    one operation each. A count is ``carried + recent``, added in float64 on the host:
    ``recent`` receives the batches, and whole multiples of :attr:`CARRY` (2**12) move from
    it to ``carried``, which holds only such multiples (exact in float32 up to 2**36), so
    that ``recent`` stays where float32 is exact. Integer counts are exact up to 2**36 per
    cell, where a float32 counter stops at 2**24. The move happens one of two ways:

    * Counts (:meth:`scatter_add` with ``rows``: no sample weights, each row adds 0 or 1 to
      a cell, the batch's row count static): the batch is scatter-added, and the move runs
      over a window that sweeps the state round (:meth:`_window`), ``ceil(S * rows /
      SWEEP_ROWS)`` of its ``S`` cells per batch. Every cell is visited again before
      :attr:`SWEEP_ROWS` (2**22) rows and two batches have reached it, so ``recent`` stays
      below 2**23. At 100 classes, 200 bins and batches of 4096 that is 50 cells a batch
      beside the batch's 430,000; moving every touched cell after every batch cost 3-4x
      the scatter itself (a gather and a scatter per variable over all the batch's cells).
    * Weighted sums (sample weights, the calibration's confidence sums, and batches whose
      row count is not static): the touched cells move right after the scatter-add, so
      ``recent`` stays below 2**12 plus one batch's share of the cell, and fractional
      weights round as a float32 sum of that much, not of the whole count.

    Args:
        metric: the metric that owns the variables.
        segments: ``{name: shape}``, in the order they are laid out.
    """

    CARRY = 2.0**12
    #: Rows that may reach a cell between two visits of the sweep (see :meth:`_window`).
    SWEEP_ROWS = 2**22
    #: Batches of more rows are moved per cell. With at most this many rows a batch, a cell
    #: holds less than 2**12 + 2**22 + 2**21 + 2**20 < 2**23 between two visits (see
    #: :meth:`_window`), so a batch moved per cell may add up to 2**23 rows and stay exact.
    MAX_SWEPT_ROWS = 2**21
    TRANSPOSE_BLOCK = 256

    def __init__(self, metric: keras.metrics.Metric, segments: dict[str, tuple[int, ...]]):
        self.shapes = dict(segments)
        self.offsets: dict[str, int] = {}
        size = 0
        for name, shape in self.shapes.items():
            self.offsets[name] = size
            size += math.prod(shape)
        self.size = size
        self.recent = metric.add_variable(
            shape=(size,), initializer="zeros", dtype="float32", name="counts"
        )
        self.carried = metric.add_variable(
            shape=(size,), initializer="zeros", dtype="float32", name="counts_carried"
        )
        # Where the sweep's next window starts.
        self.cursor = metric.add_variable(
            shape=(), initializer="zeros", dtype="int32", name="counts_cursor"
        )

    def scatter_add(
        self,
        counts: list[list[tuple[str, Any, Any]]],
        sums: list[tuple[str, Any, Any]] = (),
        *,
        rows: int | None = None,
    ) -> None:
        """Add ``weights`` at the flat positions ``cells`` of the segment named, for each
        part ``(segment, cells, weights)`` (repeats add up; ``weights`` broadcast to
        ``cells``' shape): O(number of cells), whatever the segments' sizes.

        ``counts``: groups of parts, one scatter per group; ``sums``: weighted sums, whose
        cells move right after they are added. ``rows``: the batch's static row count when
        every count's weight is 0 or 1 and each row adds to a cell at most once (so no cell
        grows by more than ``rows``): then the state is swept (see the class). Otherwise
        (``None``: sample weights, or a row count that is not static) every touched cell
        moves after one scatter of all the parts.

        A scatter per group: XLA computes the cells of a part of its own inside the
        scatter, where concatenating the ``(N, C)`` histogram cells with the rest wrote
        them out first (JAX on the CPU, 100 classes, 200 bins, batch 4096: 3.4 against
        1.3 ms); the parts of one row each are few, and one scatter for them all saves a
        launch per part on small batches.
        """
        if rows is None or rows > self.MAX_SWEPT_ROWS:
            self._add_and_move(*self._cells([part for group in counts for part in group] + sums))
            return
        for group in counts:
            scatter_into(self.recent, *self._cells(group), add=True)
        moving = self._window(rows)
        if sums:
            cells, weights = self._cells(sums)
            scatter_into(self.recent, cells, weights, add=True)
            moving.append(ops.reshape(cells, (-1,)))
        if moving:
            # Repeated cells (a sum's in the window) read and write the same values.
            self._move(ops.concatenate(moving) if len(moving) > 1 else moving[0])

    def _cells(self, parts: list[tuple[str, Any, Any]]):
        """The parts' flat state positions and float32 weights: in the part's own shape when
        there is one part, else flattened and concatenated."""
        cells = [self.offsets[name] + ops.cast(part, "int32") for name, part, _ in parts]
        weights = [
            ops.cast(ops.broadcast_to(part, ops.shape(c)), "float32")
            for c, (*_, part) in zip(cells, parts, strict=True)
        ]
        if len(parts) == 1:
            return cells[0], weights[0]
        return (
            ops.concatenate([ops.reshape(c, (-1,)) for c in cells]),
            ops.concatenate([ops.reshape(w, (-1,)) for w in weights]),
        )

    def _window(self, rows: int) -> list:
        """The next ``ceil(S * rows / SWEEP_ROWS)`` cells round the state from the cursor, to
        move after this batch's counts (``[]`` or one array), and the cursor past them.

        A batch of ``n`` rows moves ``L >= S * n / SWEEP_ROWS`` cells after adding its own.
        Windows tile the state in order, so from a batch whose window holds a cell to the
        next one whose window does, the windows of the batches after the first (the last
        included) cover fewer than ``S`` plus the last window's cells: the rows they add to
        the cell are fewer than ``SWEEP_ROWS + n_last + SWEEP_ROWS / S`` (``S >= 4``: below
        2**22 + 2**21 + 2**20).
        """
        window = min(self.size, math.ceil(self.size * rows / self.SWEEP_ROWS))
        if not window:
            return []
        cursor = ops.convert_to_tensor(self.cursor.value)  # one read for the window and the step
        self.cursor.assign((cursor + window) % self.size)
        return [(cursor + ops.arange(window, dtype="int32")) % self.size]

    def _add_and_move(self, indices, updates) -> None:
        scatter_into(self.recent, indices, updates, add=True)
        # Repeated cells read and write the same values: the move happens once per cell.
        self._move(indices)

    def _move(self, cells) -> None:
        recent = scatter_into(self.recent, cells)
        moved = ops.floor(recent / self.CARRY) * self.CARRY
        carried = scatter_into(self.carried, cells)
        scatter_into(self.recent, cells, recent - moved)
        scatter_into(self.carried, cells, carried + moved)

    def read(self, name: str):
        """One segment on the device (float32, in its shape), read sparsely: O(its size)."""
        indices = ops.arange(
            self.offsets[name], self.offsets[name] + math.prod(self.shapes[name]), dtype="int32"
        )
        total = scatter_into(self.carried, indices) + scatter_into(self.recent, indices)
        return ops.reshape(total, self.shapes[name])

    def reset(self) -> None:
        for variable in (self.recent, self.carried, self.cursor):
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


def _first_argmax(x, maximum=None):
    """``ops.argmax(x, axis=-1)`` (the first largest) as a max, a compare and a min, given
    ``maximum = ops.max(x, axis=-1)`` if it is at hand. XLA's CPU argmax (a reduction over
    value-index pairs) is not vectorised: at 100 classes, batch 4096 it was 2.3 ms of a
    2.9 ms update under JAX. A row without a largest value (NaN) gets the last index."""
    if maximum is None:
        maximum = ops.max(x, axis=-1)
    width = x.shape[-1]
    # In float32 (exact below 2**24 classes): XLA vectorises a float min, not an int one.
    index = ops.arange(width, dtype="float32")
    first = ops.min(ops.where(x == ops.expand_dims(maximum, -1), index, width), axis=-1)
    return ops.cast(ops.minimum(first, width - 1), "int32")


# -- format: one function per task, (y_true, scores) -> (labels, predicted, valid, top) -------
# Multiclass and binary give one class index per row, multilabel a 0/1 per row and class.
# ``top`` is (top-label index, its score) per row, what the calibration counts need (None for
# multilabel).
def _format_multiclass(y_true, scores, threshold):
    """Argmax decision; labels are class indices or one-hot rows."""
    num_classes = scores.shape[-1]
    if len(y_true.shape) == len(scores.shape) and y_true.shape[-1] == num_classes:
        labels = _first_argmax(y_true)
    else:
        labels = ops.reshape(y_true, ops.shape(scores)[:-1])
    labels = ops.cast(labels, "int32")
    valid = ops.logical_and(labels >= 0, labels < num_classes)
    confidence = ops.max(scores, axis=-1)
    predicted = _first_argmax(scores, confidence)
    return ops.where(valid, labels, 0), predicted, valid, (predicted, confidence)


def _format_binary(y_true, scores, threshold):
    """One sigmoid unit (``scores`` holds both classes): class 1 above ``threshold``."""
    labels = ops.cast(ops.reshape(y_true, ops.shape(scores)[:-1]), "int32")
    valid = ops.logical_or(labels == 0, labels == 1)
    negative, positive = scores[..., 0], scores[..., 1]
    # The first largest of (1 - p, p), as argmax would pick it.
    top = (ops.cast(positive > negative, "int32"), ops.maximum(negative, positive))
    return ops.where(valid, labels, 0), ops.cast(positive > threshold, "int32"), valid, top


def _format_multilabel(y_true, scores, threshold):
    """``C`` independent 0/1 labels, each predicted above ``threshold``."""
    labels = ops.cast(ops.reshape(y_true, ops.shape(scores)), "int32")
    valid = ops.all(ops.logical_or(labels == 0, labels == 1), axis=-1)
    labels = ops.where(ops.expand_dims(valid, -1), labels, 0)
    return labels, ops.cast(scores > threshold, "int32"), valid, None


_FORMATTERS = {
    "multiclass": _format_multiclass,
    "binary": _format_binary,
    "multilabel": _format_multilabel,
}


def _score_bins(scores, num_bins: int):
    """:func:`functional.score_bins` in ``keras.ops`` (float32, as there): the bin of each
    score in ``[0, 1]``, 1.0 in the last."""
    return ops.clip(ops.cast(ops.floor(scores * num_bins), "int32"), 0, num_bins - 1)


def _flat_histogram_cells(labels, scores, weights, num_bins: int):
    """The score histogram's cells ``(positive * T + bin) * C + class`` and their weights for
    ``(R, C)`` scores and ``(R,)`` class-index labels and weights, as ``(R * C,)`` arrays
    computed over the flattened block: each cell's row, an integer division of its
    position, picks the row's label and weight (a gather).

    For TensorFlow's XLA (2.21, CPU): the scatter takes its indices and updates as an
    ``(R * C, 1)`` column, and XLA computed that column from the ``(R, C)`` block one
    element at a time, recovering each one's row and class by division in scalar code
    (100 classes, batch 4096: 2.5 ms to write the indices, against 0.8 ms for the same
    values as an ``(R, C)`` array). Over flat operands the pass is vectorised (the
    histogram's scatter with its cells: 3.8 -> 2.0-2.2 ms). JAX's XLA vectorises the
    ``(R, C)`` form, where this one costs 1.6x as much.
    """
    num_classes = scores.shape[-1]
    position = ops.arange(ops.shape(scores)[0] * num_classes, dtype="int32")
    row, column = position // num_classes, position % num_classes
    bins = _score_bins(ops.reshape(scores, (-1,)), num_bins)
    positive = ops.cast(ops.take(labels, row) == column, "int32")
    return (positive * num_bins + bins) * num_classes + column, ops.take(weights, row)


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

    The metric keeps per-class counts ``[true positives, predicted, support]``, a ``(C, C)``
    confusion matrix while ``C`` is at most
    :data:`~.functional.DENSE_CONFUSION_MATRIX_MAX_CLASSES` (``(C, 2, 2)`` for multilabel,
    always) and, with ``pr_thresholds > 0``, per-class histograms of the scores of positive
    and negative samples (PR and ROC curves, AP, ROC AUC, reliability curves, decision
    thresholds) and, for multiclass and binary, the top-label calibration counts that
    expected calibration error needs (15 bins, O(N) per batch).
    An update costs O(N * C) whatever the number of bins: it adds only to the cells the batch
    touches. ``result()`` is the macro F1 (O(C), from the per-class counts), so
    ``val_f1_macro`` works with ``EarlyStopping`` and ``ModelCheckpoint``; the callback
    (:class:`mlflow_mcmetrics.MCMetricsCallback`) turns the full state into per-class values.

    By default the state fits in 256 MiB (:data:`~.functional.STATE_BUDGET_BYTES`) up to far
    beyond 10,000 classes: no dense confusion matrix past 4096 classes (precision, recall,
    F1, balanced accuracy, MCC and Cohen's kappa stay exact: they need only the per-class
    counts; which classes are confused with which is given up), and fewer score bins past
    2,997 classes (:func:`~.functional.default_pr_thresholds`: 1024 at 10,000 classes,
    coarser curves whose AP tie interval says so). At 10,000 classes the default state is
    164 MB, where the dense matrix and 4096 bins took 1,455 MB.

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
            curves and decision thresholds (and the calibration counts); 0 turns them off;
            ``"auto"`` chooses them from ``C`` (:func:`~.functional.default_pr_thresholds`:
            4096 up to 2,997 classes). The attribute holds the number chosen.
        zero_division: value of an undefined precision/recall/F1 (0.0, 1.0 or NaN).
        name: metric name; the logs get ``name`` and ``val_`` + ``name``.
        confusion_matrix: keep the dense ``(C, C)`` matrix (``True``), not (``False``: the
            state's ``confusion_matrix`` is ``None``), or ``"auto"``: up to
            :data:`~.functional.DENSE_CONFUSION_MATRIX_MAX_CLASSES` classes. A multilabel
            state always keeps its ``(C, 2, 2)``, which is O(C). The attribute holds the
            choice made.

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
        pr_thresholds: int | str = "auto",
        zero_division: float = 0.0,
        name: str = "f1_macro",
        dtype=None,
        *,
        confusion_matrix: bool | str = "auto",
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
            confusion_matrix=confusion_matrix,
        )
        self.num_classes = int(num_classes)
        self.task = task
        self.from_logits = bool(from_logits)
        self.threshold = float(threshold)
        self.ignore_class = ignore_class
        self.zero_division = float(zero_division)
        self.confusion_matrix = task == "multilabel" or (
            functional.dense_confusion_matrix_by_default(self.num_classes, task)
            if confusion_matrix == "auto"
            else bool(confusion_matrix)
        )
        self.pr_thresholds = (
            functional.default_pr_thresholds(
                self.num_classes, task, confusion_matrix=self.confusion_matrix
            )
            if pr_thresholds == "auto"
            else int(pr_thresholds)
        )

        num_classes = self.num_classes
        segments: dict[str, tuple[int, ...]] = {}
        if task == "multilabel":
            segments["confusion_matrix"] = (num_classes, 2, 2)
        elif self.confusion_matrix:
            segments["confusion_matrix"] = (num_classes, num_classes)
        # [labels outside the valid range, predictions with NaN/inf], both left out.
        segments["rejected"] = (2,)
        if task != "multilabel":
            # [true positives, predicted, support] per class, so that result() is O(C) every
            # step (a multilabel confusion matrix is O(C) already and holds them), and all a
            # state without a confusion matrix keeps.
            segments["stat_scores"] = (3, num_classes)
        if self.pr_thresholds:
            # Bins before classes, unlike functional's (2, C, T): a batch's scores bunch in a
            # few bins across all classes, so its cells share cache lines (T=16384 costs as 200).
            segments["score_histogram"] = (2, self.pr_thresholds, num_classes)
            if task != "multilabel":
                # [count, correct, confidence sum] per top-label confidence bin: exact ECE.
                segments["calibration"] = (3, functional.CALIBRATION_BINS)
        self._counts = ExactCounts(self, segments)
        self._compiled: dict[str, Any] = {}  # see update_state() and _eagerly_compiled()

    def _format(self, y_true, y_pred, sample_weight, mask):
        """Any supported layout (sparse/one-hot/multilabel labels, sequences, masks) -> flat
        ``(labels, predicted, scores, weights, rejected, top)``, one row per sample (per
        timestep); ``top``: the rows' top-label index and score (not multilabel)."""
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
        # A row holding NaN or +-inf has a sum that is not finite (probabilities cannot
        # overflow it). Its scores are not zeroed: they get weight 0, and their bins and
        # argmax are clipped into range, which spares a pass that rewrote the scores.
        finite = ops.isfinite(ops.sum(scores, axis=-1))
        labels, predicted, valid, top = _FORMATTERS[self.task](y_true, scores, self.threshold)
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

        def rows(x, classes_axis=False):
            return ops.reshape(x, (-1, self.num_classes) if classes_axis else (-1,))

        if top is not None:
            index, score = top
            top = (rows(index), rows(ops.where(finite, score, 0.0)))
        return (
            rows(labels, per_class),
            rows(predicted, per_class),
            rows(scores, True),
            rows(weights),
            rejected,
            top,
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        """Add a batch: every cell it touches in one scatter (two without sample weights:
        the counts, and the 15 calibration bins' confidence sums).

        On TensorFlow, when a batch touches at least :data:`XLA_MIN_CELLS` cells (as far as
        the static shapes tell: a batch may have one row), the update runs as one
        XLA-compiled function even in a step that is not compiled with XLA (Keras does not
        use XLA on CPU): TensorFlow's own scatter kernels take about 60 ns a cell (the
        update of 1000 classes was 5x slower than under XLA), and XLA fuses the N x C work
        (bins, cells, weights) into the pass that scatters. XLA compiles once per shape, so
        only when the predictions' dimensions other than the batch are static (a fit meets
        two sizes, its full and its last batch, where sequences of varying length would
        meet one per length), and not under a ``tf.distribute`` strategy (where Keras does
        not use XLA either).
        """
        mask = get_keras_mask(y_pred)
        # The static shape as given (a list has none): converting again would copy the batch.
        shape = tuple(y_pred.shape) if hasattr(y_pred, "shape") else np.shape(y_pred)
        update = self._update
        if keras.backend.backend() == "tensorflow" and None not in shape[1:-1]:
            import tensorflow as tf

            per_row = (self.num_classes if self.pr_thresholds else 0) + 7
            fewest_rows = math.prod(size or 1 for size in shape[:-1])
            if fewest_rows * per_row >= XLA_MIN_CELLS and not tf.distribute.has_strategy():
                # reduce_retracing: one trace for every batch size (XLA compiles each size).
                compiled = _tf_function(
                    self._compiled, self._update, jit_compile=True, reduce_retracing=True
                )
                update = functools.partial(compiled, flat=True)
        update(y_true, y_pred, sample_weight, mask)

    def _update(self, y_true, y_pred, sample_weight, mask, flat=False):
        """One batch into the state. ``flat``: the histogram's cells computed over the
        flattened ``(R * C,)`` block (:func:`_flat_histogram_cells`), for TensorFlow's XLA."""
        labels, predicted, scores, weights, rejected, top = self._format(
            y_true, y_pred, sample_weight, mask
        )
        # Without sample weights every weight is 0 or 1 (masks, ignore_class, invalid rows):
        # counts, swept rather than moved per cell (ExactCounts) when their number is static.
        counting = sample_weight is None
        rows = weights.shape[0] if counting else None
        num_classes = self.num_classes
        classes = ops.arange(num_classes, dtype="int32")
        row_weights = ops.expand_dims(weights, -1)
        # (segment, cells, weights): the (R, C) blocks a scatter each, the few cells of each
        # row one scatter together (ExactCounts.scatter_add), the weighted sums apart.
        blocks, per_row, sums = [], [], []
        if self.task == "multilabel":
            # labels, predicted: (R, C) 0/1
            blocks.append(("confusion_matrix", classes * 4 + labels * 2 + predicted, row_weights))
            positive = labels
        else:
            # labels, predicted: (R,) class indices
            correct = ops.cast(labels == predicted, "float32")
            if self.confusion_matrix:
                per_row.append(("confusion_matrix", labels * num_classes + predicted, weights))
            per_row.append(
                (
                    "stat_scores",
                    ops.stack([labels, num_classes + predicted, 2 * num_classes + labels]),
                    ops.stack([weights * correct, weights, weights]),
                )
            )
            positive = ops.cast(ops.expand_dims(labels, -1) == classes, "int32")
        per_row.append(("rejected", ops.arange(2, dtype="int32"), rejected))
        if self.pr_thresholds:
            num_bins = self.pr_thresholds
            if flat and self.task != "multilabel":
                blocks.append(
                    ("score_histogram", *_flat_histogram_cells(labels, scores, weights, num_bins))
                )
            else:
                bins = _score_bins(scores, num_bins)
                cells = (positive * num_bins + bins) * num_classes + classes
                blocks.append(("score_histogram", cells, row_weights))
            if top is not None:
                counts, confidence_sums = self._calibration_parts(labels, top, weights, counting)
                per_row += counts
                sums += confidence_sums
        self._counts.scatter_add([[block] for block in blocks] + [per_row], sums, rows=rows)

    @staticmethod
    def _calibration_parts(labels, top, weights, counting):
        """The parts of :func:`functional.calibration_state` for the top-label confidence of
        each row in ``CALIBRATION_BINS`` equal-width bins: ``(counts, sums)``, the count and
        correct count (whether the argmax is right) per bin, and the confidence sums. When
        ``counting``, the sums are added up per bin first, so that their carry touches 15
        cells instead of one per row."""
        num_bins = functional.CALIBRATION_BINS
        index, confidence = top
        correct = ops.cast(index == labels, "float32")
        bins = _score_bins(confidence, num_bins)
        counts = [
            (
                "calibration",
                ops.stack([bins, num_bins + bins]),
                ops.stack([weights, weights * correct]),
            )
        ]
        if counting:
            per_bin = ops.segment_sum(weights * confidence, bins, num_segments=num_bins)
            return counts, [("calibration", 2 * num_bins + ops.arange(num_bins), per_bin)]
        return counts, [("calibration", 2 * num_bins + bins, weights * confidence)]

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
        matrix = segments.get("confusion_matrix")
        state = ClassificationState(
            matrix,
            segments.get("score_histogram"),
            segments.get("calibration"),
            stat_scores=segments["stat_scores"] if matrix is None else None,
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
            "confusion_matrix": self.confusion_matrix,
        }


def register_with_keras() -> None:
    """Make :class:`ClassificationMetrics` known to ``keras.models.load_model`` (idempotent)."""
    if keras.saving.get_registered_name(ClassificationMetrics) != REGISTERED_NAME:
        keras.saving.register_keras_serializable(package="mlflow_mcmetrics")(ClassificationMetrics)
