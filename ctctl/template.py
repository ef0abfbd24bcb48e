"""ctctl template: list, build, create (from an instance), import, export and delete templates.
Builds, imports and exports show ctd's progress line while they run (Ctrl-C cancels them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ctctl import vagrantbox
from ctctl.output import emit, human_bytes, table
from ctctl.shared import FORMAT, client, run_with_progress


@click.group()
def template() -> None:
    """Build, list and delete templates."""


@template.command(name="list")
@FORMAT
def template_list(fmt: str) -> None:
    """Known recipes and built templates."""
    rows = client().get("/1.0/templates")["templates"]
    emit(fmt, rows, lambda ts: table(
        ["NAME", "DISTRO", "RELEASE", "ARCH", "SIZE", "BUILT", "DESCRIPTION"],
        [[t["name"], t["distro"], t["release"], t["arch"], human_bytes(t["size"]) if t["size"] else None,
          t["built_at"] or "not built", t["description"]] for t in ts]))


@template.command(name="build")
@click.argument("name")
@click.option("--mirror", help="Debian mirror URL (default: the host's apt sources)")
def template_build(name: str, mirror: str | None) -> None:
    """Build a template from its recipe in templates/ (Ctrl-C cancels the build)."""
    click.echo(f"Building template {name} ...")
    body: dict[str, Any] = {"name": name}
    if mirror:
        body["mirror"] = mirror
    result = run_with_progress("POST", "/1.0/templates", body)
    click.echo(f"Built {result['name']} ({human_bytes(result['size'])})")


@template.command(name="create")
@click.argument("name")
@click.option("--from", "source", required=True, help="the (stopped) instance to make the template from")
def template_create(name: str, source: str) -> None:
    """Turn an instance into a template NAME."""
    result = client().run("POST", "/1.0/templates", {"name": name, "from": source})
    click.echo(f"Created template {result['name']} from {source} ({human_bytes(result['size'])})")


@template.command(name="import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, resolve_path=True))
@click.option("--name", help="template name (default: from the file name, e.g. debian-12-x86_64)")
def template_import(file: str, name: str | None) -> None:
    """Import a rootfs tarball (.tar.gz/.tar.xz/.tar.zst, OpenVZ/Proxmox layout) as a template."""
    body: dict[str, Any] = {"import": file}
    if name:
        body["name"] = name
    result = run_with_progress("POST", "/1.0/templates", body)
    dropped = result.get("dropped_devices") or 0
    note = f"; dropped {dropped} device node(s), ctd makes /dev itself" if dropped else ""
    click.echo(f"Imported {result['name']} ({human_bytes(result['size'])}){note}")


@template.command(name="export")
@click.argument("name")
@click.argument("file", required=False, type=click.Path(dir_okay=False, resolve_path=True))
@click.option("--vagrant-box", "box", type=click.Path(dir_okay=False, resolve_path=True),
              help="write a Vagrant box for provider ctd instead (vagrant user, insecure key; docs/vagrant.md)")
def template_export(name: str, file: str | None, box: str | None) -> None:
    """Write a template as a rootfs tarball (.tar.zst, .tar.gz or .tar.xz by the file name), or
    with --vagrant-box FILE.box as a box for `vagrant box add` (on ctd's host: ctd writes it)."""
    if (file is None) == (box is None):
        raise click.UsageError("give either FILE (a rootfs tarball) or --vagrant-box FILE.box")
    if box is not None:
        _export_box(name, Path(box))
        return
    result = run_with_progress("POST", f"/1.0/templates/{name}/export", {"file": file})
    click.echo(f"Exported {name} to {result['file']} ({human_bytes(result['size'])})")


def _export_box(name: str, box: Path) -> None:
    if not box.parent.is_dir():
        raise click.UsageError(f"{box.parent} is not a directory; the box goes into an existing one")
    scratch = box.with_name(f".{box.name}.export.tar.gz")  # ctd writes it; the box is made from it
    try:
        run_with_progress("POST", f"/1.0/templates/{name}/export", {"file": str(scratch)})
        try:
            size = vagrantbox.write_box(scratch, box, name)
        except vagrantbox.BoxError as exc:
            raise click.ClickException(str(exc)) from None
    finally:
        scratch.unlink(missing_ok=True)
    click.echo(f"Exported {name} as Vagrant box {box} ({human_bytes(size)}); "
               f"add it with: vagrant box add NAME {box}")


@template.command(name="delete")
@click.argument("name")
def template_delete(name: str) -> None:
    """Delete a built template (refused while instances use it)."""
    client().request("DELETE", f"/1.0/templates/{name}")
    click.echo(f"Deleted template {name}")


COMMANDS = (template,)
