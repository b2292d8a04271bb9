"""Shared test inputs: every task and layout the metric accepts, with scikit-learn's answer.

As torchmetrics' ``tests/unittests/_helpers`` and ``_inputs``: a new score is checked on every
case at once by parametrizing over :data:`CASES` and comparing with :func:`sklearn_reference`,
computed in the test from the same predictions.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
from sklearn import metrics as skm

NUM_CLASSES = 5


def softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(-1, keepdims=True))
    return exp / exp.sum(-1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-logits))


@dataclasses.dataclass(frozen=True)
class Case:
    """One batch of model outputs with its labels, as ``update_state`` receives them."""

    name: str
    task: str
    num_classes: int
    y_true: np.ndarray
    y_pred: np.ndarray
    from_logits: bool = False
    threshold: float = 0.5
    ignore_class: int | None = None
    sample_weight: np.ndarray | None = None

    def metric_kwargs(self) -> dict:
        return {
            "num_classes": self.num_classes,
            "task": self.task,
            "from_logits": self.from_logits,
            "threshold": self.threshold,
            "ignore_class": self.ignore_class,
        }

    def probabilities(self) -> np.ndarray:
        """Flat ``(rows, width)`` probabilities, in float64."""
        scores = self.y_pred.astype(np.float64)
        if self.from_logits:
            scores = softmax(scores) if self.task == "multiclass" else sigmoid(scores)
        return scores.reshape(-1, scores.shape[-1])

    def flat(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(labels, probabilities, weights, kept)`` with one row per sample or timestep.

        ``labels`` are class indices (multilabel: 0/1 rows); ``kept`` marks the rows the
        metric counts (``ignore_class`` and zero weights left out).
        """
        probabilities = self.probabilities()
        rows = probabilities.shape[0]
        if self.task == "multilabel":
            labels = self.y_true.reshape(rows, -1).astype(np.int64)
        elif self.y_true.shape == self.y_pred.shape and self.task == "multiclass":
            labels = self.y_true.reshape(rows, -1).argmax(-1)
        else:
            labels = self.y_true.reshape(rows).astype(np.int64)
        weights = np.ones(rows)
        if self.sample_weight is not None:
            per_row = np.broadcast_to(
                self.sample_weight.reshape(
                    self.sample_weight.shape
                    + (1,) * (self.y_pred.ndim - 1 - self.sample_weight.ndim)
                ),
                self.y_pred.shape[:-1],
            )
            weights = per_row.reshape(rows).astype(np.float64)
        kept = weights > 0
        if self.ignore_class is not None:
            kept &= labels != self.ignore_class
        return labels, probabilities, weights, kept

    def predicted(self, probabilities: np.ndarray) -> np.ndarray:
        if self.task == "multiclass":
            return probabilities.argmax(-1)
        if self.task == "binary":
            return (probabilities[:, 0] > self.threshold).astype(np.int64)
        return (probabilities > self.threshold).astype(np.int64)

    @property
    def scored_labels(self) -> list[int]:
        return [c for c in range(self.num_classes) if c != self.ignore_class]


def ece_reference(y_true, probabilities, weights, num_bins=15):
    """Top-label ECE on raw scores, the textbook way (Guo et al. 2017), with NumPy."""
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    bin_of = np.clip(np.digitize(confidence, edges[1:-1]), 0, num_bins - 1)
    gap = 0.0
    for b in range(num_bins):
        inside = bin_of == b
        if weights[inside].sum() > 0:
            accuracy = np.average(correct[inside], weights=weights[inside])
            mean_confidence = np.average(confidence[inside], weights=weights[inside])
            gap += weights[inside].sum() * abs(accuracy - mean_confidence)
    return gap / weights.sum()


