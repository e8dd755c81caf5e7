"""REST API tokens: who may call the API, and what they may do.

A token is ``vmr_`` and 32 random bytes (URL-safe base64), shown once when it is created; the
store keeps its SHA-256 only, so a copy of ``state.db`` lets no one in. (A token is random, so
a plain hash is as strong as a slow password hash, and a check is one indexed read.)

Scopes are ordered, each granting the ones before it:

- ``read``: runs, their logs and artifacts, deliveries, sessions, the warm pool;
- ``operate``: also cancelling and re-running runs;
- ``admin``: also tokens and the server's configuration.

Reuse (the dashboard's login, other services): ``TokenStore(store).check(token, "read")``
returns the token's row or raises ``AccessDenied`` (status 401 or 403); in a FastAPI app,
``vmrunner.server.auth.require(scope)`` does the same for a route from its ``Authorization:
Bearer`` header.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from typing import Literal, get_args

from vmrunner.errors import AccessDenied, ConfigError
from vmrunner.store import Store, TokenRow

Scope = Literal["read", "operate", "admin"]
SCOPES: tuple[Scope, ...] = get_args(Scope)
PREFIX = "vmr_"
#: Seconds between two writes of a token's ``last_used_at`` (a read per request, not a write).
TOUCH_INTERVAL = 60.0
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def hash_token(token: str) -> str:
    """What the store keeps of a token: its SHA-256, hex."""
    return hashlib.sha256(token.encode()).hexdigest()


def grants(held: str, wanted: Scope) -> bool:
    """Whether a token of scope ``held`` may do what needs ``wanted``."""
    return held in SCOPES and SCOPES.index(held) >= SCOPES.index(wanted)


def bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer TOKEN`` header, else None."""
    scheme, _, value = (header or "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip() or None


class TokenStore:
    """The API tokens kept in ``store``: create, list, revoke, check."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self._clock = clock
        self._touched: dict[str, float] = {}

    def create(self, name: str, scope: str) -> str:
        """A new token named ``name`` with ``scope``: returned once, only its hash is kept."""
        if not _NAME.fullmatch(name):
            raise ConfigError(
                f"{name!r} is not a token name (letters, digits, '.', '_', '-'; at most 64)"
            )
        if scope not in SCOPES:
            raise ConfigError(f"scope {scope!r}: expected one of {', '.join(SCOPES)}")
        token = PREFIX + secrets.token_urlsafe(32)
        if not self.store.add_token(TokenRow(name, hash_token(token), scope, self._clock())):
            raise ConfigError(f"a token named {name!r} exists (revoke it first)")
        return token

    def list(self) -> list[TokenRow]:
        return self.store.tokens()

    def revoke(self, name: str) -> None:
        if not self.store.delete_token(name):
            raise ConfigError(f"no token named {name!r} (`vmrunner tokens list` shows them)")
        self._touched.pop(name, None)

    def any(self) -> bool:
        return bool(self.store.tokens())

    def check(self, token: str | None, scope: Scope) -> TokenRow:
        """The row of ``token`` if it grants ``scope``; ``AccessDenied`` (401 or 403) if not."""
        if not token:
            raise AccessDenied("authentication required: send Authorization: Bearer TOKEN")
        row = self.store.token_by_hash(hash_token(token))
        # The lookup is by hash; comparing again in constant time costs nothing and keeps
        # a timing side channel out of any future change to how rows are found.
        if row is None or not hmac.compare_digest(row.hash, hash_token(token)):
            raise AccessDenied("invalid or revoked token")
        if not grants(row.scope, scope):
            raise AccessDenied(
                f"the token {row.name!r} has scope {row.scope}; this needs {scope}", status=403
            )
        now = self._clock()
        if now - self._touched.get(row.name, 0.0) >= TOUCH_INTERVAL:
            self._touched[row.name] = now
            self.store.touch_token(row.name, now)
        return row
