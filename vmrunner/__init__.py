"""vmrunner: run GitHub Actions workflows with one isolated machine (sandbox or microVM) per job.

The public API is re-exported here; everything else is internal.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vmrunner.config import vmrunner_home
from vmrunner.errors import (
    AccessDenied,
    AgentError,
    AllocationError,
    ArchiveRejected,
    ArtifactNotFound,
    CapacityError,
    ConcurrencyCancelled,
    ConfigError,
    Diagnostic,
    ExecError,
    ExpressionError,
    ExpressionEvaluationError,
    ExpressionLexingError,
    ExpressionParsingError,
    FilterError,
    ForwardError,
    ForwardUnsupported,
    ImageError,
    InvalidTransition,
    MachineError,
    MatrixError,
    PlanError,
    ReleaseError,
    RequestRejected,
    RunNotFound,
    ServiceError,
    SessionError,
    SessionNotFound,
    SnapshotError,
    SnapshotUnsupported,
    StoreDiskError,
    StoreError,
    TokenError,
    TransferError,
    VmrunnerError,
    WorkflowError,
)

if TYPE_CHECKING:
    from vmrunner.learning.history import Learning, LearningSink
    from vmrunner.machines.base import ExecResult, Machine, MachineSpec, Provider
    from vmrunner.machines.firecracker import FirecrackerProvider
    from vmrunner.machines.host import HostProvider
    from vmrunner.machines.pool import PoolStatistics, WarmPool
    from vmrunner.machines.providers import get_provider
    from vmrunner.machines.remote import RemoteProvider
    from vmrunner.machines.sandbox import SandboxProvider
    from vmrunner.machines.testing import CountingProvider
    from vmrunner.reports.insights import Insights, Lesson, Suggestion
    from vmrunner.reports.results import JobResult, ResultCollector, RunResult, StepResult
    from vmrunner.reports.storage import RunHistory, StoreSink
    from vmrunner.reports.summary import render_summary
    from vmrunner.runner.options import RunOptions
    from vmrunner.runner.run import JobReport, RunOutcome, run_workflow
    from vmrunner.server.app import create_app
    from vmrunner.server.checks import CheckSink
    from vmrunner.server.config import RepositoryConfig, ServerConfig
    from vmrunner.server.dashboard import local_dashboard
    from vmrunner.server.github import GitHubClient
    from vmrunner.server.machines_api import MachineServiceConfig, create_machines_app
    from vmrunner.server.service import Service
    from vmrunner.server.testing import FakeGitHub
    from vmrunner.server.tokens import TokenStore
    from vmrunner.sessions import Session, SessionManager, SessionState, SessionStats
    from vmrunner.store import Store
    from vmrunner.workflow.loader import load_workflow, load_workflow_text, load_workflows
    from vmrunner.workflow.models import Job, Step, Workflow
    from vmrunner.workflow.planner import Plan, plan

__version__ = "0.1.0"

#: Public names imported on first use, so that ``import vmrunner`` (and ``vmrunner --help``)
#: stays fast.
_LAZY: dict[str, str] = {
    "ExecResult": "vmrunner.machines.base",
    "FirecrackerProvider": "vmrunner.machines.firecracker",
    "HostProvider": "vmrunner.machines.host",
    "Machine": "vmrunner.machines.base",
    "MachineSpec": "vmrunner.machines.base",
    "Provider": "vmrunner.machines.base",
    "SandboxProvider": "vmrunner.machines.sandbox",
    "RemoteProvider": "vmrunner.machines.remote",
    "CountingProvider": "vmrunner.machines.testing",
    "PoolStatistics": "vmrunner.machines.pool",
    "WarmPool": "vmrunner.machines.pool",
    "Session": "vmrunner.sessions",
    "SessionManager": "vmrunner.sessions",
    "SessionState": "vmrunner.sessions",
    "SessionStats": "vmrunner.sessions",
    "Store": "vmrunner.store",
    "JobResult": "vmrunner.reports.results",
    "ResultCollector": "vmrunner.reports.results",
    "RunResult": "vmrunner.reports.results",
    "StepResult": "vmrunner.reports.results",
    "RunHistory": "vmrunner.reports.storage",
    "RunOptions": "vmrunner.runner.options",
    "RunOutcome": "vmrunner.runner.run",
    "JobReport": "vmrunner.runner.run",
    "run_workflow": "vmrunner.runner.run",
    "StoreSink": "vmrunner.reports.storage",
    "render_summary": "vmrunner.reports.summary",
    "Insights": "vmrunner.reports.insights",
    "Lesson": "vmrunner.reports.insights",
    "Suggestion": "vmrunner.reports.insights",
    "Learning": "vmrunner.learning.history",
    "LearningSink": "vmrunner.learning.history",
    "get_provider": "vmrunner.machines.providers",
    "Job": "vmrunner.workflow.models",
    "Plan": "vmrunner.workflow.planner",
    "Step": "vmrunner.workflow.models",
    "Workflow": "vmrunner.workflow.models",
    "load_workflow": "vmrunner.workflow.loader",
    "load_workflow_text": "vmrunner.workflow.loader",
    "load_workflows": "vmrunner.workflow.loader",
    "plan": "vmrunner.workflow.planner",
    "create_app": "vmrunner.server.app",
    "CheckSink": "vmrunner.server.checks",
    "local_dashboard": "vmrunner.server.dashboard",
    "RepositoryConfig": "vmrunner.server.config",
    "ServerConfig": "vmrunner.server.config",
    "GitHubClient": "vmrunner.server.github",
    "MachineServiceConfig": "vmrunner.server.machines_api",
    "create_machines_app": "vmrunner.server.machines_api",
    "Service": "vmrunner.server.service",
    "FakeGitHub": "vmrunner.server.testing",
    "TokenStore": "vmrunner.server.tokens",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'vmrunner' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value

__all__ = [
    "AccessDenied",
    "AgentError",
    "AllocationError",
    "ArchiveRejected",
    "ArtifactNotFound",
    "CapacityError",
    "CheckSink",
    "ConcurrencyCancelled",
    "ConfigError",
    "CountingProvider",
    "Diagnostic",
    "ExecError",
    "ExecResult",
    "ExpressionError",
    "ExpressionEvaluationError",
    "ExpressionLexingError",
    "ExpressionParsingError",
    "FakeGitHub",
    "FilterError",
    "FirecrackerProvider",
    "ForwardError",
    "ForwardUnsupported",
    "GitHubClient",
    "HostProvider",
    "ImageError",
    "Insights",
    "InvalidTransition",
    "Job",
    "JobReport",
    "JobResult",
    "Learning",
    "LearningSink",
    "Lesson",
    "Machine",
    "MachineError",
    "MachineServiceConfig",
    "MachineSpec",
    "MatrixError",
    "Plan",
    "PlanError",
    "PoolStatistics",
    "Provider",
    "ReleaseError",
    "RemoteProvider",
    "RepositoryConfig",
    "RequestRejected",
    "ResultCollector",
    "RunHistory",
    "RunNotFound",
    "RunOptions",
    "RunOutcome",
    "RunResult",
    "SandboxProvider",
    "ServerConfig",
    "Service",
    "ServiceError",
    "Session",
    "SessionError",
    "SessionManager",
    "SessionNotFound",
    "SessionState",
    "SessionStats",
    "SnapshotError",
    "SnapshotUnsupported",
    "Step",
    "StepResult",
    "Store",
    "StoreDiskError",
    "StoreError",
    "StoreSink",
    "Suggestion",
    "TokenError",
    "TokenStore",
    "TransferError",
    "VmrunnerError",
    "WarmPool",
    "Workflow",
    "WorkflowError",
    "__version__",
    "create_app",
    "create_machines_app",
    "get_provider",
    "load_workflow",
    "load_workflow_text",
    "load_workflows",
    "local_dashboard",
    "plan",
    "render_summary",
    "run_workflow",
    "vmrunner_home",
]
