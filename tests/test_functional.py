"""mlflow_mcmetrics.functional against scikit-learn, on random inputs (hypothesis)."""

from __future__ import annotations

import pickle
import sys
import warnings

import numpy as np
import pytest
from _inputs import (
    CASE_IDS,
    CASES,
    assert_scores_match_reference,
    ece_reference,
    sklearn_reference,
)
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from mlflow_mcmetrics import functional as F

ZERO_DIVISIONS = [0.0, 1.0, np.nan]


@st.composite
def multiclass_data(draw, max_classes=6, max_samples=40):
    num_classes = draw(st.integers(2, max_classes))
    num_samples = draw(st.integers(1, max_samples))  # scikit-learn refuses empty input
    # Few distinct labels, so that absent classes are common.
    present = draw(st.lists(st.integers(0, num_classes - 1), min_size=1, max_size=num_classes))
    y_true = np.array(
        draw(st.lists(st.sampled_from(present), min_size=num_samples, max_size=num_samples)),
        dtype=int,
    )
    y_pred = np.array(
        draw(st.lists(st.integers(0, num_classes - 1), min_size=num_samples, max_size=num_samples)),
        dtype=int,
    )
    return num_classes, y_true, y_pred


def one_hot_scores(y_pred, num_classes):
    """Probabilities whose argmax is y_pred."""
    scores = np.full((len(y_pred), num_classes), 0.5 / num_classes)
    scores[np.arange(len(y_pred)), y_pred] = 0.6
    return scores


def sklearn_prfs(y_true, y_pred, labels, average, zero_division):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return skm.precision_recall_fscore_support(
            y_true, y_pred, labels=labels, average=average, zero_division=zero_division
        )


def assert_same(ours, theirs):
    np.testing.assert_allclose(
        np.asarray(ours, float), np.asarray(theirs, float), rtol=1e-12, atol=1e-12
    )


@settings(max_examples=150, deadline=None)
@given(
    data=multiclass_data(), zero_division=st.sampled_from(ZERO_DIVISIONS), drop_first=st.booleans()
)
def test_multiclass_scores_equal_sklearn(data, zero_division, drop_first):
    num_classes, y_true, y_pred = data
    labels = list(range(1 if drop_first else 0, num_classes))
    state = F.state_from_predictions(y_true, one_hot_scores(y_pred, num_classes))
    assert_same(
        state.confusion_matrix,
        skm.confusion_matrix(y_true, y_pred, labels=list(range(num_classes))),
    )
    for average in (None, "micro", "macro", "weighted"):
        ours = F.precision_recall_f1_from_confusion_matrix(
            state.confusion_matrix, labels=labels, average=average, zero_division=zero_division
        )
        theirs = sklearn_prfs(y_true, y_pred, labels, average, zero_division)
        for mine, reference in zip(ours[:3], theirs[:3], strict=True):
            assert_same(mine, reference)
        if average is None:
            assert_same(ours[3], theirs[3])


@settings(max_examples=100, deadline=None)
@given(
    num_labels=st.integers(2, 5),  # one column is "binary" to scikit-learn
    num_samples=st.integers(1, 30),
    zero_division=st.sampled_from(ZERO_DIVISIONS),
    seed=st.integers(0, 2**16),
)
def test_multilabel_scores_equal_sklearn(num_labels, num_samples, zero_division, seed):
    rng = np.random.default_rng(seed)
    y_true = (rng.random((num_samples, num_labels)) < 0.3).astype(int)
    scores = rng.random((num_samples, num_labels))
    y_pred = (scores > 0.5).astype(int)
    state = F.state_from_predictions(y_true, scores, task="multilabel")
    assert_same(state.confusion_matrix, skm.multilabel_confusion_matrix(y_true, y_pred))
    for average in (None, "micro", "macro", "weighted"):
        ours = F.precision_recall_f1_from_confusion_matrix(
            state.confusion_matrix, average=average, zero_division=zero_division
        )
        theirs = sklearn_prfs(y_true, y_pred, None, average, zero_division)
        for mine, reference in zip(ours[:3], theirs[:3], strict=True):
            assert_same(mine, reference)


