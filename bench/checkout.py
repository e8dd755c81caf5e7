"""``python -m bench checkout [--repo PATH] [--rounds N]``: host-side cost of actions/checkout
and of resolving a remote action.

Figures, each the median of N rounds, for the repository at PATH (default: this checkout):
its working tree as a plain tar without history (what checkout copied before it honoured its
inputs); the default checkout (a one-commit repository plus the working tree on top);
``fetch-depth: 0`` (every branch and tag); and a moving action ref re-resolved against a
local git server (one ``git ls-remote``, the commit already cached).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from vmrunner.actions.checkout import CheckoutSettings, prepare, read_inputs
from vmrunner.repository import fetch_action, working_tree_tar

WORKSPACE = "/home/runner/work/repo/repo"


async def _median(action: Callable[[], Awaitable[object]], rounds: int) -> tuple[float, object]:
    samples, last = [], None
    for _ in range(rounds):
        start = time.perf_counter()
        last = await action()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples), last


def _server(folder: Path) -> str:
    bare = folder / "server" / "octo" / "act"
    bare.mkdir(parents=True)
    work = folder / "work"
    run = lambda *a, cwd: subprocess.run(  # noqa: E731
        ["git", "-c", "user.name=b", "-c", "user.email=b@b", *a], cwd=cwd, check=True,
        capture_output=True,
    )
    run("init", "-q", "--bare", "-b", "main", cwd=bare)
    run("clone", "-q", str(bare), str(work), cwd=folder)
    (work / "action.yml").write_text("runs: {using: composite, steps: []}\n")
    run("add", ".", cwd=work)
    run("commit", "-q", "-m", "a", cwd=work)
    run("tag", "v1", cwd=work)
    run("push", "-q", "origin", "main", "v1", cwd=work)
    return (folder / "server").as_uri()


async def _main(repo: str, rounds: int) -> None:
    settings = CheckoutSettings(repo_root=repo, repository="octo/repo", server_url="https://x")

    def checkout(inputs: dict[str, str]) -> Callable[[], Awaitable[object]]:
        return lambda: prepare(read_inputs(inputs, settings, WORKSPACE), settings)

    figures: list[tuple[str, float, int]] = []
    seconds, data = await _median(lambda: working_tree_tar(repo), rounds)
    figures.append(("working tree as a tar, no history", seconds, len(data)))  # type: ignore[arg-type]
    for label, inputs in (("checkout, fetch-depth 1 (default)", {}),
                          ("checkout, fetch-depth 0", {"fetch-depth": "0"})):  # fmt: skip
        seconds, result = await _median(checkout(inputs), rounds)
        figures.append((label, seconds, len(result[0])))  # type: ignore[index]
    with tempfile.TemporaryDirectory() as folder:
        os.environ["VMRUNNER_HOME"] = str(Path(folder) / "home")
        url = _server(Path(folder))
        await fetch_action(url, "octo", "act", "v1")
        seconds, _ = await _median(lambda: fetch_action(url, "octo", "act", "v1"), rounds)
        figures.append(("action @v1 re-resolved (cached commit)", seconds, 0))
    for label, seconds, size in figures:
        shown = f"{size / 2**20:8.1f} MiB" if size else " " * 12
        print(f"{label:42} {seconds * 1000:8.1f} ms {shown}")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench checkout", description=__doc__)
    parser.add_argument("--repo", default=str(Path(__file__).resolve().parents[1]))
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    if "VMRUNNER_HOME" not in os.environ:
        os.environ["VMRUNNER_HOME"] = tempfile.mkdtemp(prefix="vmrunner-bench-")
    asyncio.run(_main(os.path.abspath(args.repo), args.rounds))
    return 0
