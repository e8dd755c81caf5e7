"""Every provider on this host passes the shared provider suite."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.machines.provider_suite import ProviderSuite
from tests.machines.qemu_fixtures import qemu_image, test_images_dir
from tests.machines.test_firecracker import real_firecracker_options
from tests.server.machines_helpers import machine_service
from vmrunner.errors import ConfigError
from vmrunner.machines.base import Provider
from vmrunner.machines.providers import get_provider, provider_names

PROVIDERS = ["sandbox", "host", "qemu", "firecracker", "remote"]


class TestProviders(ProviderSuite):
    @pytest.fixture(params=PROVIDERS)
    async def provider(
        self, request: pytest.FixtureRequest, tmp_path: Path
    ) -> AsyncIterator[Provider]:
        options: dict[str, object] = {}
        if request.param == "qemu":  # VMs boot from the image the qemu tests share
            qemu_image()
            options["images"] = test_images_dir()
        if request.param == "firecracker":  # skipped (saying why) where it cannot boot
            options.update(await real_firecracker_options())
        if request.param == "remote":  # a real machine service (sandboxes) on 127.0.0.1
            with machine_service(tmp_path / "service.db") as service:
                provider = get_provider("remote", url=service.url, token=service.token("suite"))
                yield provider
                await provider.aclose()
                assert provider.leftovers() == [], "a test left a machine behind"
            return
        provider = get_provider(request.param, grace=0.5, **options)
        yield provider
        await provider.aclose()
        assert provider.leftovers() == [], "a test left a machine behind"


def test_unknown_provider_is_a_config_error() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown provider 'vmware'.*firecracker, host, qemu, remote, sandbox"
    ):
        get_provider("vmware")


def test_bad_provider_options_are_a_config_error() -> None:
    with pytest.raises(ConfigError, match="invalid options for the host provider"):
        get_provider("host", colour="blue")


def test_every_registered_provider_is_tested() -> None:
    assert sorted(PROVIDERS) == provider_names()
