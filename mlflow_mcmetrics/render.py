"""Drawing the per-epoch figures in a separate, low-priority process.

Drawing a confusion matrix and PR curves takes matplotlib about a second of pure Python. On
a thread of the training process it holds the GIL that long and the Python parts of Keras'
step loop wait for it (benchmarks/README.md: epochs 0.2-0.7 s slower while it runs). A child
process has its own interpreter, and it lowers its own priority (``nice`` 19) so that the
training process gets the CPU first. The child is ``python -m mlflow_mcmetrics.render``,
not a ``multiprocessing`` worker: spawning those re-imports the user's ``__main__`` (and
would re-run a training script without a main guard); forking a process that runs TensorFlow
threads is unsafe.

Requests and replies are pickled, length-prefixed, over the child's stdin and stdout.
"""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys
import threading
from typing import BinaryIO

import numpy as np

from mlflow_mcmetrics.events import warn

__all__ = ["RenderProcess"]

_LENGTH = struct.Struct("!Q")


def _send(stream: BinaryIO, payload) -> None:
    data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_LENGTH.pack(len(data)) + data)
    stream.flush()


def _receive(stream: BinaryIO):
    header = stream.read(_LENGTH.size)
    if len(header) < _LENGTH.size:
        raise EOFError("the render process closed its pipe")
    (length,) = _LENGTH.unpack(header)
    return pickle.loads(stream.read(length))


#: The figures a request may ask for: their function in :mod:`mlflow_mcmetrics.plots`, and the
#: artifact stem of a function that draws a single figure.
_FIGURES = {
    "plot_state": None,
    "plot_roc_and_calibration": None,
    "plot_f1_by_epoch": "f1_by_epoch",
}


def draw(request: dict) -> dict[str, np.ndarray]:
    """``plots.{figure}(**kwargs)`` rendered to RGBA arrays, by artifact stem.

    ``request`` is ``{"figure": one of _FIGURES, **kwargs}``.
    """
    from mlflow_mcmetrics import plots

    kwargs = dict(request)
    function = kwargs.pop("figure")
    stem = _FIGURES[function]
    figures = getattr(plots, function)(**kwargs)
    if stem is not None:
        figures = {stem: figures}
    return {stem: plots.figure_to_array(figure) for stem, figure in figures.items()}


class RenderProcess:
    """A child process that draws :func:`draw` requests, started on first use.

    If the child cannot be started or dies, the figures are drawn in this process instead
    (with one warning): images are never lost to this optimisation.
    """

    def __init__(self):
        self._process: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._broken = False

    def draw(self, **request) -> dict[str, np.ndarray]:
        with self._lock:
            if not self._broken:
                try:
                    process = self._started()
                    _send(process.stdin, request)
                    reply = _receive(process.stdout)
                except (OSError, EOFError, pickle.PickleError) as error:
                    self._broken = True
                    self.close()
                    warn(
                        f"mlflow_mcmetrics draws its images in the training process: the render "
                        f"process failed ({type(error).__name__}: {error})."
                    )
                else:
                    if isinstance(reply, BaseException):
                        raise reply
                    return reply
        return draw(request)

    def _started(self) -> subprocess.Popen:
        if self._process is None or self._process.poll() is not None:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "mlflow_mcmetrics.render"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
        return self._process

    def close(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        # The child exits when its stdin closes; waiting for its interpreter to shut down would
        # add a fifth of a second to the end of every fit (subprocess reaps it later).
        try:
            process.stdin.close()
        except OSError:
            process.kill()
        process.stdout.close()  # nothing more is read from it


def main() -> None:
    """The child: draw requests from stdin until it closes."""
    if hasattr(os, "nice"):
        os.nice(19)
    requests, replies = sys.stdin.buffer, sys.stdout.buffer
    while True:
        try:
            request = _receive(requests)
        except EOFError:
            return
        try:
            reply = draw(request)
        except Exception as error:  # noqa: BLE001 - handed back to the caller, who raises it
            reply = error
        _send(replies, reply)


if __name__ == "__main__":
    main()
