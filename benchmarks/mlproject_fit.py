"""The MLproject's default fit, whole: plain MLflow autologging vs. with ours, as ratios.

    python benchmarks/mlproject_fit.py [--epochs 60] [--rounds 3]

The MLproject's default training (digits, imbalance ratio 20, its CNN, cross-entropy, batch
32, 60 epochs) under ``mlflow.keras.autolog()`` (defaults: it also logs the model), then with
``mlflow_mcmetrics.autolog()`` added: with its defaults, with ``wait_for_figures=False`` (what
the MLproject's jobs use) and with ``log_every_n_epochs=1``.
Each condition runs in a fresh child process with its own SQLite store; conditions are
interleaved over rounds. Printed: the ``fit()`` seconds of each (model logging and our
records included), the seconds until ``mlflow_mcmetrics.flush()`` has delivered everything
(with ``wait_for_figures=False``, the figures drawn after ``fit()`` returns), and the median
ratios to plain.
"""

from __future__ import annotations

import argparse
import statistics

from _children import run_interleaved

CHILD = r"""
import json, os, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras, mlflow, numpy as np
import mlflow_mcmetrics
from mlflow_mcmetrics import datasets, losses
from mlflow_mcmetrics.cli import build_cnn

condition, epochs, folder = sys.argv[1], int(sys.argv[2]), sys.argv[3]
mlflow.set_tracking_uri(f"sqlite:///{folder}/mlflow.db")
mlflow.set_experiment("mlproject-fit")
data = datasets.load("digits", imbalance_ratio=20, seed=0)
counts = np.bincount(data.y_train, minlength=data.num_classes)
mlflow.keras.autolog()
if condition != "plain":
    options = {
        "ours": {},
        "ours, figures after fit": {"wait_for_figures": False},
        "ours every epoch": {"log_every_n_epochs": 1},
    }[condition]
    mlflow_mcmetrics.autolog(class_names=data.class_names, **options)
model = build_cnn(data.x_train.shape[1:], data.num_classes, 0)
model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=losses.get("cce", counts),
              metrics=["accuracy"])
with mlflow.start_run():
    start = time.perf_counter()
    model.fit(data.x_train, data.y_train, validation_data=(data.x_val, data.y_val),
              epochs=epochs, batch_size=32, verbose=0)
    seconds = time.perf_counter() - start
mlflow_mcmetrics.flush()
print(json.dumps({"seconds": seconds, "flushed": time.perf_counter() - start}))
"""

CONDITIONS = ("plain", "ours", "ours, figures after fit", "ours every epoch")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results = run_interleaved(CHILD, CONDITIONS, args.rounds, str(args.epochs))
    print(f"MLproject default fit, {args.epochs} epochs, {args.rounds} interleaved rounds")
    print(
        "| condition | fit s per round | ratio to plain | until flush() s per round "
        "| ratio to plain |"
    )
    print("|---|---|---|---|---|")
    for condition, runs in results.items():
        cells = []
        for key in ("seconds", "flushed"):
            values = [run[key] for run in runs]
            plain = [run[key] for run in results["plain"]]
            ratios = [value / base for value, base in zip(values, plain, strict=True)]
            cells += [
                ", ".join(f"{value:.2f}" for value in values),
                f"{statistics.median(ratios):.2f}",
            ]
        print(f"| {condition} | {' | '.join(cells)} |")
    print("(ratios: the median of the per-round ratios)")


if __name__ == "__main__":
    main()
