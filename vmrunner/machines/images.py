"""Guest images for the VM providers, built from Debian packages only.

An image is a few files and a kernel command line, kept in one directory::

    VMRUNNER_IMAGES (default VMRUNNER_HOME/images)/
        <digest>/image.json     what is below, plus the inputs it was built from
                 vmlinuz        the kernel, from Debian's linux-image-<version>-cloud-amd64
                 vmlinux        the same kernel unpacked (an ELF: what Firecracker boots on
                                x86_64), made once per kernel at build (pure-Python LZ4
                                takes ~17 s) instead of at a first Firecracker allocation
                 initrd.img     a gzip'd newc cpio: static busybox, the virtio/vsock modules
                                that kernel needs, the guest agent and ``/init``
                 rootfs.ext4    the root file system (ext4, sparse raw: what Firecracker takes)
                 rootfs.qcow2   the same as a qcow2 (the read-only base of QEMU's overlays)
        names/<name>            the digest an image name points to
        rootfs/<key>/           root file systems, shared by images that differ only in the
                                kernel or the agent (hard links in the image directories)
        kernels/<package>_<version>/   unpacked kernel packages

The root file system is made with ``mmdebstrap`` (bash, coreutils, git, python3,
ca-certificates, mount, procps and the requested packages, plus ``apt``), then ``mkfs.ext4 -d`` and
``qemu-img convert``; the kernel is the ``.deb`` that ``apt-get download`` fetches. Images are
content-addressed: the digest covers the package list, the kernel package and version, the
agent's source, the init script and ``BUILD_VERSION``, so building the same inputs again
returns the image already there. Root file systems, the slow part (a minute or two), are keyed
by the package list alone, so a new agent only costs a new initramfs.

Booting (any VMM): kernel ``vmlinuz``, initrd ``initrd.img``, the root file system as the
first virtio block device, and ``Image.cmdline`` plus the VMM's own console arguments. The
``/init`` of the initramfs reads these kernel arguments:

- ``vmrunner.root=/dev/vda``: the root device (mounted ``noatime``);
- ``vmrunner.agent=port:NAME`` (a virtio-serial port of that name, QEMU) or
  ``vmrunner.agent=vsock:PORT`` (the agent listens on vsock, Firecracker);
- ``vmrunner.probe=1``: print ``VMRUNNER-PROBE-OK`` on the console and power off (used to
  check that an accelerator really boots).

It loads the modules, mounts the root, puts the agent on a tmpfs at ``/run/vmrunner``, moves
``/dev``, ``/proc`` and ``/sys`` over and ``switch_root``s to ``/bin/sh start.sh``, which execs
the agent as PID 1 in ``/home/runner/work/workspace`` with GitHub-like variables.

Building needs root (mmdebstrap's root mode, ``mkfs.ext4 -d`` keeping owners) and Debian's
package mirror. Measured here: a first build takes 2-4 minutes (mmdebstrap is nearly all of
it; the kernel download and the initramfs take seconds), a rebuild for a new agent a few
seconds, a build of inputs already built only the apt query (about 4 s). That fits CI once
per run, so there is no separate initramfs-only "tiny" image: one image format serves tests,
users and both VMMs, and jobs get a real Debian with apt.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vmrunner.config import vmrunner_home
from vmrunner.errors import ConfigError, ImageError
from vmrunner.machines.agent import __file__ as _agent_file
from vmrunner.machines.vmlinux import vmlinux

#: Told the name of each stage of a build as it starts ("make the ext4 file system"): set by
#: ``ImageStore.build``'s ``progress`` for the length of the build.
_STAGE: ContextVar[Callable[[str], None] | None] = ContextVar("image_build_stage", default=None)

#: Overrides where images live (default: ``VMRUNNER_HOME/images``); lets test runs share them.
ENV_IMAGES = "VMRUNNER_IMAGES"
#: Bumped whenever the build recipe changes what it makes from the same inputs.
BUILD_VERSION = "1"
DEFAULT_NAME = "default"
SUITE = "bookworm"
#: Debian's kernel flavour for VMs: small, with virtio drivers as modules.
KERNEL_PACKAGE = "linux-image-cloud-amd64"
BASE_PACKAGES = ("bash", "ca-certificates", "coreutils", "git", "mount", "procps", "python3")
DISK_GIB = 4
#: How long an image no name points to is kept (machines may still boot from it).
UNNAMED_GRACE = 24 * 3600.0
#: Modules the guest loads at boot (their dependencies come along).
MODULES = (
    "virtio_pci",
    "virtio_mmio",
    "virtio_blk",
    "virtio_console",
    "virtio_net",
    "virtio_rng",
    "vmw_vsock_virtio_transport",
)
#: Kernel arguments every boot needs; the VMM adds its console and transport.
BASE_CMDLINE = ("quiet", "loglevel=3", "panic=-1", "vmrunner.root=/dev/vda")
AGENT_PORT = "vmrunner"
HOME = "/home/runner"
WORKSPACE = f"{HOME}/work/workspace"
TEMP = f"{HOME}/work/_temp"
TOOL_CACHE = "/opt/hostedtoolcache"
PROBE_OK = "VMRUNNER-PROBE-OK"
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9+.:=~-]*$")

AGENT_PATH = Path(_agent_file)
AGENT_BOOT = (
    "import sys;sys.path.insert(0,sys.argv[1]);import agent;sys.exit(agent.main(sys.argv[2:]))"
)

INIT = r"""#!/bin/busybox sh
# vmrunner guest init, stage 1 (initramfs): modules, root, agent, switch_root.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
fail() { echo "vmrunner-init: $*" >/dev/console; sleep 1; poweroff -f; }
arg() { for w in $(cat /proc/cmdline); do case "$w" in "$1"=*) echo "${w#*=}" ;; esac; done; }
for m in $(cat /lib/modules/load); do insmod "/lib/modules/$m" 2>/dev/null; done
ip link set lo up
if [ -e /sys/class/net/eth0 ]; then  # QEMU's user-mode network: fixed addresses
  ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && ip route add default via 10.0.2.2
