"""Metric state size, and peak memory while streaming 10^4 vs 10^6 samples through it.

    python benchmarks/memory.py

State bytes are read off the metric's variables: two float32 vectors (the running and the
carried part of every count, see ``metrics.ExactCounts``), each holding the C×C confusion
matrix, 3×C per-class counts, 2 rejected counters and the 2×C×T histogram. Streaming:
batches of 1000 samples of C=10 softmax scores through a compiled ``update_state``; the peak
resident set size (``ru_maxrss``) is read after 10^4 samples and again after 10^6 more. Exact
state means constant memory: the second figure must not grow with the number of samples.
"""

from __future__ import annotations

import os
import resource

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from mlflow_mcmetrics import ClassificationMetrics  # noqa: E402


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main() -> None:
    print("| classes | bins | state bytes |")
    print("|---|---|---|")
    for num_classes in (10, 100, 1000):
        for bins in (0, 200, 4096):
            metric = ClassificationMetrics(num_classes, pr_thresholds=bins)
            size = sum(int(np.prod(v.shape)) * 4 for v in metric.variables)
            print(f"| {num_classes} | {bins} | {size:,} |")

    import tensorflow as tf

    metric = ClassificationMetrics(10)
    update = tf.function(metric.update_state, jit_compile=True)
    rng = np.random.default_rng(0)
    labels = tf.constant(rng.integers(0, 10, 1000))
    scores = tf.constant(rng.dirichlet(np.ones(10), 1000).astype("float32"))
    results = []
    for samples in (10**4, 10**6):
        for _ in range(samples // 1000):
            update(labels, scores)
        state, _ = metric.state()
        results.append((samples, _peak_mib(), state.confusion_matrix.sum()))
    print("\n| samples streamed (cumulative) | counted | peak RSS MiB |")
    print("|---|---|---|")
    seen = 0
    for samples, peak, counted in results:
        seen += samples
        print(f"| {seen:,} | {counted:,.0f} | {peak:.0f} |")
    growth = results[1][1] - results[0][1]
    print(
        f"\npeak RSS growth from 10^4 to 10^4 + 10^6 samples: {growth:.1f} MiB "
        f"(state: {sum(int(np.prod(v.shape)) * 4 for v in metric.variables):,} bytes)"
    )
    keras.backend.clear_session()


if __name__ == "__main__":
    main()
