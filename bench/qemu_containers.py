"""``python -m bench qemu_containers``: copying a container root into a QEMU guest.

Times ``guest_containers.install`` (the root as a tar over the agent's ``put``, then the
guest-side mounts) for roots of a few sizes (a static busybox plus incompressible data), and a
first command chrooted there. Needs root and the image named ``default`` in ``--images``
(default: VMRUNNER_IMAGES or VMRUNNER_HOME/images; ``vmrunner image build``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from vmrunner.machines import guest_containers
from vmrunner.machines.base import MachineSpec
from vmrunner.machines.oci import ContainerImage
from vmrunner.machines.qemu import QemuMachine, QemuProvider


async def run(provider: QemuProvider, sizes: list[int], scratch: Path) -> list[dict[str, Any]]:
    machine = await provider.allocate(MachineSpec(network="none"))
    assert isinstance(machine, QemuMachine)
    results = []
    try:
        for mib in sizes:
            root = scratch / f"root-{mib}"
            (root / "bin").mkdir(parents=True)
            shutil.copy("/bin/busybox", root / "bin/sh")
            (root / "data").write_bytes(os.urandom(mib << 20))
            image = ContainerImage(f"bench-{mib}", "sha256:0", root)
            began = time.monotonic()
            where = await guest_containers.install(machine.client, image, f"bench-{mib}")
            installed = time.monotonic() - began
            began = time.monotonic()
            ran = await machine.client.exec(["/bin/sh", "-c", "echo ok"], root=where)
            first = time.monotonic() - began
            assert ran.ok, ran.stderr
            await machine.client.exec(["rm", "-rf", where])
            results.append({"mib": mib, "install_s": installed, "first_exec_s": first,
                            "mib_per_s": mib / installed})  # fmt: skip
    finally:
        await provider.release(machine)
    return results


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench qemu_containers", description=__doc__)
    parser.add_argument("--images", type=Path, default=None, help="image directory")
    parser.add_argument("--sizes", default="8,32,100", help="root sizes in MiB (default 8,32,100)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="vmrunner-bench-", dir="/tmp") as home:
        provider = QemuProvider(Path(home), images=args.images)
        sizes = [int(size) for size in args.sizes.split(",")]
        try:
            results = asyncio.run(run(provider, sizes, Path(home) / "roots"))
        finally:
            asyncio.run(provider.aclose())
    if args.json:
        print(json.dumps(results, indent=2))
    for row in results:
        first = row["first_exec_s"] * 1000
        print(f"{row['mib']:>4} MiB root: copied and prepared in {row['install_s']:.2f} s "
              f"({row['mib_per_s']:.0f} MiB/s), first command {first:.0f} ms")  # fmt: skip
    return 0