fi
if [ -n "$(arg vmrunner.probe)" ]; then echo "PROBE_OK" >/dev/console; poweroff -f; fi
root=$(arg vmrunner.root)
root=${root:-/dev/vda}
i=0
while [ ! -b "$root" ]; do i=$((i+1)); [ $i -gt 1000 ] && fail "no root device $root"; usleep 10000; done
mkdir -p /newroot
mount -o noatime "$root" /newroot || fail "cannot mount $root"
mount -t tmpfs -o mode=0755,nosuid tmpfs /newroot/run || fail "cannot mount /run"
cp -a /vmrunner /newroot/run/vmrunner
agent=$(arg vmrunner.agent)
case "$agent" in
  port:*)
    name=${agent#port:}
    i=0
    while :; do
      for p in /sys/class/virtio-ports/*; do
        [ "$(cat "$p/name" 2>/dev/null)" = "$name" ] && [ -e "/dev/${p##*/}" ] && transport="--device /dev/${p##*/}"
      done
      [ -n "$transport" ] && break
      i=$((i+1)); [ $i -gt 1000 ] && fail "no virtio-serial port $name"; usleep 10000
    done ;;
  vsock:*) transport="--vsock ${agent#vsock:}" ;;
  *) fail "vmrunner.agent= names no transport" ;;
esac
mount --move /dev /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts -o mode=0620,ptmxmode=0666 devpts /newroot/dev/pts
mount -t tmpfs -o mode=1777 tmpfs /newroot/dev/shm
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
exec switch_root /newroot /bin/sh /run/vmrunner/start.sh $transport
""".replace("PROBE_OK", PROBE_OK)  # noqa: E501

START = f"""# vmrunner guest init, stage 2 (root file system): the agent as PID 1.
hostname vmrunner
cd {WORKSPACE} || exit 1
exec /usr/bin/env -i HOME={HOME} USER=root LANG=C.UTF-8 \\
  PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
  RUNNER_TEMP={TEMP} RUNNER_TOOL_CACHE={TOOL_CACHE} \\
  /usr/bin/python3 -I -S -c '{AGENT_BOOT}' /run/vmrunner "$@"
