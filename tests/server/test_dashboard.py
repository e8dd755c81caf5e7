"""The dashboard on a live server: login by token, pages, the live log (SSE), cancel and re-run;
driven over HTTP and in a real headless Chromium."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.server.browser import CHROMIUM, Browser
from tests.server.helpers import (
    api_token,
    config,
    deliver,
    finished,
    live_server,
    make_repo,
    settled,
)
from tests.server.test_webhook_bounds import _push
from vmrunner.server.dashboard import COOKIE, safe_next

SLOW = (
    "name: CI\non: push\njobs:\n"
    "  lint:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo linted\n"
    "  build:\n    needs: lint\n    runs-on: ubuntu-latest\n    steps:\n"
    "      - name: tick\n"
    "        run: for i in $(seq 1 30); do echo tick $i; sleep 0.3; done\n"
    "      - name: '<script>alert(1)</script>'\n"
    "        run: echo '::warning file=src/app.py,line=3::mind the gap'\n"
)
#: Set to a folder (docs/images) to keep the screenshots there.
SCREENSHOTS = os.environ.get("VMRUNNER_SCREENSHOTS", "")


async def _started_run(client: httpx.AsyncClient, root: Path) -> str:
    sha = make_repo(root, {".github/workflows/ci.yml": SLOW})
    delivery = str(uuid.uuid4())
    await deliver(client, "push", _push(sha), delivery)
    return str((await settled(client, delivery))["runs"][0]["run_id"])


@contextlib.asynccontextmanager
async def _logged_in(url: str, path: str, token: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        answer = await client.get("/login", params={"token": token, "next": path})
        assert answer.status_code == 303, answer.text
        assert answer.headers["location"] == path
        cookie = answer.headers["set-cookie"]
        assert "httponly" in cookie.lower()
        assert "samesite=strict" in cookie.lower()
        yield client


async def test_login_pages_live_stream_and_actions(tmp_path: Path) -> None:
    async with (
        live_server(config({"acme/widgets": tmp_path / "w"}), scope="read") as api,
        httpx.AsyncClient(base_url=str(api.base_url), timeout=30) as stranger,
    ):
        url = str(api.base_url)
        run_id = await _started_run(api, tmp_path / "w")
        # No session (an API token in a header is no session): only the login page, no run data.
        for client in (stranger, api):
            for path in ("/", f"/runs/{run_id}", "/sessions", "/pool"):
                answer = await client.get(path, follow_redirects=True)
                assert answer.url.path == "/login"
                assert "acme/widgets" not in answer.text
                assert "tick" not in answer.text
        assert (await stranger.get(f"/runs/{run_id}/live")).status_code == 401
        bad = await stranger.get("/login", params={"token": "vmr_nope", "next": "/"})
        assert bad.status_code == 401
        assert COOKIE not in bad.headers.get("set-cookie", "")

        async with _logged_in(url, f"/runs/{run_id}", api_token("reader", "read")) as reader:
            live: list[str] = []
            async with reader.stream("GET", f"/runs/{run_id}/live") as stream:
                assert stream.headers["content-type"].startswith("text/event-stream")
                event = ""
                async for line in stream.aiter_lines():
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: ") and event == "log":
                        live += [row["text"] for row in json.loads(line[6:])]
                    elif event == "end":
                        break
            assert [t for t in live if t.startswith("tick")] == [f"tick {i}" for i in range(1, 31)]
            page = (await reader.get(f"/runs/{run_id}")).text
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
            assert "<script>alert" not in page
            assert "src/app.py:3" in page
            assert "mind the gap" in page
            assert "<svg" in page
            assert "Machine lifecycle" in page
            assert 'action="/runs/' not in page  # read scope: no cancel or re-run
            forbidden = await reader.post(f"/runs/{run_id}/rerun", data={"csrf": "x"})
            assert forbidden.status_code == 403
            assert "acme/widgets" in (await reader.get("/", params={"event": "push"})).text
            assert "No runs match" in (await reader.get("/", params={"event": "pull"})).text
            assert (await reader.get("/static/dashboard.js")).status_code == 200
            assert "http" not in page.split("<main")[0].replace("http-equiv", "")

        async with _logged_in(
            url, f"/runs/{run_id}", api_token("operator", "operate")
        ) as operator:
            page = (await operator.get(f"/runs/{run_id}")).text
            csrf = page.split('name="csrf" value="')[1].split('"')[0]
            refused = await operator.post(f"/runs/{run_id}/rerun", data={"csrf": "wrong"})
            assert refused.status_code == 403
            again = await operator.post(f"/runs/{run_id}/rerun", data={"csrf": csrf})
            assert again.status_code == 303
            new_id = again.headers["location"].rsplit("/", 1)[1]
            assert new_id != run_id
            assert (await finished(api, new_id))["server"]["conclusion"] == "success"


def test_next_stays_on_this_site() -> None:
    assert safe_next("/runs/1?x=2") == "/runs/1?x=2"
    for outside in ("//evil.example", "https://evil.example", "/\\evil", "runs"):
        assert safe_next(outside) == "/"


@pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason="chromium is not installed")
async def test_a_browser_sees_the_log_grow_without_a_reload(tmp_path: Path) -> None:
    async with live_server(config({"acme/widgets": tmp_path / "w"}), scope="read") as api:
        url = str(api.base_url).rstrip("/")
        run_id = await _started_run(api, tmp_path / "w")
        token = api_token("browser", "read")
        browser = await asyncio.to_thread(Browser, tmp_path / "profile")
        try:
            await asyncio.to_thread(browser.navigate, f"{url}/runs/{run_id}")
            shown = await asyncio.to_thread(browser.evaluate, "document.body.innerText")
            assert "Log in" in shown
            assert "tick" not in shown
            assert "build" not in shown

            await asyncio.to_thread(
                browser.navigate, f"{url}/login?token={token}&next=/runs/{run_id}"
            )
            assert await asyncio.to_thread(browser.evaluate, "location.pathname") == (
                f"/runs/{run_id}"
            )
            ticks = "document.querySelectorAll('pre.log div').length"
            first = await asyncio.to_thread(
                browser.wait_for, "[...document.querySelectorAll('pre.log div')]"
                ".filter(d => d.textContent.startsWith('tick')).length", 60,
            )
            await asyncio.to_thread(browser.evaluate, "window.stillHere = 1")
            grown = await asyncio.to_thread(
                browser.wait_for, f"{ticks} > {first} + 2 && {ticks}", 30
            )
            assert grown > first
            assert await asyncio.to_thread(browser.evaluate, "window.stillHere") == 1
            text = await asyncio.to_thread(browser.evaluate, "document.body.innerText")
            assert "build" in text
            assert "tick" in text
            assert "Machine" in text
            await asyncio.to_thread(
                browser.wait_for, "document.getElementById('run').dataset.status=='completed'", 60
            )
            assert await asyncio.to_thread(browser.evaluate, "window.stillHere") == 1
            status = await asyncio.to_thread(
                browser.evaluate, "document.getElementById('run-status').innerText"
            )
            assert status == "success"
            folder = Path(SCREENSHOTS) if SCREENSHOTS else tmp_path
            await asyncio.to_thread(browser.navigate, f"{url}/runs/{run_id}")
            await asyncio.to_thread(browser.wait_for, "document.getElementById('run')"
                                    ".dataset.status=='completed'", 30)
            await asyncio.to_thread(browser.wait_for, "document.querySelectorAll('pre.log div')"
                                    ".length >= 30", 30)
            await asyncio.to_thread(
                browser.evaluate, "document.querySelector('#step-build-0 details').open = true"
            )
            await asyncio.to_thread(browser.screenshot, folder / "dashboard-run.png")
            await asyncio.to_thread(browser.navigate, f"{url}/")
            assert "acme/widgets" in await asyncio.to_thread(
                browser.evaluate, "document.body.innerText"
            )
            await asyncio.to_thread(browser.screenshot, folder / "dashboard-runs.png")
            await asyncio.to_thread(
                browser.screenshot, folder / "dashboard-runs-phone.png", width=390, mobile=True
            )
            for name in ("dashboard-run.png", "dashboard-runs.png", "dashboard-runs-phone.png"):
                assert (folder / name).read_bytes().startswith(b"\x89PNG")
        finally:
            await asyncio.to_thread(browser.close)
