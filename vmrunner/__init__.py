"""vmrunner: run GitHub Actions workflows with one isolated machine (sandbox or microVM) per job.

The public API is re-exported here; everything else is internal.
"""

from __future__ import annotations

from vmrunner.config import vmrunner_home
from vmrunner.errors import (
    AgentError,
    AllocationError,
    CapacityError,
    ConfigError,
    Diagnostic,
    ExecError,
    ExpressionError,
    ExpressionEvaluationError,
    ExpressionLexingError,
    ExpressionParsingError,
    FilterError,
    InvalidTransition,
    MachineError,
    MatrixError,
    PlanError,
    ReleaseError,
    SessionError,
    SessionNotFound,
    SnapshotError,
    SnapshotUnsupported,
    StoreError,
    TransferError,
    VmrunnerError,
    WorkflowError,
)

__version__ = "0.1.0"

__all__ = [
    "AgentError",
    "AllocationError",
    "CapacityError",
    "ConfigError",
    "Diagnostic",
    "ExecError",
    "ExpressionError",
    "ExpressionEvaluationError",
    "ExpressionLexingError",
    "ExpressionParsingError",
    "FilterError",
    "InvalidTransition",
    "MachineError",
    "MatrixError",
    "PlanError",
    "ReleaseError",
    "SessionError",
    "SessionNotFound",
    "SnapshotError",
    "SnapshotUnsupported",
    "StoreError",
    "TransferError",
    "VmrunnerError",
    "WorkflowError",
    "__version__",
    "vmrunner_home",
]
