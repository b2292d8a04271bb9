"""Tracking-server outages, the spool and `mcmetrics sync`, concurrent trainings."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import warnings

import keras
import mlflow
import pytest
from conftest import MlflowServer
from test_readme import subprocess_env

import mlflow_mcmetrics
from mlflow_mcmetrics import MCMetricsCallback, MCMetricsWarning

pytestmark = pytest.mark.slow
EPOCHS = 8


class Outage(keras.callbacks.Callback):
    """Kills the server at the start of epoch ``down``; restarts it at the start of ``up``."""

    def __init__(self, server: MlflowServer, down: int, up: int | None):
        super().__init__()
        self.server, self.down, self.up = server, down, up

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.down:
            self.server.kill()
        if epoch == self.up:
            self.server.start()


@pytest.fixture
def own_server(tmp_path, monkeypatch):
    server = MlflowServer(tmp_path).start()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    mlflow.set_tracking_uri(server.uri)
    mlflow.set_experiment("outages")  # not an experiment id of the shared server's
    monkeypatch.chdir(tmp_path)  # the spool folder lands here
    yield server
    while mlflow.active_run():
        mlflow.end_run()
    mlflow_mcmetrics.autolog(disable=True)
    server.stop()


def fit_through_outage(digits, server, up):
    x, y, xv, yv = digits
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(
        optimizer="adam",
        loss="sparse_categorical_crossentropy",
        metrics=[mlflow_mcmetrics.ClassificationMetrics(10, pr_thresholds=64)],
    )
    callback = MCMetricsCallback(log_every_n_epochs=3)
    run = mlflow.start_run()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(
            x,
            y,
            validation_data=(xv, yv),
            epochs=EPOCHS,
            batch_size=256,
            verbose=0,
            callbacks=[Outage(server, down=2, up=up), callback],
        )
    return (
        run.info.run_id,
        callback,
        [str(w.message) for w in caught if issubclass(w.category, MCMetricsWarning)],
    )


def assert_every_step_logged_once(client, run_id, history):
    for key in ("f1_macro", "val_f1_macro", "val_recall/3", "f1/9", "val_map", "val_f1_few"):
        logged = client.get_metric_history(run_id, key)
        assert [m.step for m in logged] == list(range(EPOCHS)), key
        assert [m.value for m in logged] == history[key], key


def test_server_down_for_two_epochs_loses_nothing(own_server, digits, tmp_path):
    # No warning is required here: a delivery that was on its way when the server died is
    # retried inside MLflow's client and may well arrive once the server is back.
    run_id, callback, _ = fit_through_outage(digits, own_server, up=4)
    mlflow.end_run()
    mlflow_mcmetrics.flush()
    client = mlflow.MlflowClient()
    assert_every_step_logged_once(client, run_id, callback.history)
    # Artifacts written during the outage arrived too (epoch 3's JSON was logged while down).
    matrix = mlflow.artifacts.load_dict(
        f"runs:/{run_id}/mcmetrics/epochs/0003/val_confusion_matrix.json"
    )
    assert matrix["epoch"] == 3
    assert not list(tmp_path.glob("mcmetrics-spool/*"))  # delivered journals are removed


#: A training script that prints the epochs our callback ended (so that the test can kill the
#: server after one of them) and exits with its journal left behind.
OUTAGE_SCRIPT = textwrap.dedent("""
    import sys, time
    import keras, mlflow, mlflow_mcmetrics
    from sklearn.datasets import load_digits

    class Progress(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 0:
                print("run", mlflow.active_run().info.run_id, flush=True)
            print(f"epoch {epoch}", flush=True)
            time.sleep(1.0 if epoch == 2 else 0)  # the test kills the server meanwhile

    x, y = load_digits(return_X_y=True)
    x = (x / 16).astype("float32")
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
                  metrics=[mlflow_mcmetrics.ClassificationMetrics(10, pr_thresholds=64)])
    callback = mlflow_mcmetrics.MCMetricsCallback(log_every_n_epochs=3)
    mlflow.set_experiment("outages")
    model.fit(x[:1200], y[:1200], validation_data=(x[1200:], y[1200:]), epochs=8,
              batch_size=256, verbose=0, callbacks=[callback, Progress()])
    import json
    print("history", json.dumps(callback.history), flush=True)
