"""One epoch with 2 000 classes: wall time and peak memory with and without autolog().

    python benchmarks/many_classes.py [--classes 2000] [--rounds 3]

A softmax regression on 64 random features, 20 000 training and 4 000 validation rows, batch
64, one epoch, SQLite tracking store. Conditions, each in a fresh child process (so peak RSS
is its own) and interleaved over rounds:

* ``plain``: no tracking;
* ``ours``: ``mlflow_mcmetrics.autolog()`` with its defaults, until ``fit()`` returns with
  every artifact delivered (the run is ours and ends inside ``fit()``).

Printed: the median fit seconds and peak RSS of each, and ``ours / plain``.
"""

from __future__ import annotations

import argparse
import statistics

from _children import run_interleaved

CHILD = r"""
import json, os, resource, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras, mlflow, numpy as np
import mlflow_mcmetrics

condition, classes, folder = sys.argv[1], int(sys.argv[2]), sys.argv[3]
mlflow.set_tracking_uri(f"sqlite:///{folder}/mlflow.db")
mlflow.set_experiment("many-classes")
rng = np.random.default_rng(0)
x = rng.normal(size=(24_000, 64)).astype("float32")
y = rng.integers(0, classes, 24_000)
if condition == "ours":
    mlflow_mcmetrics.autolog()
keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(classes, activation="softmax")])
model.compile("adam", "sparse_categorical_crossentropy")
start = time.perf_counter()
model.fit(x[:20_000], y[:20_000], validation_data=(x[20_000:], y[20_000:]), epochs=1,
          batch_size=64, verbose=0)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"seconds": seconds, "peak_mib": peak}))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--classes", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results = run_interleaved(CHILD, ("plain", "ours"), args.rounds, str(args.classes))
    median = {
        condition: {key: statistics.median(r[key] for r in runs) for key in ("seconds", "peak_mib")}
        for condition, runs in results.items()
    }
    print(f"{args.classes} classes, one epoch, median of {args.rounds} interleaved rounds")
    print("| condition | fit s | peak RSS MiB |")
    print("|---|---|---|")
    for condition, values in median.items():
        print(f"| {condition} | {values['seconds']:.2f} | {values['peak_mib']:.0f} |")
    ratio = median["ours"]["seconds"] / median["plain"]["seconds"]
    print(f"\nours / plain: {ratio:.2f} (time), ", end="")
    print(f"{median['ours']['peak_mib'] / median['plain']['peak_mib']:.2f} (peak RSS)")


if __name__ == "__main__":
    main()
