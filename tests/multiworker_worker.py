"""One worker of a 2-process MultiWorkerMirroredStrategy training (run by test_multiworker.py).

    python multiworker_worker.py TF_CONFIG_JSON MODE OUTPUT_DIR

MODE ``loop``: a custom training loop with ``ClassificationMetrics`` and ``MCMetricsCallback``
driven through the same hooks as ``fit()``; the chief saves its validation predictions for the
test to check against scikit-learn. MODE ``fit``: ``autolog()`` and ``model.fit``.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

import mlflow_mcmetrics  # noqa: E402
from mlflow_mcmetrics import ClassificationMetrics, MCMetricsCallback  # noqa: E402
from mlflow_mcmetrics.callback import is_chief  # noqa: E402

EPOCHS = 2
GLOBAL_BATCH = 64


def data():
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    # An odd validation size: the last global batch is partial and split unevenly.
    return x[:1200], y[:1200], x[1200:1597], y[1200:1597]


def build_model():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)])


def custom_loop(strategy, output_dir):
    x, y, x_val, y_val = data()
    with strategy.scope():
        model = build_model()
        optimizer = keras.optimizers.Adam(0.01)
        metric = ClassificationMetrics(10, from_logits=True, pr_thresholds=256)
        loss_object = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")
    callback = MCMetricsCallback(metric=metric, class_names=[f"digit {d}" for d in range(10)])
    callback.set_model(model)

    def batches(features, labels):
        dataset = tf.data.Dataset.from_tensor_slices((features, labels)).batch(GLOBAL_BATCH)
        return strategy.experimental_distribute_dataset(dataset)

    @tf.function
    def train_step(features, labels):
        def step(features, labels):
            with tf.GradientTape() as tape:
                logits = model(features, training=True)
                loss = tf.nn.compute_average_loss(loss_object(labels, logits), global_batch_size=GLOBAL_BATCH)
            gradients = tape.gradient(loss, model.trainable_variables)
            optimizer.apply(gradients, model.trainable_variables)
            metric.update_state(labels, logits)

        strategy.run(step, args=(features, labels))

    @tf.function
    def test_step(features, labels):
        strategy.run(lambda f, l: metric.update_state(l, model(f, training=False)), args=(features, labels))

    callback.on_train_begin()
    for epoch in range(EPOCHS):
        callback.on_epoch_begin(epoch)
        metric.reset_state()
        for features, labels in batches(x, y):
            train_step(features, labels)
        callback.on_test_begin()  # reads the training state, as in fit()
        metric.reset_state()
        for features, labels in batches(x_val, y_val):
            test_step(features, labels)
        callback.on_epoch_end(epoch)
    callback.on_train_end()
    if is_chief():
        np.save(os.path.join(output_dir, "val_logits.npy"), keras.ops.convert_to_numpy(model(x_val, training=False)))


def autolog_fit(strategy):
    x, y, x_val, y_val = data()
    mlflow_mcmetrics.autolog()
    with strategy.scope():
        model = build_model()
        model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, validation_data=(x_val, y_val), epochs=EPOCHS, batch_size=GLOBAL_BATCH, verbose=0)


if __name__ == "__main__":
    os.environ["TF_CONFIG"] = sys.argv[1]  # read when the strategy is created
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    if sys.argv[2] == "loop":
        custom_loop(strategy, sys.argv[3])
    else:
        autolog_fit(strategy)
