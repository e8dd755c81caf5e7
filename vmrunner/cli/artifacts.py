"""``vmrunner artifacts``: the artifacts a run's jobs uploaded (``actions/upload-artifact``).

``list RUN`` shows them; ``download RUN NAME [--dir D]`` unzips one into ``D/NAME`` (by
default ``./NAME``), as ``actions/download-artifact`` does in a job. RUN may be a unique
prefix of a kept run's id.
"""

from __future__ import annotations

from pathlib import Path

import click


def resolve_run(run_id: str) -> str:
    """The full id of a kept run (a unique prefix is enough); a run id with artifacts but no
    record (a fleet host's, say) is taken as it is."""
    from vmrunner.errors import RunNotFound
    from vmrunner.reports.storage import RunHistory
    from vmrunner.services.artifacts import ArtifactStore
    from vmrunner.services.settings import ServiceSettings
    from vmrunner.store import Store

    settings = ServiceSettings.from_env()
    try:
        with Store.open() as kept:
            return RunHistory(kept).get_run(run_id).run_id
    except RunNotFound:
        if ArtifactStore(settings.artifacts_dir, settings.retention_days).list(run_id):
            return run_id
        raise


@click.group("artifacts")
def command() -> None:
    """Artifacts of kept runs: list them, download one."""


@command.command("list")
@click.argument("run_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_artifacts(run_id: str, as_json: bool) -> None:
    """List the artifacts of run RUN_ID."""
    from vmrunner.cli import terminal
    from vmrunner.reports.results import human_duration
    from vmrunner.services.artifacts import ArtifactStore
    from vmrunner.services.settings import ServiceSettings

    settings = ServiceSettings.from_env()
    full = resolve_run(run_id)
    found = ArtifactStore(settings.artifacts_dir, settings.retention_days).list(full)
    if as_json:
        terminal.print_json([artifact.to_json() for artifact in found])
        return
    console = terminal.console()
    if not found:
        console.print(f"run {full} has no artifacts")
    import time

    for artifact in found:
        left = human_duration(max(0.0, artifact.expires_at - time.time()))
        console.print(
            f"{artifact.artifact_id:>4}  {artifact.name}  {artifact.size} bytes  "
            f"job {artifact.job_key}  expires in {left}", highlight=False, soft_wrap=True,
        )


@command.command("download")
@click.argument("run_id")
@click.argument("name")
@click.option(
    "--dir", "folder", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Unzip into DIR/NAME (default: ./NAME).",
)
def download(run_id: str, name: str, folder: Path | None) -> None:
    """Unzip artifact NAME of run RUN_ID."""
    from vmrunner.cli import terminal
    from vmrunner.services.artifacts import ArtifactStore, extract
    from vmrunner.services.settings import ServiceSettings

    settings = ServiceSettings.from_env()
    full = resolve_run(run_id)
    artifact = ArtifactStore(settings.artifacts_dir, settings.retention_days).get(full, name)
    target = (folder or Path.cwd()) / name
    written = extract(artifact, target)
    terminal.console().print(
        f"artifact {name} of run {full}: {len(written)} files into {target}", highlight=False
    )
