"""`ctctl check`: is this host ready for ctd? Through the daemon when it runs, else locally.

hostcheck is imported when the command runs, so that loading ctctl (every other command) does not
pay for it; ctctl/cli.py registers `check` only where hostcheck is installed."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ctctl.client import DEFAULT_SOCKET
from ctctl.tls import UnixHTTPConnection

if TYPE_CHECKING:
    from hostcheck import CheckResult

NOT_RUNNING = "(daemon not running: local checks only)"


def from_daemon(socket_path: str) -> tuple[list[CheckResult] | None, str]:
    """(results, "") from GET /1.0/check, or (None, note) when local checks must do."""
    from hostcheck import CheckResult  # here, not at the top: every other command starts without hostcheck

    conn = UnixHTTPConnection(socket_path, timeout=60.0)
    try:
        conn.request("GET", "/1.0/check")
        response = conn.getresponse()
        body = response.read()
    except (FileNotFoundError, ConnectionRefusedError):
        return None, NOT_RUNNING
    except PermissionError:
        return None, f"(no permission on {socket_path}: local checks only)"
    except OSError as e:
        return None, f"(daemon unreachable: {e}: local checks only)"
    finally:
        conn.close()
    if response.status != 200:
        return None, f"(daemon answered HTTP {response.status} to /1.0/check: local checks only)"
    try:
        return [CheckResult.from_dict(d) for d in json.loads(body)["results"]], ""
    except (ValueError, KeyError, TypeError):
        return None, "(daemon sent an unreadable check reply: local checks only)"


@click.command("check")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table",
              show_default=True, help="Output format.")
@click.option("--kernel-config", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Check this kernel config file instead of the running kernel's (local checks).")
@click.option("--socket", "socket_path", default=None,
              help=f"ctd's API socket [env CTD_SOCKET; default {DEFAULT_SOCKET}].")
def check(fmt: str, kernel_config: Path | None, socket_path: str | None) -> None:
    """Check that this host has what ctd needs: kernel options, cgroups, user namespaces,
    idmapped mounts, KVM and tools. Exits 1 when something required is missing."""
    import hostcheck

    results: list[CheckResult] | None = None
    if kernel_config is not None:
        note = "(--kernel-config given: local checks only)"
    else:
        path = socket_path or os.environ.get("CTD_SOCKET") or DEFAULT_SOCKET
        results, note = from_daemon(path)
    source = "daemon" if results is not None else "local"
    if results is None:
        results = hostcheck.run_checks(kernel_config=kernel_config)
    if fmt == "json":
        if note:
            click.echo(note, err=True)
        click.echo(hostcheck.to_json(results, source=source))
    else:
        if note:
            click.echo(note)
        click.echo(hostcheck.render_table(results))
    raise SystemExit(hostcheck.exit_code(results))


if __name__ == "__main__":
    check()
