"""Delivery to the tracking server that survives outages: queue, retry, spool, sync.

Everything the callback logs goes through an :class:`Outbox`. A sender thread delivers the
records in order, so the training thread only queues them; the MLflow calls themselves are
made in a child process (:class:`DeliveryProcess`), where they do not hold the training
process's GIL. Before it talks to an HTTP tracking
server after a failure, the sender asks ``GET /health`` with a 3-second timeout
(:func:`reachable`): a dead server costs one quick probe per epoch instead of MLflow's retry
loop (7 retries, about four minutes), and the process environment is never touched (changing
``os.environ`` while TensorFlow's threads read it crashes the process).

A record that cannot be sent stays queued, in order, and is retried at the next epoch end. What
is still queued when training ends is written to a spool file (atomically: a temporary file
renamed into place) in the first writable folder of :func:`spool_dirs`, and ``mcmetrics sync``
replays it later. Replaying is idempotent: MLflow ignores a metric logged twice with the same
key, value, timestamp and step, and artifacts are overwritten in place.

A run created while the server was down is an *offline run*: its first record asks for the run
to be created (experiment, name, start time, tags); the sender creates it as soon as the server
answers, and ``mcmetrics sync`` does if it never did during training.
"""

from __future__ import annotations

import atexit
import base64
import concurrent.futures
import functools
import io
import json
import os
import posixpath
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

import mlflow
import requests
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import ErrorCode
from mlflow.tracking import MlflowClient

from mlflow_mcmetrics.child import ChildFailed, ChildProcess
from mlflow_mcmetrics.events import logger, warn

__all__ = ["OFFLINE_PREFIX", "Outbox", "finish_pending", "flush", "reachable", "spool_dirs", "sync"]

#: Run ids of offline runs (created locally while the server was down) start with this.
OFFLINE_PREFIX = "offline-"
#: How long a logged model may stay PENDING before records held for it are sent anyway.
MODEL_WAIT_SECONDS = 600.0
#: How long the sender waits for one delivery before it counts as failed. A server that dies
#: during a call keeps MLflow's client in its retry loop (7 retries, about four minutes).
DELIVERY_TIMEOUT = 20.0
#: Least time between two delivery rounds while training runs: the metrics of the epochs that
#: end meanwhile go in one ``log_batch``. MLflow's SQL store spends about half of a call's time
#: per call rather than per row (benchmarks/README.md), and on sub-second epochs that work
#: competes with Keras' step loop for the GIL. Closing the outbox ends the wait.
SEND_INTERVAL = 1.0
#: Rows per merged ``log_batch``: MLflow's own limit per request (``MAX_METRICS_PER_BATCH``).
MAX_ROWS_PER_BATCH = 1000

#: What an :class:`Outbox` queues: a record, a function that builds one, or a future of records.
Record = dict | Callable[[], dict] | Future


def reachable(tracking_uri: str) -> bool:
    """Whether the tracking store answers quickly. Local stores always do; an HTTP server is
    asked for ``/health`` once, with no retries (any HTTP answer counts, even an error status)."""
    if not tracking_uri.startswith(("http://", "https://")):
        return True
    try:
        requests.get(f"{tracking_uri.rstrip('/')}/health", timeout=3)
    except requests.exceptions.SSLError:
        return True  # something answered; MLflow's own TLS settings decide the rest
    except requests.exceptions.RequestException:
        return False
    return True


def spool_dirs() -> list[Path]:
    """Where undelivered records are written, in order of preference: ``$MCMETRICS_SPOOL_DIR``
    if set (alone), else ``./mcmetrics-spool``, the user's cache folder
    (``$XDG_CACHE_HOME/mcmetrics/spool``, default ``~/.cache``), and a per-user temporary folder."""
    chosen = os.environ.get("MCMETRICS_SPOOL_DIR")
    if chosen:
        return [Path(chosen)]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    user = os.getuid() if hasattr(os, "getuid") else os.getlogin()
    return [
        Path("mcmetrics-spool"),
        cache / "mcmetrics" / "spool",
        Path(tempfile.gettempdir()) / f"mcmetrics-spool-{user}",
    ]


