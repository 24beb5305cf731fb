"""One HTTP exchange with a scoring service, mapped onto the typed error tree.

:func:`exchange` sends one request and returns the JSON object of a 2xx answer, or raises:

==========================================  ==============================================
what happened                               raised
==========================================  ==============================================
no complete answer within the timeout, 408  :class:`RemoteTimeoutError`
refused, reset, closed mid-response         :class:`ConnectionLostError`
429                                         :class:`RateLimitError` (``retry_after``)
5xx                                         :class:`ServerError` (``retry_after``)
401, 403                                    :class:`AuthenticationError`
4xx ``unsupported_protocol``                :class:`IncompatibleServiceError`
other 4xx                                   :class:`RejectedError` (``code``, ``field``)
2xx whose body is not a JSON object         :class:`BadResponseError`
==========================================  ==============================================

Every exchange is recorded on the caller's traffic meter: one attempt, the bytes sent and the
bytes received.
"""

from __future__ import annotations

import json
import os
from typing import Any

import aiohttp

from lmaas_tune.errors import (
    AuthenticationError,
    BadResponseError,
    ConnectionLostError,
    IncompatibleServiceError,
    RateLimitError,
    RejectedError,
    RemoteError,
    RemoteTimeoutError,
    ServerError,
)
from .retrying import parse_retry_after
from lmaas_tune.backends.traffic import record_traffic


async def exchange(
    session: aiohttp.ClientSession, method: str, url: str, payload: bytes | None = None, *,
    server: str = "`lmaas-tune serve`",
) -> dict[str, Any]:
    """Send ``payload`` (JSON bytes) and return the answer's JSON object; see the module docstring.

    ``server`` names what should be listening at ``url``, for the message when nothing is."""
    sent = len(payload) if payload is not None else 0
    record_traffic(attempts=1, bytes_up=sent)
    try:
        async with session.request(method, url, data=payload) as resp:
            status, headers = resp.status, resp.headers
            raw = await resp.read()
    except TimeoutError:
        raise RemoteTimeoutError(f"{method} {url}: no complete answer within the timeout", endpoint=url) from None
    except aiohttp.ClientConnectorError as exc:  # refused, unknown host, unreachable network
        err = exc.os_error
        reason = os.strerror(err.errno) if err is not None and err.errno else str(err or exc)
        raise ConnectionLostError(f"{method} {url}: cannot connect ({reason}); check the --endpoint URL and that "
                                  f"{server} is running there", endpoint=url) from None
    except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
        raise ConnectionLostError(f"{method} {url}: connection lost ({type(exc).__name__}: {exc})", endpoint=url) from None
    except aiohttp.ClientResponseError as exc:  # the answer was not valid HTTP
        raise BadResponseError(f"{method} {url}: unreadable answer ({exc.message})", endpoint=url) from None
    except aiohttp.ClientError as exc:
        raise ConnectionLostError(f"{method} {url}: request failed ({type(exc).__name__}: {exc})", endpoint=url) from None
    record_traffic(bytes_down=len(raw))
    if 200 <= status < 300:
        try:
            body = json.loads(raw)
        except (UnicodeDecodeError, ValueError):
            raise BadResponseError(f"{method} {url}: answer {status} is not valid JSON", status_code=status, endpoint=url) from None
        if not isinstance(body, dict):
            raise BadResponseError(f"{method} {url}: answer {status} is not a JSON object", status_code=status, endpoint=url)
        return body
    raise status_error(method, url, status, raw, headers.get("Retry-After"))


def status_error(method: str, url: str, status: int, raw: bytes, retry_after_header: str | None) -> RemoteError:
    """The typed error for a non-2xx answer, with the service's error code, field and message.

    The error bodies seen in practice are read: ``{"error": {"code", "field", "message"}}`` (an
    lmaas-tune service), the OpenAI style ``{"error": {"message", "type", "param", "code"}}``
    (vLLM; its ``code`` is the HTTP status, so only a string code is kept) and ``{"error": "text"}``
    (vLLM's API-key check)."""
    code = field = None
    message = raw[:200].decode("utf-8", "replace").strip()
    try:
        err = json.loads(raw).get("error")
        if isinstance(err, dict):
            code = err.get("code") if isinstance(err.get("code"), str) else None
            field = err.get("field") or err.get("param")
            message = str(err.get("message", message))
        elif isinstance(err, str) and err.strip():
            message = err.strip()
    except (ValueError, AttributeError, UnicodeDecodeError):
        pass
    retry_after = parse_retry_after(retry_after_header)
    where = f" (field {field})" if field else ""
    text = f"{method} {url}: HTTP {status}{where}: {message or 'no details'}"
    kw: dict[str, Any] = {"status_code": status, "endpoint": url, "code": code, "field": field, "retry_after": retry_after}
    if status == 429:
        return RateLimitError(text, **kw)
    if status == 408:
        return RemoteTimeoutError(text, **kw)
    if status >= 500:
        return ServerError(text, **kw)
    if code == "unsupported_protocol":
        return IncompatibleServiceError(text + "; upgrade the older of lmaas-tune and the service", **kw)
    if status in (401, 403):
        return AuthenticationError(text + "; check the token (--token-env)", **kw)
    if 400 <= status < 500:
        return RejectedError(text, **kw)
    return BadResponseError(text, **kw)  # 1xx/3xx: not part of the protocol