"""

#: Runs inside the new root file system (mmdebstrap's customize hook, ``$1`` is the root).
CUSTOMIZE = f"""set -e
mkdir -p "$1{WORKSPACE}" "$1{TEMP}" "$1{TOOL_CACHE}" "$1/run"
rm -f "$1/etc/hostname"
echo vmrunner > "$1/etc/hostname"
printf '127.0.0.1 localhost vmrunner\\n' > "$1/etc/hosts"
printf 'nameserver 10.0.2.3\\n' > "$1/etc/resolv.conf"
rm -rf "$1/var/cache/apt/archives/"*.deb "$1/var/lib/apt/lists/"*_Packages
"""


@dataclass(frozen=True, slots=True)
class Image:
    """A built guest image: what any VMM needs to boot it (see the module docstring)."""

    name: str
    digest: str
    directory: Path
    kernel_version: str
    packages: tuple[str, ...]
    cmdline: tuple[str, ...] = BASE_CMDLINE
    created_at: float = field(default_factory=time.time)

    @property
    def kernel(self) -> Path:
        return self.directory / "vmlinuz"

    @property
    def vmlinux(self) -> Path:
        """The unpacked kernel (absent from images built before it was kept: see
        ``ImageStore.vmlinux``)."""
        return self.directory / "vmlinux"

    @property
    def initrd(self) -> Path:
        return self.directory / "initrd.img"

    @property
    def rootfs_raw(self) -> Path:
        return self.directory / "rootfs.ext4"

    @property
    def rootfs(self) -> Path:
        """The qcow2 base (read-only; machines write to their own overlays)."""
        return self.directory / "rootfs.qcow2"

    def size(self) -> int:
        """Bytes the image's files take on disk."""
        return sum(p.stat().st_blocks * 512 for p in self.directory.iterdir() if p.is_file())

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["directory"] = str(self.directory)
        return data


@dataclass(frozen=True, slots=True)
class ImageInputs:
    """Everything an image is made from; its digest names the image."""

    packages: tuple[str, ...]
    kernel_package: str
    kernel_version: str
    disk_gib: int = DISK_GIB
    #: The agent's source, read once (it may change on disk while a build runs).
    agent: bytes = field(default_factory=lambda: AGENT_PATH.read_bytes(), repr=False)

    def rootfs_key(self) -> str:
        return _digest("rootfs", BUILD_VERSION, SUITE, *self.packages, str(self.disk_gib))

    def digest(self) -> str:
        return _digest(
            self.rootfs_key(),
            self.kernel_package,
            self.kernel_version,
            self.agent.decode("utf-8", "replace"),
            INIT,
            START,
            *MODULES,
            *BASE_CMDLINE,
        )


def _digest(*parts: str) -> str:
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(part.encode())
        hasher.update(b"\0")
    return hasher.hexdigest()[:24]


def images_dir() -> Path:
    explicit = os.environ.get(ENV_IMAGES)
    return Path(explicit).absolute() if explicit else vmrunner_home() / "images"


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise ConfigError(
            f"invalid image name {name!r}: expected lower-case letters, digits, '.', '_' or '-'"
        )
    return name


def check_packages(packages: Sequence[str]) -> tuple[str, ...]:
    for package in packages:
        if not _PACKAGE.match(package):
            raise ConfigError(f"invalid Debian package name {package!r}")
    return tuple(sorted(set(BASE_PACKAGES) | set(packages)))


