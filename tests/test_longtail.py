"""The long-tail view (many-, medium-, few-shot groups) and the per-class spread summaries,
against scikit-learn and imbalanced-learn computed here on the same predictions."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from imblearn.metrics import classification_report_imbalanced, geometric_mean_score
from sklearn import metrics as skm

from mlflow_mcmetrics import functional as F
from mlflow_mcmetrics import report

EDGES = [19, 20, 21, 99, 100, 101]


def balanced_meta_softmax_group(count, low=20, high=100):
    """BALMS' utils.shot_acc, whose convention the SPEC states."""
    return "many" if count > high else "few" if count < low else "medium"


def oltr_group(count, low=20, high=100):
    """OLTR's utils.shot_acc."""
    return "many" if count >= high else "few" if count <= low else "medium"


def test_group_edges_follow_balanced_meta_softmax_and_differ_from_oltr_only_at_the_edges():
    grouped = F.shot_groups(EDGES)
    assert grouped.rule == "thresholds"
    assert grouped.groups.tolist() == [balanced_meta_softmax_group(c) for c in EDGES]
    assert grouped.groups.tolist() == ["few", "medium", "medium", "medium", "medium", "many"]
    differs = [c for c, g in zip(EDGES, grouped.groups, strict=True) if g != oltr_group(c)]
    assert differs == [20, 100]
    # On integer counts OLTR's edges are shot_thresholds=(21, 99).
    oltr = F.shot_groups(EDGES, shot_thresholds=(21, 99))
    assert oltr.groups.tolist() == [oltr_group(c) for c in EDGES]
    assert grouped.sizes == {"many": 1, "medium": 4, "few": 1}
    np.testing.assert_array_equal(grouped.counts, EDGES)


def test_the_mlproject_digits_counts_give_one_many_four_medium_five_few():
    from mlflow_mcmetrics import datasets

    data = datasets.load("digits", imbalance_ratio=20, seed=0)
    grouped = F.shot_groups(np.bincount(data.y_train))
    assert (grouped.rule, grouped.sizes) == ("thresholds", {"many": 1, "medium": 4, "few": 5})


@pytest.mark.parametrize(
    "counts",
    [
        [50, 5, 40, 30, 30, 20, 12, 10, 8, 1],  # no class above 100
        [5000, 900, 300, 2000, 150, 101, 400, 700, 120, 1000, 130],  # every class above 100
        [60, 30, 10],  # no many-shot class
    ],
)
def test_a_group_that_would_be_empty_gives_thirds_of_the_classes_by_count(counts):
    grouped = F.shot_groups(counts)
    assert grouped.rule == "thirds" and grouped.thresholds == (20.0, 100.0)
    # np.array_split of the classes sorted by count (most first, ties in class order).
    order = sorted(range(len(counts)), key=lambda c: (-counts[c], c))
    third = math.ceil(len(counts) / 3)
    sizes = [third, math.ceil((len(counts) - third) / 2)]
    sizes.append(len(counts) - sum(sizes))
    expected = {}
    start = 0
    for name, size in zip(F.SHOT_GROUPS, sizes, strict=True):
        expected.update({c: name for c in order[start : start + size]})
        start += size
    assert grouped.groups.tolist() == [expected[c] for c in range(len(counts))]
    assert list(grouped.sizes.values()) == sizes


def test_ties_split_in_class_order_and_unscored_classes_get_no_group():
    grouped = F.shot_groups([30, 30, 30, 30, 99], labels=[0, 1, 2, 3])
    assert grouped.groups.tolist() == ["many", "many", "medium", "few", ""]
    assert grouped.sizes == {"many": 2, "medium": 1, "few": 1}


def test_bad_counts_and_thresholds_are_named():
    with pytest.raises(ValueError, match="class_counts"):
        F.shot_groups([3, -1])
    with pytest.raises(ValueError, match="shot_thresholds"):
        F.shot_groups([3, 1], shot_thresholds=(100, 20))


@st.composite
def predictions(draw, max_classes=9, max_samples=60):
    """Random labels over few present classes (absent classes are common), random
    predictions, and random training counts that make all three groups."""
    num_classes = draw(st.integers(3, max_classes))
    num_samples = draw(st.integers(1, max_samples))
    present = draw(st.lists(st.integers(0, num_classes - 1), min_size=1, max_size=num_classes))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    y_true = rng.choice(present, num_samples)
    y_pred = np.where(
        rng.random(num_samples) < 0.5, y_true, rng.integers(0, num_classes, num_samples)
    )
    counts = rng.integers(0, 300, num_classes)
    return num_classes, y_true, y_pred, counts


