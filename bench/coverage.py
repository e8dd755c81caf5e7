"""``python -m bench coverage DIR [--json]``: how much of real-world GitHub Actions vmrunner can
run, measured on a folder of repositories. Nothing is started and nothing is fetched.

``DIR`` holds one folder per repository (``owner+repo``), each with ``.github/workflows/*.yml``
and whatever ``action.yml`` files it has (its ``.github/actions/``, or a whole action
repository); a folder without workflows only serves to resolve remote actions and calls.

For every workflow file: does the loader accept it (``load_workflow``, and the job graph of
``plan``); the first diagnostic of each rejected file is listed. For every job (a job
definition: a matrix job counts once): can vmrunner run it, else every reason, counted by kind:

- the engine's own refusals (``vmrunner.actions.blockers.job_blockers``): ``container:``,
  ``services:``, ``docker://`` steps and Docker actions, also inside the
  composite actions found in ``DIR`` (the engine meets those only when the step runs);
- a Windows or macOS runner for one of the job's known matrix combinations (``run -n``'s check,
  ``vmrunner.cli.dry_run.other_system``, with no ``--machine-type`` mapping);
- a shell the engine refuses on Linux (``resolve_shell``: ``pwsh``, ``powershell``, ``cmd``),
  for steps without ``if:`` only (an ``if:`` usually keeps such a step to Windows);
- a job calling a reusable workflow found in ``DIR`` has the blockers of the jobs it calls;
- the jobs of a rejected file (counted from its YAML) are blocked by ``workflow file rejected``.

A remote action is looked up in ``DIR`` (``owner+repo/path/action.yml``, names compared without
case), else in ``KNOWN_DOCKER``; ``BUILT_IN`` actions run; an action found in none is of unknown
kind and taken to run (most are JavaScript or composite), and so is a called workflow of a
repository not in ``DIR``; both are counted apart (``--unknown-blocks`` counts them as a
blocker instead).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vmrunner.actions.blockers import Blocker, Resolve, job_blockers, walk_steps
from vmrunner.actions.sources import Action, host_local_action, split_remote
from vmrunner.cli.dry_run import other_system
from vmrunner.errors import ConfigError, PlanError, WorkflowError
from vmrunner.machines.providers import provider_containers
from vmrunner.workflow.calls import SELF, parse_target
from vmrunner.workflow.loader import load_workflow, workflow_files
from vmrunner.workflow.models import Workflow
from vmrunner.workflow.planner import Plan, plan
from vmrunner.workflow.shells import resolve_shell
from vmrunner.workflow.yaml import load_document

#: The provider named in the reasons (the default one).
PROVIDER = "sandbox"
#: Docker actions (``runs.using: docker``, checked in their ``action.yml``), for corpora that do
#: not hold them: lower-case ``owner/repo[/path]``.
KNOWN_DOCKER = frozenset(
    {"pypa/gh-action-pypi-publish", "ossf/scorecard-action", "embarkstudios/cargo-deny-action"}
)
#: Actions vmrunner runs itself (``actions/checkout``) or serves (artifacts, cache): known to run.
BUILT_IN = frozenset(
    {
        "actions/checkout", "actions/upload-artifact", "actions/download-artifact",
        "actions/cache", "actions/cache/restore", "actions/cache/save",
    }
)
REJECTED = "workflow file rejected"
SHELL = "PowerShell or cmd shell"
UNKNOWN = "remote action or workflow not in DIR"
#: Levels of reusable workflows followed (GitHub's limit).
MAX_LEVELS = 10


@dataclass(slots=True)
class JobReport:
    file: str
    job: str
    #: (kind, reason) of every blocker, in the order found.
    blockers: list[tuple[str, str]]
    #: Remote actions and called workflows (without their ref) not found in ``DIR`` (nor, for
    #: actions, in ``KNOWN_DOCKER`` or ``BUILT_IN``).
    unresolved: list[str] = field(default_factory=list)

    @property
    def kinds(self) -> list[str]:
        return list(dict.fromkeys(kind for kind, _ in self.blockers))


@dataclass(slots=True)
class FileReport:
    file: str
    error: str
    jobs: list[JobReport]


class Corpus:
    """The repositories of ``DIR``, with what was read from them kept for the next lookup."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.folders = {p.name.lower(): p for p in sorted(root.iterdir()) if p.is_dir()}
        self.workflows: dict[str, Workflow | None] = {}

    def folder(self, owner: str, repo: str) -> Path | None:
        return self.folders.get(f"{owner}+{repo}".lower())

    def resolver(self, repo_root: Path, unresolved: set[str]) -> Resolve:
        """Finds the actions a step of ``repo_root`` uses; adds the unknown ones to
        ``unresolved``."""

        def resolve(uses: str) -> Action | None:
            if uses.startswith(("./", SELF)):
                return host_local_action(str(repo_root), "./" + uses.removeprefix(SELF))
            parts = split_remote(uses)
            if parts is None:
                return None
            owner, repo, subpath, _ = parts
            if f"{owner}/{repo}{subpath}".lower() in BUILT_IN:
                return None
            folder = self.folder(owner, repo)
            action = host_local_action(str(folder), "." + subpath) if folder else None
            if action is None and f"{owner}/{repo}{subpath}".lower() in KNOWN_DOCKER:
                action = Action(uses, "", "docker")
            if action is None:
                unresolved.add(uses.partition("@")[0])
            return action

        return resolve

    def called(self, path: Path) -> Workflow | None:
        key = str(path)
        if key not in self.workflows:
            try:
                self.workflows[key] = load_workflow(path) if path.is_file() else None
            except WorkflowError:
                self.workflows[key] = None
        return self.workflows[key]


