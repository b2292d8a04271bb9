"""Losses for long-tailed classification, as serializable ``keras.losses.Loss`` classes.

All multi-class losses take logits and accept sparse (``(N,)``/``(N, 1)``) or one-hot labels;
class priors come from the training labels' per-class counts.

=====================  ==========================================================================
name                   loss
=====================  ==========================================================================
``cce``                cross-entropy
``weighted_cce``       cross-entropy weighted by inverse class frequency
``focal``              Keras' ``CategoricalFocalCrossentropy`` (Lin et al. 2017; down-weights easy
                       examples but does not rebalance classes by itself)
``class_balanced``     cross-entropy weighted by the inverse effective number of samples
                       ``(1 - beta) / (1 - beta ** n_c)`` (Cui et al. 2019)
``logit_adjusted``     cross-entropy of ``logits + tau * log(prior)`` (Menon et al. 2021)
``balanced_softmax``   ``logit_adjusted`` with ``tau = 1``, which is Ren et al. 2020's Balanced
                       Softmax
``ldam``               label-distribution-aware margins ``C / n_c ** (1/4)`` subtracted from the
                       true-class logit (Cao et al. 2019), optionally with deferred re-weighting
``weighted_bce``       multilabel binary cross-entropy with per-label ``pos_weight = n_neg / n_pos``
=====================  ==========================================================================
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras import ops

__all__ = [
    "LOSSES",
    "ClassBalancedCrossentropy",
    "DeferredReweighting",
    "LDAMLoss",
    "LogitAdjustedCrossentropy",
    "SparseOrOneHotFocalCrossentropy",
    "WeightedBinaryCrossentropy",
    "WeightedCategoricalCrossentropy",
    "class_balanced_weights",
    "get",
    "inverse_frequency_weights",
]

LOSSES = (
    "cce",
    "weighted_cce",
    "focal",
    "class_balanced",
    "logit_adjusted",
    "balanced_softmax",
    "ldam",
    "weighted_bce",
)


def _counts(class_counts: Sequence[float]) -> np.ndarray:
    counts = np.asarray(class_counts, dtype=np.float64)
    if counts.ndim != 1 or np.any(counts <= 0):
        raise ValueError(f"class_counts must be positive per-class counts, got {class_counts!r}.")
    return counts


def inverse_frequency_weights(class_counts: Sequence[float]) -> np.ndarray:
    """``N / (C * n_c)``: 1 for every class of a balanced dataset."""
    counts = _counts(class_counts)
    return counts.sum() / (len(counts) * counts)


def class_balanced_weights(class_counts: Sequence[float], beta: float) -> np.ndarray:
    """Cui et al. 2019: ``(1 - beta) / (1 - beta ** n_c)``, normalised to sum to ``C``."""
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta}.")
    counts = _counts(class_counts)
    weights = (1.0 - beta) / (1.0 - np.power(beta, counts))
    return weights * len(counts) / weights.sum()


def _one_hot(y_true, num_classes: int):
    """Sparse (``(N,)`` or ``(N, 1)``) or one-hot labels as float one-hot."""
    if len(y_true.shape) >= 1 and y_true.shape[-1] == num_classes and num_classes > 1:
        return ops.cast(y_true, "float32")
    labels = ops.cast(ops.reshape(y_true, (-1,)), "int32")
    return ops.one_hot(labels, num_classes, dtype="float32")


def _labels_and_logits(y_true, y_pred):
    logits = ops.cast(y_pred, "float32")
    return _one_hot(y_true, logits.shape[-1]), logits


def _cross_entropy(labels, logits):
    return -ops.sum(labels * ops.log_softmax(logits, axis=-1), axis=-1)


@keras.saving.register_keras_serializable(package="mlflow_mcmetrics")
class WeightedCategoricalCrossentropy(keras.losses.Loss):
    """``-w_y * log softmax(z)_y`` (``class_weights=None``: plain cross-entropy)."""

    def __init__(
        self,
        class_weights: Sequence[float] | None = None,
        name="weighted_categorical_crossentropy",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]

    def call(self, y_true, y_pred):
        labels, logits = _labels_and_logits(y_true, y_pred)
        loss = _cross_entropy(labels, logits)
        if self.class_weights is None:
            return loss
        return loss * ops.sum(
            labels * ops.convert_to_tensor(self.class_weights, "float32"), axis=-1
        )

    def get_config(self):
        return {**super().get_config(), "class_weights": self.class_weights}


@keras.saving.register_keras_serializable(package="mlflow_mcmetrics")
class ClassBalancedCrossentropy(WeightedCategoricalCrossentropy):
    """Cross-entropy weighted by the inverse effective number of samples (Cui et al. 2019).

    The default ``beta=0.99`` keeps the weights distinct from inverse frequency on small
    datasets: with ``beta=0.999`` and under ~100 samples per class, ``1 - beta ** n`` is
    nearly ``n * (1 - beta)`` and the weights *are* inverse frequency.
    """

    def __init__(
        self,
        class_counts: Sequence[float],
        beta: float = 0.99,
        name="class_balanced_crossentropy",
        **kwargs,
    ):
        kwargs.pop("class_weights", None)
        super().__init__(
            class_weights=class_balanced_weights(class_counts, beta), name=name, **kwargs
        )
        self.class_counts = [float(c) for c in class_counts]
        self.beta = float(beta)

    def get_config(self):
        config = super().get_config()
        config.pop("class_weights")
        return {**config, "class_counts": self.class_counts, "beta": self.beta}


class _ClassCountsLoss(keras.losses.Loss):
    """A loss built from the training labels' per-class counts, which its config keeps."""

    def __init__(self, class_counts: Sequence[float], **kwargs):
        super().__init__(**kwargs)
        self.counts = _counts(class_counts)
        self.class_counts = self.counts.tolist()

    def get_config(self):
        return {**super().get_config(), "class_counts": self.class_counts}


