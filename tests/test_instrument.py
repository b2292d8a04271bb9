"""Which outputs autolog() treats as classification outputs (the README's detection rules)."""

from __future__ import annotations

import keras
import pytest

from mlflow_mcmetrics.instrument import classification_outputs
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
        (1, None, "mse", None),  # rule 2
        (1, "sigmoid", "mse", None),  # rule 2 beats the sigmoid
        (3, None, custom_loss, None),  # rule 3: linear output, unknown loss
        (3, None, keras.losses.Huber(), None),
    ],
)
def test_detection_rules(units, activation, loss, expected):
    outputs, skipped = classification_outputs(model_with(units, activation, loss))
    if expected is None:
        assert outputs == [] and len(skipped) == 1
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
    outputs, skipped = classification_outputs(model)
    assert {o.name: o.task for o in outputs} == {
        "kind": "multiclass",
        "flags": "binary-or-multilabel",
    }
    assert len(skipped) == 1 and "'price'" in skipped[0]
