"""One sender delivers the journals (:mod:`mlflow_mcmetrics.journal`) to the tracking server.

In a training process the sender is one thread for every journal of the process; ``mcmetrics
sync`` (:func:`sync`) runs the same :func:`pump` over the journals left on disk. Either way:

* records go in order; the metrics of consecutive epochs merge into one ``log_batch`` of at
  most MLflow's 1,000 rows (its SQL store spends half of a call's time per call), and while
  training runs a round starts at most every :data:`SEND_INTERVAL` seconds;
* a record the server rejects (HTTP 4xx: it would never succeed) is dropped with one warning
  and the rest go on;
* on any other failure the record stays and the sender tries that server again later (an
  outage of one server holds back only the journals bound for it), first asking an HTTP
  server for ``/health`` with a 3-second timeout (:func:`reachable`) rather than entering
  MLflow's retry loop (minutes); the process environment is never touched (changing
  ``os.environ`` beside TensorFlow's threads crashes the process);
* metrics held for MLflow's logged model (``after_model``: its model logging copies the run's
  step-0 metrics and fails on more than 100 of them) wait until that model has left PENDING.

Replaying is idempotent: MLflow ignores a metric logged twice with the same key, value,
timestamp and step, and artifacts are overwritten in place.
"""

from __future__ import annotations

import dataclasses
import posixpath
import threading
import time
from collections.abc import Callable
from pathlib import Path

import requests
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from mlflow_mcmetrics.events import logger, warn
from mlflow_mcmetrics.journal import Journal, journal_folders

__all__ = ["SENDER", "Sender", "flush", "reachable", "sync"]

#: Least time between two delivery rounds while training runs: the epochs that end meanwhile
#: go in one ``log_batch``.
SEND_INTERVAL = 1.0
#: Rows per merged ``log_batch``: MLflow's own limit per request (``MAX_METRICS_PER_BATCH``).
MAX_ROWS_PER_BATCH = 1000
#: How long a logged model may stay PENDING before the records held for it go anyway.
MODEL_WAIT_SECONDS = 600.0
#: Longest wait between two attempts while the server is down.
MAX_BACKOFF = 30.0
#: How long the sender waits for one delivery before it counts as failed: a server that dies
#: during a call keeps MLflow's client in its retry loop (7 retries, minutes).
DELIVERY_TIMEOUT = 20.0


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


def deliver(client: MlflowClient, journal: Journal, record: dict) -> None:
    """Send one record of ``journal`` (a ``create_run`` record sets the journal's run id)."""
    kind, run_id = record["kind"], journal.run_id
    if kind == "create_run":
        run = client.create_run(
            record["experiment_id"],
            start_time=record["start_time"],
            tags=record.get("tags") or {},
            run_name=record.get("run_name"),
        )
        journal.run_id = run.info.run_id
    elif kind == "metrics":
        model_id = record.get("model_id")
        rows = [
            Metric(key, value, t, step, model_id=model_id)
            for key, value, t, step in record["metrics"]
        ]
        client.log_batch(run_id, metrics=rows, synchronous=True)
    elif kind == "params":
        params = [Param(key, value) for key, value in record["params"].items()]
        client.log_batch(run_id, params=params, synchronous=True)
    elif kind == "tags":
        tags = [RunTag(key, value) for key, value in record["tags"].items()]
        client.log_batch(run_id, tags=tags, synchronous=True)
    elif kind == "artifact":
        folder = posixpath.dirname(record["path"])
        client.log_artifact(run_id, str(journal.path_of(record)), folder or None)
    elif kind == "image":  # a time-stepped image (log_image key/step)
        from PIL import Image

        with Image.open(journal.path_of(record)) as image:
            client.log_image(
                run_id, image, key=record["key"], step=record["step"], synchronous=True
            )
    elif kind == "end_run":
        client.set_terminated(run_id, record["status"], end_time=record["end_time"])
    elif kind != "close":
        raise ValueError(f"Unknown journal record kind {kind!r}.")


