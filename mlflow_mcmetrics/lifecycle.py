"""The run a ``fit()`` logs to: which one, how it ends, and what SIGTERM and exit do to it.

:func:`start_fit_run` picks the run (an explicit id, the active run, or a new one) and never
blocks training on the tracking server: when an HTTP server does not answer, the new run is an
offline run, created by the sender as soon as the server is back, or by ``mcmetrics sync``.
Every record goes into the run's journal (:mod:`mlflow_mcmetrics.journal`), which the sender
(:mod:`mlflow_mcmetrics.sender`) delivers. :meth:`FitRun.finish` gives the sender a while to
deliver what is written and ends a run this package started.

While a fit runs in the main thread, SIGTERM (how Slurm, Kubernetes and CI runners stop jobs)
finishes every unfinished fit as ``KILLED``, the user's own run too when the process is about to
die (no other handler), then hands the signal on: to the previous handler, or to the default
action (exit status 143). A fit that raised (Ctrl-C, an error) is finished as ``KILLED`` by the
next fit in its run, or at exit, before MLflow's own exit handler would mark its run
``FINISHED``. After SIGKILL, the journal is what is left: ``mcmetrics sync`` delivers it and ends
the run as ``KILLED``.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import os
import signal
import threading
import time
import uuid
import weakref
from collections.abc import Callable

import mlflow
from mlflow.tracking import MlflowClient

from mlflow_mcmetrics.events import logger, warn
from mlflow_mcmetrics.journal import Journal
from mlflow_mcmetrics.sender import SENDER, reachable

__all__ = ["FitRun", "start_fit_run", "wait_for_drawings"]

#: How long finishing a fit may wait for the tracking server.
FINISH_TIMEOUT = 30.0
#: The same when SIGTERM asked the process to stop: it must go within seconds.
SIGTERM_TIMEOUT = 5.0
#: Run ids of offline runs (started while the server was down) start with this.
OFFLINE_PREFIX = "offline-"

_UNFINISHED: list[FitRun] = []
_DRAWING: set[concurrent.futures.Future] = set()
_previous_sigterm: Callable | int | None = None


class FitRun:
    """The run of one ``fit()`` and its journal.

    Attributes:
        journal: where the fit's records are written (see :meth:`log`).
        owned: whether this package started the run (and so ends it).
    """

    def __init__(self, journal: Journal, client: MlflowClient, owned: bool, silent: bool):
        self.journal = journal
        self.owned = owned
        self.silent = silent
        self._lock = threading.Lock()
        self._finished = False
        self._drawing: list[concurrent.futures.Future] = []
        SENDER.add(journal, client, silent=silent)

    @property
    def run_id(self) -> str:
        """The run's id (an ``offline-`` id until an offline run is created on the server)."""
        return self.journal.run_id

    def log(self, record: dict, payload: bytes | None = None, name: str = "") -> None:
        """Write ``record`` (an artifact or image with its ``payload`` file ``name``) into the
        journal, for the sender."""
        self.journal.append(record, payload, name)
        SENDER.wake()

    def drawing(self, future: concurrent.futures.Future) -> None:
        """Records still being made (figures drawn after ``fit()``): the journal stays open
        for them."""
        self._drawing.append(future)
        _DRAWING.add(future)
        future.add_done_callback(_DRAWING.discard)

    def finish(
        self, status: str = "FINISHED", timeout: float = FINISH_TIMEOUT, *, end_run=None
    ) -> None:
        """End the fit: its run too if this package started it (or ``end_run``), then give the
        sender up to ``timeout`` seconds; what it could not send waits in the journal."""
        with self._lock:
            if self._finished:
                return
            self._finished = True
        if self in _UNFINISHED:
            _UNFINISHED.remove(self)
        if not _UNFINISHED:
            _restore_sigterm()
        active = mlflow.active_run()
        in_fluent_stack = active is not None and active.info.run_id == self.run_id
        self.journal.finishing = True
        delivered = SENDER.wait([self.journal], timeout)
        if self.owned if end_run is None else end_run:
            if delivered and in_fluent_stack:
                mlflow.end_run(status)  # the server answers: MLflow's own way, one quick call
            else:
                self.log({"kind": "end_run", "status": status, "end_time": int(time.time() * 1000)})
                if in_fluent_stack:
                    _forget_active_run(self.run_id)
                delivered = delivered and SENDER.wait([self.journal], timeout)
        if not delivered:
            warn(
                f"mlflow_mcmetrics could not send every record of run {self.run_id} yet; they "
                f"are kept in {self.journal.folder} and sent in the background, or by "
                f"`mcmetrics sync --tracking-uri {self.journal.tracking_uri}`.",
                silent=self.silent,
            )
        pending = [future for future in self._drawing if not future.done()]
        if not pending:
            self._close()
        else:
            countdown = [len(pending)]

            def drawn(_future):
                countdown[0] -= 1
                if not countdown[0]:
                    self._close()

            for future in pending:
                future.add_done_callback(drawn)

    def _close(self) -> None:
        self.journal.close()
        SENDER.wake()