def _deliver(client: MlflowClient, run_id: str, record: dict) -> str:
    """Send one record; returns the run id (new for a ``create_run`` record)."""
    kind = record["kind"]
    if kind == "create_run":
        tags = record.get("tags") or {}
        run = client.create_run(
            record["experiment_id"],
            start_time=record["start_time"],
            tags=tags,
            run_name=record.get("run_name"),
        )
        return run.info.run_id
    if kind == "metrics":
        model_id = record.get("model_id")
        metrics = [Metric(k, v, t, s, model_id=model_id) for k, v, t, s in record["metrics"]]
        client.log_batch(run_id, metrics=metrics, synchronous=True)
    elif kind == "params":
        client.log_batch(
            run_id, params=[Param(k, v) for k, v in record["params"].items()], synchronous=True
        )
    elif kind == "tags":
        client.log_batch(
            run_id, tags=[RunTag(k, v) for k, v in record["tags"].items()], synchronous=True
        )
    elif kind == "text":
        client.log_text(run_id, record["text"], record["artifact_file"])
    elif kind == "png":  # already encoded: stored as it is, as log_text stores text
        folder, name = posixpath.split(record["artifact_file"])
        with tempfile.TemporaryDirectory() as local:
            path = Path(local, name)
            path.write_bytes(base64.b64decode(record["png"]))
            client.log_artifact(run_id, str(path), folder or None)
    elif kind == "image":  # a time-stepped image (log_image key/step)
        from PIL import Image

        image = Image.open(io.BytesIO(base64.b64decode(record["png"])))
        client.log_image(run_id, image, key=record["key"], step=record["step"], synchronous=True)
    elif kind == "end_run":
        client.set_terminated(run_id, record["status"], end_time=record["end_time"])
    else:
        raise ValueError(f"Unknown spool record kind {kind!r}.")
    return run_id


def _made(future: Future, *, silent: bool = False) -> list[dict]:
    """The records a done future of :class:`Outbox` made; none if making them failed."""
    if future.cancelled():
        return []
    if future.exception() is not None:
        # Makers warn and return None themselves; under MLflow's autologging test mode they
        # raise instead.
        warn(
            f"mlflow_mcmetrics could not make records to send: {future.exception()!r}",
            silent=silent,
        )
        return []
    return future.result() or []


