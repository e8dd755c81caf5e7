"""What a job's ``container:`` makes of its machine spec (the machine does the rest)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from vmrunner.errors import ConfigError
from vmrunner.machines.base import MachineSpec
from vmrunner.runner.evaluation import render_env, render_text
from vmrunner.workflow.containers import parse_options
from vmrunner.workflow.models import Container


def container_spec(
    spec: MachineSpec, job_id: str, box: Container, contexts: Mapping[str, Any]
) -> MachineSpec:
    """``spec`` for a machine whose root is the job container's image; ``ConfigError`` for
    what cannot apply (host volumes and published ports: a machine shares nothing with the host)."""
    where = f"jobs.{job_id}.container"
    if box.volumes:
        raise ConfigError(
            f"{where}.volumes: a machine cannot mount host folders; copy files in with a step"
        )
    if box.ports:
        raise ConfigError(f"{where}.ports: a job's machine publishes no ports on the host")
    image = render_text(box.image, contexts).strip()
    if not image:
        raise ConfigError(f"{where}.image is empty")
    options = parse_options(
        render_text(box.options, contexts) if box.options else "", f"{where}.options"
    )
    env = tuple(render_env(box.env, contexts).items())
    credentials = None
    if box.credentials:
        username = render_text(box.credentials.get("username", ""), contexts)
        password = render_text(box.credentials.get("password", ""), contexts)
        if not username or not password:
            raise ConfigError(f"{where}.credentials needs a username and a password")
        credentials = (username, password)
    return dataclasses.replace(
        spec,
        image=image,
        image_user=options.user,
        image_env=options.env + env,
        image_credentials=credentials,
    )
