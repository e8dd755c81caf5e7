"""``python -m bench containers``: what container images cost (issue 19).

The bench builds its own image, starts Debian's ``docker-registry`` on 127.0.0.1 and pushes
the image there with ``skopeo`` (as the tests do, ``tests/machines/oci_fixtures.py``), so it
needs no network. Figures:

- the first pull and unpack of an image of about ``--size`` MiB (busybox plus a layer of
  random-ish files: half random bytes, half text, so it compresses as real images do), into an
  empty cache: ``skopeo copy`` + our digest checks + ``umoci unpack``;
- the start of a ``container:`` job's machine from the cached image (allocation up to the
  agent's first answer, then one ``true``), against the same for a plain sandbox; goal: within
  100 ms of it (p50);
- a service container's start to healthy: a busybox ``httpd`` whose ``--health-cmd`` is a
  ``wget`` every 20 ms, as the extra time of allocating a machine with that service.

Needs root (container machines do), skopeo, umoci, docker-registry and busybox-static.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.sandbox import percentiles
from vmrunner.machines.base import HealthCheck, MachineSpec, Provider, ServiceSpec

GOALS = {"container_start_over_plain_ms": 100.0}
#: Serves one page at once; its health check asks for it.
WEB = "mkdir -p /www; echo ok > /www/index.html; exec httpd -f -p 8080 -h /www"


def random_ish_layer(size_mib: int, seed: int = 19) -> dict[str, Any]:
    """``size_mib`` files of 1 MiB under ``data/``: half random bytes, half words."""
    rng = random.Random(seed)
    words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(8)) for _ in range(512)]
    files: dict[str, Any] = {"data": None}
    for index in range(size_mib):
        noise = rng.randbytes(1 << 19)
        text = b" ".join(rng.choice(words) for _ in range((1 << 19) // 9 + 1))[: 1 << 19]
        files[f"data/{index // 64:02d}"] = None
        files[f"data/{index // 64:02d}/file-{index:04d}.bin"] = noise + text
    return files


async def starts(provider: Provider, spec: MachineSpec, count: int) -> list[float]:
    """Seconds from ``allocate`` to the end of a first ``true``; each released before the next."""
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        machine = await provider.allocate(spec)
        try:
            result = await machine.exec(["true"])
            samples.append(time.perf_counter() - started)
            if not result.ok:
                raise RuntimeError(f"`true` failed in {spec}: {result.stderr!r}")
        finally:
            await provider.release(machine)
    return samples


async def run(home: Path, work: Path, *, size: int, count: int) -> dict[str, Any]:
    from tests.machines.oci_fixtures import Registry, busybox_layer, tools_missing, write_layout
    from vmrunner.machines.identity import ROOT_UID, id_map
    from vmrunner.machines.oci import ImageStore
    from vmrunner.machines.sandbox import SandboxProvider

    if missing := tools_missing():
        raise SystemExit(f"bench containers needs {missing} (scripts/bootstrap --dev)")
    if os.geteuid() != 0:
        raise SystemExit("bench containers needs root: container machines do")
    results: dict[str, Any] = {"image_mib": size, "starts": count}
    (work / "registry").mkdir()
    registry = Registry(work / "registry")
    try:
        began = time.perf_counter()
        big = write_layout(work / "big", [busybox_layer(), random_ish_layer(size)])
        results["build_s"] = time.perf_counter() - began
        blobs = work / "big" / "blobs" / "sha256"
        results["compressed_mib"] = sum(p.stat().st_size for p in blobs.iterdir()) / (1 << 20)
        big_ref = registry.push(big, "bench/big:1")
        small = write_layout(work / "small", [busybox_layer()])
        small_ref = registry.push(small, "bench/small:1")
        web_layer = busybox_layer()
        web_layer["bin/httpd"] = ("link", "busybox")
        web = write_layout(work / "web", [web_layer], config={"Cmd": ["sh", "-c", WEB]})
        web_ref = registry.push(web, "bench/web:1")

        store = ImageStore(home / "pull-cache")
        began = time.perf_counter()
        await store.pull(big_ref, ids=id_map().host_id(ROOT_UID))
        results["first_pull_unpack_s"] = time.perf_counter() - began
        began = time.perf_counter()
        await store.pull(big_ref, ids=id_map().host_id(ROOT_UID))
        results["cached_pull_ms"] = (time.perf_counter() - began) * 1000
        store.remove_all()

        provider = SandboxProvider(home=home / "runner", grace=0.5)
        try:
            plain = MachineSpec(network="private")
            image = MachineSpec(network="private", image=small_ref)
            health = HealthCheck("wget -q -O- http://localhost:8080/", interval=0.02, retries=500)
            service = MachineSpec(
                network="private", services=(ServiceSpec("web", web_ref, health=health),)
            )
            for spec in (plain, image, service):  # pulls, page cache, agent bundle
                await starts(provider, spec, 2)
            figures = {
                name: await starts(provider, spec, count)
                for name, spec in (("plain", plain), ("container", image), ("service", service))
            }
        finally:
            await provider.aclose()
        for name, samples in figures.items():
            results[name] = percentiles(samples)
        median = {name: statistics.median(samples) * 1000 for name, samples in figures.items()}
        results["container_over_plain_ms"] = median["container"] - median["plain"]
        results["service_to_healthy_ms"] = median["service"] - median["plain"]
    finally:
        registry.close()
    return results


def report(results: dict[str, Any]) -> str:
    goal = GOALS["container_start_over_plain_ms"]
    rows = [
        f"image: {results['image_mib']} MiB unpacked, {results['compressed_mib']:.0f} MiB of"
        f" blobs (built in {results['build_s']:.1f} s)",
        f"  first pull + unpack        {results['first_pull_unpack_s']:.2f} s"
        f"   (cached: {results['cached_pull_ms']:.1f} ms)",
    ]
    for name, label in (("plain", "plain sandbox"), ("container", "container: job"),
                        ("service", "with a service")):  # fmt: skip
        figures = results[name]
        rows.append(
            f"  start, {label:<19} p50 {figures['p50_ms']:7.1f} ms  p99 {figures['p99_ms']:7.1f} ms"
            f"  (n={figures['n']})"
        )
    rows.append(
        f"  container: job over plain  {results['container_over_plain_ms']:+.1f} ms"
        f"   goal <= {goal:.0f} ms"
    )
    rows.append(f"  service start to healthy   {results['service_to_healthy_ms']:.1f} ms (p50)")
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench containers", description=__doc__)
    parser.add_argument("--size", type=int, default=100, help="the big image's size, MiB")
    parser.add_argument("--starts", type=int, default=20, help="machine starts to time per kind")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    with (
        tempfile.TemporaryDirectory(prefix="vmrunner-bench-") as home,
        tempfile.TemporaryDirectory(prefix="vmrunner-bench-work-") as work,
    ):
        os.chmod(home, 0o711)  # the unprivileged bubblewrap passes through to its machines
        results = asyncio.run(run(Path(home), Path(work), size=args.size, count=args.starts))
    print(json.dumps(results, indent=2) if args.json else report(results))
    return 0
