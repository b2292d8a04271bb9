"""Who logs in multi-worker training.

A 2-process MultiWorkerMirroredStrategy fit could not be tested end to end here: with Keras
3.15.1 / TensorFlow 2.21, plain ``model.fit`` (no mlflow_mcmetrics involved, numpy or tf.data
input) fails in ``Trainer._maybe_symbolic_build`` on ``strategy.reduce`` of the first
PerReplica batch ("Attempt to convert a value (PerReplica...) to a Tensor").
"""

from __future__ import annotations

import json

import pytest

from mlflow_mcmetrics.callback import is_chief


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
