"""Container roots inside a VM guest (the qemu provider's ``container:``, ``services:`` and
Docker steps).

The image is pulled and unpacked on the host exactly as for the sandbox (``oci.py``, the shared
content-addressed cache, unpacked with the image's own ids), then copied into the guest as one
tar over the agent's ``put`` into ``GUEST_ROOTS/<name>`` on the guest's own disk (its qcow2
overlay: it dies with the machine). A second virtio disk built from the tree was the other way;
the tar needs no device hotplug after a ready-state restore, and the images jobs use are small
next to the guest's disk.

A guest-side helper (stdlib Python, run by the agent as the guest's root) then makes the mount
points (a link in the image at one of them is replaced, never followed), binds the guest's
``/dev``, ``/proc``, ``/sys`` and the requested folders into the root, and copies the guest's
``/etc/hosts`` (with the services' labels on 127.0.0.1) and resolver into it. Commands then run
through the agent's ``root`` (chroot) exec as the image's user. Nothing is undone at the end:
the guest, its disk and its mounts go with the VM.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from vmrunner.errors import AllocationError, ExecError, MachineError
from vmrunner.machines import build, container, services
from vmrunner.machines.base import ExecResult, ImageRun, MachineSpec, OutputCallback
from vmrunner.machines.client import AgentClient
from vmrunner.machines.identity import ROOT_UID, id_map
from vmrunner.machines.oci import ContainerImage, Credentials, ImageStore

#: Where container roots are unpacked on the guest's disk.
GUEST_ROOTS = "/var/lib/vmrunner/containers"
HOST_ROOT_NEEDED = (
    "container images are unpacked on the host with their own owners before they are copied"
    " into the guest: run vmrunner as root"
)

#: Runs in the guest (``python3 -I -c``) as root; argv[1] is the JSON request.
_SETUP = r"""
import json, os, shutil, subprocess, sys
req = json.loads(sys.argv[1])
root = req["root"]
def point(place, is_file):
    parts = [p for p in place.split("/") if p]
    path = root
    for i, part in enumerate(parts):
        path = os.path.join(path, part)
        want_file = is_file and i == len(parts) - 1
        if os.path.islink(path) or (os.path.exists(path) and os.path.isdir(path) == want_file):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
        if not os.path.lexists(path):
            if want_file:
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))
            else:
                os.mkdir(path, 0o755)
    return path
aliases = req.get("aliases") or []
if aliases:
    with open("/etc/hosts") as f:
        known = f.read().split()
    new = [a for a in aliases if a not in known]
    if new:
        with open("/etc/hosts", "a") as f:
            f.write("127.0.0.1 " + " ".join(new) + "\n")
uid, gid = req["owner"]
for folder in req.get("make") or []:
    os.makedirs(folder, mode=0o755, exist_ok=True)
    os.chown(folder, uid, gid)
for source, place, kind in req["binds"]:
    if kind == "copy":
        target = point(place, True)
        shutil.copyfile(source, target)
        continue
    target = point(place, kind == "file")
    subprocess.run(["mount", "--rbind", source, target], check=True)
