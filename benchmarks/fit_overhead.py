"""Epoch time of a real fit with and without per-class metrics, as ratios in one run.

    python benchmarks/fit_overhead.py [--epochs 8] [--rounds 3]

Models: the MLproject's default CNN on long-tailed digits (8×8, 10 classes, batch 32), and a
28×28 CNN (Conv32-Pool-Conv64-Pool-GAP-Dense) on random images with 10 and 100 classes.
Conditions, each a fresh model with the same seed, SQLite tracking store:

* ``none``: no tracking at all;
* ``mlflow``: ``mlflow.keras.autolog()`` (models not logged: that is an end-of-fit cost);
* ``mlflow + ours``: that plus ``mlflow_mcmetrics.autolog()`` with everything on;
* ``ours, artifacts at end``: the same with ``log_every_n_epochs`` past the last epoch: step
  metrics every epoch, JSON and stepped images for epoch 0 only (its images are drawn while
  epochs 1.. run), final artifacts at the end;
* ``mlflow + predict cb``: ``mlflow.keras.autolog()`` plus the seeds' approach, a callback
  that calls ``model.predict`` on the validation set every epoch and logs scikit-learn's
  per-class precision/recall/F1 (with argmax, i.e. the correct version of it).

Epoch time = median interval between consecutive ``on_epoch_begin`` calls, first epoch
excluded (tracing), so it includes every callback's end-of-epoch work. The conditions run
interleaved, ``--rounds`` times, and the table shows the median over rounds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import mlflow  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import precision_recall_fscore_support  # noqa: E402

import mlflow_mcmetrics  # noqa: E402
from mlflow_mcmetrics import datasets  # noqa: E402
from mlflow_mcmetrics.cli import build_cnn  # noqa: E402


class EpochClock(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.starts: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.starts.append(time.perf_counter())

    def on_train_end(self, logs=None):
        self.starts.append(time.perf_counter())

    def epoch_seconds(self) -> float:
        return statistics.median(np.diff(self.starts[1:]))


class PredictEveryEpoch(keras.callbacks.Callback):
    """The approach of the seed write-ups, fixed to use argmax."""

    def __init__(self, x_val, y_val):
        super().__init__()
        self.x_val, self.y_val = x_val, y_val

    def on_epoch_end(self, epoch, logs=None):
        predicted = self.model.predict(self.x_val, verbose=0).argmax(-1)
        precision, recall, f1, _ = precision_recall_fscore_support(
            self.y_val, predicted, zero_division=0
        )
        values = {}
        for c in range(len(f1)):
            values.update(
                {
                    f"val_precision/{c}": precision[c],
                    f"val_recall/{c}": recall[c],
                    f"val_f1/{c}": f1[c],
                }
            )
        mlflow.log_metrics(values, step=epoch)


def _cnn28(num_classes, seed):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.Conv2D(64, 3, activation="relu"),
            keras.layers.MaxPooling2D(),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(num_classes),
        ]
    )


def _workloads():
    digits = datasets.load("digits", imbalance_ratio=20, seed=0)
    yield (
        "MLproject CNN, digits, 10 classes",
        lambda: build_cnn(digits.x_train.shape[1:], 10, 0),
        digits.x_train,
        digits.y_train,
        digits.x_val,
        digits.y_val,
        32,
    )
    rng = np.random.default_rng(0)
    for num_classes, samples in ((10, 2000), (100, 2000), (10, 14000)):
        x = rng.random((samples, 28, 28, 1), dtype=np.float32)
        y = rng.integers(0, num_classes, samples)
        split = samples * 3 // 4
        yield (
            f"28x28 CNN, {num_classes} classes, {split} training images",
            lambda c=num_classes: _cnn28(c, 0),
            x[:split],
            y[:split],
            x[split:],
            y[split:],
            64,
        )


def _epoch_time(condition, make_model, x, y, xv, yv, batch_size, epochs) -> float:
    mlflow.autolog(disable=True)
    mlflow_mcmetrics.autolog(disable=True)
    if condition != "none":
        mlflow.keras.autolog(log_models=False, log_datasets=False, silent=True)
    if condition == "mlflow + ours":
        mlflow_mcmetrics.autolog(silent=True)
    if condition == "ours, artifacts at end":
        mlflow_mcmetrics.autolog(silent=True, log_every_n_epochs=epochs + 1)
    model = make_model()
    model.compile(
        optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    clock = EpochClock()
    callbacks = [clock] + (
        [PredictEveryEpoch(xv, yv)] if condition == "mlflow + predict cb" else []
    )
    if condition == "none":
        model.fit(
            x,
            y,
            validation_data=(xv, yv),
            epochs=epochs,
            batch_size=batch_size,
            verbose=0,
            callbacks=callbacks,
        )
    else:
        with mlflow.start_run():
            model.fit(
                x,
                y,
                validation_data=(xv, yv),
                epochs=epochs,
                batch_size=batch_size,
                verbose=0,
                callbacks=callbacks,
            )
    return clock.epoch_seconds()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--only", default="", help="run only the workloads whose name contains this"
    )
    args = parser.parse_args()
    mlflow.set_tracking_uri(f"sqlite:///{tempfile.mkdtemp()}/mlflow.db")
    conditions = (
        "none",
        "mlflow",
        "mlflow + ours",
        "ours, artifacts at end",
        "mlflow + predict cb",
    )
    print(
        "| workload | "
        + " | ".join(f"{c} ms" for c in conditions)
        + " | ours / mlflow | ours at end / mlflow | ours / predict cb |"
    )
    print("|---|" + "---|" * (len(conditions) + 3))
    for name, make_model, x, y, xv, yv, batch_size in _workloads():
        if args.only not in name:
            continue
        rounds = [
            {
                c: _epoch_time(c, make_model, x, y, xv, yv, batch_size, args.epochs)
                for c in conditions
            }
            for _ in range(args.rounds)
        ]
        times = {c: statistics.median(r[c] for r in rounds) for c in conditions}
        print(
            f"| {name} | "
            + " | ".join(f"{times[c] * 1e3:.0f}" for c in conditions)
            + f" | {times['mlflow + ours'] / times['mlflow']:.2f}"
            + f" | {times['ours, artifacts at end'] / times['mlflow']:.2f} | "
            f"{times['mlflow + ours'] / times['mlflow + predict cb']:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
