"""HS256 JSON Web Tokens as the prototype's clients send them (``FIRECRACKER_AUTH_TOKEN``).

Only verification, only HS256, with the secret the operator configured: the signature, then
``exp`` and ``nbf``. The caller is the claim ``user_id`` (else ``sub``, else ``username``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

from vmrunner.errors import AccessDenied

#: Seconds of clock difference tolerated on ``exp`` and ``nbf``.
LEEWAY = 30.0


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and not token.startswith("vmr_")


def _b64(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def verify(token: str, secret: bytes, clock: Callable[[], float] = time.time) -> str:
    """The user a valid token names; ``AccessDenied`` for any other token."""
    try:
        head, body, signature = token.split(".")
        header: Any = json.loads(_b64(head))
        claims: Any = json.loads(_b64(body))
        given = _b64(signature)
    except (ValueError, TypeError) as exc:
        raise AccessDenied("malformed JWT") from exc
    if not isinstance(header, dict) or header.get("alg") != "HS256":
        raise AccessDenied("JWT: only HS256 tokens are accepted")
    expected = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    if not hmac.compare_digest(expected, given):
        raise AccessDenied("JWT: bad signature")
    if not isinstance(claims, dict):
        raise AccessDenied("JWT: the claims are not an object")
    now = clock()
    if isinstance(claims.get("exp"), int | float) and now > claims["exp"] + LEEWAY:
        raise AccessDenied("JWT: expired")
    if isinstance(claims.get("nbf"), int | float) and now + LEEWAY < claims["nbf"]:
        raise AccessDenied("JWT: not valid yet")
    user = claims.get("user_id") or claims.get("sub") or claims.get("username")
    if not isinstance(user, str) or not user:
        raise AccessDenied("JWT: no user_id claim")
    return user


def sign(claims: dict[str, Any], secret: bytes) -> str:
    """An HS256 token of ``claims`` (for tests and for handing a prototype its token)."""

    def part(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    head = part(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = part(json.dumps(claims).encode())
    mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{part(mac)}"
