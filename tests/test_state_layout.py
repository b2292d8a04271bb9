"""The state's layout chosen from the number of classes (issue 29, "memory that scales"): the
default state fits in 256 MiB per metric up to far beyond 10,000 classes, and a state without a
dense confusion matrix scores precision, recall, F1, balanced accuracy, MCC and Cohen's kappa
exactly as scikit-learn does, on random predictions (hypothesis), from the functions and from
the Keras metric."""

from __future__ import annotations

import dataclasses
import pickle
import warnings

import numpy as np
import pytest
from _inputs import CASES, assert_scores_match_reference, sklearn_reference
from hypothesis import example, given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from mlflow_mcmetrics import ClassificationMetrics
from mlflow_mcmetrics import functional as F

ZERO_DIVISIONS = [0.0, 1.0, np.nan]
AGREEMENT = ("balanced_accuracy", "mcc", "cohen_kappa")


@st.composite
def predictions(draw, max_classes=7, max_samples=50):
    """(num_classes, y_true, y_pred, weights): few distinct labels (absent classes are
    common), predictions anywhere, weights None, integers 0-3 or fractions (not all 0)."""
    num_classes = draw(st.integers(2, max_classes))
    num_samples = draw(st.integers(1, max_samples))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    present = rng.choice(num_classes, size=draw(st.integers(1, num_classes)), replace=False)
    y_true = rng.choice(present, num_samples)
    y_pred = rng.integers(0, num_classes, num_samples)
    kind = draw(st.sampled_from(["none", "integer", "fraction"]))
    weights = {
        "none": None,
        "integer": rng.integers(0, 4, num_samples).astype(float),
        "fraction": rng.random(num_samples),
    }[kind]
    if weights is not None:
        weights[0] = max(weights[0], 1.0)  # scikit-learn refuses all-zero weights
    return num_classes, y_true, y_pred, weights


def scores_of(y_pred, num_classes):
    """Probabilities whose argmax is ``y_pred``."""
    scores = np.full((len(y_pred), num_classes), 0.5 / num_classes)
    scores[np.arange(len(y_pred)), y_pred] = 0.6
    return scores


def sklearn_scores(y_true, y_pred, labels, weights, zero_division):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = {
            average: skm.precision_recall_fscore_support(
                y_true,
                y_pred,
                labels=labels,
                average=average,
                sample_weight=weights,
                zero_division=zero_division,
            )
            for average in (None, "micro", "macro", "weighted")
        }
        expected.update(
            balanced_accuracy=skm.balanced_accuracy_score(y_true, y_pred, sample_weight=weights),
            mcc=skm.matthews_corrcoef(y_true, y_pred, sample_weight=weights),
            cohen_kappa=skm.cohen_kappa_score(y_true, y_pred, sample_weight=weights),
        )
    return expected


def assert_close(ours, theirs, name):
    np.testing.assert_allclose(
        np.asarray(ours, float), np.asarray(theirs, float), rtol=1e-12, atol=1e-12, err_msg=name
    )


@settings(max_examples=200, deadline=None)
@given(data=predictions(), zero_division=st.sampled_from(ZERO_DIVISIONS), drop_first=st.booleans())
# Found by hypothesis: one class on both sides, weighted: kappa is undefined (NaN), not 1.
@example(
    data=(2, np.array([0, 0]), np.array([0, 0]), np.array([1.0, 0.65249675])),
    zero_division=0.0,
    drop_first=False,
)
def test_scores_without_a_confusion_matrix_equal_sklearn(data, zero_division, drop_first):
    num_classes, y_true, y_pred, weights = data
    labels = list(range(1 if drop_first else 0, num_classes))
    dense = F.state_from_predictions(y_true, scores_of(y_pred, num_classes), sample_weight=weights)
    counts_only = F.ClassificationState(stat_scores=dense.stat_scores)
    assert counts_only.confusion_matrix is None
    assert counts_only.num_classes == num_classes
    assert counts_only.num_samples == pytest.approx(dense.num_samples, rel=1e-12)
    expected = sklearn_scores(y_true, y_pred, labels, weights, zero_division)
    for state in (dense, counts_only):
        scores = F.classification_scores(state, labels=labels, zero_division=zero_division)
        for name, value in zip(
            ("precision", "recall", "f1", "support"), expected[None], strict=True
        ):
            assert_close(scores[name], value, name)
        for average in ("micro", "macro", "weighted"):
            for name, value in zip(
                ("precision", "recall", "f1"), expected[average][:3], strict=True
            ):
                key = f"{name}_{average}"
                assert_close(scores[key], value, key)
        for name in AGREEMENT:
            assert_close(scores[name], expected[name], name)
    # One definition from either layout: the same numbers to the last bit.
    with_matrix = F.classification_scores(dense, labels=labels, zero_division=zero_division)
    without = F.classification_scores(counts_only, labels=labels, zero_division=zero_division)
    for name in ("precision", "recall", "f1", "f1_macro", "f1_micro", *AGREEMENT):
        np.testing.assert_array_equal(with_matrix[name], without[name], err_msg=name)


