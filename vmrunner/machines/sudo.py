"""The ``sudo`` of a sandbox: root inside the machine, asked of the agent, never host root.

Jobs expect passwordless ``sudo``, as on GitHub's runners. A sandbox has no set-uid programs
(its file systems are ``nosuid``, and the host's root is not even mapped in its user namespace),
so its ``sudo`` is this small program: it sends its command line, environment, working
directory and its three standard streams over a unix socket to the agent, which starts the
command as the machine's root (see ``Agent._as`` for what that root may do) and answers with the
exit status. If ``sudo`` is killed (a step's timeout kills its process group), the agent sees
the connection close and kills the command.

``SHIM`` is the program's text, formatted with the machine's python and socket path; it is run
by that python, so it needs nothing beyond the standard library.
"""

from __future__ import annotations

#: Where the agent listens inside a sandbox, and where the program is found (first on PATH).
SOCKET = "/run/vmrunner-sudo.sock"
PROGRAM = "/usr/local/sbin/sudo"

SHIM = """#!{python} -IS
import _socket, json, os, sys

def fail(message, code=1):
    os.write(2, ("sudo: " + message + "\\n").encode())
    sys.exit(code)

args = sys.argv[1:]
user = "root"
shell = False
while args and args[0].startswith("-") and args[0] != "-":
    arg = args.pop(0)
    if arg == "--":
        break
    if arg in ("-u", "--user"):
        user = args.pop(0) if args else fail("option -u needs a user")
    elif arg.startswith("-u"):
        user = arg[2:]
    elif arg.startswith("--user="):
        user = arg[7:]
    elif arg in ("-V", "--version"):
        print("Sudo version 1.9 (vmrunner: root inside this machine only)")
        sys.exit(0)
    elif arg in ("-v", "--validate", "-k", "-K", "--reset-timestamp", "--remove-timestamp"):
        sys.exit(0) if not args else None
    elif arg in ("-l", "--list"):
        print("User may run the following commands on this machine:\\n"
              "    (ALL : ALL) NOPASSWD: ALL")
        sys.exit(0)
    elif arg in ("-s", "--shell", "-i", "--login"):
        shell = True
    elif arg in ("-g", "--group", "-p", "--prompt", "-C", "--close-from", "-h", "--host", "-D",
                 "--chdir"):
        args.pop(0) if args else None
    elif arg.startswith(("--preserve-env", "--group=", "--prompt=", "--chdir=")):
        pass
    elif all(flag in "EHnSAPbBN" for flag in arg[1:]):
        pass
    else:
        fail("option " + arg + " is not supported here")
if user in ("0", "#0"):
    user = "root"
if user not in ("root", "runner", "1001", "#1001"):
    fail("unknown user " + user)
env = dict(os.environ)
while args and "=" in args[0] and not args[0].startswith("="):
    name, _, value = args.pop(0).partition("=")
    env[name] = value
if shell:
    login = env.get("SHELL") or "/bin/bash"
    args = [login, "-c", " ".join(args)] if args else [login]
if not args:
    fail("a command is needed (sudo COMMAND [ARGS...])")
env["SUDO_USER"] = "runner"
env["SUDO_UID"] = str(os.getuid())
env["SUDO_GID"] = str(os.getgid())
env["SUDO_COMMAND"] = " ".join(args)
if user == "root":
    env["USER"] = env["LOGNAME"] = "root"
request = json.dumps({{
    "argv": args, "env": env, "cwd": os.getcwd(),
    "user": "root" if user == "root" else "runner",
}})
conn = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET)
try:
    conn.connect("{socket}")
    conn.sendmsg([request.encode()],
                 [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, b"".join(
                     fd.to_bytes(4, sys.byteorder) for fd in (0, 1, 2)))])
    answer = conn.recv(65536)
except OSError as exc:
    fail("cannot reach the machine's agent: " + str(exc))
if not answer:
    fail("the machine's agent went away")
reply = json.loads(answer)
if "error" in reply:
    fail(reply["error"].removeprefix("sudo: "))
sys.exit(128 + reply["signal"] if reply.get("signal") else reply.get("code") or 0)
"""


def shim(python: str) -> bytes:
    """The sudo program for a machine whose agent runs ``python``."""
    return SHIM.format(python=python, socket=SOCKET).encode()
