"""What agents report besides log lines: steps, annotations and the job's lifecycle, written to
PostgreSQL with the logs, fenced by the attempt, masked, and shown by ``vmrunner fleet show``."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.fleet.harness import agents, finished, options
from vmrunner.fleet.store import EventRecord, FleetStore

#: The masked value is made at run time, so it appears in no script the runner shows.
WORKFLOW = """
on: push
jobs:
  build:
    runs-on: linux
    steps:
      - name: hello
        run: echo hello
      - name: warn
        run: |
          value=$(echo aHVudGVyMg== | base64 -d)
          echo "::add-mask::$value"
          echo "::warning file=src/a.py,line=3::x and $value"
          echo "printed $value"
      - name: tolerated
        run: exit 3
        continue-on-error: true
      - name: never
        if: ${{ false }}
        run: echo never
  after:
    runs-on: linux
    needs: build
    steps:
      - name: breaks
        run: exit 1
      - name: not reached
        run: echo not reached
"""


async def test_steps_annotations_and_lifecycle_are_stored_masked(database: str) -> None:
    async with agents(database, ("h1", "linux")) as started, FleetStore(database) as store:
        run_id = await store.submit(WORKFLOW, "events.yml", options(started))
        run = await finished(store, run_id)
        assert run.conclusion == "failure"
        steps = await store.steps(run_id)
        assert [(s.name, s.status, s.outcome) for s in steps["build"] if s.kind == "step"] == [
            ("hello", "success", "success"),
            ("warn", "success", "success"),
            ("tolerated", "success", "failure"),
            ("never", "skipped", "skipped"),
        ]
        assert [(s.name, s.status) for s in steps["after"] if s.kind == "step"] == [
            ("breaks", "failure"),
            ("not reached", "skipped"),
        ]
        assert all(
            s.duration is not None and s.duration >= 0 for job in steps.values() for s in job
        )
        warnings = [
            a for a in (await store.annotations(run_id))["build"] if a["level"] == "warning"
        ]
        assert [(a["message"], a["file"], a["line"]) for a in warnings] == [
            ("x and ***", "src/a.py", 3)
        ]
        kinds = {event.kind for event in await store.events(run_id, "build")}
        assert {
            "JobQueued",
            "AllocationRequested",
            "JobStarted",
            "SessionStateChanged",
            "StepStarted",
            "StepFinished",
            "JobFinished",
            "MachineReleased",
        } <= kinds
        assert "RunStarted" not in kinds  # the agent's one-job run is not the fleet's run
        assert [
            line
            for _, job, _, line in await store.logs(run_id)
            if job == "build" and line.startswith("printed")
        ] == ["printed ***"]
        async with store.pool.connection() as connection:
            leaked = await (await connection.execute(
                "SELECT (SELECT count(*) FROM vmrunner_events WHERE data::text LIKE '%hunter2%')"
                " + (SELECT count(*) FROM vmrunner_logs WHERE line LIKE '%hunter2%')"
            )).fetchone()
        assert leaked == (0,)
        # A write for an attempt that is not running (here: ended) is rejected, like logs.
        late = EventRecord(99, "Annotation", 0.0, {"level": "error", "message": "late"})
        assert not await store.append_events(run_id, "build", 1, [late])
        assert "late" not in [
            e.data["message"] for e in await store.events(run_id, "build", kinds=("Annotation",))
        ]

        shown = await asyncio.to_thread(
            _vmrunner, "fleet", "show", run_id, "--store", database, "--json"
        )
        assert shown.returncode == 0, shown.stderr
        jobs = {job["job_id"]: job for job in json.loads(shown.stdout)["jobs"]}
        assert [
            (s["name"], s["status"]) for s in jobs["after"]["steps"] if s["kind"] == "step"
        ] == [("breaks", "failure"), ("not reached", "skipped")]
        assert [a["message"] for a in jobs["build"]["annotations"] if a["level"] == "warning"] == [
            "x and ***"
        ]
        text = await asyncio.to_thread(_vmrunner, "fleet", "show", run_id, "--store", database)
        assert text.returncode == 0, text.stderr
        assert "not reached" in text.stdout
        assert "build: warning: x and ***" in text.stdout


SECRETIVE = """
on: push
jobs:
  deploy:
    runs-on: linux
    steps:
      - run: |
          test "${{ secrets.DEPLOY_TOKEN }}" = "s3cr3t-from-the-host"
          echo "token is ${{ secrets.DEPLOY_TOKEN }}"
          echo "::warning::using $TOKEN"
        env:
          TOKEN: ${{ secrets.DEPLOY_TOKEN }}
"""


async def test_an_agent_gives_its_own_secrets_to_jobs_and_the_fleet_never_sees_them(
    database: str, tmp_path: Path
) -> None:
    secrets = tmp_path / "secrets.env"
    secrets.write_text("DEPLOY_TOKEN=s3cr3t-from-the-host\n")
    async with (
        agents(database, ("h1", "linux"), extra=("--secret-file", str(secrets))) as started,
        FleetStore(database) as store,
    ):
        run_id = await store.submit(SECRETIVE, "secretive.yml", options(started))
        run = await finished(store, run_id)
        assert run.conclusion == "success", run
        assert [line for _, _, _, line in await store.logs(run_id) if line.startswith("token")] == [
            "token is ***"
        ]
        assert [
            a["message"]
            for a in (await store.annotations(run_id))["deploy"]
            if a["level"] == "warning" and "using" in a["message"]
        ] == ["using ***"]
        async with store.pool.connection() as connection:
            leaked = await (await connection.execute(
                "SELECT (SELECT count(*) FROM vmrunner_events WHERE data::text LIKE '%s3cr3t%')"
                " + (SELECT count(*) FROM vmrunner_logs WHERE line LIKE '%s3cr3t%')"
                " + (SELECT count(*) FROM vmrunner_runs WHERE options::text LIKE '%s3cr3t%')"
            )).fetchone()
        assert leaked == (0,)


def _vmrunner(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "vmrunner", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
