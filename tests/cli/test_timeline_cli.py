"""``vmrunner runs show --timeline [--svg]`` on runs made by the real ``vmrunner run``."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import pytest

from tests.cli.helpers import vmrunner
from vmrunner.reports import svg

CHROMIUM = "/usr/bin/chromium"

SINGLE = """
on: push
jobs:
  build:
    runs-on: ubuntu-latest
    steps:
      - run: echo compiled
"""

PARALLEL = """
on: push
jobs:
  one:
    runs-on: ubuntu-latest
    steps:
      - run: sleep 0.4
  two:
    runs-on: ubuntu-latest
    steps:
      - run: sleep 0.4
  three:
    runs-on: ubuntu-latest
    steps:
      - run: sleep 0.4
"""

FAILING = """
on: push
jobs:
  a:
    runs-on: ubuntu-latest
    steps:
      - run: echo good > good.txt
      - run: exit 5
"""


def run_in(tmp_path: Path, workflow: str, *options: str) -> tuple[str, dict[str, object]]:
    """``vmrunner run --json`` in a fresh project; the run id and its JSON result."""
    root = tmp_path / "project"
    (root / ".github" / "workflows").mkdir(parents=True)
    (root / ".github" / "workflows" / "ci.yml").write_text(workflow)
    done = vmrunner("run", "--json", *options, cwd=root)
    assert done.returncode in (0, 1), done.stderr
    data = json.loads(done.stdout)["runs"][0]
    return str(data["run_id"]), data


def rows(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("T+")]


def test_single_job_timeline_one_allocation_every_command_then_one_release(tmp_path: Path) -> None:
    run_id, data = run_in(
        tmp_path, SINGLE, "--setup-command", "echo setup", "--cleanup-command", "echo cleanup"
    )
    shown = vmrunner("runs", "show", run_id, "--timeline", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    lines = rows(shown.stdout)
    assert lines[0].startswith("T+0ms") or re.match(r"T\+\d+ms", lines[0])
    machine = data["jobs"][0]["machine_id"]  # type: ignore[index]
    allocated = [i for i, line in enumerate(lines) if "machine allocated" in line]
    released = [i for i, line in enumerate(lines) if "machine released" in line]
    commands = [i for i, line in enumerate(lines) if " started: " in line]
    assert len(allocated) == 1
    assert len(released) == 1
    assert len(commands) == 3
    assert allocated[0] < commands[0]
    assert commands[-1] < released[0]
    assert all(machine in lines[i] for i in [*allocated, *commands, *released])
    kinds = [lines[i].split()[2] for i in commands]
    assert kinds == ["setup", "step", "cleanup"]
    assert "session completed" in shown.stdout
    counts = shown.stdout.split("Counts from the recorded events")[1]
    assert re.search(r"Machines allocated:\s+1\n", counts)
    assert re.search(r"Machines released:\s+1 \(each exactly once: yes\)", counts)
    assert re.search(rf"Commands in {machine}:\s+3 \(build\)", counts)
    assert re.search(r"Every command in its job's machine:\s+yes \(3 of 3\)", counts)
    assert counts.rstrip().endswith("Total machines used: 1")
    # the same evidence for machines
    as_json = json.loads(vmrunner("runs", "show", run_id, "--json", cwd=tmp_path).stdout)
    assert as_json["lifecycle"]["machines_allocated"] == 1
    assert as_json["lifecycle"]["machines_released"] == 1
    assert as_json["lifecycle"]["kept"] is True
    assert as_json["jobs"][0]["timeline"] == data["jobs"][0]["timeline"]  # type: ignore[index]


def test_parallel_jobs_are_interleaved_with_their_names(tmp_path: Path) -> None:
    run_id, _ = run_in(tmp_path, PARALLEL)
    shown = vmrunner("runs", "show", run_id, "--timeline", cwd=tmp_path)
    lines = rows(shown.stdout)
    jobs = [line.split()[1] for line in lines]
    assert set(jobs) == {"one", "two", "three"}
    # interleaved: some job's rows come between another job's allocation and release
    first_release = next(i for i, line in enumerate(lines) if "machine released" in line)
    assert {
        job
        for job, line in zip(jobs[:first_release], lines, strict=False)
        if "machine allocated" in line
    } == {"one", "two", "three"}
    assert "Most machines alive at once:" in shown.stdout
    assert re.search(r"Overlapping machines \(in parallel\):\s+\S", shown.stdout)
    assert shown.stdout.rstrip().endswith("Total machines used: 3")


def test_rollback_restore_sits_between_the_failure_and_the_release(tmp_path: Path) -> None:
    run_id, data = run_in(tmp_path, FAILING, "--rollback-on-failure", "--cleanup-command", "ls")
    assert data["conclusion"] == "failure"
    lines = rows(vmrunner("runs", "show", run_id, "--timeline", cwd=tmp_path).stdout)
    failed = next(
        i for i, line in enumerate(lines) if "finished: Run exit 5 (exit 5, failure)" in line
    )
    restored = next(i for i, line in enumerate(lines) if "snapshot restored" in line)
    released = next(i for i, line in enumerate(lines) if "machine released" in line)
    assert failed < restored < released
    assert "rolled_back" in lines[restored]


def test_svg_needs_timeline_and_a_writable_file(tmp_path: Path) -> None:
    run_id, _ = run_in(tmp_path, SINGLE)
    alone = vmrunner("runs", "show", run_id, "--svg", str(tmp_path / "t.svg"), cwd=tmp_path)
    assert alone.returncode != 0
    assert "--svg" in alone.stderr
    assert "Traceback" not in alone.stderr
    blocked = vmrunner(
        "runs",
        "show",
        run_id,
        "--timeline",
        "--svg",
        str(tmp_path / "missing" / "t.svg"),
        cwd=tmp_path,
    )
    assert blocked.returncode != 0
    assert "cannot write" in blocked.stderr
    assert "Traceback" not in blocked.stderr


@pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK),
    reason="chromium is not installed (scripts/bootstrap --dev installs it)",
)
def test_svg_draws_one_lane_per_machine_in_a_browser(tmp_path: Path) -> None:
    run_id, data = run_in(tmp_path, PARALLEL, "--setup-command", "true")
    picture = tmp_path / "timeline.svg"
    done = vmrunner("runs", "show", run_id, "--timeline", "--svg", str(picture), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    root = ET.parse(picture).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    machines = {job["machine_id"] for job in data["jobs"]}  # type: ignore[attr-defined]
    texts = {t.text for t in root.iter("{http://www.w3.org/2000/svg}text")}
    assert machines <= texts
    png = tmp_path / "timeline.png"
    profile = tmp_path / "profile"
    subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            f"--screenshot={png}",
            "--window-size=1200,800",
            picture.as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    shutil.rmtree(profile, ignore_errors=True)
    width, pixels = decode_png(png.read_bytes())
    life, step, setup = (
        _rgb(c) for c in (svg.LIFE_COLOUR, svg.KIND_COLOURS["step"], svg.KIND_COLOURS["setup"])
    )
    for lane in range(3):
        y = round(svg.lane_middle(lane))
        row = [tuple(pixels[y][x * 4: x * 4 + 3]) for x in range(width)]
        assert any(_near(p, life) for p in row), f"lane {lane}: no machine bar"
        assert any(_near(p, step) for p in row), f"lane {lane}: no step"
        assert any(_near(p, setup) for p in row), f"lane {lane}: no setup command"
    below = round(svg.lane_middle(3))  # no fourth lane in the plot (the legend is on the left)
    assert not any(
        _near(tuple(pixels[below][x * 4 : x * 4 + 3]), life) for x in range(svg.LABEL_WIDTH, width)
    )


def _rgb(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def _near(pixel: tuple[int, ...], colour: tuple[int, int, int]) -> bool:
    return all(abs(a - b) <= 6 for a, b in zip(pixel, colour, strict=True))


def decode_png(data: bytes) -> tuple[int, list[bytes]]:
    """Width and RGBA rows of an 8-bit, non-interlaced RGB or RGBA PNG (what Chromium writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position, chunks, header = 8, [], b""
    while position < len(data):
        (length,), kind = (
            struct.unpack(">I", data[position : position + 4]),
            data[position + 4 : position + 8],
        )
        body = data[position + 8: position + 8 + length]
        position += 12 + length
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            chunks.append(body)
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8
    assert interlace == 0
    channels = {2: 3, 6: 4}[colour]
    raw = zlib.decompress(b"".join(chunks))
    stride = width * channels
    rows: list[bytes] = []
    previous = bytearray(stride)
    for y in range(height):
        kind, line = (
            raw[y * (stride + 1)],
            bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)]),
        )
        for x in range(stride):
            left = line[x - channels] if x >= channels else 0
            up = previous[x]
            corner = previous[x - channels] if x >= channels else 0
            if kind == 1:
                line[x] = (line[x] + left) & 0xFF
            elif kind == 2:
                line[x] = (line[x] + up) & 0xFF
            elif kind == 3:
                line[x] = (line[x] + (left + up) // 2) & 0xFF
            elif kind == 4:
                guess = left + up - corner
                pa, pb, pc = abs(guess - left), abs(guess - up), abs(guess - corner)
                line[x] = (
                    line[x] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)
                ) & 0xFF
        previous = line
        rgba = (
            bytes(line)
            if channels == 4
            else b"".join(bytes(line[i : i + 3]) + b"\xff" for i in range(0, stride, 3))
        )
        rows.append(rgba)
    return width, rows