def _roc_auc(positive: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> float:
    """scikit-learn's ROC AUC, NaN where it raises (only one class among the weighted rows)."""
    positive_weight = np.sum(weights * positive)
    if not 0 < positive_weight < np.sum(weights):
        return float("nan")
    return skm.roc_auc_score(positive, scores, sample_weight=weights)


def sklearn_reference(case: Case, zero_division: float = 0.0) -> dict[str, np.ndarray | float]:
    """scikit-learn's answer for ``case``: confusion matrix, per-class precision/recall/F1,
    macro F1, per-class ROC AUC on the raw scores; for multiclass and binary also balanced
    accuracy, MCC, Cohen's kappa and the top-label ECE (:func:`ece_reference`)."""
    labels, probabilities, weights, kept = case.flat()
    predicted = case.predicted(probabilities)
    y, p, w = labels[kept], predicted[kept], weights[kept]
    scores = probabilities[kept]
    if case.task == "binary":
        scores = np.concatenate([1 - scores, scores], axis=1)
    positives = (
        y.astype(bool) if case.task == "multilabel" else y[:, None] == np.arange(case.num_classes)
    )
    extra = {
        "roc_auc": np.array(
            [_roc_auc(positives[:, c], scores[:, c], w) for c in case.scored_labels]
        )
    }
    if case.task != "multilabel":
        with warnings.catch_warnings():  # "y_pred contains classes not in y_true": expected
            warnings.simplefilter("ignore", UserWarning)
            balanced_accuracy = skm.balanced_accuracy_score(y, p, sample_weight=w)
        extra.update(
            balanced_accuracy=balanced_accuracy,
            mcc=skm.matthews_corrcoef(y, p, sample_weight=w),
            cohen_kappa=skm.cohen_kappa_score(y, p, sample_weight=w),
            ece=ece_reference(y, scores, w),
        )
    if case.task == "multilabel":
        confusion = skm.multilabel_confusion_matrix(y, p, sample_weight=w)
        scored = None
    else:
        confusion = skm.confusion_matrix(y, p, labels=range(case.num_classes), sample_weight=w)
        scored = case.scored_labels
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y, p, labels=scored, sample_weight=w, zero_division=zero_division
    )
    f1_macro = skm.f1_score(
        y, p, labels=scored, average="macro", sample_weight=w, zero_division=zero_division
    )
    return {
        "confusion_matrix": confusion,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "support": support,
        "f1_macro": f1_macro,
        **extra,
    }


def _cases(seed: int = 7, rows: int = 240) -> list[Case]:
    rng = np.random.default_rng(seed)
    c = NUM_CLASSES
    logits = (rng.normal(size=(rows, c)) * 2).astype("float32")
    probabilities = softmax(logits.astype(np.float64)).astype("float32")
    labels = rng.integers(0, c, rows)
    weights = rng.integers(0, 4, rows).astype("float32")
    binary_logits = rng.normal(size=(rows, 1)).astype("float32")
    binary_labels = (rng.random(rows) < 0.3).astype("float32")[:, None]
    multilabel = (rng.random((rows, c)) < 0.25).astype("float32")
    sequence_labels = rng.integers(0, c, (12, 20))
    sequence_scores = softmax(rng.normal(size=(12, 20, c))).astype("float32")
    return [
        Case("multiclass-sparse", "multiclass", c, labels, probabilities),
        Case("multiclass-column", "multiclass", c, labels[:, None], probabilities),
        Case(
            "multiclass-one-hot", "multiclass", c, np.eye(c, dtype="float32")[labels], probabilities
        ),
        Case("multiclass-logits", "multiclass", c, labels, logits, from_logits=True),
        Case("multiclass-weighted", "multiclass", c, labels, probabilities, sample_weight=weights),
        Case("multiclass-ignore", "multiclass", c, labels, probabilities, ignore_class=2),
        Case("binary", "binary", 2, binary_labels, sigmoid(binary_logits), threshold=0.4),
        Case("binary-logits", "binary", 2, binary_labels, binary_logits, from_logits=True),
        Case("multilabel", "multilabel", c, multilabel, sigmoid(logits)),
        Case(
            "multilabel-logits-weighted",
            "multilabel",
            c,
            multilabel,
            logits,
            from_logits=True,
            sample_weight=weights,
        ),
        Case(
            "sequence-ignore-weighted",
            "multiclass",
            c,
            sequence_labels,
            sequence_scores,
            ignore_class=0,
            sample_weight=rng.integers(0, 2, 12).astype("float32"),
        ),
    ]


CASES = _cases()
CASE_IDS = [case.name for case in CASES]


def assert_scores_match_reference(scores: dict, expected: dict, atol: float) -> None:
    """The scores beyond precision/recall/F1 against :func:`sklearn_reference`: agreement
    scores and ECE to ``atol``, scikit-learn's ROC AUC on raw scores inside the tie interval."""
    for name in ("balanced_accuracy", "mcc", "cohen_kappa", "ece"):
        assert (name in scores) == (name in expected), name
        if name in expected:
            np.testing.assert_allclose(scores[name], expected[name], atol=atol, err_msg=name)
    exact = expected["roc_auc"]
    np.testing.assert_array_equal(np.isnan(scores["roc_auc"]), np.isnan(exact))
    defined = ~np.isnan(exact)
    assert np.all(scores["roc_auc_lower"][defined] - 1e-9 <= exact[defined])
    assert np.all(exact[defined] <= scores["roc_auc_upper"][defined] + 1e-9)