""")


def test_server_never_back_journals_and_sync_delivers_exactly_once(own_server, tmp_path):
    """The server dies at epoch 2 and the training process ends before it is back: its
    journal holds the rest, and `mcmetrics sync` delivers it once, however often it runs."""
    script = tmp_path / "outage.py"
    script.write_text(OUTAGE_SCRIPT)
    child = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=subprocess_env(own_server.uri),
    )
    lines = []
    for line in child.stdout:
        lines.append(line)
        if line.startswith("epoch 2"):
            own_server.kill()
    _, err = child.communicate(timeout=300)
    assert child.returncode == 0, err[-3000:]
    assert "could not reach the tracking server" in err
    run_id = next(line.split()[1] for line in lines if line.startswith("run "))
    history = json.loads(next(line[8:] for line in lines if line.startswith("history ")))
    (journal,) = tmp_path.glob("mcmetrics-spool/*/records.jsonl")
    kinds = [json.loads(line)["kind"] for line in journal.read_text().splitlines()]
    assert kinds.count("metrics") == EPOCHS and "artifact" in kinds and "image" in kinds
    own_server.start()

    command = [sys.executable, "-m", "mlflow_mcmetrics.cli", "sync"]
    env = subprocess_env(own_server.uri)
    first = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-2000:]
    assert f"run {run_id}: " in first.stdout
    assert not journal.exists()
    client = mlflow.MlflowClient()
    assert_every_step_logged_once(client, run_id, history)
    report = mlflow.artifacts.load_dict(f"runs:/{run_id}/mcmetrics/classification_report.json")
    assert report["epoch"] == EPOCHS - 1
    assert client.get_run(run_id).info.status == "FINISHED"  # its journal's end_run record

    second = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert "nothing to send" in second.stdout
    assert_every_step_logged_once(client, run_id, history)


def test_replaying_a_journal_twice_logs_nothing_twice(own_server, tmp_path):
    from mlflow_mcmetrics.journal import Journal
    from mlflow_mcmetrics.sender import pump

    with mlflow.start_run() as run:
        pass
    client = mlflow.MlflowClient()
    for _ in range(2):
        journal = Journal(run.info.run_id, own_server.uri)
        journal.append(
            {"kind": "metrics", "metrics": [["val_f1/a", 0.5, 1000, 0], ["val_f1/a", 0.7, 2000, 1]]}
        )
        journal.append({"kind": "artifact", "path": "mcmetrics/x.json"}, b"{}", "x.json")
        assert pump(journal, client) and journal.delivered == 2
        journal.remove()
    history = client.get_metric_history(run.info.run_id, "val_f1/a")
    assert [(m.step, m.value) for m in history] == [(0, 0.5), (1, 0.7)]


WORKER = textwrap.dedent("""
    import json, sys
    import numpy as np, keras, mlflow, mlflow_mcmetrics
    seed = int(sys.argv[1])
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(600, 8)).astype("float32")
    y = (x[:, :3].argmax(1) + seed) % 3
    callback = mlflow_mcmetrics.MCMetricsCallback(class_names=["a", "b", "c"])
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3, activation="softmax")])
    metric = mlflow_mcmetrics.ClassificationMetrics(3)
    model.compile("adam", "sparse_categorical_crossentropy", metrics=[metric])
    with mlflow.start_run(run_name=f"worker {seed}") as run:
        model.fit(x[:400], y[:400], validation_data=(x[400:], y[400:]), epochs=3, verbose=0,
                  callbacks=[callback])
    print(json.dumps({"run_id": run.info.run_id, "history": callback.history}))
""")


def test_four_concurrent_trainings_each_log_only_their_own_values(tracking, tmp_path):
    client, experiment_id = tracking
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {
        **__import__("os").environ,
        "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(),
        "MLFLOW_EXPERIMENT_ID": experiment_id,
    }
    workers = [
        subprocess.Popen(
            [sys.executable, str(script), str(seed)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=tmp_path,
        )
        for seed in range(4)
    ]
    outputs = [worker.communicate(timeout=600) for worker in workers]
    assert all(worker.returncode == 0 for worker in workers), [err[-1500:] for _, err in outputs]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert len({r["run_id"] for r in results}) == 4
    for result in results:
        for key, values in result["history"].items():
            logged = client.get_metric_history(result["run_id"], key)
            assert [m.step for m in logged] == [0, 1, 2] and [m.value for m in logged] == values, (
                key
            )


CRASHING_SCRIPT = textwrap.dedent("""
    import keras, mlflow_mcmetrics
    from sklearn.datasets import load_digits

    class Crash(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                raise RuntimeError("a bug in the training script")

    x, y = load_digits(return_X_y=True)
    mlflow_mcmetrics.autolog(log_every_n_epochs=1)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x[:1000] / 16, y[:1000], validation_data=(x[1000:] / 16, y[1000:]), epochs=4,
              verbose=0, callbacks=[Crash()])
""")


def test_a_script_that_dies_in_fit_keeps_its_epochs_and_its_run_ends_killed(tracking, tmp_path):
    client, experiment_id = tracking
    script = tmp_path / "crash.py"
    script.write_text(CRASHING_SCRIPT)
    env = subprocess_env(mlflow.get_tracking_uri())
    env["MLFLOW_EXPERIMENT_ID"] = experiment_id
    result = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode != 0 and "a bug in the training script" in result.stderr
    (run,) = client.search_runs([experiment_id])
    assert run.info.status == "KILLED"  # not FINISHED, as MLflow's exit handler would have it
    for key in ("val_f1/4", "f1_macro", "val_map"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [0, 1], key
    epochs = [item.path for item in client.list_artifacts(run.info.run_id, "mcmetrics/epochs")]
    assert epochs == ["mcmetrics/epochs/0000", "mcmetrics/epochs/0001"]


class Interrupt(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt


def test_an_interrupted_fit_keeps_its_epochs_and_the_next_fit_gets_a_new_run(tracking, digits):
    client, _ = tracking
    x, y, xv, yv = digits
    mlflow_mcmetrics.autolog()
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    with pytest.raises(KeyboardInterrupt):
        model.fit(x, y, validation_data=(xv, yv), epochs=3, verbose=0, callbacks=[Interrupt()])
    interrupted = mlflow.active_run().info.run_id
    model.fit(x, y, validation_data=(xv, yv), epochs=1, verbose=0)
    finished = mlflow.last_active_run().info.run_id
    assert finished != interrupted
    assert client.get_run(interrupted).info.status == "KILLED"
    assert [m.step for m in client.get_metric_history(interrupted, "val_f1/4")] == [0]
    assert client.get_run(finished).info.status == "FINISHED"
