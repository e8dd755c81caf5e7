"""Reporting to GitHub over its REST API: check runs, commit statuses, one pull request comment.

Authentication is a token (``Authorization: Bearer``) or a GitHub App installation: a JWT
(RS256, signed with the app's private key, valid ten minutes) exchanged at
``POST /app/installations/{id}/access_tokens`` for a token that is cached until shortly before
it expires. The base URL is configurable for GitHub Enterprise Server (``.../api/v3``).

Everything sent goes through the run's ``Masker`` first, and every failure is logged (masked)
and counted rather than raised: reporting must never fail or stall a run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import jwt

from vmrunner.runner.masking import Masker
from vmrunner.server.config import GitHubApp

log = logging.getLogger(__name__)

StatusState = Literal["error", "failure", "pending", "success"]
#: The marker that identifies our comment on a pull request (invisible in rendered Markdown).
COMMENT_MARKER = "<!-- vmrunner:summary -->"
API_VERSION = "2022-11-28"
#: GitHub truncates status descriptions at 140 characters and comments at 65536.
MAX_DESCRIPTION = 140
MAX_COMMENT = 65536
REQUEST_TIMEOUT = 10.0


@dataclass(frozen=True, slots=True)
class Status:
    state: StatusState
    context: str
    description: str
    target_url: str


class AppTokens:
    """Installation tokens of a GitHub App, refreshed when they are about to expire."""

    def __init__(self, app: GitHubApp, clock: Any = time.time) -> None:
        self.app = app
        self._clock = clock
        self._token = ""
        self._expires = 0.0

    def app_jwt(self) -> str:
        now = int(self._clock())
        claims = {"iat": now - 60, "exp": now + 540, "iss": self.app.app_id}
        return jwt.encode(claims, self.app.private_key, algorithm="RS256")

    async def token(self, client: httpx.AsyncClient) -> str:
        if self._token and self._clock() < self._expires - 60:
            return self._token
        response = await client.post(
            f"/app/installations/{self.app.installation_id}/access_tokens",
            headers={"Authorization": f"Bearer {self.app_jwt()}"},
        )
        response.raise_for_status()
        data = response.json()
        self._token = str(data["token"])
        self._expires = _parse_time(data.get("expires_at"), self._clock() + 3600)
        return self._token


def _parse_time(text: Any, default: float) -> float:
    from datetime import datetime

    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return default


class GitHubClient:
    """The few REST calls the server makes; use as ``async with GitHubClient(...)``."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str = "",
        app: GitHubApp | None = None,
        masker: Masker | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._app = AppTokens(app) if app is not None else None
        self.masker = masker or Masker()
        self.masker.add(token)
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=REQUEST_TIMEOUT,
            transport=transport,
            headers={
                "Accept": "application/vnd.github+json",
                "X-GitHub-Api-Version": API_VERSION,
                "User-Agent": "vmrunner",
            },
        )
        self.failures = 0
        self.requests = 0

    @property
    def enabled(self) -> bool:
        return bool(self._token or self._app)

    async def __aenter__(self) -> GitHubClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.aclose()

    async def _request(
        self, method: str, path: str, json: Mapping[str, Any] | None = None
    ) -> httpx.Response | None:
        """One call; None (logged, counted) when it failed."""
        if not self.enabled:
            return None
        self.requests += 1
        try:
            token = await self._app.token(self._client) if self._app else self._token
            self.masker.add(token)
            response = await self._client.request(
                method, path, json=json, headers={"Authorization": f"Bearer {token}"}
            )
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            self.failures += 1
            log.warning("GitHub %s %s failed: %s", method, path, self.masker.mask(str(exc)))
            return None
        if response.is_error:
            self.failures += 1
            log.warning(
                "GitHub %s %s: %s %s",
                method,
                path,
                response.status_code,
                self.masker.mask(response.text[:500]),
            )
            return None
        return response

    async def create_status(self, repository: str, sha: str, status: Status) -> bool:
        body = {
            "state": status.state,
            "context": self.masker.mask(status.context),
            "description": _clip(self.masker.mask(status.description), MAX_DESCRIPTION),
            "target_url": status.target_url,
        }
        return await self._request("POST", f"/repos/{repository}/statuses/{sha}", body) is not None

    async def create_comment(self, repository: str, number: int, body: str) -> int | None:
        response = await self._request(
            "POST", f"/repos/{repository}/issues/{number}/comments", {"body": self._comment(body)}
        )
        return int(response.json()["id"]) if response is not None else None

    async def update_comment(self, repository: str, comment_id: int, body: str) -> bool:
        path = f"/repos/{repository}/issues/comments/{comment_id}"
        return await self._request("PATCH", path, {"body": self._comment(body)}) is not None

    async def find_comment(self, repository: str, number: int) -> int | None:
        """Our comment on the pull request (the one carrying ``COMMENT_MARKER``), if any."""
        for page in range(1, 11):
            response = await self._request(
                "GET", f"/repos/{repository}/issues/{number}/comments?per_page=100&page={page}"
            )
            if response is None:
                return None
            comments = response.json()
            for comment in comments:
                if COMMENT_MARKER in str(comment.get("body", "")):
                    return int(comment["id"])
            if len(comments) < 100:
                return None
        return None

    async def create_check_run(self, repository: str, body: Mapping[str, Any]) -> int | None:
        """``POST /repos/{repository}/check-runs`` (a GitHub App's token): the new id."""
        response = await self._request(
            "POST", f"/repos/{repository}/check-runs", self._masked(body)
        )
        return int(response.json()["id"]) if response is not None else None

    async def update_check_run(
        self, repository: str, check_run_id: int, body: Mapping[str, Any]
    ) -> bool:
        path = f"/repos/{repository}/check-runs/{check_run_id}"
        return await self._request("PATCH", path, self._masked(body)) is not None

    def _masked(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.masker.mask(value)
        if isinstance(value, Mapping):
            return {key: self._masked(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self._masked(item) for item in value]
        return value

    def _comment(self, body: str) -> str:
        text = COMMENT_MARKER + "\n" + self.masker.mask(body)
        return _clip(text, MAX_COMMENT)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