def one_hot_scores(y_pred, num_classes):
    scores = np.full((len(y_pred), num_classes), 0.5 / num_classes)
    scores[np.arange(len(y_pred)), y_pred] = 0.6
    return scores


def quiet(function, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return function(*args, **kwargs)


@settings(max_examples=60, deadline=None)
@given(predictions(), st.sampled_from([0.0, 1.0, np.nan]))
def test_group_scores_equal_sklearn_on_each_groups_classes_with_samples(data, zero_division):
    num_classes, y_true, y_pred, counts = data
    grouped = F.shot_groups(counts)
    state = F.state_from_predictions(y_true, one_hot_scores(y_pred, num_classes))
    scores = F.classification_scores(state, groups=grouped.groups, zero_division=zero_division)
    np.testing.assert_array_equal(scores["group"], grouped.groups)
    for name in F.SHOT_GROUPS:
        members = np.flatnonzero(grouped.groups == name)
        with_samples = np.intersect1d(members, y_true)
        if not with_samples.size:
            assert np.isnan(scores[f"recall_{name}"]) and np.isnan(scores[f"f1_{name}"])
            continue
        for metric in ("recall", "f1"):
            expected = quiet(
                getattr(skm, f"{metric}_score"),
                y_true,
                y_pred,
                labels=with_samples,
                average="macro",
                zero_division=zero_division,
            )
            assert scores[f"{metric}_{name}"] == pytest.approx(expected, abs=1e-12), metric
    # What each covers: the group's classes and those with samples.
    covered = F.group_scores_from_stat_scores(
        *F.stat_scores_from_confusion_matrix(state.confusion_matrix), grouped.groups
    )
    for name in F.SHOT_GROUPS:
        members = np.flatnonzero(grouped.groups == name)
        assert covered[name]["classes"] == members.size
        assert covered[name]["classes_with_samples"] == np.intersect1d(members, y_true).size


@settings(max_examples=60, deadline=None)
@given(predictions(), st.sampled_from([0.0, 0.001, 0.1]))
def test_gmean_equals_imbalanced_learn(data, correction):
    num_classes, y_true, y_pred, _ = data
    state = F.state_from_predictions(y_true, one_hot_scores(y_pred, num_classes))
    scores = F.classification_scores(state, gmean_correction=correction)
    expected = quiet(
        geometric_mean_score,
        y_true,
        y_pred,
        labels=np.unique(y_true),
        average="multiclass",
        correction=correction,
    )
    assert scores["gmean"] == pytest.approx(expected, rel=1e-12, abs=1e-15)
    if np.isin(y_pred, y_true).all():  # no class predicted without samples: labels=None agrees
        default = quiet(geometric_mean_score, y_true, y_pred, correction=correction)
        assert scores["gmean"] == pytest.approx(default, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("seed", range(5))
def test_binary_gmean_is_imbalanced_learns_sqrt_of_sensitivity_and_specificity(seed):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 2, 80)
    y_score = np.clip(0.4 * y_true + rng.random(80) * 0.7, 0, 1)
    state = F.state_from_predictions(y_true, y_score, task="binary")
    scores = F.classification_scores(state, task="binary")
    expected = geometric_mean_score(y_true, (y_score > 0.5).astype(int))
    assert scores["gmean"] == pytest.approx(expected, rel=1e-12)


@settings(max_examples=60, deadline=None)
@given(predictions())
def test_specificity_and_iba_equal_classification_report_imbalanced(data):
    num_classes, y_true, y_pred, _ = data
    state = F.state_from_predictions(y_true, one_hot_scores(y_pred, num_classes))
    scores = F.classification_scores(state)
    labels = list(range(num_classes))
    expected = quiet(
        classification_report_imbalanced, y_true, y_pred, labels=labels, output_dict=True
    )
    for label in labels:
        row = expected[str(label)]
        assert scores["specificity"][label] == pytest.approx(row["spe"], abs=1e-12), label
        assert scores["iba"][label] == pytest.approx(row["iba"], abs=1e-12), label


@settings(max_examples=60, deadline=None)
@given(predictions(max_classes=40, max_samples=200), st.sampled_from([0.0, np.nan]))
def test_spread_summaries_are_their_definition_on_sklearns_per_class_scores(data, zero_division):
    num_classes, y_true, y_pred, _ = data
    state = F.state_from_predictions(y_true, one_hot_scores(y_pred, num_classes))
    scores = F.classification_scores(state, zero_division=zero_division)
    _, recall, f1, support = quiet(
        skm.precision_recall_fscore_support,
        y_true,
        y_pred,
        labels=range(num_classes),
        zero_division=zero_division,
    )
    with_samples = support > 0
    recall, f1 = recall[with_samples], f1[with_samples]
    worst = max(1, math.ceil(with_samples.sum() / 10))
    assert scores["f1_worst"] == pytest.approx(f1.min(), abs=1e-12)
    assert scores["recall_worst"] == pytest.approx(recall.min(), abs=1e-12)
    assert scores["f1_worst_10pct"] == pytest.approx(np.sort(f1)[:worst].mean(), abs=1e-12)
    assert scores["classes_recall_0"] == np.sum(recall == 0)


def test_a_class_absent_from_the_split_is_left_out_and_named_in_the_report():
    # Class 3 (few-shot) has no validation samples but is predicted twice.
    y_true = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 4, 4])
    y_pred = np.array([0, 0, 0, 3, 1, 1, 0, 2, 3, 0, 4])
    grouped = F.shot_groups([500, 60, 30, 5, 10])
    state = F.state_from_predictions(y_true, one_hot_scores(y_pred, 5))
    scores = F.classification_scores(state, groups=grouped.groups)
    few_with_samples = [4]
    assert scores["recall_few"] == skm.recall_score(
        y_true, y_pred, labels=few_with_samples, average="macro"
    )
    assert scores["f1_few"] == skm.f1_score(
        y_true, y_pred, labels=few_with_samples, average="macro"
    )
    assert scores["gmean"] == pytest.approx(
        geometric_mean_score(y_true, y_pred, labels=[0, 1, 2, 4], average="multiclass")
    )
    assert scores["classes_recall_0"] == 0  # class 3 has no recall to be 0
    document = report.classification_report(
        state, ["a", "b", "c", "d", "e"], scores=scores, groups=grouped
    )
    rows = {row["name"]: row for row in document["classes"]}
    assert rows["d"]["no_samples"] and not rows["e"]["no_samples"]
    assert rows["d"]["group"] == "few" and rows["a"]["group"] == "many"
    few = next(row for row in document["groups"]["rows"] if row["group"] == "few")
    assert (few["classes"], few["classes_with_samples"]) == (2, 1)
    assert few["recall"] == scores["recall_few"] and few["f1"] == scores["f1_few"]
    assert document["averages"]["macro"]["classes"] == 5
    assert document["averages"]["macro"]["classes_with_samples"] == 4
    markdown = report.to_markdown(document)
    assert "| d | few |" in markdown and "no samples" in markdown


