"""Who a sandbox's processes are, on the host and inside: the user namespace of a machine.

A machine's processes must never be host root, whoever started vmrunner. So every sandbox runs
in a user namespace that vmrunner makes itself, before bubblewrap starts, with a map of 65,536
ids onto an unprivileged host range:

- as root: the range ``VMRUNNER_ID_RANGE`` (``START:COUNT``; by default 65,536 ids from
  1879048192, above the ranges ``useradd`` hands to users and systemd to its containers), and
  bubblewrap itself runs as the host id of the agent, so nothing of the machine is host root
  even for an instant;
- as another user: that user's subordinate range from ``/etc/subuid`` and ``/etc/subgid``,
  written by ``newuidmap``/``newgidmap`` (Debian's ``uidmap``), the agent being the user itself
  (as rootless podman does). Without a range or the tools, allocation refuses with the fix.

Inside, three ids matter: ``root`` (0, what ``sudo`` gives, without the capabilities that reach
other users' processes), ``runner`` (1001, as on GitHub's runners: every step runs as it) and
the agent (``AGENT_UID``), a user of its own, so a job can neither signal nor trace it. Kernel
checks on host objects (``/proc/sys``, devices, files of the host) see only unprivileged host
ids.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

from vmrunner.errors import AllocationError

#: The ids inside every sandbox.
ROOT_UID = 0
RUNNER_UID = 1001
RUNNER_GID = 1001
AGENT_UID = 999
AGENT_GID = 999
#: How many ids a machine's namespace maps.
ID_COUNT = 65536
DEFAULT_RANGE = (1_879_048_192, ID_COUNT)



@dataclass(frozen=True, slots=True)
class IdMap:
    """The host ids of a machine's namespace: inside id ``i`` is host ``start + i``, except the
    agent's, which is ``agent_host`` (the invoking user when not root)."""

    start: int
    count: int
    agent_host: int
    #: Whether vmrunner writes the maps itself (root) or through newuidmap/newgidmap.
    privileged: bool
    #: The agent's host group (the invoking user's when not root).
    agent_host_gid: int = -1

    def lines(self, groups: bool = False) -> list[tuple[int, int, int]]:
        """(inside, host, count) runs of the map; the agent's id is mapped on its own."""
        agent = self.agent_host_gid if groups and self.agent_host_gid >= 0 else self.agent_host
        return [
            (0, self.start, AGENT_UID),
            (AGENT_UID, agent, 1),
            (AGENT_UID + 1, self.start + AGENT_UID + 1, self.count - AGENT_UID - 1),
        ]

    def host_id(self, inside: int) -> int:
        return self.agent_host if inside == AGENT_UID else self.start + inside


def id_map() -> IdMap:
    """The map for machines started by this process, or ``AllocationError`` saying what to set
    up."""
    if os.geteuid() == 0:
        start, count = _configured_range()
        return IdMap(start, count, start + AGENT_UID, privileged=True)
    user = _user_name()
    uids = _subordinate("/etc/subuid", user, os.getuid())
    gids = _subordinate("/etc/subgid", user, os.getgid())
    missing = [tool for tool in ("newuidmap", "newgidmap") if shutil.which(tool) is None]
    if uids is None or gids is None or missing:
        raise AllocationError(
            f"the sandbox needs a range of {ID_COUNT} subordinate ids for {user} to run jobs as "
            "unprivileged users: "
            + ("apt-get install uidmap; " if missing else "")
            + (f"usermod --add-subuids N-M --add-subgids N-M {user} (M-N+1 >= {ID_COUNT}); "
               if uids is None or gids is None else "")
            + "or run vmrunner as root, or choose --provider qemu or --provider host"
        )
    if uids != gids:
        raise AllocationError(
            f"the subordinate uid and gid ranges of {user} differ ({uids[0]} and {gids[0]}):"
            " give it the same range in /etc/subuid and /etc/subgid"
        )
    return IdMap(uids[0], ID_COUNT, os.getuid(), privileged=False, agent_host_gid=os.getgid())


def _configured_range() -> tuple[int, int]:
    text = os.environ.get("VMRUNNER_ID_RANGE", "")
    if not text:
        return DEFAULT_RANGE
    try:
        start_text, _, count_text = text.partition(":")
        start, count = int(start_text), int(count_text or ID_COUNT)
    except ValueError:
        raise AllocationError(f"VMRUNNER_ID_RANGE={text!r}: expected START:COUNT") from None
    if start < 1000 or count < ID_COUNT:
        raise AllocationError(
            f"VMRUNNER_ID_RANGE={text!r}: the range must start at 1000 or above and hold at"
            f" least {ID_COUNT} ids"
        )
    return start, count


