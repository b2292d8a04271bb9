"""Epoch time of a real fit with and without per-class metrics, as ratios in one run.

    python benchmarks/fit_overhead.py [--epochs 8] [--rounds 3]
    python benchmarks/fit_overhead.py --step-overhead [--before CHECKOUT] [--rounds 5]

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

``--step-overhead``: what the metric alone adds to a training step (issue 31), no tracking,
no validation, each fit in a fresh child process (``KERAS_BACKEND`` as set): ``plain``
(``compile()`` without metrics) against ``ClassificationMetrics(C, from_logits=True)`` in
``compile(metrics=[...])`` at its default layout, and, with ``--before``, the same metric
imported from another checkout of this repository (e.g. ``git worktree add ../before
<commit>``) in the same alternating rounds. Step time = median epoch time (first epoch
excluded) / steps per epoch; overhead = metric step - plain step of the same round, whose
range over rounds is the spread.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
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


#: One fit with or without the metric; argv: workload index, condition, epochs. Prints the
#: median epoch time (first epoch excluded) and the steps per epoch as JSON.
STEP_CHILD = textwrap.dedent("""
    import json, os, statistics, sys, time
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras, numpy as np
    from mlflow_mcmetrics import ClassificationMetrics

    workload, condition, epochs = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    rng = np.random.default_rng(0)
    keras.utils.set_random_seed(0)
    if workload == 0:  # the MLproject's CNN on 8x8 digits
        from mlflow_mcmetrics import datasets
        from mlflow_mcmetrics.cli import build_cnn
        data = datasets.load("digits", imbalance_ratio=20, seed=0)
        x, y, classes, batch = data.x_train, data.y_train, 10, 32
        model = build_cnn(x.shape[1:], classes, 0)
    elif workload == 1:  # a 28x28 CNN, 100 classes
        classes, batch = 100, 64
        x = rng.random((2048, 28, 28, 1), dtype=np.float32)
        y = rng.integers(0, classes, 2048)
        model = keras.Sequential([
            keras.Input((28, 28, 1)), keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.MaxPooling2D(), keras.layers.Conv2D(64, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(classes)])
    else:  # an MLP head on features, 1000 classes
        classes, batch = 1000, 256
        x = rng.normal(size=(8192, 256)).astype("float32")
        y = rng.integers(0, classes, 8192)
        model = keras.Sequential([
            keras.Input((256,)), keras.layers.Dense(512, activation="relu"),
            keras.layers.Dense(classes)])
    metrics = [] if condition == "plain" else [ClassificationMetrics(classes, from_logits=True)]
    model.compile(optimizer="adam", metrics=metrics,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))

    class Clock(keras.callbacks.Callback):
        starts = []
        def on_epoch_begin(self, epoch, logs=None):
            self.starts.append(time.perf_counter())
        def on_train_end(self, logs=None):
            self.starts.append(time.perf_counter())

    clock = Clock()
    model.fit(x, y, batch_size=batch, epochs=epochs, verbose=0, callbacks=[clock])
    print(json.dumps({"epoch_s": statistics.median(np.diff(clock.starts[1:])),
                      "steps": -(-len(x) // batch), "classes": classes, "batch": batch}))
""")
STEP_WORKLOADS = (
    "MLproject CNN, digits, 10 classes, batch 32",
    "28x28 CNN, 100 classes, batch 64",
    "MLP, 1000 classes, batch 256",
)


def step_overhead(args) -> None:
    """The metric's cost per training step, against a plain fit in the same rounds."""
    conditions = {"plain": None, "ours": None}
    if args.before:
        conditions["ours (before)"] = os.path.abspath(args.before)
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    print(f"backend {backend}; {args.rounds} alternating rounds, {args.epochs} epochs a fit")
    print(
        "| workload | plain ms/step | "
        + " | ".join(
            f"{c} ms/step | {c} overhead ms/step (range)" for c in conditions if c != "plain"
        )
        + " |"
    )
    print("|---|---|" + "---|---|" * (len(conditions) - 1))
    for index, name in enumerate(STEP_WORKLOADS):
        if args.only not in name:
            continue
        steps: dict[str, list[float]] = {condition: [] for condition in conditions}
        for _ in range(args.rounds):
            for condition, checkout in conditions.items():
                env = dict(os.environ)
                if checkout:  # the package from that checkout, ahead of the installed one
                    env["PYTHONPATH"] = os.pathsep.join(
                        [checkout, *filter(None, [env.get("PYTHONPATH")])]
                    )
                out = subprocess.run(
                    [sys.executable, "-c", STEP_CHILD, str(index), condition, str(args.epochs)],
                    capture_output=True,
                    text=True,
                    check=True,
                    env=env,
                )
                result = json.loads(out.stdout.strip().splitlines()[-1])
                steps[condition].append(result["epoch_s"] / result["steps"] * 1e3)
        plain = steps["plain"]
        cells = [f"{statistics.median(plain):.3f}"]
        for condition in conditions:
            if condition == "plain":
                continue
            overheads = [a - b for a, b in zip(steps[condition], plain, strict=True)]
            cells.append(f"{statistics.median(steps[condition]):.3f}")
            cells.append(
                f"{statistics.median(overheads):.3f} ({min(overheads):.3f} to {max(overheads):.3f})"
            )
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--only", default="", help="run only the workloads whose name contains this"
    )
    parser.add_argument(
        "--step-overhead", action="store_true", help="the metric's cost per training step"
    )
    parser.add_argument(
        "--before", default="", help="with --step-overhead: a checkout to time the metric of too"
    )
    args = parser.parse_args()
    if args.step_overhead:
        step_overhead(args)
        return
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
