"""``vmrunner dashboard``: the kept runs of this machine as pages on 127.0.0.1, behind the login
link it prints."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from bench.dashboard import graph_run
from vmrunner.reports.storage import StoreSink
from vmrunner.store import Store

ROOT = Path(__file__).resolve().parents[2]


def test_the_login_link_shows_the_local_runs() -> None:
    with Store.open() as store, StoreSink(store) as sink:
        for event in graph_run("777", 3, 2, 2, 3):
            sink.emit(event)
    env = {**os.environ, "NO_COLOR": "1", "PYTHONPATH": str(ROOT), "COLUMNS": "300"}
    server = subprocess.Popen(
        [sys.executable, "-m", "vmrunner", "dashboard", "--port", "0"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert server.stdout is not None
        link = re.search(r"http://127\.0\.0\.1:\d+/login\?token=\S+", server.stdout.readline())
        assert link, "no login link printed"
        base = link.group(0).split("/login")[0]
        with httpx.Client(base_url=base, timeout=10) as client:
            assert client.get("/", follow_redirects=True).url.path == "/login"
            assert client.get(link.group(0)).status_code == 303
            listed = client.get("/")
            assert "777" in listed.text
            page = client.get("/runs/777")
            assert page.status_code == 200
            assert "Job job2" in page.text
            assert "needs job0, job1" in page.text
            assert 'action="/runs/' not in page.text  # read-only
            wrong = client.get("/login", params={"token": "guess", "next": "/"})
            assert wrong.status_code == 401
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
