"""Training never crashes, hangs or silently loses a value because of logging (issue 15).

Real faults where they can be made: a closed port, a server killed and restarted, SIGTERM and
SIGINT sent to a training process, a read-only working directory for a non-root user. The
training scripts run in child processes so that signals and process-wide hooks stay there.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import warnings
from pathlib import Path

import keras
import mlflow
import pytest
from conftest import REPO_ROOT, MlflowServer
from test_training import dense_model

import mlflow_mcmetrics
from mlflow_mcmetrics import MCMetricsCallback, MCMetricsWarning

pytestmark = pytest.mark.slow

#: A training script: autolog() and a small fit on digits. {epochs}, {callbacks} and {after}
#: are filled in; it prints one line per epoch start (to stdout, flushed).
TRAINING = """
import os, sys, time
import keras, mlflow, numpy as np
import mlflow_mcmetrics
from sklearn.datasets import load_digits

class Progress(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        print(f"epoch {{epoch}} at {{time.time()}}", flush=True)
    def on_epoch_end(self, epoch, logs=None):
        print(f"pausing after epoch {{epoch}}", flush=True)
        time.sleep({pause})
        while epoch == {wait_after_epoch} and not os.path.exists("go-on"):
            time.sleep(0.1)

x, y = load_digits(return_X_y=True)
x = (x / 16).astype("float32")
mlflow_mcmetrics.autolog(class_names=[f"digit {{i}}" for i in range(10)], pr_thresholds=64,
                         {autolog})
keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(16, activation="relu"),
                          keras.layers.Dense(10, activation="softmax")])
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
print("start", time.time(), flush=True)
model.fit(x[:1200], y[:1200], validation_data=(x[1200:], y[1200:]), epochs={epochs}, verbose=0,
          callbacks=[Progress()])
print("after fit", time.time(), flush=True)
{after}
"""


def training_script(
    tmp_path: Path,
    *,
    epochs=3,
    pause=0.0,
    after="",
    prelude="",
    wait_after_epoch=-1,
    autolog="",
) -> Path:
    """A training script; after epoch ``wait_after_epoch`` it waits for a file ``go-on`` in its
    working directory. ``autolog``: more ``autolog()`` arguments, as source."""
    script = tmp_path / "train.py"
    script.write_text(
        textwrap.dedent(prelude)
        + TRAINING.format(
            epochs=epochs,
            pause=pause,
            after=after,
            wait_after_epoch=wait_after_epoch,
            autolog=autolog,
        )
    )
    return script


def child_env(tracking_uri: str, **extra) -> dict:
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PYTHONUNBUFFERED": "1", **extra}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    for name in ("MLFLOW_AUTOLOGGING_TESTING", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        env.pop(
            name, None
        )  # set by earlier tests' mlflow.set_experiment(); each child has its own server
    return env


def run_training(script: Path, tracking_uri: str) -> subprocess.CompletedProcess:
    """Run a :func:`training_script` in its folder to the end; it must succeed."""
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        cwd=script.parent,
        env=child_env(tracking_uri),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def start_training(script: Path, tracking_uri: str, until: str, **popen) -> subprocess.Popen:
    """Start a :func:`training_script` in its folder and read its output until a line starts
    with ``until`` (the moment a test signals it)."""
    child = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=script.parent,
        env=child_env(tracking_uri),
        **popen,
    )
    for line in child.stdout:
        if line.startswith(until):
            break
    return child


def closed_port_uri() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def only_run(uri: str) -> mlflow.entities.Run:
    client = mlflow.MlflowClient(uri)
    runs = [
        run
        for experiment in client.search_experiments()
        for run in client.search_runs([experiment.experiment_id])
    ]
    assert len(runs) == 1, (
        [r.info.run_id for r in runs],
        client.search_experiments(),
        client.tracking_uri,
    )
    return runs[0]


def test_no_environment_change_from_this_package_during_a_fit_over_http(tmp_path, mlflow_server):
    """Item 1: changing os.environ beside TensorFlow's threads crashes processes."""
    prelude = """
    import sys, traceback
    CHANGES = []
    def audit(event, args):
        if event in ("os.putenv", "os.unsetenv"):
            frames = [f.filename for f in traceback.extract_stack()]
            if any("mlflow_mcmetrics" in name for name in frames):
                CHANGES.append((event, args[0], frames[-3:]))
    sys.addaudithook(audit)
    """
    after = "print('changes from mlflow_mcmetrics:', CHANGES)"
    done = run_training(
        training_script(tmp_path, epochs=4, prelude=prelude, after=after), mlflow_server
    )
    assert "changes from mlflow_mcmetrics: []" in done.stdout, done.stdout


