"""Providers by name: ``get_provider("sandbox")``. The one place that maps names to classes."""

from __future__ import annotations

import importlib
import os
from typing import Any

from vmrunner.errors import ConfigError, MachineError
from vmrunner.machines.base import Provider

#: Provider name -> "module:class"; imported only when asked for.
PROVIDERS: dict[str, str] = {
    "sandbox": "vmrunner.machines.sandbox:SandboxProvider",
    "host": "vmrunner.machines.host:HostProvider",
    "qemu": "vmrunner.machines.qemu:QemuProvider",
    "firecracker": "vmrunner.machines.firecracker:FirecrackerProvider",
    "remote": "vmrunner.machines.remote:RemoteProvider",
}


def provider_names() -> list[str]:
    return sorted(PROVIDERS)


def get_provider(name: str, **options: Any) -> Provider:
    """A new provider of the named kind; ``options`` go to its constructor."""
    target = PROVIDERS.get(name)
    if target is None:
        raise ConfigError(
            f"unknown provider {name!r}: expected one of {', '.join(provider_names())}"
        )
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    try:
        provider: Provider = cls(**options)
    except TypeError as exc:
        raise ConfigError(f"invalid options for the {name} provider: {exc}") from exc
    return provider


def provider_containers(name: str) -> bool:
    """Whether the named provider's machines can be container images (False if unknown). The
    remote provider's machines can what its service's can: the service (``$VMRUNNER_REMOTE_URL``)
    is asked, and one out of reach counts as no."""
    target = PROVIDERS.get(name)
    if target is None:
        return False
    module_name, _, class_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    if name == "remote" and os.environ.get("VMRUNNER_REMOTE_URL"):
        try:
            return bool(cls().capabilities.containers)
        except MachineError:
            return False
    return bool(cls.capabilities.containers)
