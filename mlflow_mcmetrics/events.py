"""The package's warnings and its error guard (pure Python: no Keras or MLflow import).

Everything the package reports while training goes through :func:`warn`, with its own category
:class:`MCMetricsWarning`, so users can filter it (``warnings.filterwarnings("ignore",
category=MCMetricsWarning)``) and ``autolog(silent=True)`` can silence it.

:func:`guarded` is the exception safety of the logging path, modelled on MLflow's
``ExceptionSafeClass``: an error in computing, drawing, reporting or delivering becomes one
warning and training goes on. Under MLflow's autologging test mode
(``MLFLOW_AUTOLOGGING_TESTING=true``) it is raised instead, as MLflow's own guard does.
"""

from __future__ import annotations

import functools
import logging
import os
import warnings
from collections.abc import Callable
from typing import TypeVar

__all__ = ["MCMetricsWarning", "guarded", "is_testing", "logger", "warn"]

logger = logging.getLogger("mlflow_mcmetrics")

F = TypeVar("F", bound=Callable)


class MCMetricsWarning(UserWarning):
    """Warnings of mlflow-mcmetrics: invalid labels, non-finite predictions, empty splits,
    records spooled or lost, errors caught in the logging path."""


def is_testing() -> bool:
    """MLflow's autologging test mode: errors in the logging path are raised, not warned."""
    return os.environ.get("MLFLOW_AUTOLOGGING_TESTING", "false").lower() in ("true", "1")


def warn(message: str, *, silent: bool = False, stacklevel: int = 2) -> None:
    """Issue an :class:`MCMetricsWarning`, unless ``silent``."""
    if not silent:
        warnings.warn(message, MCMetricsWarning, stacklevel=stacklevel + 1)


def guarded(what: str) -> Callable[[F], F]:
    """Decorate a method so that an error in it becomes one :class:`MCMetricsWarning`.

    The instance's ``silent`` attribute (if any) silences the warning; each ``what`` warns once
    per instance, so a failure repeated every epoch does not flood the log. Returns ``None``
    when the method failed.
    """

    def decorate(method: F) -> F:
        @functools.wraps(method)
        def safe(self, *args, **kwargs):
            try:
                return method(self, *args, **kwargs)
            except Exception as error:
                if is_testing():
                    raise
                reported = self.__dict__.setdefault("_reported_errors", set())
                if what not in reported:
                    reported.add(what)
                    warn(
                        f"mlflow_mcmetrics could not {what} ({type(error).__name__}: {error}); "
                        "training goes on and the values already computed are kept.",
                        silent=getattr(self, "silent", False),
                    )
                logger.debug("mlflow_mcmetrics: %s failed", what, exc_info=True)
                return None

        return safe  # type: ignore[return-value]

    return decorate
