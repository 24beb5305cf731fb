"""The command-line interface (typer + rich): a thin shell over the library.

:mod:`.app` holds the app and the error handling; each command registers itself from its module.
"""

from . import fit as _fit  # noqa: F401  (fit, resume)
from . import report as _report  # noqa: F401  (report)
from . import serve as _serve  # noqa: F401  (serve)
from . import sweep as _sweep  # noqa: F401  (sweep)
from . import tasks as _tasks  # noqa: F401  (tasks)
from . import use as _use  # noqa: F401  (evaluate, predict)
from .app import app, main

__all__ = ["app", "main"]
