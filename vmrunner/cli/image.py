"""``vmrunner image``: build, list and remove the guest images of the VM providers."""

from __future__ import annotations

import time
from typing import Any

import click

from vmrunner.machines.images import DEFAULT_NAME


@click.group("image")
def command() -> None:
    """Guest images (kernel, initramfs, root file system) of the VM providers.

    They live under VMRUNNER_HOME/images, or $VMRUNNER_IMAGES.
    """


def _row(image: Any, names: list[str]) -> dict[str, Any]:
    return {
        "names": names,
        "digest": image.digest,
        "kernel_version": image.kernel_version,
        "packages": list(image.packages),
        "size": image.size(),
        "created_at": image.created_at,
        "directory": str(image.directory),
        "kernel": str(image.kernel),
        "initrd": str(image.initrd),
        "rootfs": str(image.rootfs),
        "rootfs_raw": str(image.rootfs_raw),
        "cmdline": list(image.cmdline),
    }


@command.command("build")
@click.option("-n", "--name", default=DEFAULT_NAME, show_default=True, help="The image's name.")
@click.option(
    "-p",
    "--packages",
    multiple=True,
    help="Debian packages to add (repeatable, or comma-separated) to the base set.",
)
@click.option("--disk-gib", type=click.IntRange(1, 1024), default=4, show_default=True,
              help="Size of the root file system (sparse).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def build(name: str, packages: tuple[str, ...], disk_gib: int, as_json: bool) -> None:
    """Build an image from Debian packages (or reuse the identical one) and name it."""
    from vmrunner.cli import terminal
    from vmrunner.machines.images import ImageStore

    wanted = [p.strip() for item in packages for p in item.split(",") if p.strip()]
    store = ImageStore()
    started = time.monotonic()
    if not as_json:
        terminal.info(f"building image {name} in {store.root} (the first build takes minutes)")
    image = store.build(name, wanted, disk_gib=disk_gib)
    if as_json:
        terminal.print_json(_row(image, [name]))
        return
    terminal.info(
        f"image {name}: {image.digest} (kernel {image.kernel_version}, "
        f"{image.size() / 2**20:.0f} MiB) in {time.monotonic() - started:.1f}s"
    )


@command.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for machines.")
def list_images(as_json: bool) -> None:
    """List the images: names, digest, kernel, packages, size."""
    from vmrunner.cli import terminal
    from vmrunner.machines.images import ImageStore

    store = ImageStore()
    names = store.names()
    rows = [
        _row(image, sorted(n for n, d in names.items() if d == image.digest))
        for image in store.list()
    ]
    if as_json:
        terminal.print_json({"images": rows})
        return
    if not rows:
        terminal.info(f"no images in {store.root}: vmrunner image build")
        return
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    for title in ("Name", "Digest", "Kernel", "Size", "Packages"):
        table.add_column(title, overflow="fold")
    for row in rows:
        table.add_row(
            ", ".join(row["names"]) or "-", row["digest"], row["kernel_version"],
            f"{row['size'] / 2**20:.0f} MiB", " ".join(row["packages"]),
        )  # fmt: skip
    terminal.console().print(table)


@command.command("rm")
@click.argument("name")
def remove(name: str) -> None:
    """Forget an image name; its files go when no other name uses them."""
    from vmrunner.cli import terminal
    from vmrunner.machines.images import ImageStore

    image = ImageStore().remove(name)
    terminal.info(f"removed image {name} ({image.digest})")