@settings(max_examples=100, deadline=None)
@given(
    num_samples=st.integers(1, 60),
    seed=st.integers(0, 2**16),
    threshold=st.sampled_from([0.3, 0.5, 0.7]),
)
def test_binary_reports_both_classes_like_sklearn(num_samples, seed, threshold):
    rng = np.random.default_rng(seed)
    y_true = (rng.random(num_samples) < 0.3).astype(int)
    probability = rng.random(num_samples)
    state = F.state_from_predictions(y_true, probability, task="binary", threshold=threshold)
    y_pred = (probability > threshold).astype(int)
    assert_same(state.confusion_matrix, skm.confusion_matrix(y_true, y_pred, labels=[0, 1]))
    ours = F.precision_recall_f1_from_confusion_matrix(state.confusion_matrix)
    theirs = sklearn_prfs(y_true, y_pred, [0, 1], None, 0.0)
    for mine, reference in zip(ours, theirs, strict=True):
        assert_same(mine, reference)


@settings(max_examples=100, deadline=None)
@given(
    num_classes=st.integers(2, 5),
    num_samples=st.integers(1, 80),
    num_bins=st.sampled_from([1, 3, 10, 100]),
    seed=st.integers(0, 2**16),
)
def test_binned_average_precision(num_classes, num_samples, num_bins, seed):
    """On scores that sit on bin centres the binned AP *is* scikit-learn's (the same ties);
    on raw scores, scikit-learn's AP lies inside the tie interval."""
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, num_classes, num_samples)
    raw = rng.dirichlet(np.ones(num_classes) * 0.5, num_samples)
    positives = y_true[:, None] == np.arange(num_classes)

    centred = (F.score_bins(raw, num_bins) + 0.5) / num_bins
    ap, _, _ = F.average_precision_from_histogram(
        F.state_from_predictions(y_true, centred, num_bins=num_bins).score_histogram
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = [
            skm.average_precision_score(positives[:, c], centred[:, c])
            if positives[:, c].any()
            else 0.0
            for c in range(num_classes)
        ]
        exact = [
            skm.average_precision_score(positives[:, c], raw[:, c])
            if positives[:, c].any()
            else 0.0
            for c in range(num_classes)
        ]
    np.testing.assert_allclose(ap, expected, atol=1e-12)

    _, lower, upper = F.average_precision_from_histogram(
        F.state_from_predictions(y_true, raw, num_bins=num_bins).score_histogram
    )
    assert np.all(lower - 1e-9 <= exact) and np.all(np.asarray(exact) <= upper + 1e-9)
    assert np.all(lower <= upper + 1e-12)


def test_tie_interval_closes_with_fine_bins():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 3, 500)
    scores = rng.dirichlet(np.ones(3), 500)
    coarse = F.average_precision_from_histogram(
        F.state_from_predictions(y_true, scores, num_bins=10).score_histogram
    )
    fine = F.average_precision_from_histogram(
        F.state_from_predictions(y_true, scores, num_bins=100_000).score_histogram
    )
    exact = [skm.average_precision_score(y_true == c, scores[:, c]) for c in range(3)]
    assert np.all(fine[2] - fine[1] < 1e-3)
    assert np.all(coarse[2] - coarse[1] > fine[2] - fine[1])
    np.testing.assert_allclose(fine[0], exact, atol=1e-3)


@settings(max_examples=60, deadline=None)
@given(
    num_samples=st.integers(1, 60), num_bins=st.sampled_from([4, 50]), seed=st.integers(0, 2**16)
)
def test_precision_recall_curve_matches_sklearn_points(num_samples, num_bins, seed):
    """Every point of scikit-learn's curve on bin-centred scores is on ours."""
    rng = np.random.default_rng(seed)
    y_true = (rng.random(num_samples) < 0.4).astype(int)
    scores = (F.score_bins(rng.random(num_samples), num_bins) + 0.5) / num_bins
    state = F.state_from_predictions(y_true, scores, task="binary", num_bins=num_bins)
    precision, recall, thresholds = F.precision_recall_curve_from_histogram(state.score_histogram)
    if not y_true.any():
        assert np.all(recall[1] == 0)
        return
    sk_precision, sk_recall, sk_thresholds = skm.precision_recall_curve(y_true, scores)
    for p, r, t in zip(sk_precision[:-1], sk_recall[:-1], sk_thresholds, strict=True):
        b = int(t * num_bins)
        assert thresholds[b] == pytest.approx(t - 0.5 / num_bins)
        assert precision[1, b] == pytest.approx(p) and recall[1, b] == pytest.approx(r)


