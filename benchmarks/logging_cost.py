"""Per-epoch logging cost for 10, 100 and 1000 classes, as a fraction of a training epoch.

    python benchmarks/logging_cost.py

The baseline is one epoch of the MLproject's default model (the small CNN on long-tailed
digits, batch 32), timed in this same process. For each class count the callback's epoch-end
work is timed on a realistic state (train + validation splits, 4096-bin histograms) against a
throw-away SQLite tracking store: reading nothing from a device, only computing and logging:

* metrics: scores for both splits, queued in the callback's outbox (what the training thread
  pays), and until its sender thread has stored them (what the sender thread does),
* json: ``{split}_confusion_matrix.json`` and ``{split}_pr_curves.json``, queued and stored,
* images: drawing and logging the confusion-matrix and PR figures (a background thread,
  throttled to at most 10% of wall time, so not a per-epoch cost).

For comparison it also times MLflow's own asynchronous logging of the same metric rows:
``log_batch(..., synchronous=False)`` returns once they are queued and MLflow's logging
thread stores them.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _median_seconds(function, repeat, then=None):
    """Median seconds of ``function()``; ``then()`` runs after each call, untimed."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
        if then is not None:
            then()
    return statistics.median(times)


def _state(num_classes, num_samples, bins, rng):
    import numpy as np

    from mlflow_mcmetrics import functional

    y_true = rng.integers(0, num_classes, num_samples)
    logits = rng.normal(size=(num_samples, num_classes))
    logits[np.arange(num_samples), y_true] += 2.0
    scores = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return functional.state_from_predictions(y_true, scores, num_bins=bins)


def _log_batch_times(client, run_id, values, steps, repeat=3):
    """Median seconds of one epoch's metric rows through ``log_batch``: synchronous; queued
    with ``synchronous=False``; and queued until MLflow's logging thread has stored them."""
    from mlflow.entities import Metric

    def rows():
        step = next(steps)
        return [Metric(key, value, 0, step) for key, value in values.items()]

    sync, queued, stored = [], [], []
    for _ in range(repeat):
        batch = rows()
        start = time.perf_counter()
        client.log_batch(run_id, metrics=batch, synchronous=True)
        sync.append(time.perf_counter() - start)
        batch = rows()
        start = time.perf_counter()
        operation = client.log_batch(run_id, metrics=batch, synchronous=False)
        queued.append(time.perf_counter() - start)
        operation.wait()
        stored.append(time.perf_counter() - start)
    return statistics.median(sync), statistics.median(queued), statistics.median(stored)


def main() -> None:
    import keras
    import mlflow
    import numpy as np

    from mlflow_mcmetrics import callback as callback_module
    from mlflow_mcmetrics import datasets, report
    from mlflow_mcmetrics.cli import build_cnn
    from mlflow_mcmetrics.metrics import DEFAULT_PR_THRESHOLDS, ClassificationMetrics
    from mlflow_mcmetrics.outbox import Outbox
    from mlflow_mcmetrics.render import RenderProcess
    from mlflow_mcmetrics.runs import FitRun

    data = datasets.load("digits", imbalance_ratio=20, seed=0)
    model = build_cnn(data.x_train.shape[1:], 10, seed=0)
    model.compile(
        keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    model.fit(
        data.x_train,
        data.y_train,
        validation_data=(data.x_val, data.y_val),
        epochs=2,
        batch_size=32,
        verbose=0,
    )
    epoch = _median_seconds(
        lambda: model.fit(
            data.x_train,
            data.y_train,
            validation_data=(data.x_val, data.y_val),
            epochs=1,
            batch_size=32,
            verbose=0,
        ),
        repeat=7,
    )
    print(
        "baseline: one epoch of the MLproject's default CNN (digits, ratio 20, batch 32): "
        f"{epoch * 1000:.0f} ms"
    )

    rng = np.random.default_rng(0)
    workdir = tempfile.mkdtemp()
    mlflow.set_tracking_uri(f"sqlite:///{workdir}/mlflow.db")
    print(
        "\n| classes | metrics/epoch | metrics queued ms | metrics stored ms | json queued ms | "
        "json stored ms "
        "| json KB | training thread / epoch | one image pair ms (background) "
        "| MLflow log_batch ms | MLflow synchronous=False: queued ms | stored ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for num_classes in (10, 100, 1000):
        metric = ClassificationMetrics(num_classes, pr_thresholds=DEFAULT_PR_THRESHOLDS)
        callback = callback_module.MCMetricsCallback(metric=metric)
        names = [f"class {i}" for i in range(num_classes)]
        output = callback_module._OutputLog(
            None, metric, names, callback_module.class_key_components(names)
        )
        samples = max(1000, 5 * num_classes)
        states = {
            split: _state(num_classes, samples, DEFAULT_PR_THRESHOLDS, rng)
            for split in ("train", "val")
        }
        with mlflow.start_run() as run:
            client = mlflow.MlflowClient()
            callback._fit_run = FitRun(Outbox(run.info.run_id, client), owned=False)
            callback._render_process = RenderProcess()
            outbox = callback._fit_run.outbox
            step = iter(range(10**6))

            def metrics():
                scores = {
                    split: callback_module.metric_scores(state, metric)
                    for split, state in states.items()
                }
                values = {}
                for split, split_scores in scores.items():
                    values.update(
                        report.metric_values(
                            split_scores,
                            metric.scored_labels,
                            output.class_keys,
                            output.prefix(split),
                        )
                    )
                epoch = next(step)
                outbox.put(
                    {"kind": "metrics", "metrics": [[k, v, 0, epoch] for k, v in values.items()]}
                )
                return scores, values

            scores, values = metrics()
            result = callback_module._EpochResult(0, scores, states)
            outbox.drain()
            metrics_time = _median_seconds(metrics, repeat=3, then=outbox.drain)
            metrics_stored = _median_seconds(lambda: (metrics(), outbox.drain()), repeat=3)
            json_time = _median_seconds(
                lambda: callback._log_epoch_json(output, result), repeat=3, then=outbox.drain
            )
            json_stored = _median_seconds(
                lambda: (callback._log_epoch_json(output, result), outbox.drain()), repeat=3
            )
            image_time = _median_seconds(
                lambda: callback._log_epoch_images([(output, result)]), repeat=1
            )
            sync_time, queued_time, stored_time = _log_batch_times(
                client, run.info.run_id, values, step
            )
            folder = client.download_artifacts(run.info.run_id, "mcmetrics/epochs/0000", workdir)
            size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder)) / 1024
            callback._render_process.close()
            callback._finish("FINISHED")
        print(
            f"| {num_classes} | {len(values)} | {metrics_time * 1000:.1f} | "
            f"{metrics_stored * 1000:.0f} | "
            f"{json_time * 1000:.1f} | {json_stored * 1000:.0f} | {size:.0f} | "
            f"{(metrics_time + json_time) / epoch:.2f} | "
            f"{image_time * 1000:.0f} | {sync_time * 1000:.0f} | {queued_time * 1000:.1f} | "
            f"{stored_time * 1000:.0f} |"
        )


if __name__ == "__main__":
    main()