def test_server_down_at_start_trains_at_once_and_sync_creates_the_run(tmp_path):
    """Item 2: a closed port; training starts within seconds, `mcmetrics sync` delivers all."""
    uri = closed_port_uri()
    done = run_training(training_script(tmp_path, epochs=3), uri)
    lines = dict(
        line.split(" at ") for line in done.stdout.splitlines() if line.startswith("epoch")
    )
    start = float(done.stdout.split("start ")[1].split()[0])
    assert float(lines["epoch 0"]) - start < 10, done.stdout
    assert "after fit" in done.stdout
    (journal,) = (tmp_path / "mcmetrics-spool").glob("offline-*/records.jsonl")
    records = [json.loads(line) for line in journal.read_text().splitlines()]
    kinds = [record["kind"] for record in records]
    assert kinds[:2] == ["journal", "create_run"] and kinds[-1] == "close"
    (end,) = [record for record in records if record["kind"] == "end_run"]
    assert end["status"] == "FINISHED"

    server = MlflowServer(tmp_path)
    server.port, server.uri = int(uri.rsplit(":", 1)[1]), uri
    server.start()
    try:
        sync = subprocess.run(
            [sys.executable, "-m", "mlflow_mcmetrics.cli", "sync", "--tracking-uri", uri],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=child_env(uri),
            timeout=300,
        )
        assert sync.returncode == 0 and "stopped at record" not in sync.stderr, sync.stderr[-3000:]
        run = only_run(uri)
        assert run.info.status == "FINISHED"
        assert run.data.params["mcmetrics.task"] == "multiclass"
        assert run.data.tags["mlflow.autologging"] == "mlflow_mcmetrics"
        client = mlflow.MlflowClient(uri)
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_f1/digit 3")] == [
            0,
            1,
            2,
        ]
        report = json.loads(
            Path(
                client.download_artifacts(
                    run.info.run_id, "mcmetrics/classification_report.json", str(tmp_path)
                )
            ).read_text()
        )
        assert report["epoch"] == 2
        assert not list((tmp_path / "mcmetrics-spool").glob("*/records.jsonl"))
    finally:
        server.stop()


def test_server_back_during_training_creates_the_run_then(tmp_path):
    """Item 2: the offline run is created when the server answers, with the backlog."""
    uri = closed_port_uri()
    # Training waits after epoch 2 until the server is up (it may take seconds to start).
    script = training_script(tmp_path, epochs=6, pause=0.5, wait_after_epoch=2)
    child = subprocess.Popen(
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=child_env(uri),
    )
    server = MlflowServer(tmp_path)
    server.port, server.uri = int(uri.rsplit(":", 1)[1]), uri
    try:
        for line in child.stdout:
            if line.startswith("epoch 1 "):
                server.start()
                (tmp_path / "go-on").touch()
                break
        out, err = child.communicate(timeout=300)
        assert child.returncode == 0, err[-3000:]
        run = only_run(uri)
        assert run.info.status == "FINISHED"
        history = mlflow.MlflowClient(uri).get_metric_history(run.info.run_id, "val_f1_macro")
        assert [m.step for m in history] == list(range(6))
        assert not (tmp_path / "mcmetrics-spool").exists()
    finally:
        child.kill()
        server.stop()


