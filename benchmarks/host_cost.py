"""The host's work on one split's state at the end of an epoch, with the dense way beside it.

    python benchmarks/host_cost.py [--classes 10 2000] [--samples 4000] [--repeats 3]

A state of ``--samples`` rows of random softmax scores (most of a class's scores bunch near
0, as an untrained model's do), the default 4096 bins. Timed (median of ``--repeats``, ms):

* ``classification_scores`` (every step metric of the split);
* the PR and ROC curve points of the JSON artifacts and the dashboard,
  ``precision_recall_points_from_histogram`` / ``roc_points_from_histogram``, against the
  dense way in the same run: the full ``(C, T + 1)`` curves, then the bins where they change;
* pickling the state for the render processes (its non-zero cells) against pickling its
  dense arrays;
* drawing the confusion matrix to PNG.
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import time

import numpy as np
from scipy.special import softmax

from mlflow_mcmetrics import functional, plots


def _milliseconds(function, repeats: int) -> float:
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def _dense_pr_points(histogram):
    precision, recall, thresholds = functional.precision_recall_curve_from_histogram(histogram)
    return [
        (precision[c, keep], recall[c, keep], thresholds[keep[:-1]])
        for c in range(len(recall))
        for keep in [np.append(np.flatnonzero(recall[c, :-1] != recall[c, 1:]), -1)]
    ]


def _dense_roc_points(histogram):
    fpr, tpr, thresholds = functional.roc_curve_from_histogram(histogram)
    return [
        (fpr[c, keep], tpr[c, keep], thresholds[keep[:-1]])
        for c in range(len(fpr))
        for keep in [
            np.append(np.flatnonzero((fpr[c, :-1] != fpr[c, 1:]) | (tpr[c, :-1] != tpr[c, 1:])), -1)
        ]
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--classes", type=int, nargs="+", default=[10, 2000])
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print("| C | step | ms | dense way, ms | dense / ours |")
    print("|---|---|---|---|---|")
    for num_classes in args.classes:
        rng = np.random.default_rng(0)
        y_true = rng.integers(0, num_classes, args.samples)
        scores = softmax(rng.normal(size=(args.samples, num_classes)) * 1.5, axis=1)
        state = functional.state_from_predictions(
            y_true, scores, num_bins=functional.DEFAULT_PR_THRESHOLDS
        )
        histogram = state.score_histogram
        dense_arrays = (state.confusion_matrix, histogram, state.calibration)
        names = [f"class {c}" for c in range(num_classes)]
        for ours, dense in [
            (
                functional.precision_recall_points_from_histogram(histogram),
                _dense_pr_points(histogram),
            ),
            (functional.roc_points_from_histogram(histogram), _dense_roc_points(histogram)),
        ]:
            for ours_curve, dense_curve in zip(ours, dense, strict=True):
                for ours_values, dense_values in zip(ours_curve, dense_curve, strict=True):
                    np.testing.assert_allclose(ours_values, dense_values, rtol=1e-12)
        rows = [
            ("classification_scores", lambda: functional.classification_scores(state), None),
            (
                "PR curve points",
                lambda: functional.precision_recall_points_from_histogram(histogram),
                lambda: _dense_pr_points(histogram),
            ),
            (
                "ROC curve points",
                lambda: functional.roc_points_from_histogram(histogram),
                lambda: _dense_roc_points(histogram),
            ),
            (
                "pickle the state",
                lambda: pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL),
                lambda: pickle.dumps(dense_arrays, protocol=pickle.HIGHEST_PROTOCOL),
            ),
            (
                "confusion matrix PNG",
                lambda: plots.figure_to_png(
                    plots.plot_confusion_matrix(state.confusion_matrix, names)
                ),
                None,
            ),
        ]
        for name, ours, dense in rows:
            ours_ms = _milliseconds(ours, args.repeats)
            if dense is None:
                print(f"| {num_classes} | {name} | {ours_ms:.1f} | | |")
                continue
            dense_ms = _milliseconds(dense, args.repeats)
            print(
                f"| {num_classes} | {name} | {ours_ms:.1f} | {dense_ms:.1f} | "
                f"{dense_ms / ours_ms:.1f} |"
            )


if __name__ == "__main__":
    main()
