"""The web dashboard: runs, a run's jobs and live log, sessions and the warm pool, as HTML.

``add_dashboard(app)`` adds the pages to a FastAPI app whose lifespan sets
``app.state.dashboard`` to a ``Dashboard``: where the runs come from (a ``Source``: the server's
``Service``, or the local store for ``vmrunner dashboard``) and how a token is checked (the
REST API's ``TokenStore``, so the same ``read``/``operate`` scopes apply).

Login: ``/login?token=...&next=/runs/ID`` checks the token and sets an HTTP-only, SameSite=Strict
session cookie; the session keeps the token in memory and checks it again on every request, so
revoking the token ends the session. Nothing but the login page is served without one. Forms
that change something (cancel, re-run) need the ``operate`` scope and the session's form token.

The live log is Server-Sent Events (``/runs/{id}/live``): pages of new log lines by their
sequence number (``Last-Event-ID`` resumes after a reconnect) and the steps' states when they
change, until the run has ended and every line was sent.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from html import escape
from importlib import resources
from typing import Any, Protocol
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse

from vmrunner.errors import AccessDenied, ConfigError, RunNotFound, SessionError
from vmrunner.learning.history import add_insights
from vmrunner.reports.results import RunResult, human_duration
from vmrunner.reports.storage import RunHistory
from vmrunner.runner.masking import Masker
from vmrunner.server import pages
from vmrunner.server.pages import RunLine, Viewer
from vmrunner.server.service import Service
from vmrunner.server.state import ServerRun
from vmrunner.server.tokens import Scope, grants
from vmrunner.store import LogRow, Store

COOKIE = "vmrunner_session"
#: Seconds a login lasts, and how many logins are kept (the oldest goes first).
SESSION_SECONDS = 12 * 3600
MAX_SESSIONS = 10_000
#: Seconds between two looks at a running run's new log lines and states.
POLL_SECONDS = 0.5
#: Seconds one live stream lasts; the browser reconnects where it was (``Last-Event-ID``).
STREAM_SECONDS = 600.0
#: Runs the list reads before filtering.
LIST_LIMIT = 500
ASSETS = {"dashboard.css": "text/css", "dashboard.js": "text/javascript"}

#: ``check(token, scope)`` returns the token's scope or raises ``AccessDenied``.
Check = Callable[[str, Scope], str]


class Source(Protocol):
    """Where the dashboard reads runs (and, on a server, cancels and re-runs them)."""

    masker: Masker

    def lines(self) -> list[RunLine]: ...
    def line(self, run_id: str) -> RunLine | None: ...
    def result(self, run_id: str) -> RunResult | None: ...
    def log_page(self, run_id: str, after: int) -> list[tuple[int, LogRow]]: ...
    def with_insights(self, result: RunResult, repository: str) -> RunResult: ...
    def sessions(self) -> list[dict[str, Any]]: ...
    def pool(self) -> dict[str, Any] | None: ...
    async def cancel(self, run_id: str) -> bool: ...
    def rerun(self, run_id: str) -> str: ...


class StoreSource:
    """Runs kept in a local store (``vmrunner run``'s): read-only."""

    def __init__(self, store: Store, masker: Masker | None = None) -> None:
        self.store = store
        self.masker = masker or Masker()

    def lines(self) -> list[RunLine]:
        return [_line(result) for result in RunHistory(self.store).list_runs(limit=LIST_LIMIT)]

    def line(self, run_id: str) -> RunLine | None:
        result = self.result(run_id)
        return _line(result) if result is not None else None

    def result(self, run_id: str) -> RunResult | None:
        try:
            return RunHistory(self.store).get_run(run_id)
        except RunNotFound:
            return None

    def log_page(self, run_id: str, after: int) -> list[tuple[int, LogRow]]:
        return self.store.run_log_page(run_id, after=after)

    def with_insights(self, result: RunResult, repository: str) -> RunResult:
        return add_insights([result], repository, self.store.path)[0]

    def sessions(self) -> list[dict[str, Any]]:
        return [
            {"id": s.id, "state": s.state, "provider": s.provider, "vm_type": s.vm_type,
             "machine_id": s.machine_id or "", "created_at": pages.when(s.created_at)}
            for s in self.store.sessions()
        ]

    def pool(self) -> dict[str, Any] | None:
        return None

    async def cancel(self, run_id: str) -> bool:
        raise ConfigError("runs of `vmrunner run` are cancelled where they run (Ctrl-C)")

    def rerun(self, run_id: str) -> str:
        raise ConfigError(f"re-run it with `vmrunner rerun {run_id}`")


def _line(result: RunResult) -> RunLine:
    return RunLine(
        result.run_id, "", result.workflow_name or result.workflow_file, result.event_name,
        result.ref, result.sha, result.status, result.conclusion, result.started_at,
        result.duration,
    )


@dataclass
class Login:
    token: str
    csrf: str
    expires: float


@dataclass
class Dashboard:
    """What the pages need: a ``Source``, a token ``check``, and the logins (in memory)."""

    source: Source
    check: Check
    #: Send the cookie over HTTPS only (the server's public URL is https).
    secure: bool = False
    logins: dict[str, Login] = field(default_factory=dict)

    def login(self, token: str) -> str:
        self.check(token, "read")
        now = time.time()
        for sid in [s for s, login in self.logins.items() if login.expires < now]:
            del self.logins[sid]
        while len(self.logins) >= MAX_SESSIONS:
            del self.logins[next(iter(self.logins))]
        sid = secrets.token_urlsafe(32)
        self.logins[sid] = Login(token, secrets.token_urlsafe(16), now + SESSION_SECONDS)
        return sid

    def viewer(self, request: Request) -> Viewer | None:
        """Who is logged in (their token still valid), else None."""
        login = self.logins.get(request.cookies.get(COOKIE, ""))
        if login is None or login.expires < time.time():
            return None
        try:
            scope = self.check(login.token, "read")
        except AccessDenied:
            return None
        return Viewer(grants(scope, "operate"), login.csrf)


def _dashboard(request: Request) -> Dashboard:
    board: Dashboard = request.app.state.dashboard
    return board


def _html(text: str, board: Dashboard, status: int = 200) -> HTMLResponse:
    return HTMLResponse(
        board.source.masker.mask(text), status_code=status,
        headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY",
                 "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'"},
    )