def counts_only_state(num_classes=5, num_samples=300, bins=16):
    rng = np.random.default_rng(num_classes)
    y_true = rng.integers(0, num_classes, num_samples)
    probabilities = rng.dirichlet(np.ones(num_classes), num_samples)
    dense = F.state_from_predictions(y_true, probabilities, num_bins=bins)
    return dense, dataclasses.replace(dense, confusion_matrix=None)


def test_a_state_without_a_matrix_pickles_merges_and_keeps_its_histograms():
    dense, counts_only = counts_only_state()
    back = pickle.loads(pickle.dumps(counts_only))
    assert back.confusion_matrix is None
    np.testing.assert_array_equal(back.stat_scores, counts_only.stat_scores)
    np.testing.assert_array_equal(back.score_histogram, counts_only.score_histogram)
    merged = F.merge_states(counts_only, dense)
    assert merged.confusion_matrix is None  # only where every part has one
    np.testing.assert_array_equal(merged.stat_scores, 2 * dense.stat_scores)
    assert F.merge_states(dense, dense).confusion_matrix is not None
    scores = F.classification_scores(counts_only)
    np.testing.assert_array_equal(scores["ap"], F.classification_scores(dense)["ap"])


def test_a_matrix_always_gives_its_own_stat_scores():
    """A replaced matrix cannot leave stale per-class counts behind."""
    dense, _ = counts_only_state()
    other = np.eye(dense.num_classes) * 7
    replaced = dataclasses.replace(dense, confusion_matrix=other)
    np.testing.assert_array_equal(replaced.stat_scores, np.stack([np.full(5, 7.0)] * 3))
    with pytest.raises(ValueError, match="confusion_matrix or stat_scores"):
        F.ClassificationState()
    with pytest.raises(ValueError, match=r"\(3, C\)"):
        F.ClassificationState(stat_scores=np.zeros((2, 4)))


# -- the layout rule ----------------------------------------------------------------------------
@pytest.mark.parametrize("task", ["multiclass", "multilabel"])
@pytest.mark.parametrize(
    "num_classes", [2, 10, 100, 1000, 2000, 2997, 2998, 4095, 4096, 4097, 8191, 10_000, 65_536]
)
def test_default_state_fits_the_budget_with_the_most_bins_that_fit(task, num_classes):
    dense = F.dense_confusion_matrix_by_default(num_classes, task)
    assert dense == (task == "multilabel" or num_classes <= 4096)
    bins = F.default_pr_thresholds(num_classes, task)
    assert bins & (bins - 1) == 0 and 0 < bins <= F.DEFAULT_PR_THRESHOLDS

    def size(t):
        return F.state_counts(num_classes, task, t, confusion_matrix=dense) * F.COUNT_BYTES

    assert size(bins) <= F.STATE_BUDGET_BYTES
    assert bins == F.DEFAULT_PR_THRESHOLDS or size(2 * bins) > F.STATE_BUDGET_BYTES


