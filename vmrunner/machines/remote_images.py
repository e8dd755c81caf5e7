"""Container images of remote machines as the machine service takes them (``POST /api/vms``:
``image`` and ``services``; ``POST /api/vms/{id}/exec-image``). Registry credentials go as
``{"user", "password"}``: the service uses them and keeps them nowhere."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from vmrunner.machines.base import ImageRun, MachineSpec


def _credentials(pair: tuple[str, str] | None) -> dict[str, str] | None:
    return None if pair is None else {"user": pair[0], "password": pair[1]}


def spec_images(spec: MachineSpec) -> dict[str, Any]:
    """The ``POST /api/vms`` fields of ``spec``'s image and services (none without them)."""
    body: dict[str, Any] = {}
    if spec.image:
        body["image"] = {
            "reference": spec.image, "credentials": _credentials(spec.image_credentials),
            "user": spec.image_user, "env": dict(spec.image_env),
        }  # fmt: skip
    if spec.services:
        body["services"] = [
            {**dataclasses.asdict(s), "credentials": _credentials(s.credentials),
             "env": dict(s.env)}
            for s in spec.services
        ]  # fmt: skip
    return body


def image_exec(
    run: ImageRun,
    args: Sequence[str],
    env: Mapping[str, str] | None,
    timeout: float | None,
    write: Mapping[str, str] | None,
    collect: Sequence[str],
) -> dict[str, Any]:
    """The body of ``POST /api/vms/{id}/exec-image``."""
    return {
        **dataclasses.asdict(run), "credentials": _credentials(run.credentials),
        "args": list(args), "env": dict(env or {}), "timeout": timeout,
        "write": dict(write or {}), "collect": list(collect),
    }  # fmt: skip
