"""Error answers: every failure leaves the service as JSON ``{"error": {code, message, field}}``.

Handlers raise :class:`ApiError`; :func:`error_middleware` turns it, aiohttp's own HTTP errors
(404, 405, 413) and protocol errors into JSON. Anything else is a bug in the service and is
answered 500 ``internal`` (logged with its traceback); malformed requests never get there,
since decoding raises :class:`~lmaas_tune.errors.WireFormatError` (answered 422).
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from lmaas_tune.wire import PROTOCOL_VERSION
from lmaas_tune.errors import WireFormatError

log = logging.getLogger("lmaas_tune.server")

Handler = Any


class ApiError(Exception):
    """An answer other than 2xx: HTTP ``status``, a stable ``code``, and the ``field`` at fault."""

    def __init__(self, status: int, code: str, message: str, *, field: str | None = None,
                 retry_after: int | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field
        self.headers = dict(headers or {})
        if retry_after is not None:
            self.headers["Retry-After"] = str(retry_after)

    def response(self) -> web.Response:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        return web.json_response({"protocol": PROTOCOL_VERSION, "error": body}, status=self.status, headers=self.headers)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large", 415: "unsupported_media_type"}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except WireFormatError as exc:
        return ApiError(422, "invalid_field", exc.reason, field=exc.field).response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = exc.reason if exc.status != 413 else str(exc.text or exc.reason)
        return ApiError(exc.status, _HTTP_CODES.get(exc.status, "http_error"), message,
                        field="body" if exc.status == 413 else None).response()
    except Exception:
        log.exception("internal error answering %s %s", request.method, request.path)
        return ApiError(500, "internal", "the service failed to answer; see its log").response()
