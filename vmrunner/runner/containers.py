"""What a job's ``container:`` and ``services:`` make of its machine spec (the machine does
the rest)."""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Mapping
from typing import Any

from vmrunner.errors import ConfigError
from vmrunner.machines.base import HealthCheck, MachineSpec, ServiceSpec
from vmrunner.workflow.containers import parse_options
from vmrunner.workflow.evaluation import render_env, render_text
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
    credentials = _credentials(box, contexts, where)
    return dataclasses.replace(
        spec,
        image=image,
        image_user=options.user,
        image_env=options.env + env,
        image_credentials=credentials,
    )


def services_spec(
    spec: MachineSpec, job_id: str, services: Mapping[str, Container], contexts: Mapping[str, Any]
) -> tuple[MachineSpec, dict[str, Any]]:
    """``spec`` with the job's service containers, and the ``job.services`` context.

    Every service shares the job's machine and its network: a port is the service's own on
    ``localhost`` (``5432`` or ``5432:5432``); one that maps to another number cannot apply.
    """
    specs, context = [], {}
    for label, box in services.items():
        where = f"jobs.{job_id}.services.{label}"
        if not label.replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"{where}: a service's label must be a host name")
        if box.volumes:
            raise ConfigError(f"{where}.volumes: a machine cannot mount host folders")
        ports: dict[str, str] = {}
        for port in box.ports:
            mapped, _, inner = str(port).rpartition(":")
            number = inner.split("/")[0]
            if mapped and mapped.split(":")[-1] != number:
                raise ConfigError(
                    f"{where}.ports: {port} maps to another port; a service answers on its own "
                    f"port on localhost and by its label ({number})"
                )
            ports[number] = number
        image = render_text(box.image, contexts).strip()
        if not image:
            continue  # GitHub skips a service whose image is empty
        options = parse_options(
            render_text(box.options, contexts) if box.options else "", f"{where}.options"
        )
        health = None
        if options.health_cmd:
            health = HealthCheck(
                options.health_cmd, options.health_interval, options.health_timeout,
                options.health_retries, options.health_start_period,
            )  # fmt: skip
        specs.append(
            ServiceSpec(
                label, image, credentials=_credentials(box, contexts, where),
                env=options.env + tuple(render_env(box.env, contexts).items()),
                user=options.user, workdir=options.workdir,
                entrypoint=render_text(box.entrypoint, contexts) if box.entrypoint else
                options.entrypoint,
                command=tuple(shlex.split(render_text(box.command, contexts)))
                if box.command else (),
                health=health,
            )
        )  # fmt: skip
        context[label] = {"id": label, "network": "", "ports": ports}
    return dataclasses.replace(spec, services=tuple(specs)), context


def _credentials(
    box: Container, contexts: Mapping[str, Any], where: str
) -> tuple[str, str] | None:
    if not box.credentials:
        return None
    username = render_text(box.credentials.get("username", ""), contexts)
    password = render_text(box.credentials.get("password", ""), contexts)
    if not username or not password:
        raise ConfigError(f"{where}.credentials needs a username and a password")
    return username, password