def measure(root: Path) -> list[FileReport]:
    """Every workflow file of every repository folder of ``root``, judged."""
    corpus = Corpus(root)
    reports: list[FileReport] = []
    for folder in corpus.folders.values():
        workflows = folder / ".github" / "workflows"
        if workflows.is_dir():
            reports.extend(judge_file(corpus, Path(f)) for f in workflow_files(workflows))
    return reports


def judge_file(corpus: Corpus, path: Path) -> FileReport:
    name = str(path.relative_to(corpus.root))
    try:
        workflow = load_workflow(path)
        graph = plan(workflow)
    except (WorkflowError, PlanError) as exc:
        first = exc.diagnostics[0] if exc.diagnostics else None
        error = str(first).replace(str(corpus.root) + os.sep, "") if first else str(exc)
        jobs = [JobReport(name, j, [(REJECTED, error)]) for j in _raw_jobs(path)]
        return FileReport(name, error, jobs)
    repo_root = path.parents[2]
    jobs = []
    for job_id in workflow.jobs:
        unresolved: set[str] = set()
        found = judge_job(corpus, workflow, graph, job_id, repo_root, unresolved, ())
        blockers = [(b.kind, b.reason) for b in found]
        jobs.append(JobReport(name, job_id, blockers, sorted(unresolved)))
    return FileReport(name, "", jobs)


def judge_job(
    corpus: Corpus, workflow: Workflow, graph: Plan, job_id: str, repo_root: Path,
    unresolved: set[str], chain: tuple[str, ...],
) -> list[Blocker]:
    job = workflow.jobs[job_id]
    if job.uses is not None:
        return judge_call(corpus, job.uses, repo_root, unresolved, chain)
    resolve = corpus.resolver(repo_root, unresolved)
    found = job_blockers(
        job, PROVIDER, resolve, deep=True, containers=provider_containers(PROVIDER)
    )
    found += other_system(job, graph.static_matrix(job_id), {})
    shell = job.defaults.shell or workflow.defaults.shell
    for step, via in walk_steps(job.steps, resolve, deep=True):
        if step.run is None or step.if_:
            continue
        try:
            resolve_shell(step.shell or ("" if via else shell))
        except ConfigError as exc:
            where = f" (inside {via})" if via else ""
            found.append(Blocker(SHELL, f"job '{job_id}' step {step.position}{where}: {exc}"))
    return found


def judge_call(
    corpus: Corpus, uses: str, repo_root: Path, unresolved: set[str], chain: tuple[str, ...]
) -> list[Blocker]:
    """The blockers of the jobs a call reaches (a call out of ``DIR`` is taken to run)."""
    try:
        target = parse_target(uses)
    except ConfigError:
        return []
    root = corpus.folder(target.owner, target.repo) if target.remote else repo_root
    called = corpus.called(root / target.path) if root else None
    if called is None and target.remote:
        unresolved.add(uses.partition("@")[0])
    if called is None or root is None or str(target) in chain or len(chain) >= MAX_LEVELS:
        return []
    try:
        graph = plan(called)
    except PlanError:
        return []
    found = []
    for job_id in called.jobs:
        for blocker in judge_job(
            corpus, called, graph, job_id, root, unresolved, (*chain, str(target))
        ):
            found.append(Blocker(blocker.kind, f"{blocker.reason} (through {uses})"))
    return found


