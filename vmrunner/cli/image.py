"""``vmrunner image``: build, list and remove the guest images of the VM providers."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
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
    with build_progress(quiet=as_json) as stage:
        image = store.build(name, wanted, disk_gib=disk_gib, progress=stage)
    if as_json:
        terminal.print_json(_row(image, [name]))
        return
    terminal.info(
        f"image {name}: {image.digest} (kernel {image.kernel_version}, "
        f"{image.size() / 2**20:.0f} MiB) in {time.monotonic() - started:.1f}s"
    )


@contextlib.contextmanager
def build_progress(*, quiet: bool) -> Iterator[Callable[[str], None]]:
    """A progress bar (stage, count, elapsed time) on a terminal, one line per stage
    elsewhere; nothing with ``quiet``. Yields what the build tells each stage to."""
    from vmrunner.cli import terminal

    console = terminal.console(stderr=True)
    if quiet:
        yield lambda stage: None
        return
    if not console.is_terminal:
        yield lambda stage: console.print(f"  {stage} ...", markup=False, highlight=False)
        return
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (
        SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
        TextColumn("stage {task.completed:.0f}"), TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("starting", total=None)

        def stage(what: str) -> None:
            bar.update(task, description=what, advance=1)
            console.print(f"  {what}", markup=False, highlight=False)

        yield stage


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