def _to_login(request: Request) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(target)}", status_code=303)


def safe_next(path: str) -> str:
    """``path`` if it stays on this site (``/...``, not ``//host``), else ``/``."""
    if not path.startswith("/") or path.startswith("//") or "\\" in path:
        return "/"
    return path


def sse(event: str, data: Any, event_id: int | None = None) -> bytes:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def step_states(result: RunResult) -> list[dict[str, Any]]:
    return [
        {"job": job.job_key, "step": step.index, "result": step.conclusion or step.status,
         "duration": human_duration(step.duration)}
        for job in result.jobs for step in job.steps
    ]


def add_dashboard(app: FastAPI) -> None:
    """The dashboard's routes on ``app`` (which sets ``app.state.dashboard`` in its lifespan)."""
    router = APIRouter(include_in_schema=False)

    @router.get("/login")
    async def login(request: Request, token: str = "", next: str = "/") -> Response:
        board, target = _dashboard(request), safe_next(next)
        if not token:
            return _html(pages.login_page(target), board)
        try:
            sid = board.login(token)
        except AccessDenied as exc:
            return _html(pages.login_page(target, str(exc)), board, status=401)
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(
            COOKIE, sid, max_age=int(SESSION_SECONDS), httponly=True, samesite="strict",
            secure=board.secure, path="/",
        )
        return response

    @router.get("/logout")
    async def logout(request: Request) -> Response:
        _dashboard(request).logins.pop(request.cookies.get(COOKIE, ""), None)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    @router.get("/")
    async def runs(request: Request) -> Response:
        board = _dashboard(request)
        if board.viewer(request) is None:
            return _to_login(request)
        filters = {k: request.query_params.get(k, "") for k in pages.FILTERS}
        shown = [line for line in board.source.lines() if line.matches(filters)]
        return _html(pages.runs_page(shown, filters), board)

    @router.get("/runs/{run_id}")
    async def run(run_id: str, request: Request) -> Response:
        board = _dashboard(request)
        viewer = board.viewer(request)
        if viewer is None:
            return _to_login(request)
        result = board.source.result(run_id)
        line = board.source.line(run_id)
        if result is None:
            if line is None:
                text = f"No run {run_id} here."
                return _html(pages.page("Not found", f"<h1>{escape(text)}</h1>"), board, 404)
            return _html(pages.page(f"Run {run_id}", f"<h1>Run {escape(run_id)} "
                                    f"{pages.badge(line.state)}</h1><p>No job has started yet "
                                    "(or it ran on a fleet host): reload later.</p>"), board)
        if line is not None and line.repository:
            result = board.source.with_insights(result, line.repository)
        return _html(pages.run_page(result, line, viewer), board)

    @router.get("/runs/{run_id}/live")
    async def live(run_id: str, request: Request, after: int = 0) -> Response:
        board = _dashboard(request)
        if board.viewer(request) is None:
            return Response("log in first", status_code=401)
        if board.source.result(run_id) is None:
            return Response(f"no run {run_id}", status_code=404)
        resume = request.headers.get("last-event-id", "")
        start = int(resume) if resume.isdigit() else max(0, after)
        return StreamingResponse(
            _stream(board, request, run_id, start), media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    @router.post("/runs/{run_id}/{action}")
    async def act(run_id: str, action: str, request: Request) -> Response:
        board = _dashboard(request)
        viewer = board.viewer(request)
        if viewer is None:
            return _to_login(request)
        body = await request.body()
        form = parse_qs(body[:4096].decode(errors="replace"))
        if not viewer.operate:
            return _html(pages.page("Forbidden", "<h1>This needs the operate scope.</h1>"),
                         board, 403)
        if not hmac.compare_digest(form.get("csrf", [""])[0], viewer.csrf):
            return _html(pages.page("Refused", "<h1>The form expired: reload.</h1>"), board, 403)
        target = f"/runs/{run_id}"
        try:
            if action == "cancel":
                await board.source.cancel(run_id)
            elif action == "rerun":
                target = f"/runs/{board.source.rerun(run_id)}"
            else:
                return Response(status_code=404)
        except RunNotFound:
            return Response(f"no run {run_id}", status_code=404)
        except ConfigError as exc:
            return _html(pages.page("Refused", f"<h1>{escape(str(exc))}</h1>"), board, 409)
        return RedirectResponse(target, status_code=303)

    @router.get("/sessions")
    async def sessions(request: Request) -> Response:
        board = _dashboard(request)
        if board.viewer(request) is None:
            return _to_login(request)
        return _html(pages.table_page(
            "Sessions", "One session per running job, each with its own machine.",
            board.source.sessions()), board)

    @router.get("/pool")
    async def pool(request: Request) -> Response:
        board = _dashboard(request)
        if board.viewer(request) is None:
            return _to_login(request)
        stats = board.source.pool()
        rows = [{"statistic": k, "value": v} for k, v in (stats or {}).items()]
        return _html(pages.table_page(
            "Warm pool", "Machines started ahead of jobs." if stats is not None
            else "No warm pool (pool_size = 0).", rows), board)

    @router.get("/static/{name}")
    async def asset(name: str) -> Response:
        if name not in ASSETS:
            return Response(status_code=404)
        text = resources.files("vmrunner.server").joinpath("static", name).read_bytes()
        return Response(text, media_type=ASSETS[name],
                        headers={"Cache-Control": "public, max-age=3600"})

    app.include_router(router)


async def _stream(
    board: Dashboard, request: Request, run_id: str, after: int
) -> AsyncIterator[bytes]:
    masker, last_states, deadline = board.source.masker, None, time.monotonic() + STREAM_SECONDS
    yield b"retry: 2000\n\n"
    while time.monotonic() < deadline and not await request.is_disconnected():
        page = board.source.log_page(run_id, after)
        if page:
            after = page[-1][0]
            rows = [
                {"job": row.job_key, "step": row.step_index, "kind": row.kind,
                 "stream": row.stream, "text": masker.mask(row.text), "depth": row.group_depth}
                for _, row in page
            ]
            yield sse("log", rows, after)
            continue
        result = board.source.result(run_id)
        if result is None:
            return
        states = step_states(result)
        if states != last_states:
            last_states = states
            yield sse("steps", {"run": result.conclusion or result.status, "steps": states})
        if result.status == "completed" or result.conclusion is not None:
            yield sse("end", {"run": result.conclusion or result.status})
            return
        await asyncio.sleep(POLL_SECONDS)


def local_dashboard(store: Store, token: str) -> FastAPI:
    """``vmrunner dashboard``: the pages over the local store, for whoever has ``token``."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    def check(given: str, scope: Scope) -> str:
        if not hmac.compare_digest(given.encode(), token.encode()):
            raise AccessDenied("invalid token: use the login link `vmrunner dashboard` printed")
        return "read"

    app.state.dashboard = Dashboard(StoreSource(store), check)
    add_dashboard(app)
    return app


class ServiceSource(StoreSource):
    """The server's runs (its queue, with repositories), live sessions and warm pool."""

    def __init__(self, service: Service) -> None:
        super().__init__(service.store, service.github.masker)
        self.service = service

    def lines(self) -> list[RunLine]:
        return [_server_line(run) for run in self.service.state.runs(limit=LIST_LIMIT)]

    def line(self, run_id: str) -> RunLine | None:
        run = self.service.state.run(run_id)
        return _server_line(run) if run is not None else super().line(run_id)

    def sessions(self) -> list[dict[str, Any]]:
        rows = []
        for session in self.service.sessions.sessions():
            try:
                machine = session.machine.id
            except SessionError:
                machine = ""
            rows.append({"id": session.id, "state": session.state.value,
                         "vm_type": session.spec.vm_type, "machine_id": machine,
                         "idle_for": session.idle_for()})
        return rows

    def pool(self) -> dict[str, Any] | None:
        warm = self.service.pool
        return asdict(warm.statistics()) if warm is not None else None

    async def cancel(self, run_id: str) -> bool:
        return await self.service.cancel(run_id)

    def rerun(self, run_id: str) -> str:
        return self.service.rerun(run_id).run_id


def _server_line(run: ServerRun) -> RunLine:
    end = run.finished_at if run.finished_at is not None else None
    duration = end - run.started_at if end is not None and run.started_at is not None else None
    return RunLine(
        run.run_id, run.repository, run.workflow_file, run.event_name, run.ref, run.sha,
        run.state, run.conclusion, run.started_at or run.queued_at, duration,
    )
