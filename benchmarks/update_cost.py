"""Cost of one metric update per batch, as ratios against baselines timed in this run.

    python benchmarks/update_cost.py [--quick] [--bins-only | --calibration-only | --against-keras]
    python benchmarks/update_cost.py --against-keras --before 5e156b8 [--repeats 15]

For C in {10, 100, 1000} classes, batches of 256 and 4096 softmax predictions, it times one
``update_state`` inside a compiled function (``tf.function`` and XLA on TensorFlow,
``jax.jit`` on JAX):

* ``floor``: ``ops.sum(y_pred)``, one pass that only reads the predictions;
* ``ours cm``: ``ClassificationMetrics(pr_thresholds=0)`` (confusion matrix only);
* ``ours full``: ``ClassificationMetrics(pr_thresholds=200)`` (confusion matrix + histograms);
* ``keras``: ``F1Score(average=None)`` + ``AUC(curve="PR", multi_label=True,
  num_labels=C, num_thresholds=200)`` together (TensorFlow only);
* ``torchmetrics``: ``MulticlassPrecisionRecallCurve(thresholds=200)`` +
  ``MulticlassF1Score(average=None)`` on the CPU, when torch and torchmetrics are installed.

``--bins-only`` times the update against the number of bins T; ``--calibration-only`` the
update with and without the calibration counts (expected calibration error) against the batch
size; ``--against-keras`` the rows of issue 31 (:func:`against_keras_table`): ours against
Keras' ``F1Score`` (the floor of an exact per-class metric: one elementwise pass over the
predictions) and ``AUC(PR, multi_label) + F1Score``, the conditions alternating in one run;
with ``--before COMMIT``, the metric as it was at that commit of this repository too, in the
same rounds (its modules are copied into a temporary package at run time, see
:func:`before_metric`).

Each cell is the median over repeats of the mean time of a loop of calls, after a warm-up.
On JAX our updates are timed under ``jax.transfer_guard("disallow")``: a host-device transfer
in any of them (of the state, or of a constant) would stop the benchmark with an error.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

from mlflow_mcmetrics import ClassificationMetrics  # noqa: E402
from mlflow_mcmetrics.functional import DEFAULT_PR_THRESHOLDS  # noqa: E402

BINS = 200


def _time(call, calls: int, repeats: int = 5) -> float:
    """Median over ``repeats`` of the mean seconds per call of ``calls`` calls."""
    call()  # trace / compile
    call()
    means = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            result = call()
        _block(result)
        means.append((time.perf_counter() - start) / calls)
    return statistics.median(means)


def _block(result):
    """Wait for asynchronous dispatch (JAX) before stopping the clock."""
    leaves = result if isinstance(result, (list, tuple)) else [result]
    for leaf in leaves:
        if hasattr(leaf, "block_until_ready"):
            leaf.block_until_ready()
        elif hasattr(leaf, "numpy"):
            leaf.numpy()


def _compiled(function, xla: bool):
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(function, jit_compile=xla)
    import jax

    return jax.jit(function)


def _no_transfers():
    """On JAX, make every host-device transfer an error (on a GPU both directions are checked;
    on the CPU only host-to-device, since host memory is the device's)."""
    if keras.backend.backend() != "jax":
        return contextlib.nullcontext()
    import jax

    return jax.transfer_guard("disallow")


def _time_ours(metric, y_true, y_pred, xla, calls) -> float:
    call = _metric_call(metric, y_true, y_pred, xla)  # creates the state: a transfer, allowed
    with _no_transfers():
        return _time(call, calls)


def _metric_call(metric, y_true, y_pred, xla):
    """A compiled update of ``metric`` that returns something to block on."""
    if keras.backend.backend() == "jax":
        import jax

        # Donated, as Keras' JAX trainer donates its state: the update then writes in place.
        step = jax.jit(metric.stateless_update_state, donate_argnums=0)
        state = [[v.value for v in metric.variables]]

        def call():
            state[0] = step(state[0], y_true, y_pred)
            return state[0]

        return call

    def update(t, p):
        metric.update_state(t, p)
        # What Keras' train step returns every batch; a dense read of the state would copy it.
        return metric.result()

    step = _compiled(update, xla)
    return lambda: step(y_true, y_pred)


def _keras_call(num_classes, y_true_one_hot, y_pred, xla):
    f1 = keras.metrics.F1Score(average=None)
    auc = keras.metrics.AUC(
        curve="PR", multi_label=True, num_labels=num_classes, num_thresholds=BINS
    )

    def update(t, p):
        f1.update_state(t, p)
        auc.update_state(t, p)
        return auc.variables[0]

    step = _compiled(update, xla)
    return lambda: step(y_true_one_hot, y_pred)


def _torchmetrics_call(num_classes, labels, scores):
    try:
        import torch
        from torchmetrics.classification import MulticlassF1Score, MulticlassPrecisionRecallCurve
    except ImportError:
        return None
    torch.set_num_threads(os.cpu_count() or 1)
    curve = MulticlassPrecisionRecallCurve(
        num_classes=num_classes, thresholds=BINS, validate_args=False
    )
    f1 = MulticlassF1Score(num_classes=num_classes, average=None, validate_args=False)
    target, preds = torch.from_numpy(labels), torch.from_numpy(scores)

    def update():
        curve.update(preds, target)
        f1.update(preds, target)

    return update


def _stateful_call(metrics, inputs, xla, *, result: bool):
    """A compiled step that updates every metric of ``metrics`` on its ``inputs`` (a
    ``(y_true, y_pred)`` pair per metric). With ``result`` it returns the first metric's
    ``result()`` (ours: O(C), what Keras' train step reads every batch), otherwise the last
    metric's first variable (Keras' ``F1Score``'s C true positives: the issue timed Keras'
    metrics without their ``result()``, which is O(C * T) for ``AUC``). On JAX the metrics'
    stateless forms, jitted with the state donated (as Keras' JAX trainer does)."""
    if keras.backend.backend() == "jax":
        import jax

        def update(states, batch):
            states = [
                metric.stateless_update_state(state, *pair)
                for metric, state, pair in zip(metrics, states, batch, strict=True)
            ]
            return states, metrics[0].stateless_result(states[0]) if result else states[-1][0]

        step = jax.jit(update, donate_argnums=0)
        held = [[[v.value for v in metric.variables] for metric in metrics]]

        def call():
            held[0], returned = step(held[0], inputs)
            return returned

        return call

    def update(batch):
        for metric, pair in zip(metrics, batch, strict=True):
            metric.update_state(*pair)
        return metrics[0].result() if result else metrics[-1].variables[0]

    step = _compiled(update, xla)
    return lambda: step(inputs)


def before_metric(commit: str) -> type:
    """``ClassificationMetrics`` as it was at ``commit`` of this repository, beside today's in
    one process: its ``metrics``, ``functional`` and ``validation`` modules, read with ``git
    show``, become a package of another name in a temporary folder (their imports of
    ``mlflow_mcmetrics`` renamed to it). A subclass, so that it does not register itself with
    Keras under the name today's class holds."""
    root = Path(tempfile.mkdtemp(prefix="mcmetrics-before-"))
    package = root / "mcmetrics_before"
    package.mkdir()
    (package / "__init__.py").write_text("")
    repository = Path(__file__).resolve().parent.parent
    for module in ("metrics", "functional", "validation"):
        source = subprocess.run(
            ["git", "-C", str(repository), "show", f"{commit}:mlflow_mcmetrics/{module}.py"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        source = re.sub(r"^(\s*from )mlflow_mcmetrics\b", r"\1mcmetrics_before", source, flags=re.M)
        (package / f"{module}.py").write_text(source)
    sys.path.insert(0, str(root))
    metrics = importlib.import_module("mcmetrics_before.metrics")
    return type("ClassificationMetricsBefore", (metrics.ClassificationMetrics,), {})


#: Issue 31's rows: (classes C, bins T, batch N).
AGAINST_KERAS_ROWS = ((100, 200, 4096), (100, 4096, 4096), (10, 4096, 32), (1000, 4096, 256))


def against_keras_table(args, xla: bool, mode: str, before: type | None = None) -> None:
    """Issue 31's table: one update of ours (at T bins and at ``T=0``, with its ``result()``),
    of Keras' ``F1Score(average=None)`` alone (the floor) and of Keras' ``AUC(curve="PR",
    multi_label=True, num_thresholds=T)`` + ``F1Score`` together, on the same softmax batch
    (Keras' metrics get the labels one-hot, as they need them; ours sparse).

    The conditions alternate within each of ``--repeats`` rounds; a cell is the best
    round's mean ms per call (the issue's "best of 15"), and the ratios' spread is the range
    of the per-round ratios (each round times the conditions back to back). With ``before``
    (see :func:`before_metric`) that metric's two conditions join the rounds, and each row
    of the table is printed for it (``before``) and for today's (``after``), with the same
    Keras timings."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.get_logger().setLevel("ERROR")  # each condition traces its own function, knowingly
    rng = np.random.default_rng(31)
    print(
        "\n| mode | version | C | T | N | ours ms | ours T=0 ms | Keras AUC+F1 ms "
        "| Keras F1Score ms | (AUC+F1) / ours | ours / F1Score | ours T=0 / F1Score "
        "| spread (AUC+F1) / ours | spread ours / F1Score |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for num_classes, bins, batch in AGAINST_KERAS_ROWS:
        labels = rng.integers(0, num_classes, batch)
        logits = rng.normal(size=(batch, num_classes)).astype("float32")
        scores = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype("float32")
        sparse = (ops.convert_to_tensor(labels.astype("int32")), ops.convert_to_tensor(scores))
        one_hot = (ops.one_hot(sparse[0], num_classes), sparse[1])

        def keras_auc():
            return keras.metrics.AUC(
                curve="PR", multi_label=True, num_labels=num_classes, num_thresholds=bins
            )

        versions = ({"before": before} if before else {}) | {"after": ClassificationMetrics}
        calls = {}
        for version, metric_class in versions.items():
            for name, thresholds in (("ours", bins), ("ours T=0", 0)):
                calls[f"{name} {version}"] = _stateful_call(
                    [metric_class(num_classes, pr_thresholds=thresholds)],
                    [sparse],
                    xla,
                    result=True,
                )
        calls |= {
            "AUC+F1": _stateful_call(
                [keras_auc(), keras.metrics.F1Score(average=None)],
                [one_hot, one_hot],
                xla,
                result=False,
            ),
            "F1": _stateful_call(
                [keras.metrics.F1Score(average=None)], [one_hot], xla, result=False
            ),
        }
        loops = {}
        for name, call in calls.items():
            with _guard(name):
                call()  # trace / compile
                _block(call())
                start = time.perf_counter()
                _block(call())
                once = time.perf_counter() - start
            # About --loop-seconds a loop (0.03 with --quick), at least 3 calls.
            seconds = 0.03 if args.quick else args.loop_seconds
            loops[name] = max(3, min(500, int(seconds / max(once, 1e-6))))
        rounds: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(args.repeats):
            for name, call in calls.items():
                with _guard(name):
                    start = time.perf_counter()
                    for _ in range(loops[name]):
                        result = call()
                    _block(result)
                rounds[name].append((time.perf_counter() - start) / loops[name])
        best = {name: min(times) for name, times in rounds.items()}

        def spread(numerator, denominator):
            ratios = [a / b for a, b in zip(rounds[numerator], rounds[denominator], strict=True)]
            return f"{min(ratios):.2f}–{max(ratios):.2f}"

        for version in versions:
            ours, zero = f"ours {version}", f"ours T=0 {version}"
            print(
                f"| {mode} | {version} | {num_classes} | {bins} "
                f"| {batch} | {best[ours] * 1e3:.3f} | {best[zero] * 1e3:.3f} "
                f"| {best['AUC+F1'] * 1e3:.3f} | {best['F1'] * 1e3:.3f} "
                f"| {best['AUC+F1'] / best[ours]:.2f} | {best[ours] / best['F1']:.2f} "
                f"| {best[zero] / best['F1']:.2f} | {spread('AUC+F1', ours)} "
                f"| {spread(ours, 'F1')} |",
                flush=True,
            )


def _guard(name: str):
    """The transfer guard around our updates (see :func:`_no_transfers`); Keras' own metrics
    run without it."""
    return _no_transfers() if name.startswith("ours") else contextlib.nullcontext()


def bins_table(args, xla: bool, mode: str) -> None:
    """The update's cost against the number of score bins T, batch 32 (issue 17's rows)."""
    rng = np.random.default_rng(1)
    print("\n| mode | C | batch | T | ms per update | ratio |")
    print("|---|---|---|---|---|---|")
    for num_classes, bin_counts in (
        (10, (0, DEFAULT_PR_THRESHOLDS)),
        (1000, (200, DEFAULT_PR_THRESHOLDS, 16384)),
    ):
        labels = ops.convert_to_tensor(rng.integers(0, num_classes, 32))
        logits = rng.normal(size=(32, num_classes)).astype("float32")
        scores = ops.convert_to_tensor(np.exp(logits) / np.exp(logits).sum(1, keepdims=True))
        calls = 50 if args.quick else 300
        first = None
        for bins in bin_counts:
            cost = _time_ours(
                ClassificationMetrics(num_classes, pr_thresholds=bins), labels, scores, xla, calls
            )
            first = first or cost
            print(
                f"| {mode} | {num_classes} | 32 | {bins} | {cost * 1e3:.3f} | {cost / first:.2f} |",
                flush=True,
            )


class _WithoutCalibration(ClassificationMetrics):
    """The metric less its calibration counts: the baseline for their cost."""

    @staticmethod
    def _calibration_parts(labels, top, weights, counting):
        return [], []


def calibration_table(args, xla: bool, mode: str) -> None:
    """The cost of the calibration counts (3 cells per row, for ECE) against batch size:
    the update with them / without them, at the default T."""
    rng = np.random.default_rng(2)
    print("\n| mode | C | batch | without ms | with calibration ms | ratio |")
    print("|---|---|---|---|---|---|")
    for num_classes in (10, 1000):
        for batch in (32, 256, 4096):
            labels = ops.convert_to_tensor(rng.integers(0, num_classes, batch))
            logits = rng.normal(size=(batch, num_classes)).astype("float32")
            scores = ops.convert_to_tensor(np.exp(logits) / np.exp(logits).sum(1, keepdims=True))
            calls = 20 if args.quick or num_classes * batch > 10**5 else 200
            without, with_ = (
                _time_ours(metric_class(num_classes), labels, scores, xla, calls)
                for metric_class in (_WithoutCalibration, ClassificationMetrics)
            )
            print(
                f"| {mode} | {num_classes} | {batch} | {without * 1e3:.3f} | {with_ * 1e3:.3f} "
                f"| {with_ / without:.2f} |",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer calls per cell")
    parser.add_argument(
        "--no-torchmetrics", action="store_true", help="skip torchmetrics (slow at C=1000)"
    )
    parser.add_argument(
        "--bins-only", action="store_true", help="only the cost against the number of bins"
    )
    parser.add_argument(
        "--calibration-only", action="store_true", help="only the cost of the calibration counts"
    )
    parser.add_argument(
        "--against-keras",
        action="store_true",
        help="only issue 31's rows: ours against Keras' F1Score and AUC(PR) + F1Score",
    )
    parser.add_argument(
        "--before",
        default="",
        help="with --against-keras: a commit of this repository whose metric to time too",
    )
    parser.add_argument(
        "--repeats", type=int, default=15, help="alternating rounds of --against-keras"
    )
    parser.add_argument(
        "--loop-seconds",
        type=float,
        default=0.1,
        help="--against-keras: seconds of calls per condition and round (shorter loops and "
        "more rounds find a busy machine's quiet moments more often)",
    )
    parser.add_argument(
        "--modes",
        default="",
        help="comma-separated modes to run (tf.function, XLA, jax.jit); default all",
    )
    args = parser.parse_args()
    backend = keras.backend.backend()
    rng = np.random.default_rng(0)
    modes = (
        [("tf.function", False), ("XLA", True)] if backend == "tensorflow" else [("jax.jit", True)]
    )
    if args.modes:
        modes = [(mode, xla) for mode, xla in modes if mode in args.modes.split(",")]
    print(f"backend {backend}; devices: {_devices()}")
    if backend == "jax":
        print("our updates run under jax.transfer_guard('disallow'): no host-device transfer")
    if args.against_keras:
        before = before_metric(args.before) if args.before else None
        for mode, xla in modes:
            against_keras_table(args, xla, mode, before)
        return
    for mode, xla in modes:
        if not args.calibration_only:
            bins_table(args, xla, mode)
        if not args.bins_only:
            calibration_table(args, xla, mode)
    if args.bins_only or args.calibration_only:
        return
    print(
        "| mode | C | batch | floor ms | ours cm ms | ours full ms | keras F1+AUC ms | "
        "torchmetrics ms "
        "| keras / ours full | torchmetrics / ours full | ours full / floor |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for mode, xla in modes:
        for num_classes in (10, 100, 1000):
            for batch in (256, 4096):
                labels = rng.integers(0, num_classes, batch)
                logits = rng.normal(size=(batch, num_classes)).astype("float32")
                scores = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype("float32")
                y_true = ops.convert_to_tensor(labels)
                y_pred = ops.convert_to_tensor(scores)
                calls = max(
                    3, int((20 if args.quick else 100) * 256 * 10 / (batch * num_classes) ** 0.8)
                )
                floor = _time(lambda f=_compiled(lambda p: ops.sum(p), xla): f(y_pred), calls)
                cm = _time_ours(
                    ClassificationMetrics(num_classes, pr_thresholds=0), y_true, y_pred, xla, calls
                )
                full = _time_ours(
                    ClassificationMetrics(num_classes, pr_thresholds=BINS),
                    y_true,
                    y_pred,
                    xla,
                    calls,
                )
                keras_time = (
                    _time(
                        _keras_call(num_classes, ops.one_hot(y_true, num_classes), y_pred, xla),
                        calls,
                    )
                    if backend == "tensorflow"
                    else float("nan")
                )
                wanted = mode != "XLA" and not args.no_torchmetrics
                torch_call = _torchmetrics_call(num_classes, labels, scores) if wanted else None
                torch_time = _time(torch_call, calls) if torch_call else float("nan")
                print(
                    f"| {mode} | {num_classes} | {batch} | {floor * 1e3:.3f} | {cm * 1e3:.3f} | "
                    f"{full * 1e3:.3f} | "
                    f"{keras_time * 1e3:.3f} | {torch_time * 1e3:.3f} | {keras_time / full:.1f} | "
                    f"{torch_time / full:.1f} | {full / floor:.1f} |",
                    flush=True,
                )


def _devices() -> str:
    if keras.backend.backend() == "jax":
        import jax

        return ", ".join(str(d) for d in jax.devices())
    import tensorflow as tf

    return ", ".join(d.name for d in tf.config.list_logical_devices())


if __name__ == "__main__":
    main()
