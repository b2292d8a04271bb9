"""One worker of a 2-process MultiWorkerMirroredStrategy training (run by test_multiworker.py).

    python multiworker_worker.py TF_CONFIG_JSON MODE OUTPUT_DIR

MODE ``fit``: ``autolog()`` and ``model.fit``, past two Keras bugs (see
:func:`work_around_keras_multi_worker_fit`). MODE ``fit-unpatched``: the same without the
work-around. MODE ``loop``: a custom training loop with ``ClassificationMetrics`` and
``MCMetricsCallback`` driven through the same hooks as ``fit()``. After training, the chief saves
its validation predictions for the test to check against scikit-learn.
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
CLASS_NAMES = [f"digit {d}" for d in range(10)]


def data():
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    # An odd validation size: the last global batch is partial and split unevenly.
    return x[:1200], y[:1200], x[1200:1597], y[1200:1597]


def build_model():
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(10)]
    )


def custom_loop(strategy):
    x, y, x_val, y_val = data()
    with strategy.scope():
        model = build_model()
        optimizer = keras.optimizers.Adam(0.01)
        metric = ClassificationMetrics(10, from_logits=True, pr_thresholds=256)
        loss_object = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")
    callback = MCMetricsCallback(metric=metric, class_names=CLASS_NAMES, log_every_n_epochs=1)
    callback.set_model(model)

    def batches(features, labels):
        dataset = tf.data.Dataset.from_tensor_slices((features, labels)).batch(GLOBAL_BATCH)
        return strategy.experimental_distribute_dataset(dataset)

    @tf.function
    def train_step(features, labels):
        def step(features, labels):
            with tf.GradientTape() as tape:
                logits = model(features, training=True)
                loss = tf.nn.compute_average_loss(
                    loss_object(labels, logits), global_batch_size=GLOBAL_BATCH
                )
            gradients = tape.gradient(loss, model.trainable_variables)
            optimizer.apply(gradients, model.trainable_variables)
            metric.update_state(labels, logits)

        strategy.run(step, args=(features, labels))

    @tf.function
    def test_step(features, labels):
        strategy.run(
            lambda x, y: metric.update_state(y, model(x, training=False)), args=(features, labels)
        )

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
    return model


def autolog_fit(strategy):
    x, y, x_val, y_val = data()
    mlflow_mcmetrics.autolog(class_names=CLASS_NAMES, log_every_n_epochs=1)
    with strategy.scope():
        model = build_model()
        model.compile(
            optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        )
    model.fit(
        x, y, validation_data=(x_val, y_val), epochs=EPOCHS, batch_size=GLOBAL_BATCH, verbose=0
    )
    return model


def work_around_keras_multi_worker_fit():
    """Get Keras 3.15.1's ``fit()`` through MultiWorkerMirroredStrategy, which it fails with or
    without mlflow_mcmetrics (keras-team/keras#20585, tensorflow/tensorflow#72388):

    1. ``_maybe_symbolic_build`` hands the whole ``(x, y)`` batch to one ``strategy.reduce``,
       which this strategy accepts only for a single value. Building needs shapes and dtypes
       only, so the local replica's tensors do.
    2. ``reduce_per_replica`` averages each step's scalar logs along axis 0, which scalars do not
       have; averaging across replicas (``axis=None``) is what the logs need.
    """
    from keras.src import tree
    from keras.src.backend.tensorflow import trainer

    def maybe_symbolic_build(self, iterator=None, data_batch=None):
        if iterator is not None:
            _, _, batches = next(iter(iterator))
            replicas = self.distribute_strategy.experimental_local_results
            data_batch = tree.map_structure(lambda value: replicas(value)[0], next(batches))
        with self.distribute_strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    keras_reduce_per_replica = trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and trainer._collective_all_reduce_multi_worker(strategy):
            return tree.map_structure(
                lambda value: strategy.reduce("MEAN", value, axis=None), values
            )
        return keras_reduce_per_replica(values, strategy, reduction)

    trainer.TensorFlowTrainer._maybe_symbolic_build = maybe_symbolic_build
    trainer.reduce_per_replica = reduce_per_replica


if __name__ == "__main__":
    os.environ["TF_CONFIG"] = sys.argv[1]  # read when the strategy is created
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    mode, output_dir = sys.argv[2:4]
    if mode == "loop":
        model = custom_loop(strategy)
    else:
        if mode == "fit":
            work_around_keras_multi_worker_fit()
        model = autolog_fit(strategy)
    if is_chief():
        _, _, x_val, _ = data()
        np.save(
            os.path.join(output_dir, "val_logits.npy"),
            keras.ops.convert_to_numpy(model(x_val, training=False)),
        )
