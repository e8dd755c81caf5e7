"""docs/server.md's deployment guide, followed as a new user would: its App manifest, config
file and systemd unit, taken from the page, run ``vmrunner serve`` (a real process) against the
fake GitHub; a signed push ends in completed check runs and a run on the dashboard."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tomllib
import uuid
from pathlib import Path

import httpx

from tests.server.helpers import SECRET, headers, make_repo
from tests.server.test_github_client import rsa_pair
from tests.server.test_webhook_bounds import _push
from vmrunner.server.dashboard import COOKIE
from vmrunner.server.testing import FakeGitHub

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "server.md"
WORKFLOW = (
    "name: CI\non: push\njobs:\n  build:\n    runs-on: ubuntu-latest\n    steps:\n"
    "      - run: echo '::warning file=app.py,line=2::look here'\n"
)


def block(kind: str) -> str:
    """The fenced block of docs/server.md whose info string is ``kind``."""
    found = re.search(rf"^```{re.escape(kind)}\n(.*?)^```", GUIDE.read_text(), re.S | re.M)
    assert found, f"docs/server.md has no ```{kind} block"
    return found.group(1)


def test_the_manifest_asks_for_what_the_server_uses() -> None:
    manifest = json.loads(block("json app-manifest"))
    assert manifest["hook_attributes"]["url"].endswith("/webhook")
    permissions = manifest["default_permissions"]
    assert permissions["checks"] == "write"
    assert permissions["statuses"] == "write"
    assert permissions["pull_requests"] == "write"
    assert permissions["contents"] == "read"
    assert {"push", "pull_request", "check_run", "check_suite"} <= set(manifest["default_events"])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_the_guide_end_to_end(tmp_path: Path) -> None:
    private, public = rsa_pair()
    repo = tmp_path / "app"
    sha = make_repo(repo, {".github/workflows/ci.yml": WORKFLOW})
    port = _free_port()
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "webhook-secret").write_bytes(SECRET + b"\n")
    (etc / "app.pem").write_text(private)
    async with FakeGitHub(app_id="123456", app_public_key=public).running() as github:
        # Step 4: the config as printed, pointed at this test's repository, port and GitHub.
        text = (
            block("toml server-config")
            .replace('"https://github.com/octo/app.git"', json.dumps(str(repo)))
            .replace('"octo/app"', '"acme/widgets"')
            .replace("port = 8080", f"port = {port}")
            .replace('"https://api.github.com"', json.dumps(github.url))
        )
        assert tomllib.loads(text)["server"]["reports"] == ["checks", "comment"]
        (etc / "server.toml").write_text(text)
        # Step 5: a token, with the CLI.
        env = {**os.environ, "NO_COLOR": "1", "PYTHONPATH": str(ROOT)}
        made = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "vmrunner", "tokens", "create", "alice", "--scope", "operate",
            env=env, stdout=subprocess.PIPE,
        )
        token = (await made.communicate())[0].decode().strip()
        assert made.returncode == 0
        # Step 6: the unit's ExecStart, with this test's paths.
        unit = block("ini systemd-unit")
        command = shlex.split(re.search(r"^ExecStart=(.*)$", unit, re.M).group(1))  # type: ignore[union-attr]
        assert command[:2] == ["/opt/vmrunner/.venv/bin/vmrunner", "serve"]
        args = [a.replace("/etc/vmrunner", str(etc)) for a in command[2:]]
        server = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "vmrunner", "serve", *args, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
                async with asyncio.timeout(60):
                    while True:
                        try:
                            if (await http.get("/healthz")).status_code == 200:
                                break
                        except httpx.TransportError:
                            pass
                        assert server.returncode is None, "vmrunner serve stopped"
                        await asyncio.sleep(0.2)
                body = json.dumps(_push(sha)).encode()
                answer = await http.post(
                    "/webhook", content=body, headers=headers("push", body, str(uuid.uuid4()))
                )
                assert answer.status_code == 202, answer.text
                async with asyncio.timeout(120):
                    while not any(  # noqa: ASYNC110
                        c.get("status") == "completed" for c in github.check_runs.values()
                    ):
                        await asyncio.sleep(0.2)
                (check,) = github.check_runs.values()
                assert (check["name"], check["conclusion"]) == ("CI / build", "success")
                paths = {a["path"] for a in check["annotations"]}
                assert paths == {"app.py"}  # a standard label: no notice on the workflow file
                assert check["details_url"].startswith("https://ci.example.com/runs/")
                assert github.rejected == []
                # The dashboard, logged in with the token (the cookie is Secure: public_url is
                # https, so it is sent by hand here, as the proxy's TLS would carry it).
                login = await http.get("/login", params={"token": token, "next": "/"})
                assert login.status_code == 303
                assert "secure" in login.headers["set-cookie"].lower()
                session = login.cookies[COOKIE]
                http.cookies.clear()
                listed = await http.get("/", headers={"Cookie": f"{COOKIE}={session}"})
                assert "acme/widgets" in listed.text
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                output = (await asyncio.wait_for(server.communicate(), 60))[0].decode()
            finally:
                if server.returncode is None:
                    server.kill()
                    await server.wait()
        assert server.returncode == 0, output
        assert "Traceback" not in output