def test_unwritable_working_directory_falls_back_to_a_user_spool():
    """Item 3: read-only directory, non-root user, server down: fit() returns, the spool
    goes to the per-user temporary folder, the code after fit() runs."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run the child as another user")
    # A folder the other user can reach (pytest's tmp_path is private to root) but not write.
    outer = Path(tempfile.mkdtemp(prefix="mcmetrics-readonly-"))
    outer.chmod(0o755)
    work = outer / "readonly"
    work.mkdir()
    script = training_script(work, epochs=2, after="print('saved model')")
    work.chmod(0o555)
    user_spool = Path("/tmp") / "mcmetrics-spool-65534"
    env = child_env(closed_port_uri(), HOME="/nonexistent")
    done = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            sys.executable,
            str(script),
        ],
        capture_output=True,
        text=True,
        cwd=work,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "saved model" in done.stdout
    assert str(user_spool) in done.stderr
    spooled = [
        p.parent
        for p in user_spool.glob("offline-*/records.jsonl")
        if p.stat().st_mtime > time.time() - 300
    ]
    assert spooled
    for path in spooled:
        shutil.rmtree(path)
    shutil.rmtree(outer)


def test_nothing_writable_reports_the_exact_count_lost(tmp_path, digits, monkeypatch):
    """Item 3: only if no folder is writable, one warning with the number of records."""
    from mlflow_mcmetrics.journal import Journal
    from mlflow_mcmetrics.sender import Sender

    monkeypatch.setenv("MCMETRICS_SPOOL_DIR", "/proc/mcmetrics-cannot-write-here")
    uri = closed_port_uri()
    journal = Journal("a-run", uri)
    assert not journal.durable
    sender = Sender()
    sender.add(journal, mlflow.MlflowClient(uri))
    for index in range(7):
        journal.append({"kind": "metrics", "metrics": [["f1_macro", 0.5, 0, index]]})
    with pytest.warns(MCMetricsWarning, match="lost 7 record"):
        sender.finish(timeout=5)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_mid_fit_ends_the_run_killed_with_its_epochs(tmp_path, mlflow_server, signum):
    """Item 4: SIGTERM (schedulers) and SIGINT (Ctrl-C) mid-fit."""
    experiment = f"signal-{signum}-{time.time_ns()}"
    # A process started from a background job of a non-interactive shell (as CI may run this
    # suite) inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler:
    # give the child the handler it has when a person runs it in a terminal.
    prelude = (
        "import signal\nsignal.signal(signal.SIGINT, signal.default_int_handler)\n"
        f"import mlflow\nmlflow.set_experiment({experiment!r})\n"
    )
    script = training_script(tmp_path, epochs=50, pause=0.3, prelude=prelude)
    # Signalled while the child sleeps in a user callback, a point where it is in Python.
    child = start_training(script, mlflow_server, "pausing after epoch 3")
    try:
        sent = time.monotonic()
        child.send_signal(signum)
        _, err = child.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        child.kill()
    assert child.returncode in (
        (-signal.SIGTERM, 143) if signum == signal.SIGTERM else (1, -signal.SIGINT, 130)
    ), err[-3000:]
    assert took < 15
    client = mlflow.MlflowClient(mlflow_server)
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert run.info.status == "KILLED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_f1/digit 3")]
    assert steps[:3] == [0, 1, 2]


#: Prepended to a training script: every upload takes half a second more (a slow link), and
#: the script prints how many records are still to be delivered at the moment the interpreter's
#: exit deletes every tempfile.TemporaryDirectory (weakref.finalize's exit hook), where MLflow's
#: log_image and log_artifact keep what they upload.
UNSENT_AT_TEMPFILE_CLEANUP = """
import time, weakref
from mlflow_mcmetrics import sender

deliver = sender.deliver

def slow_upload(client, journal, record):
    if record["kind"] in ("artifact", "image"):
        time.sleep(0.5)
    deliver(client, journal, record)

sender.deliver = slow_upload

class Sentinel:
    pass

