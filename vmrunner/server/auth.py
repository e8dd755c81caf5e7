"""The REST API's token check as a FastAPI dependency: ``Depends(require("operate"))``.

The app keeps its ``TokenStore`` in ``app.state.tokens`` (set in its lifespan) and registers
``access_denied`` as the handler of ``AccessDenied``, which answers 401 (with
``WWW-Authenticate: Bearer``) or 403 and a JSON ``{"error": ...}``. Any app built on the same
store (the dashboard, a machine service) does the same three things.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.requests import HTTPConnection

from vmrunner.errors import AccessDenied
from vmrunner.server.tokens import Scope, TokenStore, bearer
from vmrunner.store import TokenRow


def require(scope: Scope) -> Callable[[Request], Awaitable[TokenRow]]:
    """A dependency admitting requests whose bearer token grants ``scope``."""

    async def check(request: Request) -> TokenRow:
        tokens: TokenStore = request.app.state.tokens
        return tokens.check(bearer(request.headers.get("authorization")), scope)

    return check


async def access_denied(request: HTTPConnection, exc: Exception) -> JSONResponse:
    status = exc.status if isinstance(exc, AccessDenied) else 401
    headers = {"WWW-Authenticate": 'Bearer realm="vmrunner"'} if status == 401 else None
    return JSONResponse({"error": str(exc)}, status_code=status, headers=headers)
