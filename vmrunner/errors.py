"""Every exception vmrunner raises, in one place.

Callers never see ``OSError``, ``subprocess`` or YAML library errors from vmrunner: foreign
errors are translated once, at the boundary where they happen, into the most specific class
below and raised ``from`` the original.

    VmrunnerError
    ├── WorkflowError              a workflow file is invalid (carries every Diagnostic found)
    │   ├── MatrixError            a strategy.matrix is empty or malformed
    │   ├── PlanError              `needs` names an unknown job or forms a cycle
    │   └── FilterError            a trigger filter pattern or cron expression is invalid
    ├── ExpressionError            a ${{ }} expression failed (kind: lexing/parsing/evaluation)
    │   ├── ExpressionLexingError
    │   ├── ExpressionParsingError
    │   └── ExpressionEvaluationError
    ├── MachineError               a machine or its provider failed
    │   ├── AllocationError        a machine could not be started or taken from the pool
    │   ├── AgentError             the guest agent broke the protocol or went away
    │   ├── ExecError              a command could not be started in the machine
    │   ├── TransferError          put/get of files failed
    │   │   └── ArchiveRejected    a snapshot's tar refused: unsafe, broken or too large
    │   ├── SnapshotError          a snapshot or restore failed
    │   │   └── SnapshotUnsupported   the provider has no snapshot capability
    │   ├── ForwardError           a port forward into a machine could not be opened
    │   │   └── ForwardUnsupported    the provider has no port-forward capability
    │   ├── ReleaseError           a machine could not be fully released
    │   └── ImageError             a guest or container image could not be built, pulled or booted
    ├── SessionError               the session manager refused an operation
    │   ├── CapacityError          no free slot (fail-fast), or the wait for one timed out
    │   ├── SessionNotFound        no such session (also: released already)
    │   └── InvalidTransition      a session state change that the lifecycle does not allow
    ├── StoreError                 the state database could not be read or written
    │   ├── StoreDiskError         ... because its disk is full or failing (ENOSPC, EIO)
    │   └── RunNotFound            no kept run has this id (or the id prefix is ambiguous)
    ├── ConcurrencyCancelled       a pending job or run was pushed out of its concurrency group
    ├── AccessDenied               a REST API call without a valid token (401) or scope (403)
    ├── RequestRejected            a webhook refused: unsigned, too large or slow, bad JSON
    ├── ServiceError               the artifact or cache service refused a request (an HTTP status)
    │   ├── TokenError             a missing, forged, expired or foreign runtime token (401/403)
    │   └── ArtifactNotFound       no such run or artifact (404)
    └── ConfigError                runner configuration or command-line input is invalid
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One problem found in one file, at a 1-based line and column (0 when unknown);
    ``severity`` ``warning`` for what GitHub accepts but is most likely a mistake."""

    file: str
    line: int
    column: int
    message: str
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        where = self.file
        if self.line:
            where += f":{self.line}"
            if self.column:
                where += f":{self.column}"
        warning = "warning: " if self.severity == "warning" else ""
        return f"{where}: {warning}{self.message}"


class VmrunnerError(Exception):
    """Base class of every error vmrunner raises on purpose."""


class WorkflowError(VmrunnerError):
    """A workflow is invalid; ``diagnostics`` lists every problem found, in file order."""

    def __init__(self, diagnostics: list[Diagnostic] | tuple[Diagnostic, ...] | Diagnostic) -> None:
        if isinstance(diagnostics, Diagnostic):
            diagnostics = (diagnostics,)
        self.diagnostics: tuple[Diagnostic, ...] = tuple(diagnostics)
        super().__init__("\n".join(str(d) for d in self.diagnostics))


class MatrixError(WorkflowError):
    """A strategy.matrix is empty, malformed, or expands to nothing."""


class PlanError(WorkflowError):
    """`needs` names an unknown job or forms a cycle."""


class FilterError(WorkflowError):
    """A branch/tag/path filter pattern or a cron schedule is invalid."""


ExpressionErrorKind = Literal["lexing", "parsing", "evaluation"]


