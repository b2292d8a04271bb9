"""Keras 3's other backends: a real fit with autolog() under JAX (also data-parallel over 2
CPU devices) and PyTorch, in subprocesses, checked against scikit-learn."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import mlflow
import numpy as np
import pytest
from test_training import expected_scores

pytestmark = pytest.mark.slow

SCRIPT = textwrap.dedent("""
    import json, sys
    import keras, mlflow, numpy as np
    import mlflow_mcmetrics
    from sklearn.datasets import load_digits
    if sys.argv[1] == "data-parallel":
        keras.distribution.set_distribution(keras.distribution.DataParallel())
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    mlflow_mcmetrics.autolog()
    keras.utils.set_random_seed(0)
    # No keras.Input: the model is built by its first fit(), which must get the metric too.
    model = keras.Sequential(
        [keras.layers.Dense(16, activation="relu"), keras.layers.Dense(10, activation="softmax")]
    )
    model.compile(
        optimizer="adam", loss="sparse_categorical_crossentropy", jit_compile=sys.argv[1] != "eager"
    )
    model.fit(x[:1200], y[:1200], validation_data=(x[1200:1600], y[1200:1600]), epochs=2,
              batch_size=100, verbose=0)
    parallel = sys.argv[1] == "data-parallel"
    print(json.dumps({"run_id": mlflow.last_active_run().info.run_id,
                      "predicted": model.predict(x[1200:1600], verbose=0).argmax(1).tolist(),
                      "devices": len(keras.distribution.list_devices()) if parallel else 1}))
""")


@pytest.mark.parametrize(
    "backend, mode", [("jax", "jit"), ("jax", "data-parallel"), ("torch", "eager")]
)
def test_fit_on_another_backend(tracking, digits, tmp_path, backend, mode):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed (the test extras install jax; torch is optional)")
    client, experiment_id = tracking
    env = dict(
        os.environ,
        KERAS_BACKEND=backend,
        MLFLOW_TRACKING_URI=mlflow.get_tracking_uri(),
        MLFLOW_EXPERIMENT_ID=experiment_id,
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
    )
    script = tmp_path / "fit.py"
    script.write_text(SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script), mode], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = json.loads(result.stdout.strip().splitlines()[-1])
    if mode == "data-parallel":
        assert output["devices"] == 2
    # The last validation pass: every sample once, on any device layout.
    matrix = mlflow.artifacts.load_dict(
        f"runs:/{output['run_id']}/mcmetrics/epochs/0001/val_confusion_matrix.json"
    )
    assert sum(map(sum, matrix["matrix"])) == 400
    from sklearn.datasets import load_digits

    y_val = load_digits(return_X_y=True)[1][1200:1600]
    expected = expected_scores(y_val, np.array(output["predicted"]), list(range(10)), "val_")
    logged = client.get_run(output["run_id"]).data.metrics
    for key, value in expected.items():
        assert logged[key] == pytest.approx(value, abs=1e-6), key
    assert [m.step for m in client.get_metric_history(output["run_id"], "val_f1/3")] == [0, 1]


TRANSFER_SCRIPT = textwrap.dedent('''
    import json, os, tempfile
    import jax, keras
    import mlflow_mcmetrics
    from sklearn.datasets import load_digits

    def transfers_in_fit(batch_size):
        """How many host-device transfers (explicit ones too) JAX makes during a 2-epoch fit."""
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(16, activation="relu"),
                                  keras.layers.Dense(10, activation="softmax")])
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", jit_compile=True)
        with tempfile.TemporaryFile("w+") as log:
            stderr = os.dup(2)
            os.dup2(log.fileno(), 2)  # the guard logs from C++, to file descriptor 2
            jax.config.update("jax_transfer_guard", "log_explicit")  # all threads
            try:
                model.fit(x[:1200], y[:1200], validation_data=(x[1200:1600], y[1200:1600]),
                          epochs=2, batch_size=batch_size, verbose=0)
            finally:
                jax.config.update("jax_transfer_guard", "allow")
                os.dup2(stderr, 2)
                os.close(stderr)
            log.seek(0)
            return sum(" transfer: " in line for line in log)

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    plain = {size: transfers_in_fit(size) for size in (50, 100)}
    mlflow_mcmetrics.autolog()
    autolog = {size: transfers_in_fit(size) for size in (50, 100)}
    print(json.dumps({"plain": plain, "autolog": autolog, "platform": jax.devices()[0].platform}))
''')


def test_jax_fit_keeps_the_metric_state_on_the_device(tracking, tmp_path):
    """A transfer counter: JAX's transfer guard logs every host-device transfer of a jit-compiled
    fit, with and without autolog(), at two batch sizes. What autolog() adds (reading the state
    at each epoch's end, logging) must not grow with the number of batches: no per-batch
    transfers. On the CPU, JAX does not count device-to-host reads (host memory is the
    device's), so there the test catches round trips (state read to the host and put back); on
    a GPU, every transfer."""
    _, experiment_id = tracking
    env = dict(
        os.environ,
        KERAS_BACKEND="jax",
        MLFLOW_TRACKING_URI=mlflow.get_tracking_uri(),
        MLFLOW_EXPERIMENT_ID=experiment_id,
        TF_CPP_MIN_LOG_LEVEL="0",
    )
    script = tmp_path / "transfers.py"
    script.write_text(TRANSFER_SCRIPT)
    result = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    counts = json.loads(result.stdout.strip().splitlines()[-1])
    plain, tracked = counts["plain"], counts["autolog"]
    assert plain["50"] > plain["100"], counts  # the counter sees the input batches going in
    assert tracked["50"] - plain["50"] == tracked["100"] - plain["100"], counts
