"""ClassificationMetrics (the Keras metric) on arrays: its state equals the NumPy reference
and scikit-learn, for every supported layout, eagerly and under XLA.

Backend-agnostic: also run with KERAS_BACKEND=jax (on a GPU too)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from _inputs import CASE_IDS, CASES, assert_scores_match_reference, sklearn_reference
from sklearn import metrics as skm

from mlflow_mcmetrics import ClassificationMetrics
from mlflow_mcmetrics import functional as F

RNG = np.random.default_rng(7)
N, C, BINS = 257, 5, 64


def softmax(logits):
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def sigmoid(logits):
    return 1 / (1 + np.exp(-logits))


def run_metric(metric, batches):
    for batch in batches:
        metric.update_state(*batch)
    state, rejected = metric.state()
    return state, rejected


def assert_states_equal(ours, reference):
    np.testing.assert_array_equal(ours.confusion_matrix, reference.confusion_matrix)
    if reference.score_histogram is not None:
        np.testing.assert_array_equal(ours.score_histogram, reference.score_histogram)


LOGITS = RNG.normal(size=(N, C)).astype("float32") * 2
PROBS = softmax(LOGITS.astype("float64")).astype("float32")
LABELS = RNG.integers(0, C, N)


@pytest.mark.parametrize(
    "y_true, y_pred, from_logits",
    [
        (LABELS, PROBS, False),
        (LABELS[:, None], PROBS, False),
        (np.eye(C)[LABELS], PROBS, False),
        (LABELS, LOGITS, True),
    ],
    ids=["sparse", "sparse-column", "one-hot", "logits"],
)
def test_multiclass_state_equals_reference(y_true, y_pred, from_logits):
    metric = ClassificationMetrics(C, from_logits=from_logits, pr_thresholds=BINS)
    halves = [(y_true[:100], y_pred[:100]), (y_true[100:], y_pred[100:])]
    state, rejected = run_metric(metric, halves)
    probabilities = ops_softmax(y_pred) if from_logits else y_pred
    reference = F.state_from_predictions(LABELS, probabilities, num_bins=BINS)
    np.testing.assert_array_equal(state.confusion_matrix, reference.confusion_matrix)
    np.testing.assert_array_equal(
        state.confusion_matrix, skm.confusion_matrix(LABELS, y_pred.argmax(1), labels=range(C))
    )
    if not from_logits:  # softmax on the device may differ from NumPy's in the last bit
        np.testing.assert_array_equal(state.score_histogram, reference.score_histogram)
    assert state.score_histogram.sum() == N * C
    assert list(rejected) == [0, 0]
    assert float(metric.result()) == pytest.approx(
        skm.f1_score(LABELS, y_pred.argmax(1), average="macro"), abs=1e-6
    )


def ops_softmax(logits):
    return keras.ops.convert_to_numpy(keras.ops.softmax(logits, axis=-1))


@pytest.mark.parametrize("from_logits", [False, True])
def test_binary_single_sigmoid_unit_reports_both_classes(from_logits):
    logits = RNG.normal(size=(N, 1)).astype("float32")
    y_true = (RNG.random(N) < 0.3).astype("float32")[:, None]
    y_pred = logits if from_logits else sigmoid(logits).astype("float32")
    metric = ClassificationMetrics(
        2, task="binary", from_logits=from_logits, threshold=0.4, pr_thresholds=BINS
    )
    state, _ = run_metric(metric, [(y_true, y_pred)])
    probability = sigmoid(logits[:, 0].astype("float64"))
    predicted = (probability > 0.4).astype(int)
    np.testing.assert_array_equal(
        state.confusion_matrix, skm.confusion_matrix(y_true[:, 0], predicted)
    )
    scores = F.classification_scores(state)
    np.testing.assert_allclose(
        scores["f1"], skm.f1_score(y_true[:, 0], predicted, average=None), atol=1e-12
    )
    # class 0 is scored on 1 - p, class 1 on p
    assert scores["ap"][1] == pytest.approx(
        skm.average_precision_score(y_true[:, 0], probability), abs=0.02
    )
    assert scores["ap"][0] == pytest.approx(
        skm.average_precision_score(1 - y_true[:, 0], 1 - probability), abs=0.02
    )


def test_multilabel_with_logits_and_sample_weight():
    labels = (RNG.random((N, C)) < 0.25).astype("float32")
    logits = RNG.normal(size=(N, C)).astype("float32")
    weights = RNG.integers(0, 3, N).astype("float32")
    metric = ClassificationMetrics(C, task="multilabel", from_logits=True, pr_thresholds=BINS)
    metric.update_state(labels, logits, sample_weight=weights)
    state, _ = metric.state()
    predicted = (sigmoid(logits) > 0.5).astype(int)
    np.testing.assert_array_equal(
        state.confusion_matrix,
        skm.multilabel_confusion_matrix(labels, predicted, sample_weight=weights),
    )
    assert float(metric.result()) == pytest.approx(
        skm.f1_score(labels, predicted, average="macro", sample_weight=weights, zero_division=0),
        abs=1e-6,
    )


def test_sequence_ignore_class_and_sample_weight():
    batch, time = 6, 9
    y_true = RNG.integers(0, C, (batch, time))
    probs = softmax(RNG.normal(size=(batch, time, C))).astype("float32")
    weights = RNG.integers(0, 2, (batch,)).astype("float32")
    metric = ClassificationMetrics(C, ignore_class=0, pr_thresholds=0)
    metric.update_state(y_true, probs, sample_weight=weights)
    state, _ = metric.state()
    keep = (y_true != 0) & (weights[:, None] > 0)
    predicted = probs.argmax(-1)
    np.testing.assert_array_equal(
        state.confusion_matrix, skm.confusion_matrix(y_true[keep], predicted[keep], labels=range(C))
    )
    assert metric.scored_labels == [1, 2, 3, 4]
    assert float(metric.result()) == pytest.approx(
        skm.f1_score(
            y_true[keep], predicted[keep], labels=[1, 2, 3, 4], average="macro", zero_division=0
        ),
        abs=1e-6,
    )


def test_invalid_labels_and_nonfinite_predictions_are_counted_not_scored():
    y_true = np.array([0, 1, 7, -1, 2, 1])
    probs = np.eye(C, dtype="float32")[[0, 1, 1, 1, 2, 2]]
    probs[4] = np.nan
    metric = ClassificationMetrics(C, pr_thresholds=8)
    state, rejected = run_metric(metric, [(y_true, probs)])
    assert list(rejected) == [2, 1]
    assert state.confusion_matrix.sum() == 3
    assert state.score_histogram.sum() == 3 * C
    np.testing.assert_array_equal(np.diagonal(state.confusion_matrix)[:2], [1, 1])


def compiled_update(metric):
    """The backend's XLA-compiled update: tf.function(jit_compile=True), or jax.jit of the
    metric's stateless update."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(metric.update_state, jit_compile=True)
    if backend == "jax":
        import jax

        step = jax.jit(metric.stateless_update_state)

        def update(y_true, y_pred):
            values = step([variable.value for variable in metric.variables], y_true, y_pred)
            for variable, value in zip(metric.variables, values, strict=True):
                variable.assign(value)

        return update
    pytest.skip(f"no XLA-compiled update on the {backend} backend")