@keras.saving.register_keras_serializable(package="mlflow_mcmetrics")
class LogitAdjustedCrossentropy(_ClassCountsLoss):
    """Cross-entropy of ``logits + tau * log(prior)`` (Menon et al. 2021).

    At ``tau = 1`` this is Balanced Softmax (Ren et al. 2020). The model's own logits stay
    unadjusted, so its predictions are the balanced (prior-free) ones.
    """

    def __init__(
        self,
        class_counts: Sequence[float],
        tau: float = 1.0,
        name="logit_adjusted_crossentropy",
        **kwargs,
    ):
        super().__init__(class_counts, name=name, **kwargs)
        self.tau = float(tau)
        self._adjustment = (self.tau * np.log(self.counts / self.counts.sum())).astype("float32")

    def call(self, y_true, y_pred):
        labels, logits = _labels_and_logits(y_true, y_pred)
        return _cross_entropy(labels, logits + ops.convert_to_tensor(self._adjustment))

    def get_config(self):
        return {**super().get_config(), "tau": self.tau}


@keras.saving.register_keras_serializable(package="mlflow_mcmetrics")
class LDAMLoss(_ClassCountsLoss):
    """Label-distribution-aware margin loss (Cao et al. 2019).

    The true-class logit is lowered by ``margin_c = m / n_c ** (1/4)``, scaled so that the
    rarest class gets ``max_margin``; the result, times ``scale``, goes through cross-entropy.
    Cao et al. use ``scale=30`` with cosine (normalised) logits; for a plain ``Dense`` output
    ``scale=1`` is the sound choice. With ``drw_start_epoch`` set and the
    :class:`DeferredReweighting` callback in ``fit``, class-balanced weights
    (``beta=0.9999``) switch on at that epoch (deferred re-weighting).
    """

    def __init__(
        self,
        class_counts: Sequence[float],
        max_margin: float = 0.5,
        scale: float = 1.0,
        drw_start_epoch: int | None = None,
        drw_beta: float = 0.9999,
        name="ldam",
        **kwargs,
    ):
        super().__init__(class_counts, name=name, **kwargs)
        self.max_margin = float(max_margin)
        self.scale = float(scale)
        self.drw_start_epoch = drw_start_epoch
        self.drw_beta = float(drw_beta)
        margins = 1.0 / np.power(self.counts, 0.25)
        self._margins = (margins * self.max_margin / margins.max()).astype("float32")
        self._drw_weights = class_balanced_weights(self.counts, self.drw_beta).astype("float32")
        # 0 before deferred re-weighting starts, 1 after; a variable, so the compiled step sees it.
        self.reweighting = keras.Variable(0.0, trainable=False, name="ldam_reweighting")

    def call(self, y_true, y_pred):
        labels, logits = _labels_and_logits(y_true, y_pred)
        loss = _cross_entropy(
            labels, self.scale * (logits - labels * ops.convert_to_tensor(self._margins))
        )
        weight = ops.sum(labels * ops.convert_to_tensor(self._drw_weights), axis=-1)
        return loss * (1.0 + self.reweighting * (weight - 1.0))

    def get_config(self):
        return {
            **super().get_config(),
            "max_margin": self.max_margin,
            "scale": self.scale,
            "drw_start_epoch": self.drw_start_epoch,
            "drw_beta": self.drw_beta,
        }