@settings(max_examples=60, deadline=None)
@given(
    num_classes=st.integers(1, 4),
    num_bins=st.sampled_from([1, 3, 40]),
    weighted=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_curve_points_are_the_dense_curves_where_they_change(num_classes, num_bins, weighted, seed):
    """The sparse points equal the dense curves at exactly the bins where those change."""
    rng = np.random.default_rng(seed)
    histogram = rng.integers(0, 3, (2, num_classes, num_bins)) * (
        rng.random((2, num_classes, num_bins)) < 0.3
    )
    if weighted:
        histogram = histogram * rng.uniform(0.1, 2.0, histogram.shape)
    precision, recall, thresholds = F.precision_recall_curve_from_histogram(histogram)
    fpr, tpr, _ = F.roc_curve_from_histogram(histogram)
    pr_points = F.precision_recall_points_from_histogram(histogram)
    roc_points = F.roc_points_from_histogram(histogram)
    assert len(pr_points) == len(roc_points) == num_classes
    for c in range(num_classes):
        keep = np.flatnonzero(recall[c, :-1] != recall[c, 1:])
        expected = (np.append(precision[c, keep], 1.0), np.append(recall[c, keep], 0.0))
        np.testing.assert_array_equal(pr_points[c][2], thresholds[keep])
        np.testing.assert_allclose(pr_points[c][:2], expected, rtol=1e-12)
        keep = np.flatnonzero((fpr[c, :-1] != fpr[c, 1:]) | (tpr[c, :-1] != tpr[c, 1:]))
        np.testing.assert_array_equal(roc_points[c][2], thresholds[keep])
        np.testing.assert_allclose(
            roc_points[c][:2], (np.append(fpr[c, keep], 0), np.append(tpr[c, keep], 0)), rtol=1e-12
        )


def test_ignore_class_and_labels_match_sklearn_on_filtered_data():
    rng = np.random.default_rng(1)
    y_true = rng.integers(0, 4, 300)
    scores = rng.dirichlet(np.ones(4), 300)
    state = F.state_from_predictions(y_true, scores, ignore_class=0)
    kept = y_true != 0
    y_pred = scores.argmax(1)
    scores_ours = F.classification_scores(state, labels=[1, 2, 3])
    expected = skm.f1_score(y_true[kept], y_pred[kept], labels=[1, 2, 3], average=None)
    assert_same(scores_ours["f1"], expected)
    assert scores_ours["f1_micro"] == pytest.approx(
        skm.f1_score(y_true[kept], y_pred[kept], labels=[1, 2, 3], average="micro")
    )


@pytest.mark.parametrize("num_classes, num_samples", [(3, 400), (300, 200)])
def test_a_state_pickles_as_its_nonzero_cells_and_comes_back_equal(num_classes, num_samples):
    rng = np.random.default_rng(num_classes)
    y_true = rng.integers(0, num_classes, num_samples)
    scores = rng.dirichlet(np.ones(num_classes), num_samples)
    state = F.state_from_predictions(y_true, scores, num_bins=256)
    payload = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
    back = pickle.loads(payload)
    for name in ("confusion_matrix", "score_histogram", "calibration"):
        original, restored = getattr(state, name), getattr(back, name)
        assert restored.dtype == original.dtype and restored.flags["C_CONTIGUOUS"]
        np.testing.assert_array_equal(restored, original)
    dense = state.confusion_matrix.nbytes + state.score_histogram.nbytes
    assert (len(payload) < dense / 10) == (num_classes == 300)


@pytest.mark.parametrize(
    "task, y_true", [("multiclass", np.zeros(0, int)), ("multilabel", np.zeros((0, 3), int))]
)
def test_empty_state_follows_zero_division(task, y_true):
    """scikit-learn refuses empty input; every ratio is undefined, so zero_division decides."""
    state = F.state_from_predictions(y_true, np.zeros((0, 3)), task=task, num_bins=5)
    for zero_division in (0.0, 1.0):
        scores = F.classification_scores(state, zero_division=zero_division)
        assert np.all(scores["precision"] == zero_division)
        assert np.all(scores["f1"] == zero_division)
        assert scores["f1_macro"] == zero_division
        assert scores["f1_micro"] == zero_division
    assert np.isnan(F.classification_scores(state, zero_division=np.nan)["f1_macro"])
    assert np.all(F.classification_scores(state)["ap"] == 0.0)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="zero_division"):
        F.precision_recall_f1_from_confusion_matrix(np.eye(2), zero_division="warn")
    with pytest.raises(ValueError, match="average"):
        F.precision_recall_f1_from_confusion_matrix(np.eye(2), average="samples")
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 2\)"):
        F.precision_recall_f1_from_confusion_matrix(np.eye(2), labels=[2])
    with pytest.raises(ValueError, match="Unknown task"):
        F.state_from_predictions([0], [[1.0, 0.0]], task="multi-class")
    with pytest.raises(ValueError, match=r"Labels must be in \[0, 2\)"):
        F.state_from_predictions([2], [[1.0, 0.0]])
    with pytest.raises(ValueError, match="probabilities in .*apply softmax"):
        F.state_from_predictions([0], [[2.5, -1.0]])  # logits