def test_the_metric_state_is_what_the_rule_counts():
    for kwargs in (
        {"num_classes": 10},
        {"num_classes": 7, "pr_thresholds": 32, "confusion_matrix": False},
        {"num_classes": 6, "task": "multilabel", "pr_thresholds": 8},
        {"num_classes": 4097, "pr_thresholds": 0},
    ):
        metric = ClassificationMetrics(**kwargs)
        counts = F.state_counts(
            metric.num_classes,
            metric.task,
            metric.pr_thresholds,
            confusion_matrix=metric.confusion_matrix,
        )
        # Two float32 variables of the counts, and the sweep's int32 cursor.
        assert sum(v.numpy().nbytes for v in metric.variables) == counts * F.COUNT_BYTES + 4


def test_ten_thousand_classes_by_default_fit_in_256_mib_and_count_exactly():
    metric = ClassificationMetrics(10_000)
    assert not metric.confusion_matrix and metric.pr_thresholds == 1024
    state_bytes = sum(v.numpy().nbytes for v in metric.variables)
    assert state_bytes <= 256 * 2**20  # 164 MB; was a dense matrix and 4096 bins, 1455 MB
    rng = np.random.default_rng(10)
    y_true = rng.integers(0, 10_000, 64)
    logits = rng.normal(size=(64, 10_000)).astype("float32")
    logits[np.arange(32), y_true[:32]] += 20.0  # half of them right
    metric.update_state(y_true, logits)
    state, _ = metric.state()
    y_pred = logits.argmax(1)
    assert state.confusion_matrix is None and state.score_histogram.shape == (2, 10_000, 1024)
    scores = F.classification_scores(state)
    expected = sklearn_scores(y_true, y_pred, list(range(10_000)), None, 0.0)
    for name, value in zip(("precision", "recall", "f1"), expected[None][:3], strict=True):
        assert_close(scores[name], value, name)
    for name in AGREEMENT:
        assert_close(scores[name], expected[name], name)


def test_explicit_layouts_are_honoured_and_round_trip():
    metric = ClassificationMetrics(5000, pr_thresholds=0, confusion_matrix=False)
    assert metric.pr_thresholds == 0 and not metric.confusion_matrix
    assert ClassificationMetrics(3, pr_thresholds=16).pr_thresholds == 16
    auto = ClassificationMetrics(3)
    assert auto.pr_thresholds == 4096 and auto.confusion_matrix
    config = auto.get_config()
    assert config["pr_thresholds"] == 4096 and config["confusion_matrix"] is True
    assert ClassificationMetrics.from_config(config).get_config() == config
    # A multilabel state's (C, 2, 2) is its per-class counts: always kept.
    assert ClassificationMetrics(4, task="multilabel", confusion_matrix=False).confusion_matrix
    for bad in ({"confusion_matrix": "yes"}, {"pr_thresholds": "many"}, {"pr_thresholds": -1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ClassificationMetrics(3, **bad)


@pytest.mark.parametrize("case", [c for c in CASES if c.task != "multilabel"], ids=lambda c: c.name)
def test_the_metric_without_a_matrix_matches_scikit_learn(case):
    """Every multiclass and binary layout, weighted or not, kept as per-class counts only."""
    with_matrix = ClassificationMetrics(**case.metric_kwargs(), pr_thresholds=64)
    without = ClassificationMetrics(
        **case.metric_kwargs(), pr_thresholds=64, confusion_matrix=False
    )
    for metric in (with_matrix, without):
        metric.update_state(case.y_true, case.y_pred, sample_weight=case.sample_weight)
    state, _ = without.state()
    dense_state, _ = with_matrix.state()
    assert state.confusion_matrix is None
    np.testing.assert_array_equal(state.stat_scores, dense_state.stat_scores)
    np.testing.assert_array_equal(state.score_histogram, dense_state.score_histogram)
    expected = sklearn_reference(case)
    scores = F.classification_scores(state, labels=without.scored_labels, task=without.task)
    for name in ("precision", "recall", "f1", "support"):
        np.testing.assert_allclose(scores[name], expected[name], atol=1e-12, err_msg=name)
    assert_scores_match_reference(scores, expected, atol=1e-6)
    assert float(without.result()) == pytest.approx(expected["f1_macro"], abs=1e-6)
