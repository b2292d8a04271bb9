"""Which outputs autolog() treats as classification outputs (the README's detection rules)."""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest

from mlflow_mcmetrics import MCMetricsWarning
from mlflow_mcmetrics.instrument import FitInstrumentation, classification_outputs
from mlflow_mcmetrics.losses import LogitAdjustedCrossentropy, WeightedBinaryCrossentropy


def model_with(units: int, activation, loss, with_input: bool = True) -> keras.Model:
    layers = [
        keras.layers.Dense(4, activation="relu"),
        keras.layers.Dense(units, activation=activation),
    ]
    model = keras.Sequential(([keras.Input((3,))] if with_input else []) + layers)
    model.compile(optimizer="sgd", loss=loss)
    return model


def custom_loss(y_true, y_pred):
    return keras.ops.mean(keras.ops.square(y_true - y_pred))


@pytest.mark.parametrize(
    "units, activation, loss, expected",
    [
        (10, "softmax", "sparse_categorical_crossentropy", ("multiclass", False)),
        (
            10,
            None,
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            ("multiclass", True),
        ),
        (10, "softmax", custom_loss, ("multiclass", False)),  # rule 3
        (1, "sigmoid", "binary_crossentropy", ("binary-or-multilabel", False)),
        (30, None, WeightedBinaryCrossentropy([1.0] * 30), ("binary-or-multilabel", True)),
        (5, "softmax", keras.losses.CategoricalFocalCrossentropy(), ("multiclass", False)),
        # named "balanced_softmax": its class name says cross-entropy
        (
            5,
            None,
            LogitAdjustedCrossentropy([5, 3, 2, 1, 1], name="balanced_softmax"),
            ("multiclass", True),
        ),
        # The loss names the label format: one class index per row, whatever the activation
        # (MLflow's test_tf_keras_autolog_succeeds_for_tf_datasets_lacking_batch_size_info).
        (10, "sigmoid", keras.losses.SparseCategoricalCrossentropy(), ("multiclass", False)),
        (10, "sigmoid", "categorical_crossentropy", ("multiclass", False)),
        (1, None, "mse", ""),  # rule 1: regression, left out without a word
        (1, "sigmoid", "mse", ""),  # rule 1 beats the sigmoid
        (3, None, keras.losses.Huber(), ""),
        (3, None, custom_loss, "neither softmax/sigmoid"),  # rule 3: linear, unknown loss
    ],
)
def test_detection_rules(units, activation, loss, expected):
    outputs, skipped, undecided = classification_outputs(model_with(units, activation, loss))
    assert not undecided
    if isinstance(expected, str):
        assert outputs == [] and len(skipped) == bool(expected)
        assert all(expected in reason for reason in skipped)
    else:
        (output,) = outputs
        assert (output.task, output.from_logits) == expected and skipped == []


def test_an_unbuilt_sequential_is_detected_from_its_last_layer():
    (output,) = classification_outputs(
        model_with(10, "softmax", "sparse_categorical_crossentropy", False)
    )[0]
    assert output.task == "multiclass"


def test_explicit_task_and_logits_win_for_a_single_output():
    (output,) = classification_outputs(
        model_with(3, None, custom_loss), task="multilabel", from_logits=True
    )[0]
    assert (output.task, output.from_logits) == ("multilabel", True)


def test_each_output_of_a_multi_output_model():
    inputs = keras.Input((3,))
    heads = {
        "kind": keras.layers.Dense(4, activation="softmax", name="kind")(inputs),
        "flags": keras.layers.Dense(6, activation="sigmoid", name="flags")(inputs),
        "price": keras.layers.Dense(1, name="price")(inputs),
    }
    model = keras.Model(inputs, heads)
    model.compile(
        optimizer="sgd",
        loss={
            "kind": "sparse_categorical_crossentropy",
            "flags": "binary_crossentropy",
            "price": "mse",
        },
    )
    outputs, skipped, _ = classification_outputs(model)
    assert {o.name: o.task for o in outputs} == {
        "kind": "multiclass",
        "flags": "binary-or-multilabel",
    }
    assert skipped == []  # "price" has a regression loss: left out without a word


class Tagger(keras.Model):
    """A subclassed model as keras.io's NER example writes it: no output layer to read."""

    def __init__(self, num_tags, activation="softmax"):
        super().__init__()
        self.embedding = keras.layers.Embedding(20, 4)
        self.final = keras.layers.Dense(num_tags, activation=activation)

    def call(self, inputs, training=False):
        return self.final(self.embedding(inputs))


class CustomNonPaddingTokenLoss(keras.losses.Loss):
    """keras.io's CustomNonPaddingTokenLoss: a cross-entropy under a name that does not say so."""

    def __init__(self, name="custom_ner_loss"):
        super().__init__(name=name)

    def call(self, y_true, y_pred):
        return keras.losses.sparse_categorical_crossentropy(y_true, y_pred)


@pytest.mark.parametrize(
    "activation, loss, expected",
    [
        ("softmax", CustomNonPaddingTokenLoss(), ("multiclass", False)),
        (None, keras.losses.SparseCategoricalCrossentropy(from_logits=True), ("multiclass", True)),
        ("sigmoid", "binary_crossentropy", ("multilabel", False)),
        (None, CustomNonPaddingTokenLoss(), None),  # nothing says classification: warned, left out
        (None, "mse", "regression"),
    ],
)
def test_a_subclassed_models_output_is_decided_at_its_first_step(activation, loss, expected):
    model = Tagger(5, activation)
    model.compile(optimizer="sgd", loss=loss)
    instrumentation = FitInstrumentation(model)
    assert instrumentation.active == (expected != "regression")
    if not instrumentation.active:
        return
    instrumentation.attach()
    x = np.random.default_rng(0).integers(0, 20, (8, 6))
    y = np.random.default_rng(1).integers(0, 5, (8, 6))
    if expected == ("multilabel", False):
        y = (np.arange(5) == y[..., None]).astype("float32")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(x, y, epochs=1, verbose=0)
    instrumentation.detach()
    warned = [str(w.message) for w in caught if issubclass(w.category, MCMetricsWarning)]
    if expected is None:
        assert instrumentation.metrics == {}
        assert len(warned) == 1 and "task='multiclass'" in warned[0]
        return
    (metric,) = instrumentation.metrics.values()
    assert (metric.task, metric.from_logits) == expected and warned == []
    assert instrumentation.fed == {"train"}


def test_labels_that_do_not_fit_the_task_are_left_out_with_a_warning():
    """No inference mistake reaches the compiled step: a task forced wrong warns and skips."""
    model = model_with(10, "softmax", "sparse_categorical_crossentropy")
    instrumentation = FitInstrumentation(model, task="multilabel")
    instrumentation.attach()
    x = np.random.default_rng(0).random((16, 3))
    with pytest.warns(MCMetricsWarning, match=r"labels have shape \(None,\)"):
        model.fit(x, np.arange(16) % 10, epochs=1, verbose=0)
    instrumentation.detach()
    assert instrumentation.fed == set()