def start_fit_run(
    run_id: str | None = None, *, silent: bool = False, tags: dict | None = None
) -> FitRun:
    """The run for a fit that starts now: ``run_id``, else the active run, else a new run.

    A run left active by a fit of ours that raised is finished as ``KILLED`` first (MLflow's
    autologging does the same), and a new run is started in its place.
    """
    client = MlflowClient()
    if run_id is None:
        active = mlflow.active_run()
        raised = next(
            (
                fit
                for fit in _UNFINISHED
                if active is not None and fit.owned and fit.run_id == active.info.run_id
            ),
            None,
        )
        if raised is not None:
            raised.finish("KILLED")
            active = None
        if active is not None:
            run_id = active.info.run_id
    owned = run_id is None
    if run_id is None and reachable(client.tracking_uri):
        run_id = mlflow.start_run(tags=tags).info.run_id
    journal = Journal(run_id or f"{OFFLINE_PREFIX}{uuid.uuid4().hex}", client.tracking_uri)
    if run_id is None:
        journal.append({"kind": "create_run", **_offline_run_request(tags)})
        logger.warning(
            "mlflow_mcmetrics: the tracking server at %s does not answer; training starts and its "
            "run is created when the server is back (or by `mcmetrics sync`).",
            client.tracking_uri,
        )
    fit_run = FitRun(journal, client, owned, silent)
    _UNFINISHED.append(fit_run)
    _install_sigterm()
    return fit_run


def _offline_run_request(tags: dict | None) -> dict:
    """What ``mlflow.start_run()`` would send to create the run, decided now, offline. (The
    active experiment has no public getter: MLflow's own variable, else its environment.)"""
    from mlflow.tracking.context.registry import resolve_tags

    experiment_id = (
        getattr(mlflow.tracking.fluent, "_active_experiment_id", None)
        or os.environ.get("MLFLOW_EXPERIMENT_ID")
        or "0"
    )
    return {
        "experiment_id": experiment_id,
        "start_time": int(time.time() * 1000),
        "tags": resolve_tags(tags),
        "run_name": None,
    }


def _forget_active_run(run_id: str) -> None:
    """Pop our run off MLflow's active-run stack without a server call, during an outage
    (``mlflow.end_run()`` would block for minutes on a dead server; the journal's ``end_run``
    record ends it on the server). MLflow has no public way: where its stack is not where this
    looks, ``mlflow.end_run()`` after all."""
    fluent = mlflow.tracking.fluent
    stack_variable = getattr(fluent, "_active_run_stack", None)
    last_variable = getattr(fluent, "_last_active_run_id", None)
    if stack_variable is None or last_variable is None or not hasattr(stack_variable, "get"):
        mlflow.end_run()
        return
    stack = stack_variable.get()
    if stack and stack[-1].info.run_id == run_id:
        stack.pop()
        last_variable.set(run_id)


def wait_for_drawings(timeout: float) -> None:
    """Wait up to ``timeout`` seconds for the figures finished fits still draw."""
    concurrent.futures.wait(list(_DRAWING), timeout)


def _on_sigterm(signum, frame) -> None:
    previous = _previous_sigterm
    dying = not callable(previous)  # the default action ends the process
    for fit in list(reversed(_UNFINISHED)):
        try:
            fit.finish("KILLED", timeout=SIGTERM_TIMEOUT, end_run=True if dying else None)
        except Exception:  # noqa: BLE001 - the signal must reach its handler whatever happens here
            logger.debug("finishing a fit on SIGTERM failed", exc_info=True)
    _restore_sigterm()
    if callable(previous):
        previous(signum, frame)
    else:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)


def _install_sigterm() -> None:
    """Handle SIGTERM while a fit runs, in the main thread only (Python's rule), and only if
    the process does not ignore it."""
    global _previous_sigterm
    if _previous_sigterm is not None or threading.current_thread() is not threading.main_thread():
        return
    current = signal.getsignal(signal.SIGTERM)
    if current in (signal.SIG_IGN, None):
        return
    _previous_sigterm = current
    signal.signal(signal.SIGTERM, _on_sigterm)


def _restore_sigterm() -> None:
    global _previous_sigterm
    if _previous_sigterm is None or threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is _on_sigterm:
        signal.signal(signal.SIGTERM, _previous_sigterm)
    _previous_sigterm = None


# Delivering at exit writes MLflow's temporary files (log_image, log_artifact), so every
# delivery must end before the exit hook of weakref.finalize, which deletes every
# tempfile.TemporaryDirectory, even one the sender is writing. atexit runs hooks in reverse
# order of registration and that hook registers itself with the first finalizer made: make one
# now, before ours, and deliver from ours.
weakref.finalize(FitRun, lambda: None)


@atexit.register
def _finish_at_exit() -> None:
    """Registered after MLflow's own exit handler, so it runs first: fits that raised end their
    runs as KILLED; then the figures still being drawn, and what is left to deliver, get their
    last chance."""
    for fit in list(reversed(_UNFINISHED)):
        fit.finish("KILLED")
    wait_for_drawings(30.0)
    SENDER.finish()