class ExpressionError(VmrunnerError):
    """A ${{ }} expression failed; ``position`` is the 0-based offset within ``expression``.

    ``offset`` is where ``expression`` starts in the string it was embedded in (the text of a
    ``${{ }}`` template), 0 when it stood alone; the parser of templates sets it.
    """

    kind: ExpressionErrorKind = "evaluation"
    offset: int = 0

    def __init__(self, message: str, expression: str = "", position: int = 0) -> None:
        self.message = message
        self.expression = expression
        self.position = position
        super().__init__(
            f"{message}. Located at position {position + 1} within expression: {expression}"
        )


class ExpressionLexingError(ExpressionError):
    """The expression text contains a token the language does not have."""

    kind: ExpressionErrorKind = "lexing"


class ExpressionParsingError(ExpressionError):
    """The tokens do not form a valid expression."""

    kind: ExpressionErrorKind = "parsing"


class ExpressionEvaluationError(ExpressionError):
    """The expression is well formed but could not be evaluated."""

    kind: ExpressionErrorKind = "evaluation"


class MachineError(VmrunnerError):
    """A machine or its provider failed."""


class AllocationError(MachineError):
    """A machine could not be started or taken from the warm pool."""


class AgentError(MachineError):
    """The guest agent broke the protocol, replied with an error, or went away."""


class ExecError(MachineError):
    """A command could not be started in the machine."""


class TransferError(MachineError):
    """Copying files into or out of a machine failed."""


class ArchiveRejected(TransferError):
    """A snapshot's tar was refused before it was used: an entry leaving its folder, a link
    out, a device, a broken tar (``status`` 422), or more bytes than allowed (413)."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


class SnapshotError(MachineError):
    """Taking or restoring a snapshot failed."""


class SnapshotUnsupported(SnapshotError):
    """The machine's provider does not declare the snapshot capability."""


class ForwardError(MachineError):
    """A port forward could not be opened: the port is taken, or the agent refused it."""


class ForwardUnsupported(ForwardError):
    """The machine's provider does not declare the port-forward capability."""


class ImageError(MachineError):
    """A guest image could not be built (a tool or the package mirror failed), found or booted;
    or a container image could not be pulled, verified or unpacked."""


class ReleaseError(MachineError):
    """A machine could not be fully released; what is left is named in the message."""


class SessionError(VmrunnerError):
    """The session manager refused an operation."""


class CapacityError(SessionError):
    """The concurrency limit is reached (fail-fast), or waiting for a slot timed out."""


class SessionNotFound(SessionError):
    """No session with this id exists (it may have been released already)."""


class InvalidTransition(SessionError):
    """A session state change that the documented lifecycle does not allow."""


class StoreError(VmrunnerError):
    """The state database could not be read or written."""


class StoreDiskError(StoreError):
    """The state database's disk is full or failing (ENOSPC, EDQUOT, EIO).

    Told apart because it is not a bug and passes: callers keep what they could not write and
    try again later, and the command line names the full disk instead of the statement.
    """


class RunNotFound(StoreError):
    """No kept run has this id, or more than one starts with this id prefix."""


class ConcurrencyCancelled(VmrunnerError):
    """A job or run waiting for its concurrency group was replaced by a newer one, or the group's
    queue is full."""


class AccessDenied(VmrunnerError):
    """A REST API request has no valid bearer token (``status`` 401), or its token's scope does
    not cover the route (403)."""

    def __init__(self, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.status = status


class RequestRejected(VmrunnerError):
    """A webhook delivery is refused before anything is recorded; ``status`` is the answer (400
    malformed, 401 unsigned or forged, 408 too slow, 413 too large)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class ConfigError(VmrunnerError):
    """Runner configuration or command-line input is invalid."""


class ServiceError(VmrunnerError):
    """The artifact or cache service refused a request; ``status`` is the HTTP status it answers
    with (4xx: the caller's fault, said in the message)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class TokenError(ServiceError):
    """The runtime token is missing, forged, expired, or does not grant what is asked."""

    def __init__(self, message: str, status: int = 401) -> None:
        super().__init__(message, status)


class ArtifactNotFound(ServiceError):
    """No kept run, or no artifact of that name in the run."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 404)