class ImageStore:
    """The images on this host: build (or reuse), find by name, list, remove."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else images_dir()

    # Reading.

    def vmlinux(self, image: Image) -> Path:
        """The image's unpacked ELF kernel; for an image built without one, unpacked once
        and kept in its directory."""
        if image.vmlinux.is_file():
            return image.vmlinux
        return vmlinux(image.kernel, image.directory)

    def get(self, name: str) -> Image:
        """The image a name points to; ``ImageError`` when there is none."""
        try:
            digest = (self.root / "names" / check_name(name)).read_text(encoding="utf-8").strip()
            return self._load(self.root / digest)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise ImageError(
                f"no image named {name!r} in {self.root}: build it with `vmrunner image build"
                f"{'' if name == DEFAULT_NAME else ' --name ' + name}`"
            ) from exc

    def list(self) -> list[Image]:
        images = []
        for entry in sorted(self.root.glob("*/image.json")):
            with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
                images.append(self._load(entry.parent))
        return images

    def names(self) -> dict[str, str]:
        """Image name -> digest."""
        found = {}
        for entry in sorted((self.root / "names").glob("*")):
            with contextlib.suppress(OSError):
                found[entry.name] = entry.read_text(encoding="utf-8").strip()
        return found

    def _load(self, directory: Path) -> Image:
        data = json.loads((directory / "image.json").read_text(encoding="utf-8"))
        return Image(
            name=data["name"],
            digest=data["digest"],
            directory=directory,
            kernel_version=data["kernel_version"],
            packages=tuple(data["packages"]),
            cmdline=tuple(data["cmdline"]),
            created_at=float(data["created_at"]),
        )

    # Removing.

    def remove(self, name: str) -> Image:
        """Forget a name; the image's files go once no name points to them."""
        image = self.get(name)
        with self._locked():
            (self.root / "names" / name).unlink(missing_ok=True)
            if image.digest not in self.names().values():
                shutil.rmtree(image.directory, ignore_errors=True)
                for ready in self.root.glob(f"ready/{image.digest}-*"):
                    shutil.rmtree(ready, ignore_errors=True)
            self._collect_layers()
        return image

    def _collect_unnamed(self) -> None:
        """Remove images no name points to any more (a name was rebuilt with new inputs),
        once they are old enough that no machine still boots from them."""
        named = set(self.names().values())
        for image in self.list():
            if image.digest not in named and time.time() - image.created_at > UNNAMED_GRACE:
                shutil.rmtree(image.directory, ignore_errors=True)
                for ready in self.root.glob(f"ready/{image.digest}-*"):
                    shutil.rmtree(ready, ignore_errors=True)
        self._collect_layers()

    def _collect_layers(self) -> None:
        used = {image.rootfs.stat().st_ino for image in self.list() if image.rootfs.exists()}
        for layer in self.root.glob("rootfs/*"):
            qcow2 = layer / "rootfs.qcow2"
            if not qcow2.exists() or qcow2.stat().st_ino not in used:
                shutil.rmtree(layer, ignore_errors=True)

    # Building.

    def build(
        self,
        name: str = DEFAULT_NAME,
        packages: Sequence[str] = (),
        *,
        disk_gib: int = DISK_GIB,
        log: io.TextIOBase | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> Image:
        """The image of these inputs, built unless an identical one exists; named ``name``.

        Blocking (minutes on a first build); raises ``ImageError`` with the failing tool's
        message. ``progress`` is told each stage as it starts (for a progress display).
        """
        token = _STAGE.set(progress)
        try:
            return self._build(name, packages, disk_gib, log)
        finally:
            _STAGE.reset(token)

    def _build(
        self, name: str, packages: Sequence[str], disk_gib: int, log: io.TextIOBase | None
    ) -> Image:
        check_name(name)
        wanted = check_packages(packages)
        self.root.mkdir(parents=True, exist_ok=True)
        with self._locked():
            kernel_package, kernel_version = _kernel_package()
            inputs = ImageInputs(wanted, kernel_package, kernel_version, disk_gib)
            digest = inputs.digest()
            directory = self.root / digest
            if not (directory / "image.json").exists():
                self._assemble(name, inputs, directory, log)
            names = self.root / "names"
            names.mkdir(exist_ok=True)
            _write_atomic(names / name, digest + "\n")
            self._collect_unnamed()
            return self._load(directory)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _assemble(
        self, name: str, inputs: ImageInputs, directory: Path, log: io.TextIOBase | None
    ) -> None:
        kernel_dir = self._kernel(inputs, log)
        rootfs_dir = self._rootfs(inputs, log)
        staging = Path(tempfile.mkdtemp(prefix=".image-", dir=self.root))
        try:
            shutil.copyfile(next(kernel_dir.glob("boot/vmlinuz-*")), staging / "vmlinuz")
            os.link(vmlinux(staging / "vmlinuz", kernel_dir), staging / "vmlinux")
            (staging / "initrd.img").write_bytes(initramfs(kernel_dir, inputs.agent))
            for file in ("rootfs.ext4", "rootfs.qcow2"):
                os.link(rootfs_dir / file, staging / file)
            image = Image(
                name=name,
                digest=directory.name,
                directory=directory,
                kernel_version=inputs.kernel_version,
                packages=inputs.packages,
            )
            _write_atomic(staging / "image.json", json.dumps(image.to_json(), indent=2) + "\n")
            staging.chmod(0o755)
            staging.rename(directory)
        except OSError as exc:
            raise ImageError(f"cannot assemble image {name}: {exc}") from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _kernel(self, inputs: ImageInputs, log: io.TextIOBase | None) -> Path:
        target = self.root / "kernels" / f"{inputs.kernel_package}_{inputs.kernel_version}"
        if target.is_dir():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".kernel-", dir=target.parent))
        try:
            _run(
                ["apt-get", "download", f"{inputs.kernel_package}={inputs.kernel_version}"],
                cwd=staging,
                log=log,
                what="download the kernel package",
            )
            (deb,) = staging.glob("*.deb")
            _run(["dpkg-deb", "-x", str(deb), str(staging / "tree")], log=log, what="unpack it")
            (staging / "tree").rename(target)
        except ValueError as exc:
            raise ImageError(f"apt-get download gave no single .deb in {staging}") from exc
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target

    def _rootfs(self, inputs: ImageInputs, log: io.TextIOBase | None) -> Path:
        target = self.root / "rootfs" / inputs.rootfs_key()
        if (target / "rootfs.qcow2").exists():
            return target
        if os.geteuid() != 0:
            raise ImageError("building a root file system needs root (mmdebstrap, mkfs.ext4 -d)")
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".rootfs-", dir=target.parent))
        try:
            tree = staging / "tree"
            _run(
                [
                    "mmdebstrap",
                    "--mode=root",
                    "--variant=apt",
                    "--quiet",
                    f"--include={','.join(inputs.packages)}",
                    f"--customize-hook={CUSTOMIZE}",
                    SUITE,
                    str(tree),
                ],
                log=log,
                what="make the root file system (mmdebstrap)",
            )
            raw = staging / "rootfs.ext4"
            _run(
                [
                    "mkfs.ext4", "-q", "-F", "-L", "vmrunner-root", "-d", str(tree),
                    "-E", "root_owner=0:0", str(raw), f"{inputs.disk_gib}G",
                ],
                log=log,
                what="make the ext4 file system",
            )  # fmt: skip
            _run(
                ["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw),
                 str(staging / "rootfs.qcow2")],
                log=log,
                what="convert it to qcow2",
            )  # fmt: skip
            shutil.rmtree(tree)
            for file in ("rootfs.ext4", "rootfs.qcow2"):
                (staging / file).chmod(0o444)
            staging.chmod(0o755)
            staging.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return target


