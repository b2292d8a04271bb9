"""The run a ``fit()`` logs to: which one, how it ends, and what SIGTERM and exit do to it.

:func:`start_fit_run` picks the run (an explicit id, the active run, or a new one) and never
blocks training on the tracking server: when an HTTP server does not answer, the new run is an
offline run (see :mod:`mlflow_mcmetrics.outbox`) created as soon as the server is back, or by
``mcmetrics sync``. :meth:`FitRun.finish` delivers or spools what is queued and ends a run this
package started, through the same queue, so a dead server never holds the training thread.

While a fit runs in the main thread, SIGTERM (how Slurm, Kubernetes and CI runners stop jobs)
first finishes every unfinished fit as ``KILLED``, then hands the signal to the previous
handler, or to the default action (exit status 143). A fit that raised (Ctrl-C, an error) is
finished as ``KILLED`` by the next fit in its run, or at exit before MLflow's own exit handler
would mark its run ``FINISHED``.
"""

from __future__ import annotations

import atexit
import os
import signal
import threading
import time
import weakref
from collections.abc import Callable

import mlflow
from mlflow.tracking import MlflowClient

from mlflow_mcmetrics.events import logger
from mlflow_mcmetrics.outbox import Outbox, finish_pending, reachable

__all__ = ["FitRun", "start_fit_run"]

#: How long finishing a fit may wait for the tracking server before spooling.
FINISH_TIMEOUT = 30.0
#: The same when SIGTERM asked the process to stop: it must go within seconds.
SIGTERM_TIMEOUT = 5.0

_UNFINISHED: list[FitRun] = []
_previous_sigterm: Callable | int | None = None


class FitRun:
    """The run of one ``fit()`` and the outbox that delivers to it.

    Attributes:
        outbox: where records for the run go.
        owned: whether this package started the run (and so ends it).
    """

    def __init__(self, outbox: Outbox, owned: bool, on_finish: Callable[[], None] | None = None):
        self.outbox = outbox
        self.owned = owned
        self.on_finish = on_finish
        self._lock = threading.Lock()
        self._finished = False

    @property
    def run_id(self) -> str:
        """The run's id (an ``offline-`` id until an offline run is created on the server)."""
        return self.outbox.run_id

    def finish(self, status: str = "FINISHED", timeout: float = FINISH_TIMEOUT) -> None:
        """Deliver or spool what is queued and end the run if this package started it."""
        with self._lock:
            if self._finished:
                return
            self._finished = True
        if self in _UNFINISHED:
            _UNFINISHED.remove(self)
        if not _UNFINISHED:
            _restore_sigterm()
        try:
            if self.on_finish is not None:
                self.on_finish()
        finally:
            if self.owned:
                self.outbox.put(
                    {"kind": "end_run", "status": status, "end_time": int(time.time() * 1000)}
                )
                _forget_active_run(self.run_id, status)
            self.outbox.close(timeout)


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
    if run_id is not None:
        fit_run = FitRun(Outbox(run_id, client, silent=silent), owned=False)
    elif reachable(client.tracking_uri):
        run = mlflow.start_run(tags=tags)
        fit_run = FitRun(Outbox(run.info.run_id, client, silent=silent), owned=True)
    else:
        fit_run = FitRun(
            Outbox.offline(_offline_run_request(tags), client, silent=silent), owned=True
        )
        logger.warning(
            "mlflow_mcmetrics: the tracking server at %s does not answer; training starts and its "
            "run is created when the server is back (or by `mcmetrics sync`).",
            client.tracking_uri,
        )
    _UNFINISHED.append(fit_run)
    _install_sigterm()
    return fit_run


def _offline_run_request(tags: dict | None) -> dict:
    """What ``mlflow.start_run()`` would send to create the run, decided now, offline."""
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


def _forget_active_run(run_id: str, status: str) -> None:
    """Pop our run off MLflow's active-run stack without a server call (``mlflow.end_run()``
    would make one, and block for minutes on a dead server); the ``end_run`` record ends it on
    the server. Falls back to ``mlflow.end_run()`` where MLflow keeps its stack elsewhere."""
    fluent = mlflow.tracking.fluent
    stack_variable = getattr(fluent, "_active_run_stack", None)
    last_variable = getattr(fluent, "_last_active_run_id", None)
    if stack_variable is None or last_variable is None or not hasattr(stack_variable, "get"):
        active = mlflow.active_run()
        if active is not None and active.info.run_id == run_id:
            mlflow.end_run(status)
        return
    stack = stack_variable.get()
    if stack and stack[-1].info.run_id == run_id:
        stack.pop()
        last_variable.set(run_id)


def _on_sigterm(signum, frame) -> None:
    for fit in list(reversed(_UNFINISHED)):
        try:
            fit.finish("KILLED", timeout=SIGTERM_TIMEOUT)
        except Exception:  # noqa: BLE001 - the signal must reach its handler whatever happens here
            logger.debug("finishing a fit on SIGTERM failed", exc_info=True)
    previous = _previous_sigterm
    _restore_sigterm()
    if callable(previous):
        previous(signum, frame)
    else:  # SIG_DFL: end the process as the signal would have
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


# Delivering at exit writes MLflow's temporary files, so _finish_at_exit must run before the
# exit hook of weakref.finalize, which deletes every tempfile.TemporaryDirectory, even one a
# delivery thread is writing. atexit runs hooks in reverse order of registration and that hook
# registers itself with the first finalizer made: make one now, before ours.
weakref.finalize(FitRun, lambda: None)


@atexit.register
def _finish_at_exit() -> None:
    """Registered after MLflow's own exit handler, so it runs first: fits that raised get their
    queued records delivered or spooled and their runs ended as KILLED; then records held for
    MLflow's logged model are sent."""
    for fit in list(reversed(_UNFINISHED)):
        fit.finish("KILLED")
    finish_pending()
