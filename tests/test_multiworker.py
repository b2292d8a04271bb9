"""Multi-worker training: who logs, and that every sample of the global batch counts once.

Two worker processes on 127.0.0.1 train with MultiWorkerMirroredStrategy. With Keras 3.15.1 /
TensorFlow 2.21, ``model.fit`` itself fails under that strategy (no mlflow_mcmetrics involved;
a canary test below keeps watching), so the end-to-end test drives the metric and the callback
from a custom training loop through the hooks fit() would call.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from conftest import _free_port
from mlflow_mcmetrics.callback import is_chief
from multiworker_worker import data as load_digits_split
from test_readme import subprocess_env


@pytest.mark.parametrize(
    "config, chief",
    [
        (None, True),
        ({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 0}}, True),
        ({"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}, False),
        ({"cluster": {"chief": ["c:0"], "worker": ["a:1"]}, "task": {"type": "chief", "index": 0}}, True),
        ({"cluster": {"chief": ["c:0"], "worker": ["a:1"]}, "task": {"type": "worker", "index": 0}}, False),
    ],
)
def test_only_the_chief_logs(monkeypatch, config, chief):
    if config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", json.dumps(config))
    assert is_chief() is chief


def start_workers(mode, output_dir, env):
    """Two worker processes on 127.0.0.1 (worker 0 is the chief); returns their results."""
    ports = [_free_port(), _free_port()]
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    workers = [
        subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("multiworker_worker.py")),
             json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}), mode, str(output_dir)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for index in range(2)
    ]
    return [(worker.wait(timeout=300), worker.stdout.read()) for worker in workers]


@pytest.mark.slow
def test_multi_worker_custom_loop_logs_once_from_the_chief_and_counts_every_sample_once(tracking, tmp_path):
    client, experiment_id = tracking
    env = subprocess_env(mlflow.get_tracking_uri())
    env["MLFLOW_EXPERIMENT_ID"] = experiment_id
    for status, output in start_workers("loop", tmp_path, env):
        assert status == 0, output[-3000:]

    (run,) = client.search_runs([experiment_id])  # one run: only the chief logged
    for key in ("val_f1/digit 3", "f1_macro", "val_ap/digit 9"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [0, 1]
    _, _, _, y_val = load_digits_split()
    matrix = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/mcmetrics/epochs/0001/val_confusion_matrix.json")
    assert np.sum(matrix["matrix"]) == len(y_val)  # every validation sample, once, across both workers

    predicted = np.load(tmp_path / "val_logits.npy").argmax(1)
    assert matrix["matrix"] == confusion_matrix(y_val, predicted, labels=range(10)).tolist()
    precision, recall, f1, _ = precision_recall_fscore_support(y_val, predicted, labels=range(10), zero_division=0)
    metrics = run.data.metrics
    for index in range(10):
        assert metrics[f"val_precision/digit {index}"] == pytest.approx(precision[index], abs=1e-6)
        assert metrics[f"val_recall/digit {index}"] == pytest.approx(recall[index], abs=1e-6)
        assert metrics[f"val_f1/digit {index}"] == pytest.approx(f1[index], abs=1e-6)


@pytest.mark.slow
def test_keras_fit_under_multi_worker_mirrored_strategy_still_fails_upstream(tracking, tmp_path):
    """A canary: Keras 3.15.1's fit() fails under MultiWorkerMirroredStrategy before any callback
    runs (``strategy.reduce`` of the first PerReplica batch in ``_maybe_symbolic_build``). When
    this test fails, Keras has fixed it: test ``autolog()`` with fit() end to end instead."""
    env = subprocess_env(mlflow.get_tracking_uri())
    for status, output in start_workers("fit", tmp_path, env):
        assert status != 0
        assert "Attempt to convert a value (PerReplica" in output
