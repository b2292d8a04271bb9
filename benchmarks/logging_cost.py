"""What one epoch's logging costs the training thread, and how long until it is delivered.

    python benchmarks/logging_cost.py [--classes 10 100 1000] [--repeat 5]

For synthetic states of C classes (both splits, 4096 score bins, 20 samples per class), with a
local SQLite store: the callback's work on the training thread (scores of both splits and the
step-metric keys of the key budget), the logger's ``log_epoch`` (writing the metrics record to
the journal), and the time until the sender has delivered it; then the same with the epoch's
artifacts (JSON files, per-class tables) built on the worker thread and delivered. Medians of
``--repeat`` epochs; each class count in a fresh run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from types import SimpleNamespace

import mlflow
import numpy as np

from mlflow_mcmetrics import functional, report
from mlflow_mcmetrics.logger import EpochResult, FitLogger, Output
from mlflow_mcmetrics.naming import class_key_components
from mlflow_mcmetrics.sender import SENDER


def synthetic_state(num_classes: int, rng) -> functional.ClassificationState:
    labels = np.repeat(np.arange(num_classes), 20)
    scores = rng.dirichlet(np.full(num_classes, 0.3), len(labels))
    return functional.state_from_predictions(labels, scores, num_bins=4096)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--classes", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="logging-cost-")
    mlflow.set_tracking_uri(f"sqlite:///{folder}/mlflow.db")
    rng = np.random.default_rng(0)
    print(
        "| classes | keys | scores + keys ms | log_epoch ms | delivered ms | with artifacts: "
        "delivered ms |"
    )
    print("|---|---|---|---|---|---|")
    for classes in args.classes:
        names = [str(c) for c in range(classes)]
        metric = SimpleNamespace(
            task="multiclass",
            num_classes=classes,
            from_logits=False,
            threshold=0.5,
            ignore_class=None,
            pr_thresholds=4096,
            zero_division=0.0,
            scored_labels=list(range(classes)),
        )
        output = Output(None, metric, names, class_key_components(names))
        logger = FitLogger(log_every_n_epochs=2)
        logger.add(output)
        states = {split: synthetic_state(classes, rng) for split in ("train", "val")}
        keyed, families, _ = report.keyed_classes("auto", names, metric.scored_labels)
        timings: dict[str, list[float]] = {"score": [], "log": [], "sent": [], "files": []}
        for epoch in range(2 * args.repeat):
            start = time.perf_counter()
            scores = {s: functional.classification_scores(state) for s, state in states.items()}
            values = {}
            for split, split_scores in scores.items():
                prefix = "val_" if split == "val" else ""
                values.update(
                    report.metric_values(
                        split_scores,
                        metric.scored_labels,
                        output.class_keys,
                        prefix,
                        keyed,
                        families,
                    )
                )
            scored = time.perf_counter()
            result = EpochResult(epoch, states, scores)
            logger.log_epoch(epoch, {None: result}, values, last=False, link=False)
            logged = time.perf_counter()
            if epoch % 2 == 0:  # log_every_n_epochs=2: artifacts at even epochs
                logger._worker.submit(lambda: None).result()  # the artifacts are written
            SENDER.wait(SENDER.open_journals(), 120)
            sent = time.perf_counter()
            timings["score"].append(scored - start)
            timings["log"].append(logged - scored)
            timings["files" if epoch % 2 == 0 else "sent"].append(sent - logged)
        logger.finish({None: result})
        median = {k: 1000 * statistics.median(v) for k, v in timings.items()}
        print(
            f"| {classes:,} | {len(values)} | {median['score']:.1f} | {median['log']:.2f} "
            f"| {median['sent']:.0f} | {median['files']:.0f} |"
        )


if __name__ == "__main__":
    main()
