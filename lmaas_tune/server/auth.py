"""Bearer-token authentication: every route but health needs ``Authorization: Bearer <token>``."""

from __future__ import annotations

import hmac

from aiohttp import web

from .problems import ApiError, Handler

OPEN_PATHS = frozenset({"/v1/health"})


def bearer_auth(token: str | None) -> Handler:
    """A middleware that checks the token in constant time; with ``token=None`` it lets everything in."""
    expected = token.encode("utf-8") if token else None

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if expected is None or request.path in OPEN_PATHS:
            return await handler(request)
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        challenge = {"WWW-Authenticate": 'Bearer realm="lmaas-tune"'}
        if scheme.lower() != "bearer" or not given.strip():
            raise ApiError(401, "unauthorized", "missing bearer token: send 'Authorization: Bearer <token>'",
                           field="Authorization", headers=challenge)
        if not hmac.compare_digest(given.strip().encode("utf-8"), expected):
            raise ApiError(401, "unauthorized", "invalid bearer token", field="Authorization", headers=challenge)
        return await handler(request)

    return middleware