def _held(client: MlflowClient, journal: Journal, record: dict) -> bool:
    """Whether ``record`` waits for MLflow's logged model (until the fit has ended and the model
    has left PENDING, or :data:`MODEL_WAIT_SECONDS` after the journal was opened)."""
    model_id = record.get("after_model")
    if not model_id or journal.released:
        return False
    if not journal.finishing:
        return True
    if time.time() - journal.header.get("created", 0) > MODEL_WAIT_SECONDS:
        return False
    return client.get_logged_model(model_id).status == "PENDING"


def _merged(journal: Journal, start: int, record: dict) -> tuple[dict, list[int]]:
    """``record`` with the metrics records right after it for the same model merged in (up to
    :data:`MAX_ROWS_PER_BATCH` rows), and the indices it stands for."""
    indices = [start]
    if record["kind"] != "metrics":
        return record, indices
    rows = list(record["metrics"])
    for index in range(start + 1, len(journal.records)):
        following = journal.records[index]
        if (
            index in journal.sent
            or following["kind"] != "metrics"
            or following.get("model_id") != record.get("model_id")
            or following.get("after_model") != record.get("after_model")
            or len(rows) + len(following["metrics"]) > MAX_ROWS_PER_BATCH
        ):
            break
        rows += following["metrics"]
        indices.append(index)
    return {**record, "metrics": rows}, indices


def pump(
    journal: Journal,
    client: MlflowClient,
    *,
    silent: bool = False,
    send: Callable[[MlflowClient, Journal, dict], None] = deliver,
) -> bool:
    """Deliver what ``journal`` holds that may go now, in order (each record with ``send``).
    Returns False when a delivery failed (the rest waits for the next attempt)."""
    index = journal.delivered
    while index < len(journal.records):
        if index < journal.delivered or index in journal.sent:  # delivered past a held one
            index += 1
            continue
        record = journal.records[index]
        try:
            if _held(client, journal, record):
                index += 1
                continue
            record, indices = _merged(journal, index, record)
            send(client, journal, record)
        except MlflowException as error:
            if not 400 <= error.get_http_status_code() < 500:
                logger.debug("delivery failed", exc_info=True)
                return False
            indices = [index]
            warn(
                f"mlflow_mcmetrics dropped a {record['kind']} record of run {journal.run_id} "
                f"that the tracking server rejected: {error.message[:300]}",
                silent=silent,
            )
        except Exception:  # noqa: BLE001 - any other failure: the record stays, retried later
            logger.debug("delivery failed", exc_info=True)
            return False
        journal.sent.update(indices)
        journal.commit()
        index = indices[-1] + 1
    return True


def _waiting(journal: Journal) -> list[dict]:
    """The records of ``journal`` not delivered yet."""
    start = journal.delivered
    return [
        record
        for index, record in enumerate(journal.records[start:], start)
        if index not in journal.sent
    ]


@dataclasses.dataclass
class _Server:
    """The delivery state of one tracking server: an outage of one server holds back only its
    own journals."""

    failing: bool = False
    retry_at: float = 0.0
    backoff: float = 1.0
    call: threading.Thread | None = None  # its last delivery, maybe still stuck


