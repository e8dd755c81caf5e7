"""The workspace layout and a checkout on every provider: host, (emulated) Firecracker, QEMU."""

from __future__ import annotations

from pathlib import Path

from tests.actions.test_checkout import commits, errors
from tests.machines.qemu_fixtures import qemu_image, test_images_dir
from tests.machines.test_firecracker import emulated
from tests.runner.engine import run
from vmrunner.machines.base import Provider
from vmrunner.machines.host import HostProvider
from vmrunner.machines.qemu import QemuProvider

WORKFLOW = """
on: push
jobs:
  a:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - run: |
          test "$(pwd)" = "$GITHUB_WORKSPACE"
          test "${{ github.workspace }}" = "$GITHUB_WORKSPACE"
          case "$GITHUB_WORKSPACE" in */work/app/app) ;; *) exit 1;; esac
          test "${{ runner.workspace }}" = "$(dirname "$GITHUB_WORKSPACE")"
          test -f two.txt && test -f .git/HEAD && test -f .git/shallow
          echo "workspace $GITHUB_WORKSPACE"
"""


async def check(provider: Provider, repo: Path) -> str:
    network = "private" if provider.name == "qemu" else "host"
    ran = await run(
        WORKFLOW, repo_root=repo, repository="octo/app", provider=provider, network=network
    )
    assert ran.result("a") == "success", (ran.logs("a"), errors(ran), ran.finished("a").reason)
    return next(line for line in ran.logs("a") if line.startswith("workspace "))


async def test_host_and_firecracker(tmp_path: Path) -> None:
    repo = tmp_path / "app"
    commits(repo, "one.txt", "two.txt")
    kernel, rootfs = tmp_path / "vmlinux", tmp_path / "rootfs.ext4"
    kernel.write_bytes(b"\x7fELF not really a kernel")
    rootfs.write_bytes(b"")
    for provider in (HostProvider(), emulated(tmp_path, (kernel, rootfs))):
        try:
            line = await check(provider, repo)
        finally:
            await provider.aclose()
        if isinstance(provider, HostProvider):
            assert line.endswith("/work/app/app")
        else:
            assert line == "workspace /home/runner/work/app/app"


async def test_qemu(tmp_path: Path) -> None:
    qemu_image()
    repo = tmp_path / "app"
    commits(repo, "one.txt", "two.txt")
    provider = QemuProvider(images=test_images_dir(), grace=0.5)
    try:
        assert await check(provider, repo) == "workspace /home/runner/work/app/app"
    finally:
        await provider.aclose()
    assert provider.leftovers() == []
