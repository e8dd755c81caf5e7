"""Container images through the machine service: the bodies of ``POST /api/vms`` (``image``,
``services``) and of ``POST /api/vms/{id}/exec-image``, and what they make.

A registry password arrives as a ``SecretStr``: it goes into the ``MachineSpec`` or ``ImageRun``
(whose reprs hide it) and nowhere else. The service never answers, logs or stores it; a body
refused by validation is answered without the values it held (``validation_error``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, Field, SecretStr, field_validator

from vmrunner.machines.base import HealthCheck, ImageRun, ServiceSpec
from vmrunner.server.machines_exec import ExecOptions

#: A service's label is a host name in the machine.
LABEL = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$"


class CredentialsBody(BaseModel):
    user: str = Field(min_length=1)
    password: SecretStr

    def pair(self) -> tuple[str, str]:
        return self.user, self.password.get_secret_value()


def _pair(credentials: CredentialsBody | None) -> tuple[str, str] | None:
    return None if credentials is None else credentials.pair()


class HealthBody(BaseModel):
    command: str = Field(min_length=1)
    interval: float = Field(default=10.0, gt=0)
    timeout: float = Field(default=30.0, gt=0)
    retries: int = Field(default=3, ge=1)
    start_period: float = Field(default=0.0, ge=0)


class ServiceBody(BaseModel):
    label: str = Field(pattern=LABEL)
    image: str = Field(min_length=1)
    credentials: CredentialsBody | None = None
    env: dict[str, str] = Field(default_factory=dict)
    user: str = ""
    entrypoint: str = ""
    command: list[str] = Field(default_factory=list)
    workdir: str = ""
    health: HealthBody | None = None

    def spec(self) -> ServiceSpec:
        health = None if self.health is None else HealthCheck(**self.health.model_dump())
        return ServiceSpec(
            self.label, self.image, credentials=_pair(self.credentials),
            env=tuple(self.env.items()), user=self.user, entrypoint=self.entrypoint,
            command=tuple(self.command), workdir=self.workdir, health=health,
        )  # fmt: skip


class ImageBody(BaseModel):
    """The machine's root file system (a ``container:`` job)."""

    reference: str = Field(min_length=1)
    credentials: CredentialsBody | None = None
    user: str = ""
    env: dict[str, str] = Field(default_factory=dict)


def image_fields(image: ImageBody | None, services: Sequence[ServiceBody]) -> dict[str, Any]:
    """The ``MachineSpec`` fields of a ``POST /api/vms`` body's ``image`` and ``services``."""
    fields: dict[str, Any] = {"services": tuple(s.spec() for s in services)}
    if image is not None:
        fields.update(
            image=image.reference, image_credentials=_pair(image.credentials),
            image_user=image.user, image_env=tuple(image.env.items()),
        )  # fmt: skip
    return fields


def unique_labels(services: list[ServiceBody]) -> list[ServiceBody]:
    labels = [s.label for s in services]
    if len(set(labels)) != len(labels):
        raise ValueError("two services have the same label")
    return services


class ImageExecBody(ExecOptions):
    """``Machine.exec_image``: the ``ImageRun`` fields, the container's ``args`` and the exec's
    options (``env``, ``timeout``, ``write``, ``collect``: machine paths)."""

    image: str = Field(min_length=1)
    credentials: CredentialsBody | None = None
    entrypoint: str = ""
    user: str = ""
    workdir: str = ""
    binds: list[tuple[str, str]] = Field(default_factory=list)
    context: str = ""
    args: list[str] = Field(default_factory=list)

    @field_validator("binds")
    @classmethod
    def _absolute(cls, binds: list[tuple[str, str]]) -> list[tuple[str, str]]:
        if any(not a.startswith("/") or not b.startswith("/") for a, b in binds):
            raise ValueError("binds are pairs of absolute paths")
        return binds

    def run(self) -> ImageRun:
        return ImageRun(
            self.image, credentials=_pair(self.credentials), entrypoint=self.entrypoint,
            user=self.user, workdir=self.workdir, binds=tuple(self.binds), context=self.context,
        )  # fmt: skip


def validation_error(errors: Sequence[Any]) -> dict[str, Any]:
    """A refused body's answer: where and what, never the values sent (a password)."""
    detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
              for e in errors]  # fmt: skip
    said = "; ".join(
        f"{'.'.join(str(p) for p in d['loc'][1:]) or 'body'}: {d['msg']}" for d in detail
    )
    return {"error": f"bad body: {said}", "kind": "RequestRejected", "detail": detail}