class DeferredReweighting(keras.callbacks.Callback):
    """Turns on an :class:`LDAMLoss`'s class-balanced weights at its ``drw_start_epoch``."""

    def __init__(self, loss: LDAMLoss):
        super().__init__()
        if loss.drw_start_epoch is None:
            raise ValueError("DeferredReweighting needs an LDAMLoss with drw_start_epoch set.")
        self.loss = loss

    def on_epoch_begin(self, epoch, logs=None):
        self.loss.reweighting.assign(1.0 if epoch >= self.loss.drw_start_epoch else 0.0)


@keras.saving.register_keras_serializable(package="mlflow_mcmetrics")
class SparseOrOneHotFocalCrossentropy(keras.losses.CategoricalFocalCrossentropy):
    """Keras' ``CategoricalFocalCrossentropy`` that also accepts sparse labels."""

    def call(self, y_true, y_pred):
        return super().call(_one_hot(y_true, y_pred.shape[-1]), y_pred)


@keras.saving.register_keras_serializable(package="mlflow_mcmetrics")
class WeightedBinaryCrossentropy(keras.losses.Loss):
    """Multilabel ``-(p_l * y log sigmoid(z) + (1 - y) log(1 - sigmoid(z)))`` averaged over
    labels, with per-label ``pos_weight`` (e.g. ``n_negative / n_positive``) on logits, as
    ``tf.nn.weighted_cross_entropy_with_logits``."""

    def __init__(self, pos_weight: Sequence[float], name="weighted_binary_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.pos_weight = [float(w) for w in pos_weight]

    def call(self, y_true, y_pred):
        labels = ops.cast(y_true, "float32")
        logits = ops.cast(y_pred, "float32")
        pos_weight = ops.convert_to_tensor(self.pos_weight, "float32")
        # softplus(-z) = -log sigmoid(z), softplus(z) = -log(1 - sigmoid(z)): stable for any z.
        loss = pos_weight * labels * ops.softplus(-logits) + (1.0 - labels) * ops.softplus(logits)
        return ops.mean(loss, axis=-1)

    def get_config(self):
        return {**super().get_config(), "pos_weight": self.pos_weight}


def get(name: str, class_counts: Sequence[float], **kwargs) -> keras.losses.Loss:
    """The loss ``name`` (see :data:`LOSSES`) for logits, with priors from ``class_counts``.

    For ``weighted_bce``, ``class_counts`` are the per-label positive counts and
    ``num_samples=`` must be given (``pos_weight = (num_samples - n_l) / n_l``).
    """
    if name == "cce":
        return WeightedCategoricalCrossentropy(**kwargs)
    if name == "weighted_cce":
        return WeightedCategoricalCrossentropy(
            inverse_frequency_weights(class_counts).tolist(), **kwargs
        )
    if name == "focal":
        return SparseOrOneHotFocalCrossentropy(from_logits=True, **kwargs)
    if name == "class_balanced":
        return ClassBalancedCrossentropy(class_counts, **kwargs)
    if name == "logit_adjusted":
        return LogitAdjustedCrossentropy(class_counts, **kwargs)
    if name == "balanced_softmax":
        return LogitAdjustedCrossentropy(class_counts, tau=1.0, name="balanced_softmax", **kwargs)
    if name == "ldam":
        return LDAMLoss(class_counts, **kwargs)
    if name == "weighted_bce":
        num_samples = kwargs.pop("num_samples")
        positives = _counts(class_counts)
        return WeightedBinaryCrossentropy(
            ((num_samples - positives) / positives).tolist(), **kwargs
        )
    raise ValueError(f"Unknown loss {name!r}; choose one of {', '.join(LOSSES)}.")