def _kernel_package() -> tuple[str, str]:
    """The versioned kernel package the flavour depends on now, and its version (one apt
    query: the flavour's metapackage pins it exactly)."""
    match = _kernel_dependency()
    if match is None and os.geteuid() == 0:  # no package lists yet (a fresh container)
        _run(["apt-get", "update", "-qq"], what="update the package lists")
        match = _kernel_dependency()
    if match is None:
        raise ImageError(
            f"apt knows no {KERNEL_PACKAGE}: run `apt-get update` (Debian's mirror is needed)"
        )
    return match.group(1), match.group(2)


def _kernel_dependency() -> re.Match[str] | None:
    try:
        shown = _run(
            ["apt-cache", "show", "--no-all-versions", KERNEL_PACKAGE],
            what="resolve the kernel package",
        )
    except ImageError:
        return None
    return re.search(r"^Depends: (linux-image-[^\s,]+) \(= ([^)\s]+)\)", shown, re.MULTILINE)


def _run(
    argv: Sequence[str],
    *,
    what: str,
    cwd: Path | None = None,
    log: io.TextIOBase | None = None,
) -> str:
    stage = _STAGE.get()
    if stage is not None:
        stage(what)
    try:
        done = subprocess.run(
            list(argv),
            cwd=cwd,
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"},
        )
    except OSError as exc:
        raise ImageError(
            f"cannot {what}: {argv[0]} is missing ({exc.strerror}); run scripts/bootstrap --vm"
        ) from exc
    if log is not None:
        log.write(done.stdout + done.stderr)
    if done.returncode != 0:
        why = (done.stderr or done.stdout).strip()[-1500:]
        raise ImageError(f"cannot {what}: {argv[0]} exited with {done.returncode}: {why}")
    return done.stdout


