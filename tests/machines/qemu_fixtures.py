"""The guest image the qemu tests share, built once per host (content-addressed, so reused).

Images live in ``$VMRUNNER_TEST_IMAGES`` (default: a directory in the system's temp dir), not
in a test's own VMRUNNER_HOME: a first build takes minutes. QEMU missing is a skip (and
``scripts/bootstrap`` installs it, so CI always runs these tests); an image that cannot be
built is a failure.

The image adds ``nodejs`` (Debian's 18.x) to the base packages, so GitHub's own node actions
(``actions/upload-artifact@v4``...) run in QEMU guests too. One package set for every VM test:
each distinct set is another root file system build (about 45 s here, with or without nodejs,
which adds about 90 MB to the image).
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path

import pytest

from vmrunner.errors import ImageError
from vmrunner.machines.images import Image, ImageStore

#: What the test image adds to ``images.BASE_PACKAGES``.
TEST_PACKAGES = ("nodejs",)


def test_images_dir() -> Path:
    explicit = os.environ.get("VMRUNNER_TEST_IMAGES")
    return Path(explicit) if explicit else Path(tempfile.gettempdir()) / "vmrunner-test-images"


test_images_dir.__test__ = False  # type: ignore[attr-defined]


@functools.cache
def _build() -> Image:
    # A first build takes minutes: it must not count against the test's own timeout
    # (pytest-timeout's alarm), which resumes with the time it had left once the image is there.
    paused = signal.setitimer(signal.ITIMER_REAL, 0) if _main_thread() else (0.0, 0.0)
    try:
        return ImageStore(test_images_dir()).build(packages=TEST_PACKAGES)
    finally:
        if paused[0] > 0:
            signal.setitimer(signal.ITIMER_REAL, *paused)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def qemu_image() -> Image:
    """The default image in the shared directory; skips only when QEMU is not installed."""
    if shutil.which("qemu-system-x86_64") is None or shutil.which("qemu-img") is None:
        pytest.skip("QEMU is not installed (scripts/bootstrap installs qemu-system-x86)")
    try:
        return _build()
    except ImageError as exc:
        pytest.fail(f"cannot build the test guest image: {exc}")