class Sender:
    """The thread that delivers this process's journals (started with the first)."""

    def __init__(self):
        self._journals: list[tuple[Journal, MlflowClient, bool]] = []
        self._servers: dict[str, _Server] = {}
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._hurry = False  # a fit ends or someone waits: no pause to merge epochs
        self._rounds = 0  # delivery rounds finished

    def _deliver_in_time(self, client: MlflowClient, journal: Journal, record: dict) -> None:
        """:func:`deliver` on a helper thread, given up on after :data:`DELIVERY_TIMEOUT`
        (``TimeoutError``); no new call to a server while one given up on still runs. A call
        given up on may still arrive: deliveries are idempotent."""
        server = self._servers[journal.tracking_uri]
        if server.call is not None and server.call.is_alive():
            raise TimeoutError("an earlier delivery has not returned yet")
        outcome: list[BaseException | None] = []

        def call():
            try:
                deliver(client, journal, record)
                outcome.append(None)
            except BaseException as error:  # noqa: BLE001 - handed to the sender
                outcome.append(error)

        server.call = threading.Thread(target=call, name="mcmetrics-delivery", daemon=True)
        server.call.start()
        server.call.join(DELIVERY_TIMEOUT)
        if not outcome:
            raise TimeoutError(f"no answer within {DELIVERY_TIMEOUT:g} s")
        if outcome[0] is not None:
            raise outcome[0]

    def add(self, journal: Journal, client: MlflowClient, *, silent: bool = False) -> None:
        with self._changed:
            self._journals.append((journal, client, silent))
            self._servers.setdefault(journal.tracking_uri, _Server())
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="mcmetrics-sender", daemon=True
                )
                self._thread.start()
            self._changed.notify_all()

    def wake(self) -> None:
        """New records were written."""
        with self._changed:
            self._changed.notify_all()

    def wait(
        self,
        journals: list[Journal],
        timeout: float,
        *,
        held: bool = False,
        release: bool = False,
        patient: bool = False,
    ) -> bool:
        """Deliver ``journals`` now and wait up to ``timeout`` seconds until they are, or (but
        when ``patient``) until an attempt to reach their server fails; whether they are.
        Records held for a logged model are waited for with ``held``; with ``release`` the
        records of ``journals`` go without waiting for it."""

        def settled():
            return all(
                all(
                    r.get("after_model") and not (held or journal.released)
                    for r in _waiting(journal)
                )
                for journal in journals
            )

        servers = [self._servers[journal.tracking_uri] for journal in journals]

        def failed():
            return not patient and self._rounds > rounds and any(s.failing for s in servers)

        with self._changed:
            for journal in journals if release else ():
                journal.released = True
            for server in servers:
                server.retry_at = 0.0
            self._hurry, rounds = True, self._rounds
            self._changed.notify_all()
            self._changed.wait_for(lambda: settled() or failed(), timeout)
            self._hurry = False
            return settled()

    def _resting(self, journal: Journal) -> bool:
        """Whether the server of ``journal`` failed and its next attempt is not due yet."""
        server = self._servers[journal.tracking_uri]
        return server.failing and time.monotonic() < server.retry_at

    def _due(self) -> bool:
        """Whether a round has something to do now."""
        for journal, _, _ in self._journals:
            waiting = _waiting(journal)
            if self._resting(journal):
                continue
            if journal.done or any(not record.get("after_model") for record in waiting):
                return True
        return False

    def _pause(self) -> float | None:
        """How long to sleep without news: until the next attempt at a server that failed,
        at most half a second while held records wait for their model at the end of a fit,
        else forever."""
        pauses = [
            max(0.0, self._servers[journal.tracking_uri].retry_at - time.monotonic())
            for journal, _, _ in self._journals
            if self._resting(journal)
        ]
        if any(
            (journal.finishing or journal.released) and _waiting(journal)
            for journal, _, _ in self._journals
        ):
            pauses.append(0.5)
        return min(pauses, default=None)

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._due():
                    if not self._changed.wait(self._pause()) and self._pause() is not None:
                        break  # time to look at the held records (or a server) again
                journals = [entry for entry in self._journals if not self._resting(entry[0])]
            failed: set[str] = set()
            for journal, client, silent in journals:
                if journal.tracking_uri in failed:
                    continue
                delivered = reachable(journal.tracking_uri) and pump(
                    journal, client, silent=silent, send=self._deliver_in_time
                )
                self._report(journal, silent, failing=not delivered)
                if not delivered:
                    failed.add(journal.tracking_uri)
                elif journal.done:
                    journal.remove()
                    with self._changed:
                        self._journals.remove((journal, client, silent))
            with self._changed:
                for uri in {journal.tracking_uri for journal, _, _ in journals}:
                    server = self._servers[uri]
                    if uri in failed:
                        server.retry_at = time.monotonic() + server.backoff
                        server.backoff = min(2 * server.backoff, MAX_BACKOFF)
                    else:
                        server.backoff = 1.0
                self._rounds += 1
                self._changed.notify_all()
                # Epochs that end meanwhile merge into the next round's log_batch.
                self._changed.wait_for(lambda: self._hurry, SEND_INTERVAL)

    def _report(self, journal: Journal, silent: bool, *, failing: bool) -> None:
        """One warning when an outage of a server starts, one when it ends."""
        server = self._servers[journal.tracking_uri]
        if failing and not server.failing:
            where = f"in {journal.folder}" if journal.durable else "in memory"
            warn(
                "mlflow_mcmetrics could not reach the tracking server at "
                f"{journal.tracking_uri}; training goes on, and the records are kept {where} "
                "and sent when it answers again.",
                silent=silent,
            )
        elif not failing and server.failing:
            warn(
                "mlflow_mcmetrics reached the tracking server again; the journal is sent.",
                silent=silent,
            )
        server.failing = failing

    def open_journals(self) -> list[Journal]:
        with self._changed:
            return [journal for journal, _, _ in self._journals]

    def finish(self, timeout: float = 30.0) -> None:
        """At exit: deliver what every journal holds, held records included, for up to
        ``timeout`` seconds; say where what is left waits for ``mcmetrics sync``."""
        journals = self.open_journals()
        delivered = not journals or self.wait(journals, timeout, release=True)
        for journal in journals:
            if journal.done:  # here too: the sender thread dies with the interpreter
                journal.remove()
        if delivered:
            return
        for journal in self.open_journals():
            left = len(_waiting(journal))
            if journal.durable:
                warn(
                    f"mlflow_mcmetrics could not send {left} record(s) of run {journal.run_id}; "
                    f"they are in {journal.folder}. Send them with: mcmetrics sync "
                    f"--tracking-uri {journal.tracking_uri}"
                )
            else:
                warn(
                    f"mlflow_mcmetrics lost {left + journal.lost} record(s) of run "
                    f"{journal.run_id}: the tracking server is unreachable and no journal "
                    "folder is writable; set MCMETRICS_SPOOL_DIR to a writable folder."
                )