def test_xla_compiled_update_gives_the_eager_state():
    eager = ClassificationMetrics(C, pr_thresholds=BINS)
    compiled = ClassificationMetrics(C, pr_thresholds=BINS)
    step = compiled_update(compiled)
    starts = range(0, N - 64, 64)  # equal batch shapes: one trace
    for start in starts:
        eager.update_state(LABELS[start : start + 64], PROBS[start : start + 64])
        step(LABELS[start : start + 64], PROBS[start : start + 64])
    assert_states_equal(compiled.state()[0], eager.state()[0])
    assert compiled.state()[0].confusion_matrix.sum() == 64 * len(starts)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="a TensorFlow route")
@pytest.mark.parametrize(
    "classes, timesteps, with_xla",
    [(300, None, True), (300, 4, True), (8, None, False), (300, "varying", False)],
    ids=["many-classes", "many-classes-fixed-timesteps", "few-classes", "varying-timesteps"],
)
def test_tensorflow_steps_without_xla_update_many_cells_with_it(classes, timesteps, with_xla):
    """Keras' CPU steps are not XLA-compiled; the update of 300 classes is, in a step of
    any batch size (the shorter last batch has no static size: its cells move one by one),
    and counts as the reference does. Few cells per batch, or a number of timesteps that
    varies (one XLA compilation per length), keep TensorFlow's own kernels."""
    import tensorflow as tf

    steps = None if timesteps == "varying" else timesteps
    rows = (None,) if timesteps is None else (None, steps)
    metric = ClassificationMetrics(classes, pr_thresholds=BINS)
    step = tf.function(
        metric.update_state,
        input_signature=[
            tf.TensorSpec(rows, tf.int32),
            tf.TensorSpec((*rows, classes), tf.float32),
        ],
    )
    shape = (70,) if timesteps is None else (70, 4)
    labels = RNG.integers(0, classes, shape).astype("int32")
    scores = softmax(RNG.normal(size=(*shape, classes))).astype("float32")
    for start, stop in ((0, 64), (64, 70)):  # a full batch and a shorter last one
        step(labels[start:stop], scores[start:stop])
    reference = F.state_from_predictions(
        labels.reshape(-1), scores.reshape(-1, classes), num_bins=BINS
    )
    assert_states_equal(metric.state()[0], reference)
    assert ("_update" in metric._compiled) == with_xla