def _raw_jobs(path: Path) -> list[str]:
    """The job ids of a file the loader refused, from its YAML (none when that is broken)."""
    try:
        raw = load_document(path.read_text(encoding="utf-8"), str(path)).value
    except (WorkflowError, OSError, UnicodeDecodeError):
        return []
    jobs = raw.get("jobs") if isinstance(raw, dict) else None
    return [str(j) for j in jobs] if isinstance(jobs, dict) else []


def summary(reports: list[FileReport], unknown_blocks: bool = False) -> dict[str, Any]:
    """The figures: files, rejected files, jobs, runnable jobs, blockers by jobs blocked."""
    jobs = [job for report in reports for job in report.jobs]
    kinds_of = [
        job.kinds + ([UNKNOWN] if unknown_blocks and job.unresolved else []) for job in jobs
    ]
    blocked: Counter[str] = Counter(k for kinds in kinds_of for k in kinds)
    alone: Counter[str] = Counter(kinds[0] for kinds in kinds_of if len(kinds) == 1)
    runnable = sum(1 for kinds in kinds_of if not kinds)
    unresolved: Counter[str] = Counter(a for job in jobs for a in job.unresolved)
    return {
        "repositories": len({r.file.split(os.sep)[0] for r in reports}),
        "files": len(reports),
        "rejected": [{"file": r.file, "error": r.error} for r in reports if r.error],
        "jobs": len(jobs),
        "runnable": runnable,
        "runnable_percent": round(100 * runnable / len(jobs), 1) if jobs else 0.0,
        "blockers": [
            {"kind": kind, "jobs": count, "alone": alone[kind]}
            for kind, count in blocked.most_common()
        ],
        "unknown_actions": {
            "distinct": len(unresolved),
            "jobs": sum(1 for job in jobs if job.unresolved),
            "counted_as_blocker": unknown_blocks,
            "most_used": [{"uses": a, "jobs": n} for a, n in unresolved.most_common(15)],
        },
    }


def examples(reports: Iterable[FileReport], per_kind: int = 2) -> dict[str, list[str]]:
    """A few reasons of each kind, to show what a kind stands for."""
    shown: dict[str, list[str]] = {}
    for job in (job for report in reports for job in report.jobs):
        for kind, reason in job.blockers:
            if len(shown.setdefault(kind, [])) < per_kind:
                shown[kind].append(f"{job.file}: {reason}")
    return shown


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench coverage", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dir", type=Path, help="a folder of repository folders")
    parser.add_argument("--json", action="store_true", help="the figures and every job as JSON")
    parser.add_argument(
        "--unknown-blocks", action="store_true",
        help="count remote actions of unknown kind as a blocker (default: taken to run)",
    )
    options = parser.parse_args(argv)
    if not options.dir.is_dir():
        print(f"coverage: {options.dir}: no such folder", file=sys.stderr)
        return 2
    reports = measure(options.dir)
    figures = summary(reports, options.unknown_blocks)
    if options.json:
        figures["jobs_judged"] = [asdict(job) for report in reports for job in report.jobs]
        print(json.dumps(figures, indent=2))
        return 0
    print_figures(figures, examples(reports))
    return 0


def print_figures(figures: dict[str, Any], shown: dict[str, list[str]]) -> None:
    rejected = figures["rejected"]
    print(f"repositories: {figures['repositories']}  workflow files: {figures['files']}")
    print(f"files rejected: {len(rejected)}")
    for item in rejected:
        print(f"  {item['error']}")
    print(f"jobs: {figures['jobs']}")
    print(f"runnable: {figures['runnable']} ({figures['runnable_percent']} %)")
    print("blockers, by jobs blocked (alone: blocked by nothing else):")
    for item in figures["blockers"]:
        print(f"  {item['kind']:<32} {item['jobs']:>5} jobs  (alone {item['alone']})")
        for example in shown.get(item["kind"], []):
            print(f"      e.g. {example}")
    unknown = figures["unknown_actions"]
    taken = "counted as a blocker" if unknown["counted_as_blocker"] else "taken to run"
    print(
        f"remote actions and called workflows not in DIR ({taken}): {unknown['distinct']} "
        f"distinct, used by "
        f"{unknown['jobs']} jobs; most used: "
        + ", ".join(f"{a['uses']} ({a['jobs']})" for a in unknown["most_used"][:8])
    )