sentinel = Sentinel()
weakref.finalize(sentinel, lambda: print(
    "unsent at tempfile cleanup:",
    sum(len(sender._waiting(journal)) for journal in sender.SENDER.open_journals()),
    flush=True,
))
"""


def test_a_script_that_exits_right_after_fit_gets_its_figures(tmp_path, mlflow_server):
    """With wait_for_figures=False the end-of-training figures are drawn after fit() returns:
    the interpreter's exit waits for them and delivers them, before its temporary folders go
    (the MLproject's own run lost its figures when the sender still uploaded then)."""
    experiment = f"exit-{time.time_ns()}"
    # First, as in the MLproject's command: the sender's module is imported before anything
    # made a weakref.finalize (which registers its exit hook with the first one made).
    experiment_line = f"import mlflow\nmlflow.set_experiment({experiment!r})\n"
    prelude = UNSENT_AT_TEMPFILE_CLEANUP + experiment_line
    script = training_script(tmp_path, epochs=2, prelude=prelude, autolog="wait_for_figures=False")
    done = run_training(script, mlflow_server)
    assert "unsent at tempfile cleanup: 0\n" in done.stdout, done.stdout[-2000:]
    assert "could not" not in done.stderr, done.stderr[-3000:]
    client = mlflow.MlflowClient(mlflow_server)
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert run.info.status == "FINISHED"
    logged = {f.path.rsplit("/", 1)[1] for f in client.list_artifacts(run.info.run_id, "mcmetrics")}
    figures = ("confusion_matrix", "pr_curves", "roc_curves", "calibration", "f1_by_epoch")
    assert {f"{name}.png" for name in figures} <= logged
    images = {
        f.path.split("~")[1].split("+step+")[0]
        for f in client.list_artifacts(run.info.run_id, "images")
        if f.path.endswith(".png")
    }
    assert images == {"confusion_matrix", "pr_curves"}


def test_an_error_while_drawing_does_not_escape_fit(tracking, digits, monkeypatch):
    """Item 5: errors in drawing, reporting, delivering become one warning each."""
    from mlflow_mcmetrics.render import RENDERER

    draw = RENDERER.call

    def broken(request):
        if request["figure"] == "plot_f1_by_epoch":
            raise RuntimeError("no display")
        return draw(request)

    monkeypatch.setattr(RENDERER, "call", broken)
    client, _ = tracking
    x, y, xv, yv = digits
    mlflow_mcmetrics.autolog()
    model = dense_model(64, 10, "softmax")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    with pytest.warns(MCMetricsWarning, match="draw the end-of-training figures .*no display"):
        model.fit(x, y, validation_data=(xv, yv), epochs=2, batch_size=128, verbose=0)
    run_id = mlflow.last_active_run().info.run_id
    assert [m.step for m in client.get_metric_history(run_id, "val_f1/3")] == [0, 1]
    assert client.get_run(run_id).info.status == "FINISHED"
    final = {f.path.rsplit("/", 1)[1] for f in client.list_artifacts(run_id, "mcmetrics")}
    assert "confusion_matrix.png" in final and "f1_by_epoch.png" not in final


def test_warnings_have_their_category_and_silent_silences_them(tracking, digits):
    """Item 6: out-of-range labels warn as MCMetricsWarning; silent=True hides them."""
    x, y, xv, yv = digits
    bad = y.copy()
    bad[:10] = 12
    for silent in (False, True):
        mlflow_mcmetrics.autolog(silent=silent)
        model = dense_model(64, 10, "softmax")
        model.compile(
            optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(ignore_class=12)
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.fit(x, bad, epochs=1, batch_size=128, verbose=0)
        ours = [w for w in caught if issubclass(w.category, MCMetricsWarning)]
        assert len(ours) == (0 if silent else 1), [str(w.message) for w in caught]
        if not silent:
            assert "10 train samples had labels outside [0, 10)" in str(ours[0].message)


def _fit_with_history(digits, epochs, callbacks=()):
    """A fit under autolog(); returns its run id and what our callback computed."""
    x, y, xv, yv = digits
    mlflow_mcmetrics.autolog()
    model = dense_model(64, 10, "softmax")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    captured = {}
    original = MCMetricsCallback.on_train_end

    def keep_history(self, logs=None):
        captured.update({key: list(values) for key, values in self.history.items()})
        original(self, logs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(MCMetricsCallback, "on_train_end", keep_history)
        model.fit(
            x,
            y,
            validation_data=(xv, yv),
            epochs=epochs,
            batch_size=128,
            verbose=0,
            callbacks=list(callbacks),
        )
    return mlflow.last_active_run().info.run_id, captured


def _assert_every_epoch_logged(client, run_id, history):
    for key in ("val_f1/3", "recall/0", "val_map", "val_ece"):
        logged = [
            m.value for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)
        ]
        assert logged == pytest.approx(history[key], nan_ok=True), key


def test_mlflow_calls_are_made_by_the_sender_not_the_training_thread(tracking, digits, monkeypatch):
    """The training thread only writes the journal; every MLflow call of ours is the
    sender's (MLflow's own callback logs its keys from the training thread)."""
    client, _ = tracking
    threads = set()
    log_batch = mlflow.MlflowClient.log_batch

    def recording_log_batch(self, run_id, metrics=(), *args, **kwargs):
        if any("/" in metric.key for metric in metrics):
            threads.add(threading.current_thread().name)
        return log_batch(self, run_id, metrics, *args, **kwargs)

    monkeypatch.setattr(mlflow.MlflowClient, "log_batch", recording_log_batch)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MCMetricsWarning)
        run_id, history = _fit_with_history(digits, 3)
    # The sender's own thread, or the helper thread it bounds each call with.
    assert threads and threads <= {"mcmetrics-sender", "mcmetrics-delivery"}
    _assert_every_epoch_logged(client, run_id, history)


def test_queued_metrics_of_several_epochs_go_in_one_batch():
    """Consecutive metrics records for the same model merge, up to MLflow's batch limit;
    anything else (another model, an artifact) ends the merge, so the order is kept."""
    from mlflow_mcmetrics.journal import Journal
    from mlflow_mcmetrics.sender import MAX_ROWS_PER_BATCH, _merged

    def metrics(step, rows=2, **extra):
        return {
            "kind": "metrics",
            "metrics": [[f"k{i}", 0.5, 0, step] for i in range(rows)],
            **extra,
        }

    journal = Journal("a-run", closed_port_uri())
    journal.records = [
        metrics(0),
        metrics(1),
        metrics(2),
        metrics(3, model_id="m-1"),
        {"kind": "artifact", "path": "a.json"},
        metrics(4),
    ]
    merged, indices = _merged(journal, 0, journal.records[0])
    assert indices == [0, 1, 2] and [row[3] for row in merged["metrics"]] == [0, 0, 1, 1, 2, 2]
    assert _merged(journal, 3, journal.records[3]) == (journal.records[3], [3])
    journal.records = [metrics(step, rows=MAX_ROWS_PER_BATCH // 2) for step in range(3)]
    merged, indices = _merged(journal, 0, journal.records[0])
    assert indices == [0, 1] and len(merged["metrics"]) == MAX_ROWS_PER_BATCH
    journal.remove()


def test_a_rejected_record_does_not_block_the_others(tmp_path, mlflow_server):
    """A record the server rejects (a param changed within the run: HTTP 400) is dropped with
    one warning by mcmetrics sync, as by the sender during training, and the rest goes."""
    from mlflow_mcmetrics.journal import Journal
    from mlflow_mcmetrics.sender import sync

    client = mlflow.MlflowClient(mlflow_server)
    experiment = client.create_experiment(f"rejected-{time.time_ns()}")
    run_id = client.create_run(experiment).info.run_id
    client.log_param(run_id, "mcmetrics.task", "multiclass")
    os.environ["MCMETRICS_SPOOL_DIR"] = str(tmp_path / "spool")
    try:
        journal = Journal(run_id, mlflow_server)
    finally:
        del os.environ["MCMETRICS_SPOOL_DIR"]
    ended = subprocess.Popen(["true"])
    ended.wait()
    journal.header["pid"] = ended.pid  # as if the journal's process were gone
    (journal.folder / "records.jsonl").write_text(
        "\n".join(
            json.dumps(record)
            for record in [
                journal.header,
                {"kind": "params", "params": {"mcmetrics.task": "binary"}},
                {"kind": "metrics", "metrics": [["val_f1/a", 0.5, 1000, 0]]},
                {"kind": "end_run", "status": "FINISHED", "end_time": 2000},
            ]
        )
        + "\n"
    )
    with pytest.warns(MCMetricsWarning, match="dropped a params record .* rejected"):
        assert sync(spool_dir=tmp_path / "spool") == {run_id: 3}
    assert not journal.folder.exists()
    run = client.get_run(run_id)
    assert run.data.params["mcmetrics.task"] == "multiclass"
    assert run.data.metrics["val_f1/a"] == 0.5 and run.info.status == "FINISHED"


def test_sigterm_ends_a_run_the_user_started_killed(tmp_path, mlflow_server):
    """mlflow.start_run() without `with`, then fit(): SIGTERM ends that run KILLED too, when
    the process is about to die (exit status 143)."""
    experiment = f"user-run-{time.time_ns()}"
    prelude = f"import mlflow\nmlflow.set_experiment({experiment!r})\nmlflow.start_run()\n"
    script = training_script(tmp_path, epochs=50, pause=0.3, prelude=prelude)
    child = start_training(script, mlflow_server, "pausing after epoch 3")
    try:
        child.send_signal(signal.SIGTERM)
        _, err = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode in (-signal.SIGTERM, 143), err[-3000:]
    client = mlflow.MlflowClient(mlflow_server)
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert run.info.status == "KILLED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_f1/digit 3")]
    assert steps[:3] == [0, 1, 2]


@pytest.mark.parametrize("delay", [0.05, 0.3, 1.0])
def test_sigkill_loses_no_ended_epoch_and_sync_ends_the_run_killed(tmp_path, mlflow_server, delay):
    """SIGKILL of the whole process group (the OOM killer, a grace period running out) a
    moment after an epoch ended: every ended epoch is in the journal or delivered, and
    `mcmetrics sync` delivers the rest and ends the run KILLED."""
    experiment = f"sigkill-{delay}-{time.time_ns()}"
    prelude = f"import mlflow\nmlflow.set_experiment({experiment!r})\n"
    script = training_script(tmp_path, epochs=50, pause=1.5, prelude=prelude)
    # "epoch 3 at" is printed once every callback's on_epoch_end of epoch 2 ran.
    child = start_training(script, mlflow_server, "epoch 3 at", start_new_session=True)
    try:
        time.sleep(delay)
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        child.kill()
    client = mlflow.MlflowClient(mlflow_server)
    (run,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert run.info.status == "RUNNING"
    done = subprocess.run(
        [sys.executable, "-m", "mlflow_mcmetrics.cli", "sync"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=child_env(mlflow_server),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    run = client.get_run(run.info.run_id)
    assert run.info.status == "KILLED"
    for key in ("val_f1/digit 3", "f1_macro", "val_f1_few"):
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, key))
        assert steps[:3] == [0, 1, 2], key
    assert not list((tmp_path / "mcmetrics-spool").glob("*/records.jsonl"))


def test_records_sent_past_a_held_one_are_sent_once():
    """Metrics held for MLflow's logged model let later records go; once the model is logged
    the held ones follow, and nothing goes twice (MLflow's model links reject duplicates)."""
    from mlflow_mcmetrics.journal import Journal
    from mlflow_mcmetrics.sender import pump

    journal = Journal("a-run", closed_port_uri())
    journal.append({"kind": "metrics", "metrics": [["k", 0.1, 0, 0]], "after_model": "m-1"})
    journal.append({"kind": "metrics", "metrics": [["k", 0.2, 0, 1]], "model_id": "m-1"})
    journal.append({"kind": "artifact", "path": "a.json"}, b"{}", "a.json")
    sent = []

    def send(client, journal, record):
        sent.append(record["metrics"][0][3] if record["kind"] == "metrics" else record["path"])

    assert pump(journal, None, send=send) and sent == [1, "a.json"]
    assert journal.delivered == 0  # the held record is still to go
    journal.released = True  # at exit, or in mcmetrics sync
    assert pump(journal, None, send=send) and sent == [1, "a.json", 0]
    assert journal.delivered == 3
    journal.remove()


def test_an_unreachable_server_holds_back_only_its_own_journals(
    tmp_path, mlflow_server, monkeypatch
):
    """A journal bound for a server that is gone (an earlier fit's, in a long-lived process)
    must not keep the journals of a server that answers from being delivered."""
    from mlflow_mcmetrics.journal import Journal
    from mlflow_mcmetrics.sender import Sender

    monkeypatch.setenv("MCMETRICS_SPOOL_DIR", str(tmp_path / "spool"))
    client = mlflow.MlflowClient(mlflow_server)
    run_id = client.create_run(client.create_experiment(f"two-{time.time_ns()}")).info.run_id
    gone = Journal("a-run-whose-server-is-gone", closed_port_uri())
    gone.append({"kind": "metrics", "metrics": [["f1_macro", 0.1, 1000, 0]]})
    live = Journal(run_id, mlflow_server)
    live.append({"kind": "metrics", "metrics": [["f1_macro", 0.2, 1000, 0]]})
    sender = Sender()
    sender.add(gone, mlflow.MlflowClient(gone.tracking_uri), silent=True)
    sender.add(live, client, silent=True)
    try:
        assert sender.wait([live], timeout=60)
        assert client.get_run(run_id).data.metrics["f1_macro"] == 0.2
        assert not sender.wait([gone], timeout=10)
    finally:
        sender._journals.clear()  # its thread may not poll the closed port beside later tests
