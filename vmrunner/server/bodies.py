"""A webhook's body, read as an attacker may send it: signed as it streams in, bounded in memory
and in time, parsed with a depth limit.

- No ``X-Hub-Signature-256`` header: refused (401) before a byte of the body is read.
- The HMAC is computed over the chunks as they arrive, and the chunks go to a spooled file
  (memory up to ``SPOOL_BYTES``, then a temporary file): ten parallel 24 MB bodies with forged
  signatures cost disk for a moment, not 240 MB of memory. Past ``limit`` bytes: 413.
- The whole body must arrive within ``timeout`` seconds (408), so slow senders cannot hold a
  request open for long.
- Only a body whose signature matched is read back and parsed. ``json.loads`` of a deeply
  nested body raises ``RecursionError``, and a payload deeper than ``MAX_JSON_DEPTH`` would be
  walked recursively later: both are a 400, never a 500. (GitHub's payloads are under 10 deep.)
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import tempfile
from collections.abc import AsyncIterator, Mapping
from typing import Any

from vmrunner.errors import RequestRejected
from vmrunner.server.signatures import PREFIX

SPOOL_BYTES = 1 << 20
MAX_JSON_DEPTH = 64
_TOO_DEEP = f"the JSON body is nested deeper than {MAX_JSON_DEPTH} levels"


async def read_signed(
    chunks: AsyncIterator[bytes], secret: bytes, signature: str | None, *, limit: int,
    timeout: float,  # noqa: ASYNC109 - the deadline of the whole body, not of one call
) -> bytes:
    """The body if ``signature`` is its HMAC-SHA256 under ``secret``; ``RequestRejected`` if not."""
    if not secret or not signature or not signature.strip().startswith(PREFIX):
        raise RequestRejected("missing or invalid X-Hub-Signature-256", 401)
    mac = hmac.new(secret, digestmod=hashlib.sha256)
    size = 0
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as spool:
        try:
            async with asyncio.timeout(timeout):
                async for chunk in chunks:
                    size += len(chunk)
                    if size > limit:
                        raise RequestRejected(f"the body exceeds {limit} bytes", 413)
                    mac.update(chunk)
                    spool.write(chunk)
        except TimeoutError:
            raise RequestRejected(f"the body did not arrive within {timeout:g} s", 408) from None
        expected = (PREFIX + mac.hexdigest()).encode()
        if not hmac.compare_digest(expected, signature.strip().encode()):
            raise RequestRejected("missing or invalid X-Hub-Signature-256", 401)
        spool.seek(0)
        return spool.read()


def parse_payload(body: bytes) -> Mapping[str, Any]:
    """The JSON object of a webhook body; ``RequestRejected`` (400) for anything else."""
    try:
        value = json.loads(body)
    except RecursionError:
        raise RequestRejected(_TOO_DEEP) from None
    except (ValueError, UnicodeDecodeError):
        raise RequestRejected("the body is not a JSON object") from None
    if not isinstance(value, Mapping):
        raise RequestRejected("the body is not a JSON object")
    if _depth_exceeds(value, MAX_JSON_DEPTH):
        raise RequestRejected(_TOO_DEEP)
    return value


def _depth_exceeds(value: Any, limit: int) -> bool:
    """Whether ``value`` nests containers more than ``limit`` deep (iteratively: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False