def _write_atomic(path: Path, text: str) -> None:
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(text, encoding="utf-8")
    os.replace(staging, path)


# The initramfs.


def module_closure(modules_dir: Path, wanted: Sequence[str]) -> list[Path]:
    """The module files for ``wanted`` and their dependencies, dependencies first.

    Debian's package ships no ``modules.dep`` (depmod makes it on install), so the
    dependencies come from each module's own ``.modinfo`` section.
    """
    by_name = {
        path.name.removesuffix(".ko").replace("-", "_"): path for path in modules_dir.rglob("*.ko")
    }
    order: list[Path] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        path = by_name.get(name)
        if path is None:
            return  # built into the kernel
        match = re.search(rb"(?:^|\0)depends=([^\0]*)\0", path.read_bytes())
        for dependency in match.group(1).decode().split(",") if match else []:
            if dependency:
                visit(dependency.replace("-", "_"))
        order.append(path)

    for name in wanted:
        visit(name)
    return order


def initramfs(kernel_dir: Path, agent: bytes) -> bytes:
    """The gzip'd newc cpio archive: busybox, modules, agent and init (deterministic)."""
    busybox = shutil.which("busybox", path="/bin:/usr/bin")
    if busybox is None or b"statically linked" not in _file_kind(busybox):
        raise ImageError("no static busybox on this host: apt-get install busybox-static")
    modules = module_closure(next(kernel_dir.glob("lib/modules/*/kernel")), MODULES)
    archive = _Cpio()
    for directory in ("bin", "dev", "proc", "sys", "newroot", "lib", "lib/modules", "vmrunner"):
        archive.add(directory, stat.S_IFDIR | 0o755)
    archive.add("bin/busybox", stat.S_IFREG | 0o755, Path(busybox).read_bytes())
    archive.add("init", stat.S_IFREG | 0o755, INIT.encode())
    names = []
    for module in modules:
        archive.add(f"lib/modules/{module.name}", stat.S_IFREG | 0o644, module.read_bytes())
        names.append(module.name)
    archive.add("lib/modules/load", stat.S_IFREG | 0o644, ("\n".join(names) + "\n").encode())
    archive.add("vmrunner/agent.py", stat.S_IFREG | 0o644, agent)
    archive.add("vmrunner/start.sh", stat.S_IFREG | 0o755, START.encode())
    return gzip.compress(archive.finish(), compresslevel=6, mtime=0)


def _file_kind(path: str) -> bytes:
    # A static ELF has no PT_INTERP program header; ``file`` may be absent, so look ourselves.
    data = Path(path).read_bytes()
    return b"dynamically linked" if b"/lib64/ld-linux" in data[:4096] else b"statically linked"


class _Cpio:
    """A newc ("070701") archive, as the kernel unpacks it."""

    def __init__(self) -> None:
        self._out = io.BytesIO()
        self._ino = 1

    def add(self, name: str, mode: int, data: bytes = b"") -> None:
        self._entry(name, mode, data)

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0, b"")
        return self._out.getvalue()

    def _entry(self, name: str, mode: int, data: bytes) -> None:
        encoded = name.encode() + b"\0"
        fields = (self._ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
        self._ino += 1
        self._out.write(b"070701" + b"".join(b"%08X" % value for value in fields))
        self._out.write(encoded)
        self._pad()
        self._out.write(data)
        self._pad()

    def _pad(self) -> None:
        self._out.write(b"\0" * (-self._out.tell() % 4))
