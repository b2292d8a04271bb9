"""Metric state size and peak memory per metric, by number of classes, and peak memory while
streaming 10^4 vs 10^6 samples through one metric.

    python benchmarks/memory.py [--classes 100 2000 10000] [--rounds 2]

Per class count, two layouts, each in a fresh child process, alternating:

* ``default``: ``ClassificationMetrics(C)``, the layout chosen from ``C`` (issue 29: no dense
  confusion matrix beyond 4096 classes, ``pr_thresholds="auto"``);
* ``dense, 4096 bins``: ``ClassificationMetrics(C, pr_thresholds=4096,
  confusion_matrix=True)``, the default before it.

A child builds the metric, runs three XLA-compiled updates of 64 softmax rows (as a fit's
step would), copies the state to the host (``state()``) and scores it
(``functional.classification_scores``). It reports the state's device bytes (the
variables: on this CPU machine the device memory is host memory), the resident set size
(RSS) after the updates less the RSS before the metric was built, and the peak RSS
(``ru_maxrss``) over the whole child less that same starting RSS: what the metric adds, the
host copy of the state and its scores included.

Streaming: batches of 1000 samples of C=10 softmax scores through a compiled
``update_state``; the peak RSS is read after 10^4 samples and again after 10^6 more. Exact
state means constant memory: the second figure must not grow with the number of samples.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

LAYOUTS = {
    "default": {},
    "dense, 4096 bins": {"pr_thresholds": 4096, "confusion_matrix": True},
}


def _rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child(layout: str, num_classes: int) -> None:
    """One metric in this process; prints one JSON line."""
    import numpy as np
    import tensorflow as tf

    from mlflow_mcmetrics import ClassificationMetrics, functional

    rng = np.random.default_rng(0)
    labels = tf.constant(rng.integers(0, num_classes, 64).astype("int32"))
    logits = rng.normal(size=(64, num_classes)).astype("float32")
    scores = tf.constant(np.exp(logits) / np.exp(logits).sum(1, keepdims=True))
    start = _rss_mib()
    metric = ClassificationMetrics(num_classes, **LAYOUTS[layout])
    update = tf.function(metric.update_state, jit_compile=True)
    for _ in range(3):
        update(labels, scores)
    after_updates = _rss_mib()
    state, _ = metric.state()
    functional.classification_scores(state)
    print(
        json.dumps(
            {
                "state_bytes": sum(v.numpy().nbytes for v in metric.variables),
                "pr_thresholds": metric.pr_thresholds,
                "confusion_matrix": metric.confusion_matrix,
                "rss_mib": after_updates - start,
                "peak_mib": _peak_mib() - start,
                "counted": float(state.num_samples),
            }
        )
    )


def per_metric_table(classes: list[int], rounds: int) -> None:
    results: dict[tuple[int, str], list[dict]] = {}
    for _ in range(rounds):
        for num_classes in classes:
            for layout in LAYOUTS:
                out = subprocess.run(
                    [sys.executable, __file__, "--child", layout, str(num_classes)],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                result = json.loads(out.stdout.strip().splitlines()[-1])
                assert result["counted"] == 3 * 64, result
                results.setdefault((num_classes, layout), []).append(result)
    print(
        "| classes | layout | dense matrix | bins | state MB (device) | RSS after updates MiB "
        "| peak RSS MiB (with state() and scores) |"
    )
    print("|---|---|---|---|---|---|---|")
    for (num_classes, layout), runs in results.items():
        first = runs[0]

        def spread(key, runs=runs):
            values = [run[key] for run in runs]
            low, high = min(values), max(values)
            return f"{low:.0f}" if round(low) == round(high) else f"{low:.0f}–{high:.0f}"

        print(
            f"| {num_classes:,} | {layout} | {'yes' if first['confusion_matrix'] else 'no'} "
            f"| {first['pr_thresholds']} | {first['state_bytes'] / 1e6:,.1f} "
            f"| {spread('rss_mib')} | {spread('peak_mib')} |",
            flush=True,
        )


def streaming_table() -> None:
    import keras
    import numpy as np
    import tensorflow as tf

    from mlflow_mcmetrics import ClassificationMetrics

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
        results.append((samples, _peak_mib(), state.num_samples))
    print("\n| samples streamed (cumulative) | counted | peak RSS MiB |")
    print("|---|---|---|")
    seen = 0
    for samples, peak, counted in results:
        seen += samples
        print(f"| {seen:,} | {counted:,.0f} | {peak:.0f} |")
    growth = results[1][1] - results[0][1]
    print(
        f"\npeak RSS growth from 10^4 to 10^4 + 10^6 samples: {growth:.1f} MiB "
        f"(state: {sum(v.numpy().nbytes for v in metric.variables):,} bytes)"
    )
    keras.backend.clear_session()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--classes", type=int, nargs="+", default=[100, 2000, 10_000])
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds per cell")
    parser.add_argument("--child", nargs=2, metavar=("LAYOUT", "CLASSES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
        return
    per_metric_table(args.classes, args.rounds)
    streaming_table()


if __name__ == "__main__":
    main()
