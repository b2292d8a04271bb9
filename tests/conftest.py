"""Shared fixtures: one TensorFlow import, 2 logical CPUs, a real MLflow server on 127.0.0.1."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("PYTHONHASHSEED", "0")
# Every `mlflow server` the tests start (and their children's) runs without MLflow's job runner:
# its 5-7 Huey consumer processes, each importing MLflow, cost ~15 CPU-seconds per server start
# and serve GenAI jobs these tests never submit.
os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
# The journals' per-user fallback folder (journal.spool_dirs) belongs to this test run.
os.environ["XDG_CACHE_HOME"] = __import__("tempfile").mkdtemp(prefix="mcmetrics-test-cache-")

import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


def _split_cpu_in_two() -> None:
    """MirroredStrategy tests need 2 devices; logical devices must exist before TF starts."""
    if os.environ.get("KERAS_BACKEND") != "tensorflow":
        return
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
    )


_split_cpu_in_two()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class MlflowServer:
    """A real ``mlflow server`` process (SQLite backend, local artifacts) on 127.0.0.1 that
    can be killed and restarted on the same port and store."""

    def __init__(self, root: Path):
        self.root = root
        self.port = _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> MlflowServer:
        log = open(self.root / "server.log", "a")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--backend-store-uri",
                f"sqlite:///{self.root / 'mlflow.db'}",
                "--artifacts-destination",
                str(self.root / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                raise RuntimeError(
                    f"mlflow server did not start:\n{(self.root / 'server.log').read_text()}"
                )
            time.sleep(0.3)

    def kill(self) -> None:
        """SIGKILL the server and the workers it started (an outage, not a shutdown)."""
        import signal

        subprocess.run(["pkill", "-KILL", "-f", f"port {self.port}"], check=False)
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory) -> str:
    """A real ``mlflow server`` for the whole test run."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server")).start()
    yield server.uri
    server.stop()


@pytest.fixture
def tracking(mlflow_server, request, monkeypatch):
    """Point MLflow at the test server, in a fresh experiment; undo every autolog afterwards."""
    import mlflow

    import mlflow_mcmetrics

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    mlflow.set_tracking_uri(mlflow_server)
    experiment = mlflow.set_experiment(f"{request.node.name}-{time.time_ns()}")
    yield mlflow.MlflowClient(), experiment.experiment_id
    # No sender of a finished fit may outlive its test (it would poll beside the next test).
    from mlflow_mcmetrics.sender import SENDER

    SENDER.finish()
    while mlflow.active_run():
        mlflow.end_run()
    mlflow_mcmetrics.autolog(disable=True)
    mlflow.keras.autolog(disable=True)
    mlflow.autolog(disable=True)


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's digits as (x_train, y_train, x_val, y_val), float32 in [0, 1]."""
    import numpy as np
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order], y[order]
    return x[:1200], y[:1200], x[1200:], y[1200:]


REPO_ROOT = Path(__file__).resolve().parents[1]
