"""Epoch time of a real fit with and without per-class metrics, as ratios in one run.

    python benchmarks/fit_overhead.py [--epochs 8] [--rounds 3]
    python benchmarks/fit_overhead.py --step-overhead [--before COMMIT] [--rounds 300]
        [--whole-epochs]

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
no validation, in one process (``KERAS_BACKEND`` as set): ``plain`` (``compile()`` without
metrics) against ``ClassificationMetrics(C, from_logits=True)`` in ``compile(metrics=[...])``
at its default layout, and, with ``--before COMMIT``, the metric as it was at that commit of
this repository (:func:`update_cost.before_metric`), the conditions alternating batch by
batch through Keras' compiled train step (see :func:`step_overhead`).
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
from mlflow_mcmetrics import ClassificationMetrics, datasets  # noqa: E402
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


def _step_workloads():
    """The ``--step-overhead`` workloads: (name, model builder taking the class count, x, y,
    classes, batch size)."""
    rng = np.random.default_rng(0)
    digits = datasets.load("digits", imbalance_ratio=20, seed=0)
    yield (
        "MLproject CNN, digits, 10 classes, batch 32",
        lambda classes: build_cnn(digits.x_train.shape[1:], classes, 0),
        digits.x_train,
        digits.y_train,
        10,
        32,
    )
    images = rng.random((2048, 28, 28, 1), dtype=np.float32)
    yield (
        "28x28 CNN, 100 classes, batch 64",
        lambda classes: keras.Sequential(
            [
                keras.Input((28, 28, 1)),
                keras.layers.Conv2D(32, 3, activation="relu"),
                keras.layers.MaxPooling2D(),
                keras.layers.Conv2D(64, 3, activation="relu"),
                keras.layers.GlobalAveragePooling2D(),
                keras.layers.Dense(classes),
            ]
        ),
        images,
        rng.integers(0, 100, len(images)),
        100,
        64,
    )
    features = rng.normal(size=(8192, 256)).astype("float32")
    yield (
        "MLP, 1000 classes, batch 256",
        lambda classes: keras.Sequential(
            [
                keras.Input((256,)),
                keras.layers.Dense(512, activation="relu"),
                keras.layers.Dense(classes),
            ]
        ),
        features,
        rng.integers(0, 1000, len(features)),
        1000,
        256,
    )


class _EpochSpan(keras.callbacks.Callback):
    """Seconds from the start to the end of each epoch (its steps, and the metrics'
    end-of-epoch ``result()``)."""

    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def step_overhead(args) -> None:
    """The metric's cost per training step, against a model without it, in the same rounds.

    Every condition is a model of its own in this one process, compiled and warmed up
    (traced) first. By default the conditions alternate batch by batch: each round runs
    one ``train_on_batch`` per condition on the same batch, that is Keras' compiled train
    step, the function ``fit()`` calls for each batch, with the metrics' reset that
    ``train_on_batch`` adds turned off (``--whole-epochs``: one ``fit()`` epoch per
    condition in turn instead, with the per-epoch ``reset_state()`` and ``result()``).
    Child processes, one per condition and fit, gave spreads wider than the overhead on a
    busy machine (a child's epochs all fall in one stretch of the neighbours' load), and so
    did alternating whole epochs (20-44 ms steps of the 100-class CNN from one epoch to the
    next): steps of 10-40 ms side by side share the load.

    A condition's step time is the fastest of its ``--rounds`` steps (best of N: the noise
    of a shared machine only adds) and their median. The overhead: best minus best plain,
    and the median of the per-round differences (each round's steps ran side by side),
    whose interquartile range is the spread.
    """
    metrics = {"ours": ClassificationMetrics}
    if args.before:
        # Imported from update_cost.py, next to this script (on sys.path when run as one).
        from update_cost import before_metric

        metrics["ours (before)"] = before_metric(args.before)
    conditions = ["plain", *metrics]
    unit = "epoch of fit()" if args.whole_epochs else "train_on_batch"
    print(
        f"backend {keras.backend.backend()}; {args.rounds} alternating rounds of one {unit} "
        "per condition; ms per step: best | median; overhead: best - best plain | median "
        "of the per-round differences (their interquartile range)"
    )
    print(
        "| workload | plain ms/step, best | median | "
        + " | ".join(
            f"{c} ms/step, best | median | {c} overhead ms/step, best | median (IQR)"
            for c in metrics
        )
        + " |"
    )
    print("|---|---|---|" + "---|---|---|---|" * len(metrics))
    for name, build, x, y, classes, batch in _step_workloads():
        if args.only not in name:
            continue
        models = {}
        for condition in conditions:
            keras.utils.set_random_seed(0)
            model = build(classes)
            model.compile(
                optimizer="adam",
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=[]
                if condition == "plain"
                else [metrics[condition](classes, from_logits=True)],
            )
            model.fit(x, y, batch_size=batch, epochs=1, verbose=0)  # trace and compile
            if not args.whole_epochs:
                # train_on_batch resets the metrics on every call, where fit() does once an
                # epoch: at 1000 classes zeroing the state cost more than the update.
                model.reset_metrics = lambda: None
            models[condition] = model
        full_batches = len(x) // batch
        per_step: dict[str, list[float]] = {condition: [] for condition in conditions}
        for round_ in range(args.rounds):
            rows = slice(round_ % full_batches * batch, (round_ % full_batches + 1) * batch)
            # Each round starts with the next condition: none is always first after another.
            turn = round_ % len(conditions)
            for condition in conditions[turn:] + conditions[:turn]:
                model = models[condition]
                if args.whole_epochs:
                    span = _EpochSpan()
                    model.fit(x, y, batch_size=batch, epochs=1, verbose=0, callbacks=[span])
                    seconds = span.seconds[0] / -(-len(x) // batch)
                else:
                    start = time.perf_counter()
                    model.train_on_batch(x[rows], y[rows])  # returns the logs as NumPy: synced
                    seconds = time.perf_counter() - start
                per_step[condition].append(seconds * 1e3)
        plain = per_step["plain"]
        cells = [f"{min(plain):.3f} | {statistics.median(plain):.3f}"]
        for condition in metrics:
            ours = per_step[condition]
            differences = [a - b for a, b in zip(ours, plain, strict=True)]
            quartiles = statistics.quantiles(differences, n=4)
            cells.append(f"{min(ours):.3f} | {statistics.median(ours):.3f}")
            cells.append(
                f"{min(ours) - min(plain):.3f} | {statistics.median(differences):.3f} "
                f"({quartiles[0]:.3f} to {quartiles[2]:.3f})"
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
        "--before", default="", help="with --step-overhead: a commit whose metric to time too"
    )
    parser.add_argument(
        "--whole-epochs",
        action="store_true",
        help="with --step-overhead: alternate one fit() epoch per condition, not one batch",
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
