"""The MLproject's entry points, the `mcmetrics` command and the examples, end to end."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import mlflow
import numpy as np
import pytest
from _inputs import ece_reference
from conftest import REPO_ROOT
from scipy.special import softmax
from sklearn.metrics import roc_auc_score
from test_readme import subprocess_env

from mlflow_mcmetrics import cli

pytestmark = pytest.mark.slow


def mlflow_run(experiment_id, entry_point, cwd, **params):
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "run",
        str(REPO_ROOT),
        "--env-manager",
        "local",
        "--experiment-id",
        experiment_id,
        "-e",
        entry_point,
    ]
    for key, value in params.items():
        command += ["-P", f"{key}={value}"]
    result = subprocess.run(
        command,
        cwd=cwd,
        env=subprocess_env(mlflow.get_tracking_uri()),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_compare_entry_point_logs_the_comparison_to_the_parent(tracking, tmp_path):
    client, experiment_id = tracking
    mlflow_run(experiment_id, "compare", tmp_path, losses="cce,logit_adjusted", epochs=2, seeds=2)
    runs = client.search_runs([experiment_id])
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted((r.data.params["loss"], r.data.params["seed"]) for r in children) == [
        ("cce", "0"),
        ("cce", "1"),
        ("logit_adjusted", "0"),
        ("logit_adjusted", "1"),
    ]
    folder = client.download_artifacts(parent.info.run_id, "comparison", str(tmp_path))
    markdown = open(f"{folder}/comparison.md").read()
    assert "| cce | 2 |" in markdown and "| logit_adjusted | 2 |" in markdown
    csv_rows = open(f"{folder}/comparison.csv").read().splitlines()
    assert len(csv_rows) == 3
    # The table's means are the children's logged test values.
    cce = [r.data.metrics["test_f1_macro"] for r in children if r.data.params["loss"] == "cce"]
    assert float(csv_rows[1].split(",")[2]) == pytest.approx(sum(cce) / 2, abs=1e-9)
    assert open(f"{folder}/comparison.png", "rb").read(4) == b"\x89PNG"


@pytest.mark.parametrize(
    "entry_point, metric", [("sequence", "val_f1/tag 1"), ("multilabel", "val_recall/label 29")]
)
def test_sequence_and_multilabel_entry_points(tracking, tmp_path, entry_point, metric):
    client, experiment_id = tracking
    mlflow_run(experiment_id, entry_point, tmp_path, epochs=1)
    (run,) = client.search_runs([experiment_id])
    assert metric in run.data.metrics
    if entry_point == "sequence":
        assert not any(key.endswith("/<pad>") for key in run.data.metrics)


def test_every_loss_trains_and_mcmetrics_compare_reads_the_runs(tracking, tmp_path, monkeypatch):
    client, experiment_id = tracking
    names = [*cli.MULTICLASS_LOSSES, "balanced_softmax"]
    for name in names:
        run_id, test = cli.train("digits", name, epochs=1, verbose=0)
        assert client.get_run(run_id).data.params["loss"] == name
        assert 0.0 <= test["test_f1_macro"] <= 1.0
    monkeypatch.chdir(tmp_path)
    experiment_name = client.get_experiment(experiment_id).name
    assert cli.main(["compare", "--experiment", experiment_name, "--output", "out"]) == 0
    rows = (tmp_path / "out" / "comparison.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == names
    page = (tmp_path / "out" / "comparison.html").read_text()
    carried = json.loads(re.search(r'id="mcmetrics-data">(.*?)</script>', page).group(1))
    assert [row["group"] for row in carried["rows"]] == names
    assert sum(len(ids) for ids in carried["run_ids"].values()) == len(names)
    assert carried["train_counts"]["0"] > carried["train_counts"]["9"]  # head to tail


def test_test_split_scores_are_computed_from_probabilities(tracking):
    """The MLproject's CNN outputs logits; its test_* values are those of their softmax."""

    class LogitModel:
        def predict(self, x, verbose=0):
            return x

    rng = np.random.default_rng(0)
    y_test = rng.integers(0, 3, 300)
    logits = rng.normal(size=(300, 3)) * 2
    logits[np.arange(300), y_test] += 1.0
    with mlflow.start_run():
        values = cli._test_scores(LogitModel(), logits, y_test, ["a", "b", "c"])
    probabilities = softmax(logits, axis=1)
    for c, name in enumerate("abc"):
        exact = roc_auc_score(y_test == c, probabilities[:, c])
        assert values[f"test_roc_auc/{name}"] == pytest.approx(exact, abs=1e-3)
    ones = np.ones(len(y_test))
    assert values["test_ece"] == pytest.approx(ece_reference(y_test, probabilities, ones), abs=1e-9)


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["train", "--loss", "dice"], "Unknown loss 'dice'; choose from cce, weighted_cce, focal"),
        (
            ["train", "--dataset", "mnist"],
            "Unknown dataset 'mnist'; choose one of digits, fashion_mnist, cifar10, npz:PATH",
        ),
        (["compare-losses", "--losses", "cce,nope"], "Unknown loss 'nope'"),
        (["train", "--dataset", "npz:/no/such.npz"], "no such file"),
    ],
)
def test_bad_choices_fail_at_once_with_the_valid_ones(arguments, message):
    result = subprocess.run(
        [sys.executable, "-m", "mlflow_mcmetrics.cli", *arguments],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert message in result.stderr


@pytest.mark.parametrize("script", sorted(p.name for p in (REPO_ROOT / "examples").glob("*.py")))
def test_examples_run(tracking, tmp_path, script):
    _, experiment_id = tracking
    env = subprocess_env(mlflow.get_tracking_uri())
    env["MLFLOW_EXPERIMENT_ID"] = experiment_id
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "examples" / script), "--epochs", "2"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip()
