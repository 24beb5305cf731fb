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
    #: an optional second line for the CLI to print (e.g. how to resume a stopped run)
    hint: str | None = None


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
    """A model could not be loaded."""


class ModelNotFoundError(ModelLoadError):
    """The model named by ``--model`` does not exist (no such file, directory or hub id)."""

    exit_code = 2


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


class MissingExtraError(LmaasTuneError, ImportError):
    """A feature needs an optional extra that is not installed (``pip install 'lmaas-tune[EXTRA]'``)."""

    exit_code = 2


class RunInterrupted(LmaasTuneError):
    """A signal (SIGINT, SIGTERM) stopped the run; its last checkpoint is on disk.

    The CLI exits with ``128 + signum`` (130 for SIGINT, 143 for SIGTERM), as shells do.
    """

    def __init__(self, signum: int, message: str | None = None) -> None:
        import signal

        self.signum = int(signum)
        self.exit_code = 128 + self.signum
        name = signal.Signals(self.signum).name if self.signum in signal.Signals._value2member_map_ else str(signum)
        self.signal_name = name
        super().__init__(message or f"interrupted by {name}")


class WireFormatError(LmaasTuneError, ValueError):
    """A wire-protocol message is malformed; ``field`` names the offending part (a dotted path)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class RemoteError(BackendError):
    """A remote scoring service did not score a request.

    ``status_code`` is the HTTP status (``None`` when no response came back), ``code`` and
    ``field`` come from the service's JSON error body, ``retry_after`` from its Retry-After header
    (seconds). ``retryable`` says whether the remote backend tries again before giving up.
    """

    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        endpoint: str | None = None,
        code: str | None = None,
        field: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.endpoint = endpoint
        self.code = code
        self.field = field
        self.retry_after = retry_after


class RateLimitError(RemoteError):
    """HTTP 429: the service asks the client to slow down (honours Retry-After)."""

    retryable = True


class ServerError(RemoteError):
    """HTTP 5xx: the service failed or is overloaded (503 may carry Retry-After)."""

    retryable = True


class RemoteTimeoutError(RemoteError, TimeoutError):
    """No complete response within the client's timeout (or HTTP 408 from the service)."""

    retryable = True


class ConnectionLostError(RemoteError, ConnectionError):
    """The connection could not be made, or closed before the response was complete."""

    retryable = True


class BadResponseError(RemoteError, ValueError):
    """A response that does not follow the wire protocol (bad JSON, missing fields, wrong shape).

    Retried like a transport error: it is never charged and never silently used.
    """

    retryable = True


class IncompatibleServiceError(RemoteError):
    """The service cannot serve this client (another protocol version); not retried."""

    exit_code = 2


class RejectedError(RemoteError, ValueError):
    """HTTP 4xx other than 408/429: the service refused the request as sent; not retried."""


class AuthenticationError(RejectedError, PermissionError):
    """HTTP 401/403: the bearer token is missing or wrong."""

    exit_code = 2
