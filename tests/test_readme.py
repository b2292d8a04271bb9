"""The README's promises: its two commands, its quick start, its links, and the MLproject it runs.

The documentation site's code blocks run in tests/test_docs.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import mlflow
import pytest
from conftest import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()


def code_blocks(language):
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_readme_is_short_and_every_code_block_is_tested():
    assert len(README.splitlines()) <= 200
    # The two commands (below) and the quick start (test_usage_example_runs_as_written).
    assert re.findall(r"^```(\S*)", README, flags=re.M) == ["bash", "", "bash", "", "python", ""]


def test_readme_links_and_pictures_point_at_files_of_the_repository():
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README)
    local = [target for target in targets if "://" not in target]
    assert len(local) >= 10  # the pictures and the links into the documentation site
    for target in local:
        assert (REPO_ROOT / target).is_file(), target


def subprocess_env(tracking_uri):
    env = dict(os.environ, MLFLOW_TRACKING_URI=tracking_uri)
    # `mlflow run --env-manager local` runs the entry point with the `python` on PATH.
    env["PATH"] = f"{os.path.dirname(sys.executable)}{os.pathsep}{env['PATH']}"
    return env


def test_readme_opens_with_the_two_commands_and_ci_runs_the_same_test_command():
    assert README.index("```bash") < README.index("\n## ")
    run_job, run_tests = (block.strip() for block in code_blocks("bash")[:2])
    assert run_job.endswith("mlflow run . --env-manager local")
    test_command = run_tests.split("&&")[-1].strip()
    assert test_command == "python -m pytest"
    ci_lines = (REPO_ROOT / ".ci" / "run").read_text().splitlines()
    assert any(line.strip().startswith(test_command) for line in ci_lines)


@pytest.mark.slow
def test_usage_example_runs_as_written(tracking, tmp_path):
    client, experiment_id = tracking
    example = code_blocks("python")[0]
    env = subprocess_env(mlflow.get_tracking_uri())
    env["MLFLOW_EXPERIMENT_ID"] = experiment_id
    result = subprocess.run(
        [sys.executable, "-c", example],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    printed = float(result.stdout.strip().splitlines()[-1])
    (run,) = client.search_runs([experiment_id])
    assert run.data.metrics["val_f1/digit 3"] == printed
    assert len(client.get_metric_history(run.info.run_id, "val_f1/digit 3")) == 5


@pytest.mark.slow
def test_mlproject_main_entry_point(tracking, tmp_path):
    client, experiment_id = tracking
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlflow",
            "run",
            str(REPO_ROOT),
            "--env-manager",
            "local",
            "--experiment-id",
            experiment_id,
            "-P",
            "epochs=2",
        ],
        cwd=tmp_path,
        env=subprocess_env(mlflow.get_tracking_uri()),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = client.search_runs([experiment_id])
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert (params["imbalance_ratio"], params["dataset"], params["loss"]) == ("20", "digits", "cce")
    assert params["mcmetrics.task"] == "multiclass" and params["mcmetrics.from_logits"] == "True"
    artifacts = {f.path for f in client.list_artifacts(run.info.run_id, "mcmetrics")}
    assert {
        "mcmetrics/labels.json",
        "mcmetrics/confusion_matrix.png",
        "mcmetrics/pr_curves.png",
        "mcmetrics/f1_by_epoch.png",
        "mcmetrics/classification_report.md",
        "mcmetrics/epochs",
    } <= artifacts
    for prefix in ("", "val_", "test_"):
        assert {f"{prefix}f1/{c}" for c in range(10)} <= set(run.data.metrics)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_f1_macro")] == [0, 1]
    counts = mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/train_class_counts.json")
    assert counts["0"] / counts["9"] == pytest.approx(20, rel=0.25)
