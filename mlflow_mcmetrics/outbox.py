"""Delivery to the tracking server that survives outages: queue, retry, spool, sync.

Everything the callback logs goes through an :class:`Outbox`. A sender thread delivers the
records in order, so the training thread only queues them: logging costs an epoch the time to
build the values, not the round trips to the tracking store. A record that cannot be sent
(server down, timeout, 5xx) stays queued, in order, and is retried at the next epoch end;
MLflow's own HTTP retries are bounded for these calls, so a dead server costs the sender a few
seconds per epoch, not minutes, and training none. What is still queued when training ends is
written to ``./mcmetrics-spool/{run_id}.jsonl`` (atomically: a temporary file renamed into
place) and ``mcmetrics sync`` replays it later. Replaying is idempotent: MLflow ignores a metric logged
twice with the same key, value, timestamp and step, and artifacts are overwritten in place.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import tempfile
import threading
import warnings
from collections import deque
from collections.abc import Callable
from pathlib import Path

from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

__all__ = ["DEFAULT_SPOOL_DIR", "Outbox", "bounded_http", "sync"]

DEFAULT_SPOOL_DIR = "mcmetrics-spool"

# For our calls only: one attempt each with a short timeout instead of MLflow's defaults
# (7 retries, backoff factor 2, 120 s timeout), which block a dead server's caller for minutes.
_BOUNDED_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
_env_lock = threading.Lock()


@contextlib.contextmanager
def bounded_http():
    with _env_lock:
        saved = {name: os.environ.get(name) for name in _BOUNDED_HTTP}
        os.environ.update(_BOUNDED_HTTP)
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def _deliver(client: MlflowClient, run_id: str, record: dict) -> None:
    kind = record["kind"]
    if kind == "metrics":
        client.log_batch(run_id, metrics=[Metric(k, v, t, s) for k, v, t, s in record["metrics"]], synchronous=True)
    elif kind == "params":
        client.log_batch(run_id, params=[Param(k, v) for k, v in record["params"].items()], synchronous=True)
    elif kind == "text":
        client.log_text(run_id, record["text"], record["artifact_file"])
    elif kind == "png":
        from PIL import Image

        image = Image.open(io.BytesIO(base64.b64decode(record["png"])))
        client.log_image(run_id, image, artifact_file=record["artifact_file"])
    else:
        raise ValueError(f"Unknown spool record kind {kind!r}.")


def _write_atomically(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(handle, "w") as file:
        for record in records:
            file.write(json.dumps(record) + "\n")
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def _read_spool(path: Path) -> list[dict]:
    with open(path) as file:
        return [json.loads(line) for line in file if line.strip()]


class Outbox:
    """An ordered queue of records for one run, delivered by a sender thread.

    Records are dicts: ``{"kind": "metrics", "metrics": [[key, value, timestamp_ms, step],
    ...]}``, ``{"kind": "params", "params": {...}}``, ``{"kind": "text", "artifact_file",
    "text"}`` and ``{"kind": "png", "artifact_file", "png": base64}``, or a function that builds
    one: the sender calls it when the record's turn comes, so that serialising large payloads
    happens off the training thread. :meth:`put` returns at once; after a failed delivery the
    sender waits for :meth:`flush` (called once per epoch) before it tries again; :meth:`close`
    makes a last attempt and spools what is left.
    """

    def __init__(self, run_id: str, client: MlflowClient | None = None, spool_dir: str | os.PathLike = DEFAULT_SPOOL_DIR):
        self.run_id = run_id
        self.client = client or MlflowClient()
        self.spool_dir = Path(spool_dir)
        self._queue: deque[dict | Callable[[], dict]] = deque()
        self._changed = threading.Condition()
        self._failing = False  # the last delivery failed: wait for flush() before the next try
        self._retry = False  # flush() was called since that failure
        self._sending = False
        self._closing = False
        self._sender = threading.Thread(target=self._send_forever, name=f"mcmetrics-outbox-{run_id}", daemon=True)
        self._sender.start()

    def put(self, record: dict | Callable[[], dict]) -> None:
        """Queue ``record`` for delivery; never blocks on the tracking server."""
        with self._changed:
            self._queue.append(record)
            self._changed.notify_all()

    def flush(self) -> None:
        """Let the sender retry after a failure (once per epoch end: an outage costs one
        attempt per epoch, in the background)."""
        with self._changed:
            self._retry = True
            self._changed.notify_all()

    def drain(self) -> bool:
        """Block until everything queued is delivered (True) or a delivery failed (False)."""
        with self._changed:
            self._changed.wait_for(lambda: not self._sending and (not self._queue or self._failing and not self._retry))
            return not self._queue

    def close(self) -> Path | None:
        """Last attempt; stop the sender; spool what is left. Returns the spool file, or None
        if everything was delivered."""
        with self._changed:
            self._retry = self._closing = True
            self._changed.notify_all()
        self._sender.join()
        if not self._queue:
            return None
        path = self.spool_dir / f"{self.run_id}.jsonl"
        earlier = _read_spool(path) if path.exists() else []
        _write_atomically(path, earlier + [record() if callable(record) else record for record in self._queue])
        count = len(self._queue)
        self._queue.clear()
        warnings.warn(
            f"mlflow_mcmetrics could not send {count} record(s) of run {self.run_id}; they are in {path}. "
            f"Replay them with: mcmetrics sync --tracking-uri <URI> (spool folder {self.spool_dir}).",
            stacklevel=2,
        )
        return path

    def _may_send(self) -> bool:
        return bool(self._queue) and (not self._failing or self._retry)

    def _send_forever(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._may_send() or self._closing)
                if not self._may_send():  # closing, and nothing more to try
                    return
                self._sending, self._retry = True, False
            delivered = self._send_queued()
            with self._changed:
                self._sending = False
                if self._failing and delivered:
                    warnings.warn("mlflow_mcmetrics reached the tracking server again; the queue is sent.", stacklevel=2)
                self._failing = not delivered
                self._changed.notify_all()
                if self._closing and not self._may_send():
                    return

    def _send_queued(self) -> bool:
        """Deliver from the head of the queue until it is empty (True) or a delivery fails.

        A record the server rejects as invalid (HTTP 4xx, e.g. a param changed within a run)
        would never succeed: it is dropped with a warning instead of blocking the queue.
        """
        while True:
            with self._changed:
                if not self._queue:
                    return True
                record = self._queue[0]  # only this thread removes or replaces records
            if callable(record):
                record = record()
                with self._changed:
                    self._queue[0] = record  # built once, even if its delivery is retried
            try:
                with bounded_http():
                    _deliver(self.client, self.run_id, record)
            except MlflowException as error:
                if not 400 <= error.get_http_status_code() < 500:
                    self._warn_unreachable(error)
                    return False
                warnings.warn(f"mlflow_mcmetrics dropped a rejected {record['kind']} record: {error.message[:300]}",
                              stacklevel=2)
            except Exception as error:  # noqa: BLE001 - any other failure: keep it, retry later
                self._warn_unreachable(error)
                return False
            with self._changed:
                self._queue.popleft()

    def _warn_unreachable(self, error: Exception) -> None:
        if not self._failing:
            warnings.warn(
                f"mlflow_mcmetrics could not reach the tracking server ({type(error).__name__}: "
                f"{str(error)[:200]}); training goes on, {len(self._queue)} record(s) are queued "
                "and retried at the next epoch end.",
                stacklevel=2,
            )


def sync(tracking_uri: str | None = None, spool_dir: str | os.PathLike = DEFAULT_SPOOL_DIR) -> dict[str, int]:
    """Replay every spool file in ``spool_dir``; delivered records are removed, a fully
    delivered file is deleted. Returns ``{run_id: records delivered}``; records that still
    fail stay in their file (run it again later)."""
    client = MlflowClient(tracking_uri=tracking_uri)
    delivered: dict[str, int] = {}
    for path in sorted(Path(spool_dir).glob("*.jsonl")):
        run_id = path.stem
        records = _read_spool(path)
        sent = 0
        for record in records:
            try:
                with bounded_http():
                    _deliver(client, run_id, record)
            except Exception as error:  # noqa: BLE001
                warnings.warn(f"mcmetrics sync: run {run_id} stopped at record {sent + 1}/{len(records)}: {error}",
                              stacklevel=2)
                break
            sent += 1
        remaining = records[sent:]
        if remaining:
            _write_atomically(path, remaining)
        else:
            path.unlink()
        delivered[run_id] = sent
    return delivered
