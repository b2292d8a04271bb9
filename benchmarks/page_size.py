"""Size of ``mcmetrics/dashboard.html`` and ``comparison.html`` (issue 19's limits).

    python benchmarks/page_size.py

* 10 classes x 60 epochs: the MLproject's default fit (digits, ``mlflow_mcmetrics.autolog()``,
  a local SQLite store in a temporary folder), once with the default artifact cadence
  (``log_every_n_epochs="auto"``) and once with curves every epoch (``=1``, the largest).
* 1000 classes x 10 epochs: records built as the callback builds them, from synthetic
  predictions (20 per class, accuracy falling from head to tail), with curves every epoch.
* The comparison page of 6 losses x 3 seeds x 10 classes, and of 1000 classes.

Prints a Markdown table; limits: 1.5 MB at 10 x 60, 10 MB at 1000 x 10.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np

FIT = """
import os, sys, mlflow, keras
import mlflow_mcmetrics
from mlflow_mcmetrics import datasets
from mlflow_mcmetrics.cli import build_cnn
cadence = sys.argv[1]
mlflow_mcmetrics.autolog(log_every_n_epochs=cadence if cadence == "auto" else int(cadence))
data = datasets.load("digits", imbalance_ratio=20, seed=0)
model = build_cnn(data.x_train.shape[1:], 10, 0)
model.compile(
    keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
)
model.fit(data.x_train, data.y_train, validation_data=(data.x_val, data.y_val), epochs=60,
          batch_size=32, verbose=0)
mlflow_mcmetrics.flush()
run_id = mlflow.last_active_run().info.run_id
path = mlflow.artifacts.download_artifacts(f"runs:/{run_id}/mcmetrics/dashboard.html")
print("SIZE", os.path.getsize(path))
"""


def fitted_dashboard(cadence: str) -> int:
    with tempfile.TemporaryDirectory() as folder:
        env = {
            **os.environ,
            "MLFLOW_TRACKING_URI": f"sqlite:///{folder}/mlflow.db",
            "TF_CPP_MIN_LOG_LEVEL": "3",
        }
        done = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(FIT), cadence],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
    return int(done.stdout.split("SIZE")[-1])


def synthetic_dashboard(num_classes: int, epochs: int) -> tuple[int, float]:
    """Bytes of the page, and seconds per record (what the callback spends per epoch)."""
    from mlflow_mcmetrics import functional, pages

    rng = np.random.default_rng(0)
    labels = list(range(num_classes))
    records, spent = [], 0.0
    for epoch in range(epochs):
        y_true = np.repeat(np.arange(num_classes), 20)
        logits = rng.normal(size=(len(y_true), num_classes)).astype(np.float32)
        skill = np.linspace(6, 0.5, num_classes) * (epoch + 1) / epochs
        logits[np.arange(len(y_true)), y_true] += skill[y_true]
        scores = np.exp(logits - logits.max(1, keepdims=True))
        scores /= scores.sum(1, keepdims=True)
        state = functional.state_from_predictions(y_true, scores, num_bins=4096)
        values = functional.classification_scores(state)
        started = time.perf_counter()
        records.append(pages.epoch_record(epoch, "val", state, values, labels, curves=True))
        spent += time.perf_counter() - started
    names = [f"class {c:04d}" for c in labels]
    page = pages.dashboard_html(
        pages.dashboard_data("synthetic", names, labels, "multiclass", records)
    )
    return len(page.encode()), spent / epochs


def comparison(num_classes: int, losses: int = 6, seeds: int = 3) -> int:
    from mlflow_mcmetrics import pages, report

    rng = np.random.default_rng(0)
    keys = [str(c) for c in range(num_classes)]
    results = []
    for loss in range(losses):
        for _ in range(seeds):
            metrics = {f"test_f1/{k}": float(rng.random()) for k in keys}
            metrics["test_f1_macro"] = float(np.mean(list(metrics.values())))
            results.append((f"loss {loss}", metrics))
    table = report.comparison_table(results, keys, "test_")
    run_ids = {f"loss {loss}": [f"{rng.integers(2**63):032x}"] * seeds for loss in range(losses)}
    return len(pages.comparison_html(pages.comparison_data(table, run_ids, title="t")).encode())


def main() -> None:
    print("| page | size MB | limit MB | note |")
    print("|---|---|---|---|")
    for cadence in ("auto", "1"):
        size = fitted_dashboard(cadence)
        print(
            f"| dashboard, 10 classes x 60 epochs, log_every_n_epochs={cadence} "
            f"| {size / 1e6:.3f} | 1.5 | real fit |",
            flush=True,
        )
    size, per_record = synthetic_dashboard(1000, 10)
    print(
        f"| dashboard, 1000 classes x 10 epochs, curves every epoch | {size / 1e6:.3f} | 10 "
        f"| {per_record * 1e3:.0f} ms per epoch record |",
        flush=True,
    )
    for num_classes in (10, 1000):
        print(
            f"| comparison, 6 losses x 3 seeds x {num_classes} classes "
            f"| {comparison(num_classes) / 1e6:.3f} | | |",
            flush=True,
        )


if __name__ == "__main__":
    main()