tmp = point("/tmp", False)
os.chmod(tmp, 0o1777)
"""

#: What every root gets from the guest: its devices, processes, kernel view, names.
SYSTEM_BINDS = (("/dev", "/dev", "dir"), ("/proc", "/proc", "dir"), ("/sys", "/sys", "dir"))


def rootfs_tar(image: ContainerImage, shift: int = 0) -> bytes:
    """The image's unpacked root as an uncompressed tar with numeric owners, its host ids
    moved down by ``shift`` (an image unpacked for the sandbox's id range) to the image's own."""

    def own(member: tarfile.TarInfo) -> tarfile.TarInfo:
        member.uid = max(member.uid - shift, 0)
        member.gid = max(member.gid - shift, 0)
        member.uname = member.gname = ""
        return member

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in sorted(Path(image.rootfs).iterdir()):
            tar.add(entry, arcname=entry.name, filter=own)
    return buffer.getvalue()


async def install(
    client: AgentClient, image: ContainerImage, name: str, *, shift: int = 0,
    binds: Sequence[tuple[str, str, str]] = (), make: Sequence[str] = (),
    owner: tuple[int, int] = (0, 0), aliases: Sequence[str] = (),
) -> str:
    """Copy ``image`` into the guest as ``GUEST_ROOTS/name`` and prepare it to run in (see the
    module docstring); ``make``: guest folders made first, owned by ``owner`` (those ``binds``
    shows inside). The root's path in the guest."""
    root = f"{GUEST_ROOTS}/{name}"
    try:
        await client.put(root, rootfs_tar(image, shift))
        request = {
            "root": root, "binds": [*map(list, SYSTEM_BINDS), *map(list, binds)],
            "make": list(make), "owner": list(owner), "aliases": list(aliases),
        }  # fmt: skip
        result = await client.exec(["python3", "-I", "-c", _SETUP, json.dumps(request)])
    except MachineError as exc:
        raise AllocationError(f"{image.reference}: cannot copy it into the guest: {exc}") from exc
    if not result.ok:
        why = result.stderr.decode(errors="replace").strip()[-800:]
        raise AllocationError(f"{image.reference}: cannot prepare its root in the guest: {why}")
    return root


#: The guest folders a container job's root shows at GitHub's places (the same paths in the
#: guest, so the runner's ``put``/``get``/``write``/``collect`` need no translation).
JOB_FOLDERS = (container.WORK, container.WORKSPACE, container.TEMP, container.TOOL_CACHE,
               container.HOME)  # fmt: skip
JOB_BINDS = tuple((f, f, "dir") for f in (container.WORK, container.TOOL_CACHE, container.HOME))


@dataclass(frozen=True, slots=True)
class JobRoot:
    """A container job's root in the guest: every command of the job runs in it."""

    root: str
    user: tuple[int, int]
    env: Mapping[str, str]


async def pull(
    store: ImageStore, spec: MachineSpec
) -> tuple[ContainerImage | None, dict[str, ContainerImage]]:
    """The job's image (or None) and its services' images by label, pulled at once on the host
    (unpacked with the images' own ids: the guest is where they are mapped, not the host)."""
    if (spec.image or spec.services) and os.geteuid() != 0:
        raise AllocationError(HOST_ROOT_NEEDED)

    async def one(reference: str, login: tuple[str, str] | None) -> ContainerImage:
        login_ = Credentials(*login) if login else None
        return await store.pull(reference, ids=0, credentials=login_)

    wanted = [(spec.image, spec.image_credentials)] if spec.image else []
    wanted += [(service.image, service.credentials) for service in spec.services]
    pulled = await asyncio.gather(*(one(ref, login) for ref, login in wanted))
    image = pulled.pop(0) if spec.image else None
    return image, {s.label: i for s, i in zip(spec.services, pulled, strict=True)}


async def job_root(
    client: AgentClient, image: ContainerImage, spec: MachineSpec, machine_id: str
) -> JobRoot:
    """Install the job's image as the root its steps run in (``container.py``'s layout)."""
    user = container.user_ids(spec.image_user or image.user, image.rootfs)
    root = await install(
        client, image, "job", binds=(*JOB_BINDS, *services.ETC_BINDS), make=JOB_FOLDERS, owner=user,
        aliases=[service.label for service in spec.services],
    )  # fmt: skip
    return JobRoot(root, user, container.environment(image, machine_id, spec.image_env))


async def start_services(
    client: AgentClient, images: Mapping[str, ContainerImage], spec: MachineSpec, log_dir: Path
) -> services.Services:
    """The machine's services, started in roots of their own in the guest, and healthy."""
    labels = [service.label for service in spec.services]
    running = services.Services(client, log_dir)

    async def attach(image: ContainerImage, name: str) -> str:
        return await install(client, image, name, binds=services.ETC_BINDS, aliases=labels)

    try:
        await running.start(spec.services, images, attach)
    except BaseException:
        await running.aclose()
        raise
    return running


async def exec_image(
    client: AgentClient, store: ImageStore, run: ImageRun, args: Sequence[str], name: str, *,
    context: bytes | None = None, env: Mapping[str, str] | None = None,
    timeout: float | None = None,  # noqa: ASYNC109 - enforced inside the machine
    on_output: OutputCallback | None = None, write: Mapping[str, str] | None = None,
    collect: Sequence[str] = (),
) -> ExecResult:
    """A one-shot container of ``run`` in the guest (``Machine.exec_image``); ``context``: the
    action's folder when the image is built from its Dockerfile."""
    credentials = Credentials(*run.credentials) if run.credentials else None
    if os.geteuid() != 0:
        raise ExecError(HOST_ROOT_NEEDED)

    async def prepare(binds: tuple[services.Bind, ...]) -> tuple[ContainerImage, str]:
        if context is not None:
            # buildah builds as the machines' unprivileged root: moved back to 0 in the tar.
            shift = id_map().host_id(ROOT_UID)
            # It goes through the runner's home and cache to its staging folder, by path (as
            # the sandbox's machines do): open them to passers-by (0711, nothing listed).
            for folder in (store.root.parent.parent, store.root.parent):
                folder.mkdir(parents=True, exist_ok=True, mode=0o711)
                folder.chmod(0o711)
            image = await asyncio.to_thread(build.build_image, store, context, run.image, ids=shift)
        else:
            shift = 0
            image = await store.pull(run.image, ids=0, credentials=credentials)
        return image, await install(client, image, name, shift=shift, binds=binds)

    return await services.run_once(
        client, run, args, prepare, env=env, timeout=timeout, on_output=on_output, write=write,
        collect=collect,
    )  # fmt: skip


async def give(client: AgentClient, dest_dir: str, tar_data: bytes, owner: tuple[int, int]) -> None:
    """Make what ``tar_data`` put into ``dest_dir`` belong to ``owner`` (the job's user)."""
    with tarfile.open(fileobj=io.BytesIO(tar_data)) as tar:
        tops = sorted({m.name.lstrip("./").split("/")[0] for m in tar.getmembers()} - {""})
    paths = [dest_dir, *(f"{dest_dir.rstrip('/')}/{top}" for top in tops)]
    result = await client.exec(["chown", "-R", "-h", f"{owner[0]}:{owner[1]}", "--", *paths])
    if not result.ok:
        why = result.stderr.decode(errors="replace").strip()
        raise ExecError(f"cannot give {dest_dir} to the job's user: {why}")