def test_functional_imports_neither_keras_nor_mlflow():
    import subprocess

    code = (
        "import sys, mlflow_mcmetrics, mlflow_mcmetrics.functional, mlflow_mcmetrics.naming;"
        "print(sorted(m for m in ('keras', 'tensorflow', 'mlflow') if m in sys.modules))"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert output.stdout.strip() == "[]"


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_state_from_predictions_matches_scikit_learn_on_every_case(case):
    labels, probabilities, weights, _ = case.flat()
    state = F.state_from_predictions(
        labels,
        probabilities[:, 0] if case.task == "binary" else probabilities,
        task=case.task,
        threshold=case.threshold,
        ignore_class=case.ignore_class,
        num_bins=64,
        sample_weight=weights,
    )
    expected = sklearn_reference(case)
    np.testing.assert_allclose(state.confusion_matrix, expected["confusion_matrix"], atol=1e-9)
    scores = F.classification_scores(state, labels=case.scored_labels, task=case.task)
    for name in ("precision", "recall", "f1", "support"):
        np.testing.assert_allclose(scores[name], expected[name], atol=1e-12, err_msg=name)
    assert scores["f1_macro"] == pytest.approx(expected["f1_macro"], abs=1e-12)
    assert_scores_match_reference(scores, expected, atol=1e-12)


# -- ROC AUC, agreement scores, calibration, decision thresholds --------------------------------
def off_edges(values, num_bins):
    """No value within 1e-6 of a bin edge: there float32 binning and the reference's float64
    comparisons may pick neighbouring bins."""
    scaled = np.asarray(values) * num_bins
    return bool(np.all(np.abs(scaled - np.round(scaled)) > 1e-6 * num_bins))


@st.composite
def scored_samples(draw, max_classes=6, max_samples=60):
    """(y_true, probabilities, weights): Dirichlet scores, some absent classes, 0-3 weights
    (not all 0)."""
    num_classes = draw(st.integers(2, max_classes))
    num_samples = draw(st.integers(2, max_samples))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    present = rng.choice(num_classes, size=draw(st.integers(1, num_classes)), replace=False)
    y_true = rng.choice(present, num_samples)
    probabilities = rng.dirichlet(
        np.ones(num_classes) * draw(st.sampled_from([0.3, 1.0])), num_samples
    )
    weights = (
        rng.integers(0, 4, num_samples).astype(float)
        if draw(st.booleans())
        else np.ones(num_samples)
    )
    weights[0] = max(weights[0], 1.0)  # scikit-learn refuses all-zero weights
    return y_true, probabilities, weights


@settings(max_examples=150, deadline=None)
@given(samples=scored_samples())
def test_agreement_scores_equal_sklearn(samples):
    y_true, probabilities, weights = samples
    y_pred = probabilities.argmax(axis=1)
    state = F.state_from_predictions(y_true, probabilities, sample_weight=weights)
    ours = F.agreement_scores_from_confusion_matrix(state.confusion_matrix)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = {
            "balanced_accuracy": skm.balanced_accuracy_score(y_true, y_pred, sample_weight=weights),
            "mcc": skm.matthews_corrcoef(y_true, y_pred, sample_weight=weights),
            "cohen_kappa": skm.cohen_kappa_score(y_true, y_pred, sample_weight=weights),
        }
    for name, value in theirs.items():
        assert_same(ours[name], value)


@settings(max_examples=150, deadline=None)
@given(samples=scored_samples(), num_bins=st.sampled_from([1, 3, 10, 100]))
def test_binned_roc_auc(samples, num_bins):
    """Exact on bin-centred scores (the same ties); scikit-learn's AUC on raw scores lies
    inside the tie interval; NaN where scikit-learn raises (one class only)."""
    y_true, raw, weights = samples
    num_classes = raw.shape[1]
    positives = y_true[:, None] == np.arange(num_classes)
    centred = (F.score_bins(raw, num_bins) + 0.5) / num_bins

    def sklearn_auc(scores):
        return np.array(
            [
                skm.roc_auc_score(positives[:, c], scores[:, c], sample_weight=weights)
                if 0 < np.sum(weights * positives[:, c]) < np.sum(weights)
                else np.nan
                for c in range(num_classes)
            ]
        )

    binned = F.state_from_predictions(y_true, centred, num_bins=num_bins, sample_weight=weights)
    auc, _, _ = F.roc_auc_from_histogram(binned.score_histogram)
    np.testing.assert_allclose(auc, sklearn_auc(centred), atol=1e-12)

    state = F.state_from_predictions(y_true, raw, num_bins=num_bins, sample_weight=weights)
    _, lower, upper = F.roc_auc_from_histogram(state.score_histogram)
    exact = sklearn_auc(raw)
    np.testing.assert_array_equal(np.isnan(exact), np.isnan(lower))
    defined = ~np.isnan(exact)
    assert np.all(lower[defined] - 1e-12 <= exact[defined])
    assert np.all(exact[defined] <= upper[defined] + 1e-12)


@settings(max_examples=100, deadline=None)
@given(samples=scored_samples(), num_bins=st.sampled_from([5, 10, 20]))
def test_reliability_curves_equal_sklearn_calibration_curve(samples, num_bins):
    y_true, probabilities, _ = samples
    histogram_bins = num_bins * 8

    assume(off_edges(probabilities, histogram_bins))
    state = F.state_from_predictions(y_true, probabilities, num_bins=histogram_bins)
    fraction, counts, edges = F.reliability_curve_from_histogram(state.score_histogram, num_bins)
    np.testing.assert_allclose(edges, np.linspace(0, 1, num_bins + 1))
    for c in range(probabilities.shape[1]):
        positive = y_true == c
        if not positive.any() or positive.all():  # calibration_curve needs both classes
            continue
        prob_true, _ = calibration_curve(positive, probabilities[:, c], n_bins=num_bins)
        filled = counts[c] > 0
        assert_same(fraction[c][filled], prob_true)
        assert np.all(np.isnan(fraction[c][~filled]))


@settings(max_examples=150, deadline=None)
@given(samples=scored_samples(), binary=st.booleans())
def test_expected_calibration_error_equals_a_numpy_reference(samples, binary):
    """Binary: the top label is class 1 when p > 1 - p, its confidence max(p, 1 - p)."""
    y_true, probabilities, weights = samples
    assume(off_edges(probabilities, F.CALIBRATION_BINS))
    if binary:
        y_true, positive = (y_true > 0).astype(int), probabilities[:, 0]
        state = F.state_from_predictions(
            y_true, positive, task="binary", num_bins=8, sample_weight=weights
        )
        probabilities = np.stack([1 - positive, positive], axis=1)
    else:
        state = F.state_from_predictions(y_true, probabilities, num_bins=8, sample_weight=weights)
    expected = ece_reference(y_true, probabilities, weights)
    assert F.expected_calibration_error(state.calibration) == pytest.approx(expected, abs=1e-12)
    accuracy, confidence, counts, _ = F.top_label_reliability(state.calibration)
    filled = counts > 0
    gaps = np.abs(accuracy[filled] - confidence[filled])
    assert np.sum(counts[filled] * gaps) / counts.sum() == pytest.approx(expected, abs=1e-12)


@settings(max_examples=150, deadline=None)
@given(
    num_samples=st.integers(1, 80),
    num_bins=st.sampled_from([1, 4, 10, 64]),
    seed=st.integers(0, 2**16),
    weighted=st.booleans(),
)
def test_f1_optimal_threshold_is_the_best_bin_edge(num_samples, num_bins, seed, weighted):
    """On bin-centred scores the F1 at the chosen threshold is scikit-learn's F1 of
    ``score >= threshold``, and no bin edge gives more."""
    rng = np.random.default_rng(seed)
    y_true = (rng.random(num_samples) < rng.uniform(0.05, 0.6)).astype(int)
    scores = (F.score_bins(rng.beta(0.7, 0.7, num_samples), num_bins) + 0.5) / num_bins
    weights = rng.integers(0, 4, num_samples).astype(float) if weighted else None
    state = F.state_from_predictions(
        y_true, scores, task="binary", num_bins=num_bins, sample_weight=weights
    )
    thresholds, f1 = F.f1_optimal_threshold_from_histogram(state.score_histogram)
    if not np.sum(y_true * (1 if weights is None else weights)):
        assert np.isnan(thresholds[1]) and np.isnan(f1[1])
        return

    def sklearn_f1(threshold):
        return skm.f1_score(y_true, scores >= threshold, sample_weight=weights, zero_division=0.0)

    assert f1[1] == pytest.approx(sklearn_f1(thresholds[1]), abs=1e-12)
    best_over_edges = max(sklearn_f1(b / num_bins) for b in range(num_bins))
    assert f1[1] == pytest.approx(best_over_edges, abs=1e-12)
    scores_ = F.classification_scores(state, task="binary")
    assert list(scores_["threshold_labels"]) == [1]
    assert scores_["threshold"][0] == thresholds[1]
