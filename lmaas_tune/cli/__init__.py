"""The command-line interface (typer + rich)."""

from .app import app, main

__all__ = ["app", "main"]