@pytest.mark.parametrize("seed", range(3))
def test_multilabel_group_scores_equal_sklearn_and_there_is_no_gmean(seed):
    rng = np.random.default_rng(seed)
    y_true = (rng.random((120, 7)) < 0.3).astype(int)
    y_true[:, 6] = 0  # a label without positives
    y_score = np.clip(y_true * 0.4 + rng.random((120, 7)) * 0.7, 0, 1)
    y_pred = (y_score > 0.5).astype(int)
    grouped = F.shot_groups([300, 200, 50, 40, 10, 5, 2])
    state = F.state_from_predictions(y_true, y_score, task="multilabel")
    scores = F.classification_scores(state, groups=grouped.groups)
    assert "gmean" not in scores
    for name in F.SHOT_GROUPS:
        labels = [c for c in np.flatnonzero(grouped.groups == name) if y_true[:, c].any()]
        for metric in ("recall", "f1"):
            expected = getattr(skm, f"{metric}_score")(
                y_true, y_pred, labels=labels, average="macro"
            )
            assert scores[f"{metric}_{name}"] == pytest.approx(expected, abs=1e-12)


def test_the_summaries_are_step_metrics_and_ignore_class_stays_out():
    y_true = np.array([0, 1, 1, 2, 2, 2, 3, 3])
    y_pred = np.array([0, 1, 2, 2, 2, 1, 0, 3])
    grouped = F.shot_groups([1000, 400, 50, 3], labels=[1, 2, 3])
    assert grouped.groups[0] == ""
    state = F.state_from_predictions(y_true, one_hot_scores(y_pred, 4), ignore_class=0)
    scores = F.classification_scores(state, labels=[1, 2, 3], groups=grouped.groups)
    values = report.metric_values(scores, [1, 2, 3], ["pad", "b", "c", "d"], "val_")
    for name in ("gmean", "f1_worst", "recall_worst", "f1_worst_10pct", "classes_recall_0"):
        assert values[f"val_{name}"] == scores[name]
    for group in F.SHOT_GROUPS:
        labels = np.flatnonzero(grouped.groups == group)
        for metric in ("recall", "f1"):
            expected = getattr(skm, f"{metric}_score")(
                y_true[y_true != 0], y_pred[y_true != 0], labels=labels, average="macro"
            )
            assert values[f"val_{metric}_{group}"] == pytest.approx(expected)
    assert "val_specificity/b" not in values  # per-class specificity and IBA: the report only