def _user_name() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def _subordinate(path: str, user: str, ident: int) -> tuple[int, int] | None:
    """The first range of at least ``ID_COUNT`` ids that ``path`` gives ``user``."""
    try:
        with open(path, encoding="utf-8") as file:
            lines = file.read().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.strip().split(":")
        if len(fields) != 3 or fields[0] not in (user, str(ident)):
            continue
        with contextlib.suppress(ValueError):
            start, count = int(fields[1]), int(fields[2])
            if count >= ID_COUNT:
                return start, count
    return None


def user_namespace(ids: IdMap) -> int:
    """A new user namespace mapped by ``ids``, as an open descriptor (for ``bwrap --userns``).

    A short-lived ``unshare --user cat`` creates it (as the agent's host id, so that bubblewrap,
    running as that id, owns it); the byte it echoes says the namespace exists, the maps are
    written, and the descriptor keeps the namespace once ``cat`` has gone.
    """
    unshare = shutil.which("unshare") or "/usr/bin/unshare"
    agent = ids.agent_host if ids.privileged else None
    try:
        child = subprocess.Popen(
            [unshare, "--user", "--", "cat"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/",
            user=agent, group=agent, extra_groups=[] if ids.privileged else None,
        )
    except OSError as exc:
        raise AllocationError(f"cannot start {unshare}: {exc.strerror}") from exc
    try:
        if child.stdin is None or child.stdout is None:
            raise AllocationError(f"cannot talk to {unshare}: its pipes are missing")
        child.stdin.write(b"u")
        child.stdin.flush()
        if child.stdout.read(1) != b"u":
            why = child.stderr.read().decode(errors="replace").strip() if child.stderr else ""
            raise AllocationError(f"cannot create a user namespace for the sandbox: {why}")
        _write_maps(child.pid, ids)
        return os.open(f"/proc/{child.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        child.kill()
        child.wait()
        for stream in (child.stdin, child.stdout, child.stderr):
            if stream is not None:
                stream.close()


def _write_maps(pid: int, ids: IdMap) -> None:
    if ids.privileged:
        try:
            for name, groups in (("uid_map", False), ("gid_map", True)):
                text = "".join(f"{a} {b} {c}\n" for a, b, c in ids.lines(groups))
                with open(f"/proc/{pid}/{name}", "w", encoding="ascii") as file:
                    file.write(text)
        except OSError as exc:
            raise AllocationError(
                f"cannot map the sandbox's user namespace: {exc.strerror}"
            ) from exc
        return
    for tool, groups in (("newuidmap", False), ("newgidmap", True)):
        args = [str(part) for run in ids.lines(groups) for part in run]
        done = subprocess.run(
            [tool, str(pid), *args], capture_output=True, text=True, check=False, timeout=10
        )
        if done.returncode != 0:
            raise AllocationError(f"{tool} refused the sandbox's id map: {done.stderr.strip()}")


def chown_tree(root: str, uid: int, gid: int) -> None:
    """Give ``root`` and everything below it to ``uid``:``gid`` (links themselves, not targets),
    keeping the set-id bits a change of owner clears."""
    for folder, dirs, files in os.walk(root):
        os.lchown(folder, uid, gid)
        links = [name for name in dirs if os.path.islink(os.path.join(folder, name))]
        for name in (*files, *links):  # the other directories are walked next
            path = os.path.join(folder, name)
            mode = os.lstat(path).st_mode
            os.lchown(path, uid, gid)
            if mode & (stat.S_ISUID | stat.S_ISGID) and not stat.S_ISLNK(mode):
                os.chmod(path, stat.S_IMODE(mode))


def passwd_lines() -> Iterator[str]:
    """The users a sandbox knows (its ``/etc/passwd``)."""
    yield "root:x:0:0:root:/root:/bin/bash"
    yield f"vmrunner-agent:x:{AGENT_UID}:{AGENT_GID}:vmrunner agent:/nonexistent:/usr/sbin/nologin"
    yield f"runner:x:{RUNNER_UID}:{RUNNER_GID}:runner:/home/runner:/bin/bash"
    yield "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin"


def group_lines() -> Iterator[str]:
    """The groups a sandbox knows (its ``/etc/group``)."""
    yield "root:x:0:"
    yield f"vmrunner-agent:x:{AGENT_GID}:"
    yield f"runner:x:{RUNNER_GID}:"
    yield "nogroup:x:65534:"
