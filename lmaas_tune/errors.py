"""One exception tree for the whole package.

Every error raised on purpose by lmaas-tune derives from :class:`LmaasTuneError`; each
also derives from the builtin it refines, so ``except ValueError`` keeps working for
callers that do not know this package. Messages name the problem *and* the fix.
"""

from __future__ import annotations


class LmaasTuneError(Exception):
    """Root of every error lmaas-tune raises on purpose."""

    #: process exit code the CLI uses for this error (2 = usage, 1 = runtime)
    exit_code: int = 1


class ConfigError(LmaasTuneError, ValueError):
    """An option or a combination of options is invalid."""

    exit_code = 2


class UnknownNameError(ConfigError, KeyError):
    """A name (task, model, loss, preset, ...) is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class TemplateError(ConfigError):
    """A prompt template is malformed or does not fit the model kind."""


class VerbalizerError(ConfigError):
    """Label words collide, or cannot be mapped to tokens."""


class DataError(LmaasTuneError, ValueError):
    """A data file is missing, empty, mis-encoded or inconsistent with the task."""

    exit_code = 2


class ModelLoadError(LmaasTuneError, OSError):
    """A model could not be found or loaded."""


class BackendError(LmaasTuneError, RuntimeError):
    """A backend failed to score a request."""


class InputTooLongError(BackendError, ValueError):
    """An input does not fit the model's maximum length."""


class BudgetExhaustedError(LmaasTuneError, RuntimeError):
    """No query budget is left for the requested calls."""


class NonFiniteLossError(LmaasTuneError, FloatingPointError):
    """Every candidate of a generation produced a non-finite loss."""


class RunDirectoryError(LmaasTuneError, OSError):
    """A run directory is missing, incomplete or holds a different run."""

    exit_code = 2
