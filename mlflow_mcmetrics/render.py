"""Drawing the figures in a separate, low-priority process (see :mod:`mlflow_mcmetrics.child`).

Drawing a confusion matrix and PR curves takes matplotlib about half a second of pure Python.
On a thread of the training process it would hold the GIL that long and the Python parts of
Keras' step loop would wait for it (benchmarks/README.md: epochs 0.2-0.7 s slower while it
ran). The child lowers its own priority (``nice`` 19) so that training gets the CPU first.
"""

from __future__ import annotations

import atexit
import queue

from mlflow_mcmetrics.child import ChildFailed, ChildProcess
from mlflow_mcmetrics.events import warn

__all__ = ["RenderProcess", "renderer"]

#: The figures a request may ask for: their function in :mod:`mlflow_mcmetrics.plots`, and the
#: artifact stem of a function that draws a single figure.
_FIGURES = {
    "plot_state": None,
    "plot_roc_and_calibration": None,
    "plot_f1_by_epoch": "f1_by_epoch",
}


def draw(request: dict) -> dict[str, bytes]:
    """``plots.{figure}(**kwargs)`` rendered to PNG, by artifact stem.

    ``request`` is ``{"figure": one of _FIGURES, **kwargs}``.
    """
    from mlflow_mcmetrics import plots

    kwargs = dict(request)
    function = kwargs.pop("figure")
    stem = _FIGURES[function]
    figures = getattr(plots, function)(**kwargs)
    if stem is not None:
        figures = {stem: figures}
    return {stem: plots.figure_to_png(figure) for stem, figure in figures.items()}


class RenderProcess:
    """Child processes that draw :func:`draw` requests, one request per child at a time.

    There are ``processes`` children so that the figures of the end of training can be drawn
    side by side; :meth:`start` starts them ahead of need (a child takes about a second to
    import matplotlib), :meth:`draw` starts one on demand. If a child cannot be started or
    dies, the figures are drawn in this process instead (with one warning): images are never
    lost to this optimisation.

    Args:
        processes: the most children drawing at once.
    """

    def __init__(self, processes: int = 2):
        self._children = [
            ChildProcess(
                "mlflow_mcmetrics.render:draw", niceness=19, preload=["mlflow_mcmetrics.plots"]
            )
            for _ in range(processes)
        ]
        # Last in, first out: one drawing thread keeps using the first child only.
        self._idle: queue.LifoQueue[ChildProcess] = queue.LifoQueue()
        for child in reversed(self._children):
            self._idle.put(child)
        self._broken = False

    def start(self, processes: int = 1) -> None:
        """Start the first ``processes`` children now, while the caller goes on."""
        for child in self._children[:processes]:
            try:
                child.start()
            except ChildFailed:
                pass  # draw() tries again, falls back and says so

    def draw(self, **request) -> dict[str, bytes]:
        """The figures of ``request`` (see :func:`draw`), as PNG by artifact stem."""
        if not self._broken:
            child = self._idle.get()
            try:
                return child.request(request)
            except ChildFailed as error:
                first, self._broken = not self._broken, True
                if first:
                    warn(
                        "mlflow_mcmetrics draws its images in the training process: the "
                        f"render process failed ({error})."
                    )
            finally:
                self._idle.put(child)
        return draw(request)

    def close(self) -> None:
        for child in self._children:
            child.close()


#: The render processes of this Python process: every fit draws with them, so that a process
#: training several models (``mlflow run . -e compare``, a test suite, a notebook) starts them
#: once. They exit with it.
_RENDERER = RenderProcess()
atexit.register(_RENDERER.close)


def renderer() -> RenderProcess:
    """The render processes every fit of this process draws with."""
    return _RENDERER
