"""The command-line interface (typer + rich)."""

from .app import app, main
from . import report as _report  # noqa: F401  (registers `lmaas-tune report` on the app)

__all__ = ["app", "main"]
