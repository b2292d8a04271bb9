"""Many classes: a fit with ours against plain ``mlflow.keras.autolog()``, as ratios.

    python benchmarks/many_classes.py [--classes 100 2000 10000] [--rounds 3] [--epochs 3]

A softmax regression on 64 random features, 8 training and 2 validation rows per class (at
least 20,000 and 4,000), batch 256, SQLite tracking store. Conditions, each in a fresh child
process (so peak RSS is its own) and interleaved over rounds:

* ``plain``: ``mlflow.keras.autolog()`` (its defaults: it logs the model);
* ``ours``: the same with ``mlflow_mcmetrics.autolog()`` added, until ``fit()`` returns (the
  run ends there: MLflow's, with our keys, artifacts and figures delivered).

Printed per class count: the median fit seconds of each and ``ours / plain`` (with the range
of the per-round ratios), our step-metric keys per epoch, the metric's state on the device
(its variables' bytes), the peak RSS of each, and ``dashboard.html``'s size and the time
headless Chromium takes to load and draw it (``/usr/bin/chromium``, through Playwright).
"""

from __future__ import annotations

import argparse
import statistics

from _children import run_interleaved

CHILD = r"""
import json, os, resource, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import keras, mlflow, numpy as np

condition, classes, epochs, folder = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
mlflow.set_tracking_uri(f"sqlite:///{folder}/mlflow.db")
mlflow.set_experiment("many-classes")
rng = np.random.default_rng(0)
train, val = max(8 * classes, 20_000), max(2 * classes, 4_000)
x = rng.normal(size=(train + val, 64)).astype("float32")
y = np.concatenate([np.arange(train) % classes, np.arange(val) % classes])
mlflow.keras.autolog()
if condition == "ours":
    import mlflow_mcmetrics
    mlflow_mcmetrics.autolog()
keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(classes, activation="softmax")])
model.compile("adam", "sparse_categorical_crossentropy")
state_bytes = []
class StateSize(keras.callbacks.Callback):
    def on_train_end(self, logs=None):
        state_bytes.append(sum(
            int(np.prod(v.shape)) * 4 for m in self.model.metrics
            for v in m.variables if "count" in v.path))
start = time.perf_counter()
model.fit(x[:train], y[:train], validation_data=(x[train:], y[train:]), epochs=epochs,
          batch_size=256, verbose=0, callbacks=[StateSize()])
seconds = time.perf_counter() - start
run = mlflow.last_active_run()
client = mlflow.MlflowClient()
ours = [key for key in run.data.metrics if key not in ("loss", "val_loss")]
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
page = {}
if condition == "ours":
    path = client.download_artifacts(run.info.run_id, "mcmetrics/dashboard.html", folder)
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium",
                                             args=["--no-sandbox", "--disable-gpu"])
        tab = browser.new_page()
        begin = time.perf_counter()
        tab.goto("file://" + os.path.abspath(path))
        tab.wait_for_selector("svg")
        page = {"load_s": time.perf_counter() - begin, "dashboard_mb": os.path.getsize(path) / 1e6}
        browser.close()
print(json.dumps({"seconds": seconds, "peak_mib": peak, "keys": len(ours),
                  "state_mib": state_bytes[0] / 2**20, **page}))
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--classes", type=int, nargs="+", default=[100, 2000, 10_000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    print(f"{args.epochs}-epoch fits, median of {args.rounds} interleaved rounds")
    print(
        "| classes | plain s | ours s | ours / plain (range) | keys per epoch | state MiB "
        "| peak RSS MiB plain / ours | dashboard MB | dashboard load s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for classes in args.classes:
        results = run_interleaved(
            CHILD, ("plain", "ours"), args.rounds, str(classes), str(args.epochs)
        )
        plain, ours = results["plain"], results["ours"]
        ratios = [o["seconds"] / p["seconds"] for o, p in zip(ours, plain, strict=True)]

        def median(runs, key):
            return statistics.median(run[key] for run in runs)

        print(
            f"| {classes:,} | {median(plain, 'seconds'):.2f} | {median(ours, 'seconds'):.2f} "
            f"| {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) "
            f"| {median(ours, 'keys'):.0f} | {median(ours, 'state_mib'):.0f} "
            f"| {median(plain, 'peak_mib'):.0f} / {median(ours, 'peak_mib'):.0f} "
            f"| {median(ours, 'dashboard_mb'):.2f} | {median(ours, 'load_s'):.2f} |"
        )


if __name__ == "__main__":
    main()
