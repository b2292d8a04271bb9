"""Helper processes: a child interpreter that answers pickled requests over its stdin and stdout.

Work that holds the GIL for long stretches (matplotlib drawing a figure) slows the Python parts
of Keras' step loop when it runs on a thread of the training process: the training thread waits
for the GIL at every step (benchmarks/README.md). A child process has its own interpreter, at a
lower priority.

Children are ``python -m mlflow_mcmetrics.child`` processes, not ``multiprocessing`` workers:
spawning those re-imports the user's ``__main__`` (and would re-run a training script without a
main guard); forking a process that runs TensorFlow threads is unsafe. A child lowers its
priority before it imports anything and runs in a session of its own, so that Ctrl-C in a
terminal or a signal to the process group reaches the training process, which finishes its
run, and not the child it still needs for that; a child exits when its stdin closes, so it
never outlives the training process.

Requests and replies are pickled, length-prefixed. :class:`ChildPool` falls back to doing the
work in this process when a child fails: a child is an optimisation, never a way to lose an
image.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pickle
import queue
import select
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any, BinaryIO

from mlflow_mcmetrics.events import warn

__all__ = ["ChildFailed", "ChildPool", "ChildProcess"]

_LENGTH = struct.Struct("!Q")


class ChildFailed(OSError):
    """The child could not be started, died, or broke the protocol."""


def _send(stream: BinaryIO, payload) -> None:
    data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_LENGTH.pack(len(data)) + data)
    stream.flush()


def _receive(stream: BinaryIO):
    header = stream.read(_LENGTH.size)
    if len(header) < _LENGTH.size:
        raise EOFError("the child process closed its pipe")
    (length,) = _LENGTH.unpack(header)
    return pickle.loads(stream.read(length))


class ChildProcess:
    """A child process that serves ``handler`` (``"module:function"``, the function takes a
    request and returns the reply), started on first use, one request at a time (callers from
    several threads take turns).

    Args:
        handler: what answers requests, as ``"module:function"``.
        niceness: how much the child lowers its priority, before any import.
        preload: modules the child imports before its first request (so that :meth:`start`
            does that work ahead of need).
    """

    def __init__(self, handler: str, niceness: int, preload: Sequence[str] = ()):
        self.handler = handler
        self._arguments = [handler, str(niceness), *preload]
        self._process: subprocess.Popen | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Start the child now, if it is not running (its imports overlap the caller's work).

        Raises:
            ChildFailed: it cannot be started.
        """
        with self._lock:
            self._started()

    def request(self, payload, timeout: float | None = None) -> Any:
        """Send ``payload`` and return the child's reply (an exception the child's handler
        raised is raised here).

        Raises:
            ChildFailed: the child cannot be started or died; the next request starts a new one.
            TimeoutError: no reply within ``timeout`` seconds; the child is killed.
        """
        with self._lock:
            process = self._started()
            try:
                _send(process.stdin, payload)
                ready, _, _ = select.select([process.stdout], [], [], timeout)
                reply = _receive(process.stdout) if ready else None
            except (OSError, EOFError, pickle.PickleError) as error:
                self._kill()
                raise ChildFailed(f"{type(error).__name__}: {error}") from error
            if not ready:
                self._kill()
                raise TimeoutError(f"{self.handler} did not answer within {timeout} s")
        if isinstance(reply, BaseException):
            raise reply
        return reply

    def _started(self) -> subprocess.Popen:
        if self._process is not None and self._process.poll() is not None:
            self._kill()  # it died between requests: a new one takes over
        if self._process is None:
            try:
                self._process = subprocess.Popen(
                    [sys.executable, "-m", __name__, *self._arguments],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            except OSError as error:
                raise ChildFailed(f"{type(error).__name__}: {error}") from error
        return self._process

    def _kill(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            process.kill()
            process.wait()
            for stream in (process.stdin, process.stdout):
                with contextlib.suppress(OSError):  # unsent bytes: a broken pipe
                    stream.close()

    def close(self) -> None:
        """Let the child exit (it does when its stdin closes)."""
        with self._lock:
            process, self._process = self._process, None
        if process is None:
            return
        # Waiting for the child's interpreter to shut down would add a fifth of a second to
        # the end of every fit (subprocess reaps it later).
        try:
            process.stdin.close()
        except OSError:
            process.kill()
        process.stdout.close()  # nothing more is read from it


class ChildPool:
    """``processes`` :class:`ChildProcess` es serving ``handler``, one request per child at a
    time; the work is done here when a child cannot run (with one warning).

    Args:
        handler: ``"module:function"``.
        niceness: how much the children lower their priority.
        preload: modules the children import ahead of their first request.
        processes: the most children working at once.
        what: what the children do, for the warning.
    """

    def __init__(
        self, handler: str, niceness: int, preload: Sequence[str], processes: int, what: str
    ):
        self.handler, self.what = handler, what
        self._children = [ChildProcess(handler, niceness, preload) for _ in range(processes)]
        # Last in, first out: one calling thread keeps using the first child only.
        self._idle: queue.LifoQueue[ChildProcess] = queue.LifoQueue()
        for child in reversed(self._children):
            self._idle.put(child)
        self._broken = False

    def start(self, processes: int = 1) -> None:
        """Start the first ``processes`` children now (their imports overlap the caller's
        work)."""
        for child in self._children[:processes]:
            with contextlib.suppress(ChildFailed):
                child.start()  # call() tries again, falls back and says so

    def call(self, request) -> Any:
        """The handler's reply to ``request``, from a child if one can run, else from here."""
        if not self._broken:
            child = self._idle.get()
            try:
                return child.request(request)
            except ChildFailed as error:
                first, self._broken = not self._broken, True
                if first:
                    warn(
                        f"mlflow_mcmetrics {self.what} in this process: its child failed ({error})."
                    )
            finally:
                self._idle.put(child)
        module, _, function = self.handler.partition(":")
        return getattr(importlib.import_module(module), function)(request)

    def close(self) -> None:
        for child in self._children:
            child.close()


def serve(handle: Callable[[Any], Any]) -> None:
    """The child's loop: reply ``handle(request)`` (or the exception it raised) to each request
    until stdin closes."""
    # Replies get stdout's pipe to themselves: what the served code prints (MLflow prints run
    # links) goes to stderr instead of into the protocol.
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    requests = sys.stdin.buffer
    while True:
        try:
            request = _receive(requests)
        except EOFError:
            return
        try:
            reply = handle(request)
        except Exception as error:  # noqa: BLE001 - handed back to the caller, who raises it
            reply = error
        _send(replies, reply)


def main(argv: Sequence[str]) -> None:
    """The child: ``handler niceness [preload ...]`` (see :class:`ChildProcess`)."""
    handler, niceness, *preload = argv
    if hasattr(os, "nice"):
        os.nice(int(niceness))
    for module in preload:
        importlib.import_module(module)
    module, _, function = handler.partition(":")
    serve(getattr(importlib.import_module(module), function))


if __name__ == "__main__":
    main(sys.argv[1:])