def _write_atomically(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as file:
            for record in records:
                file.write(json.dumps(record) + "\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _read_spool(path: Path) -> list[dict]:
    with open(path) as file:
        return [json.loads(line) for line in file if line.strip()]


def spool(run_id: str, records: list[dict]) -> Path | None:
    """Append ``records`` to ``{run_id}.jsonl`` in the first writable :func:`spool_dirs` folder;
    ``None`` if no folder is writable."""
    for folder in spool_dirs():
        path = folder / f"{run_id}.jsonl"
        try:
            earlier = _read_spool(path) if path.exists() else []
            _write_atomically(path, earlier + records)
        except OSError as error:
            logger.debug("spool folder %s is not writable: %s", folder, error)
            continue
        return path
    return None


class Outbox:
    """An ordered queue of records for one run, delivered by a sender thread.

    Records are dicts (see :func:`_deliver` for the kinds), functions that build one (the
    sender calls them when their turn comes, so that serialising large payloads happens off the
    training thread), or futures of a list of records still being made (the figures drawn
    when training ends). Two kinds of record are *held*: the later records are sent past them
    and :meth:`close` does not wait for them.

    * A future is held until it is done; then its records take its place.
    * A record with ``"after_model": model_id`` is held until the outbox is closed and that
      MLflow logged model has left its PENDING state (see ``MCMetricsCallback``: MLflow's own
      model logging must copy the run's step-0 metrics before ours arrive).

    :meth:`put` returns at once; after a failed delivery the sender waits for :meth:`flush`
    (called once per epoch) before it tries again; :meth:`close` makes a last attempt within a
    time limit and spools what is left.

    Args:
        run_id: the run, or an offline run id (see :meth:`offline`).
        client: the MLflow client to deliver with.
        silent: no :class:`~.events.MCMetricsWarning` for outages and spooling.
    """

    def __init__(self, run_id: str, client: MlflowClient | None = None, *, silent: bool = False):
        self.run_id = run_id
        self.client = client or MlflowClient()
        self.silent = silent
        self._tracking_uri = self.client.tracking_uri
        self._queue: deque[Record] = deque()
        self._changed = threading.Condition()
        self._failing = False  # the last attempt failed: wait for flush() before the next one
        self._retry = False  # flush() or close() was called since that failure
        self._sending = False
        self._attempts = 0  # finished delivery attempts
        self._closed_at: float | None = None  # time.monotonic() of close()
        self._stopped = False  # close() gave up on the sender: it must exit
        self._release_held = False  # send held records without waiting for their model
        self._sender = threading.Thread(
            target=self._send_forever, name=f"mcmetrics-outbox-{run_id}", daemon=True
        )
        self._sender.start()

    @classmethod
    def offline(
        cls, create_run: dict, client: MlflowClient | None = None, *, silent: bool = False
    ) -> Outbox:
        """An outbox for a run that does not exist yet: ``create_run`` (``experiment_id``,
        ``start_time``, ``tags``, ``run_name``) is its first record."""
        outbox = cls(f"{OFFLINE_PREFIX}{uuid.uuid4().hex}", client, silent=silent)
        outbox.put({"kind": "create_run", **create_run})
        return outbox

    def put(self, record: Record) -> None:
        """Queue ``record`` for delivery; never blocks on the tracking server."""
        with self._changed:
            self._queue.append(record)
            self._changed.notify_all()
        if isinstance(record, Future):
            record.add_done_callback(self._notify)

    def _notify(self, _future: Future) -> None:
        with self._changed:
            self._changed.notify_all()

    def flush(self) -> None:
        """Let the sender retry after a failure (once per epoch end: an outage costs one
        attempt per epoch, in the background)."""
        with self._changed:
            self._retry = True
            self._changed.notify_all()

    def close(self, timeout: float = 30.0) -> Path | None:
        """Last attempt, for at most ``timeout`` seconds; spool what is left.

        Held records stay with the sender, which delivers them once they are made or their
        model is logged (:func:`flush` waits for that; :func:`finish_pending` spools what is
        left at exit). Returns the spool file, or None if nothing was spooled.
        """
        with self._changed:
            attempts = self._attempts
            self._retry, self._closed_at = True, time.monotonic()
            self._changed.notify_all()
            # Wait for the last attempt: everything sent, only held records left, or a failure.
            self._changed.wait_for(
                lambda: (
                    self._only_held()
                    and not self._sending
                    or self._attempts > attempts
                    and self._failing
                ),
                timeout,
            )
            if self._only_held() and not self._failing:
                if self._queue:
                    _PENDING.add(self)
                return None
        return self._stop_and_spool()

    def _stop_and_spool(self, timeout: float = 30.0) -> Path | None:
        """Stop the sender and spool what is queued, waiting up to ``timeout`` seconds for
        records still being made."""
        with self._changed:
            # A record still on its way may arrive as well: replaying it is harmless.
            left, self._stopped = list(self._queue), True
            self._queue.clear()
            self._changed.notify_all()
        if not left:
            return None
        made, unmade = concurrent.futures.wait([r for r in left if isinstance(r, Future)], timeout)
        built = []
        for record in left:
            if isinstance(record, Future):
                built += _made(record, silent=self.silent) if record in made else []
            else:
                built.append(record() if callable(record) else record)
        if unmade:
            warn(
                f"mlflow_mcmetrics gave up on {len(unmade)} group(s) of records of run "
                f"{self.run_id} still being made after {timeout:g} s (figures being drawn).",
                silent=self.silent,
            )
        if not built:
            return None
        path = spool(self.run_id, built)
        if path is None:
            warn(
                f"mlflow_mcmetrics lost {len(built)} record(s) of run {self.run_id}: the tracking "
                "server is unreachable and no spool folder is writable "
                f"({', '.join(map(str, spool_dirs()))}); "
                "set MCMETRICS_SPOOL_DIR to a writable folder.",
                silent=self.silent,
            )
        else:
            warn(
                f"mlflow_mcmetrics could not send {len(built)} record(s) of run {self.run_id}; "
                "they are "
                f"in {path}. Replay them with: mcmetrics sync --tracking-uri {self._tracking_uri}",
                silent=self.silent,
            )
        return path

    @staticmethod
    def _held(record: Record) -> bool:
        if isinstance(record, Future):
            return not record.done()
        return isinstance(record, dict) and bool(record.get("after_model"))

    def _only_held(self) -> bool:
        return all(self._held(record) for record in self._queue)

    def _done(self) -> bool:
        return self._closed_at is not None and not self._queue

    def _due(self) -> bool:
        """Whether the sender has something to try now."""
        if self._stopped or not self._queue or (self._failing and not self._retry):
            return False
        return not self._only_held() or self._closed_at is not None

    def _send_forever(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._stopped or self._due() or self._done())
                if self._stopped or self._done():
                    return
                self._sending, self._retry = True, False
            delivered = reachable(self._tracking_uri) and self._send_queued()
            with self._changed:
                self._sending = False
                self._attempts += 1
                if self._failing and delivered:
                    warn(
                        "mlflow_mcmetrics reached the tracking server again; the queue is sent.",
                        silent=self.silent,
                    )
                if not delivered and not self._failing:
                    warn(
                        "mlflow_mcmetrics could not reach the tracking server at "
                        f"{self._tracking_uri}; "
                        f"training goes on, {len(self._queue)} record(s) are queued and "
                        "retried at the next epoch end.",
                        silent=self.silent,
                    )
                self._failing = not delivered
                self._changed.notify_all()
                if delivered and self._closed_at is None:
                    self._changed.wait_for(
                        lambda: self._closed_at is not None or self._stopped, SEND_INTERVAL
                    )
                elif delivered and self._queue and self._only_held():
                    self._changed.wait(0.5)  # held records: look at the logged model again soon

    def _next(self) -> tuple[int, dict | Callable[[], dict]] | None:
        """The first record that may be sent now, with its position."""
        with self._changed:
            self._unpack_made()
            for position, record in enumerate(self._queue):
                if not self._held(record):
                    return position, record
            if self._closed_at is None:
                return None
            waiting = next(((p, r) for p, r in enumerate(self._queue) if isinstance(r, dict)), None)
            if waiting is None:
                return None  # only figures still being drawn
            position, record = waiting
            wait = (
                not self._release_held and time.monotonic() - self._closed_at < MODEL_WAIT_SECONDS
            )
        if wait and self.client.get_logged_model(record["after_model"]).status == "PENDING":
            return None
        return position, record

    def _unpack_made(self) -> None:
        """Put the records of every done future in its place in the queue."""
        if any(isinstance(r, Future) and r.done() for r in self._queue):
            unpacked: deque[Record] = deque()
            for record in self._queue:
                if isinstance(record, Future) and record.done():
                    unpacked.extend(_made(record, silent=self.silent))
                else:
                    unpacked.append(record)
            self._queue = unpacked

    def _merged(self, position: int, record: dict) -> tuple[dict, int]:
        """``record`` with the metrics records queued right after it for the same model merged
        into it (up to :data:`MAX_ROWS_PER_BATCH` rows), and how many records it stands for."""
        if record["kind"] != "metrics":
            return record, 1
        rows, count = list(record["metrics"]), 1
        with self._changed:
            for following in list(self._queue)[position + 1 :]:
                if (
                    not isinstance(following, dict)
                    or following["kind"] != "metrics"
                    or following.get("model_id") != record.get("model_id")
                    or following.get("after_model") != record.get("after_model")
                    or len(rows) + len(following["metrics"]) > MAX_ROWS_PER_BATCH
                ):
                    break
                rows += following["metrics"]
                count += 1
        return ({**record, "metrics": rows} if count > 1 else record), count

    def _deliver_in_time(self, record: dict) -> str:
        """:func:`_deliver` in the delivery process, given up after :data:`DELIVERY_TIMEOUT`
        (raises ``TimeoutError``). A call given up on may still arrive: records are idempotent."""
        return _DELIVERY.deliver(self._tracking_uri, self.client, self.run_id, record)

    def _send_queued(self) -> bool:
        """Deliver what may be sent until nothing is left (True) or a delivery fails (False).

        A record the server rejects as invalid (HTTP 4xx, e.g. a param changed within a run)
        would never succeed: it is dropped with a warning instead of blocking the queue.
        """
        while True:
            try:
                found = self._next()
            except Exception:  # noqa: BLE001 - the model's status could not be read: retry later
                logger.debug("reading a logged model's status failed", exc_info=True)
                return False
            if found is None:
                return True
            position, record = found
            if callable(record):
                record = record()
                with self._changed:
                    self._queue[position] = record  # built once, even if its delivery is retried
            record, count = self._merged(position, record)
            try:
                self.run_id = self._deliver_in_time(record)
            except MlflowException as error:
                if not 400 <= error.get_http_status_code() < 500:
                    logger.debug("delivery failed", exc_info=True)
                    return False
                warn(
                    f"mlflow_mcmetrics dropped a rejected {record['kind']} record: "
                    f"{error.message[:300]}",
                    silent=self.silent,
                )
            except Exception:  # noqa: BLE001 - any other failure: keep it, retry later
                logger.debug("delivery failed", exc_info=True)
                return False
            with self._changed:
                if self._stopped:
                    return True
                for _ in range(count):
                    del self._queue[position]


class DeliveryProcess:
    """Makes the MLflow calls of every outbox of this process in one child process (``nice``
    10, see :mod:`mlflow_mcmetrics.child`).

    MLflow's SQL store spends about 20 ms of pure Python on one epoch's metrics; on a thread
    of the training process that competes with Keras' step loop for the GIL and slows
    training by about twice as much (benchmarks/README.md). If the child cannot run, the
    calls are made here, on a helper thread, with one warning.
    """

    def __init__(self):
        self._child = ChildProcess("mlflow_mcmetrics.outbox:_deliver_request", niceness=10)
        self._broken = False

    def deliver(self, tracking_uri: str, client: MlflowClient, run_id: str, record: dict) -> str:
        """:func:`_deliver` within :data:`DELIVERY_TIMEOUT` (else ``TimeoutError``)."""
        if not self._broken:
            try:
                outcome = self._child.request((tracking_uri, run_id, record), DELIVERY_TIMEOUT)
            except ChildFailed as error:
                self._broken = True
                warn(
                    "mlflow_mcmetrics delivers to MLflow from the training process: the "
                    f"delivery process failed ({error})."
                )
            else:
                return _delivered_or_raise(outcome)
        return _deliver_on_a_thread(client, run_id, record)

    def close(self) -> None:
        self._child.close()


def _deliver_on_a_thread(client: MlflowClient, run_id: str, record: dict) -> str:
    """:func:`_deliver` on a helper thread, given up after :data:`DELIVERY_TIMEOUT`."""
    result: concurrent.futures.Future = concurrent.futures.Future()

    def deliver():
        try:
            result.set_result(_deliver(client, run_id, record))
        except BaseException as error:  # noqa: BLE001 - handed to the sender
            result.set_exception(error)

    threading.Thread(target=deliver, name="mcmetrics-delivery", daemon=True).start()
    return result.result(DELIVERY_TIMEOUT)


@functools.cache
def _child_client(tracking_uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri)


#: In the delivery process: the (tracking URI, run id) whose experiment is the active one.
_experiment_active_for: tuple[str, str] | None = None


def _activate_experiment_of(tracking_uri: str, run_id: str) -> None:
    """MLflow 3.0's SQL store files a metric's link to a logged model under the active
    experiment of the process that logs it (``SqlAlchemyStore._log_model_metrics``; later
    versions take the run's): in the delivery process, make that the run's experiment (again
    when records of another run, such as a concurrent fit's, came in between)."""
    global _experiment_active_for
    if _experiment_active_for != (tracking_uri, run_id):
        mlflow.set_tracking_uri(tracking_uri)
        client = _child_client(tracking_uri)
        mlflow.set_experiment(experiment_id=client.get_run(run_id).info.experiment_id)
        _experiment_active_for = (tracking_uri, run_id)


def _deliver_request(request: tuple[str, str, dict]) -> tuple:
    """In the delivery process: :func:`_deliver`, its failure as plain values (MLflow's and
    ``requests``' exceptions do not all survive pickling)."""
    tracking_uri, run_id, record = request
    try:
        if record.get("model_id"):
            _activate_experiment_of(tracking_uri, run_id)
        return ("delivered", _deliver(_child_client(tracking_uri), run_id, record))
    except MlflowException as error:
        return ("mlflow", error.error_code, error.message)
    except Exception as error:  # noqa: BLE001 - handed to the sender, which retries later
        return ("failed", type(error).__name__, str(error))


def _delivered_or_raise(outcome: tuple) -> str:
    kind, *details = outcome
    if kind == "delivered":
        return details[0]
    if kind == "mlflow":
        error_code, message = details
        known = error_code in ErrorCode.keys()
        raise MlflowException(
            message, error_code=ErrorCode.Value(error_code if known else "INTERNAL_ERROR")
        )
    raise DeliveryFailed(": ".join(details))


class DeliveryFailed(Exception):
    """A delivery in the delivery process raised (the exception's type name and message)."""


_DELIVERY = DeliveryProcess()
# Registered on import, before runs.py's exit hook, so that it runs after that hook's deliveries.
atexit.register(_DELIVERY.close)

#: Outboxes closed with records held for a logged model; :func:`finish_pending` ends them.
_PENDING: set[Outbox] = set()


def flush(timeout: float = 60.0) -> None:
    """Wait up to ``timeout`` seconds until finished fits have sent everything: the figures
    drawn when training ends, and the epoch-0 values held until MLflow's autologging has
    logged its model (the counterpart of ``mlflow.flush_async_logging()``)."""
    deadline = time.monotonic() + timeout
    for outbox in list(_PENDING):
        outbox._sender.join(max(0.0, deadline - time.monotonic()))
        if not outbox._sender.is_alive():
            _PENDING.discard(outbox)


def finish_pending(timeout: float = 30.0) -> None:
    """Send what closed outboxes still hold without waiting for their logged model, for up to
    ``timeout`` seconds in all, then spool what is left (run at interpreter exit, when MLflow
    has logged the model or never will, and the figures are drawn)."""
    deadline = time.monotonic() + timeout
    for outbox in list(_PENDING):
        with outbox._changed:
            outbox._release_held = outbox._retry = True
            outbox._changed.notify_all()
        outbox._sender.join(max(0.0, deadline - time.monotonic()))
        outbox._stop_and_spool(max(0.0, deadline - time.monotonic()))
        _PENDING.discard(outbox)


def sync(
    tracking_uri: str | None = None, spool_dir: str | os.PathLike | None = None
) -> dict[str, int]:
    """Replay every spool file (in ``spool_dir``, default every folder of :func:`spool_dirs`).

    Delivered records are removed and a fully delivered file is deleted. An offline run is
    created by its first record. Returns ``{run_id: records delivered}`` (the new run id for
    offline runs); records that still fail stay in their file (run it again later).
    """
    client = MlflowClient(tracking_uri=tracking_uri)
    folders = [Path(spool_dir)] if spool_dir is not None else spool_dirs()
    delivered: dict[str, int] = {}
    for path in sorted(p for folder in folders for p in folder.glob("*.jsonl")):
        run_id = path.stem
        records = _read_spool(path)
        sent = 0
        for record in records:
            try:
                run_id = _deliver(client, run_id, record)
            except Exception as error:  # noqa: BLE001
                warn(
                    f"mcmetrics sync: run {run_id} stopped at record {sent + 1}/{len(records)}: "
                    f"{error}"
                )
                break
            sent += 1
        remaining = records[sent:]
        if remaining:
            # An offline run created just now keeps its new id for the records still to send.
            target = path.with_name(f"{run_id}.jsonl")
            _write_atomically(target, remaining)
            if target != path:
                path.unlink()
        else:
            path.unlink()
        delivered[run_id] = sent
    return delivered