#: The sender of this process (its exit: :func:`~.lifecycle._finish_at_exit`).
SENDER = Sender()


def flush(timeout: float = 60.0) -> None:
    """Wait up to ``timeout`` seconds until finished fits have sent everything: the figures
    drawn when training ends, and the epoch-0 values held until MLflow's autologging has
    logged its model (the counterpart of ``mlflow.flush_async_logging()``)."""
    from mlflow_mcmetrics.lifecycle import wait_for_drawings

    deadline = time.monotonic() + timeout
    wait_for_drawings(timeout)
    SENDER.wait(
        SENDER.open_journals(), max(0.0, deadline - time.monotonic()), held=True, patient=True
    )


def sync(tracking_uri: str | None = None, spool_dir: str | Path | None = None) -> dict[str, int]:
    """Deliver the journals that processes left behind (in ``spool_dir``, default every folder
    of :func:`~.journal.spool_dirs`), with the same :func:`pump` as during training.

    A journal whose process still runs is left to it. When everything in a journal is delivered
    it is deleted, and a run its dead process left RUNNING is ended as KILLED. Returns
    ``{run_id: records delivered}``; records that still fail stay (run it again later).
    """
    delivered: dict[str, int] = {}
    folders = [Path(spool_dir)] if spool_dir is not None else None
    for folder in journal_folders(folders):
        journal = Journal.open(folder)
        if journal.writer_alive:
            continue
        client = MlflowClient(tracking_uri or journal.tracking_uri)
        before = journal.delivered
        journal.released = True
        complete = reachable(client.tracking_uri) and pump(journal, client)
        delivered[journal.run_id] = journal.delivered - before
        if not complete:
            warn(f"mcmetrics sync: run {journal.run_id} stopped at record {journal.delivered + 1}")
            continue
        if not any(record["kind"] == "end_run" for record in journal.records):
            run = client.get_run(journal.run_id)
            if run.info.status == "RUNNING":
                client.set_terminated(journal.run_id, "KILLED")
        journal.remove()
    return delivered