def test_reset_and_config_round_trip():
    metric = ClassificationMetrics(
        C, ignore_class=2, zero_division=1.0, pr_thresholds=10, name="f1m"
    )
    metric.update_state(LABELS, PROBS)
    metric.reset_state()
    state, rejected = metric.state()
    assert (
        state.confusion_matrix.sum() == 0
        and state.score_histogram.sum() == 0
        and rejected.sum() == 0
    )
    clone = ClassificationMetrics.from_config(metric.get_config())
    assert clone.get_config() == metric.get_config()
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(metric))
    assert isinstance(restored, ClassificationMetrics) and restored.ignore_class == 2


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_every_case_matches_scikit_learn(case):
    metric = ClassificationMetrics(**case.metric_kwargs(), pr_thresholds=BINS)
    half = len(case.y_true) // 2
    for part in (slice(0, half), slice(half, None)):
        weight = None if case.sample_weight is None else case.sample_weight[part]
        metric.update_state(case.y_true[part], case.y_pred[part], sample_weight=weight)
    state, rejected = metric.state()
    expected = sklearn_reference(case)
    np.testing.assert_allclose(state.confusion_matrix, expected["confusion_matrix"], atol=1e-9)
    scores = F.classification_scores(state, labels=metric.scored_labels, task=metric.task)
    for name in ("precision", "recall", "f1", "support"):
        np.testing.assert_allclose(scores[name], expected[name], atol=1e-12, err_msg=name)
    assert float(metric.result()) == pytest.approx(expected["f1_macro"], abs=1e-6)
    # agreement scores are exact (counts); the ECE's confidence sums are float32 on the device
    assert_scores_match_reference(scores, expected, atol=1e-6)
    assert list(rejected) == [0, 0]
    # Every counted row lands once in each class's histogram.
    _, _, weights, kept = case.flat()
    np.testing.assert_allclose(state.score_histogram.sum(axis=(0, 2)), weights[kept].sum())


def test_counts_stay_exact_past_float32():
    """More than 2**24 rows into one cell: a float32 counter stops counting at 16 777 216."""
    rows, batches = 2**21, 9
    labels = np.zeros(rows, "int32")
    labels[:5] = 1
    scores = np.tile(np.array([[0.7, 0.2, 0.1]], "float32"), (rows, 1))
    weighted = ClassificationMetrics(3, pr_thresholds=16)
    unweighted = ClassificationMetrics(3, pr_thresholds=16)
    for _ in range(batches):
        unweighted.update_state(labels, scores)
        weighted.update_state(labels, scores, sample_weight=np.full(rows, 3.0, "float32"))
    expected = batches * (rows - 5)
    assert expected > 2**24
    for metric, weight in ((unweighted, 1), (weighted, 3)):
        state, _ = metric.state()
        assert state.confusion_matrix[0, 0] == weight * expected
        assert state.confusion_matrix[1, 0] == weight * batches * 5
        assert state.score_histogram[1, 0].sum() == weight * expected
        np.testing.assert_array_equal(
            np.float32(state.confusion_matrix[0, 0]) + np.float32(1), np.float32(weight * expected)
        )  # ...where float32 itself can no longer add one
