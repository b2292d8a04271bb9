"""Seed 002: a confusion-matrix metric in a custom training loop, no train_step override.

ClassificationMetrics is a plain keras.metrics.Metric: update it in your own loop, read the
exact epoch state once per epoch, and turn it into per-class scores and a report.

    python examples/002_custom_training_loop.py [--epochs 5]
"""

import argparse

import keras
import tensorflow as tf

from mlflow_mcmetrics import ClassificationMetrics, functional, report
from mlflow_mcmetrics.datasets import load

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=5)
args = parser.parse_args()

data = load("digits")
x_train, x_val = data.x_train.reshape(-1, 64), data.x_val.reshape(-1, 64)
model = keras.Sequential(
    [keras.Input((64,)), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10)]
)
optimizer = keras.optimizers.Adam(1e-3)
loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
val_metric = ClassificationMetrics(10, from_logits=True)


@tf.function
def train_step(x, y):
    with tf.GradientTape() as tape:
        loss = loss_fn(y, model(x, training=True))
    optimizer.apply_gradients(
        zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables, strict=True)
    )


@tf.function
def val_step(x, y):
    val_metric.update_state(y, model(x, training=False))


batches = (
    tf.data.Dataset.from_tensor_slices((x_train, data.y_train)).shuffle(2000, seed=0).batch(64)
)
for epoch in range(args.epochs):
    for x, y in batches:
        train_step(x, y)
    val_metric.reset_state()
    for x, y in tf.data.Dataset.from_tensor_slices((x_val, data.y_val)).batch(256):
        val_step(x, y)
    state, _ = val_metric.state()
    f1 = functional.classification_scores(state)["f1"]
    print(
        f"epoch {epoch}: val macro F1 {float(val_metric.result()):.3f}; F1 per class "
        f"{f1.round(2).tolist()}"
    )

print(report.to_markdown(report.classification_report(state, data.class_names)))
