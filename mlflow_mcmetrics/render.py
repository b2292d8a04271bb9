"""Drawing the figures in low-priority child processes (see :mod:`mlflow_mcmetrics.child`).

Drawing a confusion matrix and PR curves takes matplotlib about half a second of pure Python.
On a thread of the training process it would hold the GIL that long and the Python parts of
Keras' step loop would wait for it (benchmarks/README.md: epochs 0.2-0.7 s slower while it
ran). The children lower their own priority (``nice`` 19) so that training gets the CPU first;
there are two, so that the figures of the end of training are drawn side by side.
"""

from __future__ import annotations

import atexit

from mlflow_mcmetrics.child import ChildPool

__all__ = ["RENDERER", "draw"]

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


#: The render processes of this Python process: every fit draws with them, so that a process
#: training several models (``mlflow run . -e compare``, a test suite, a notebook) starts them
#: once. They exit with it.
RENDERER = ChildPool(
    "mlflow_mcmetrics.render:draw",
    niceness=19,
    preload=["mlflow_mcmetrics.plots"],
    processes=2,
    what="draws its images",
)
atexit.register(RENDERER.close)
