"""ctctl's commands that attach the terminal to an instance: exec, enter and console. They speak
WebSocket (ctctl/stream.py); asyncio and aiohttp are imported only when one of them runs, so every
other command starts without them."""

from __future__ import annotations

import sys

import click

from ctctl.shared import INSTANCE, client


@click.command(name="exec", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@INSTANCE
@click.option("-t", "--tty", "use_tty", is_flag=True, help="allocate a terminal")
@click.option("--env", "-e", multiple=True, help="KEY=VALUE for the command's environment")
@click.option("--cwd", help="working directory inside (default /root)")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(instance: str, use_tty: bool, env: tuple[str, ...], cwd: str | None, command: tuple[str, ...]) -> None:
    """Run a command inside: ctctl exec NAME -- CMD [ARGS...]. Exits with its exit code."""
    import asyncio

    from ctctl.stream import run_exec
    argv = list(command[1:] if command and command[0] == "--" else command)
    if not argv:
        raise click.UsageError("give the command after '--', e.g. ctctl exec NAME -- ps")
    code = asyncio.run(run_exec(client(), instance, argv, list(env), cwd, use_tty))
    sys.exit(code)


@click.command()
@INSTANCE
def enter(instance: str) -> None:
    """An interactive root shell inside."""
    import asyncio

    from ctctl.stream import run_exec
    shell = ["/bin/sh", "-c", "if [ -x /bin/bash ]; then exec /bin/bash -l; else exec /bin/sh -l; fi"]
    sys.exit(asyncio.run(run_exec(client(), instance, shell, [], None, sys.stdin.isatty())))


@click.command()
@INSTANCE
@click.option("--log", "show_log", is_flag=True,
              help="print what the console printed (its last 1 MiB), running or stopped, and exit")
@click.option("--raw", is_flag=True, help="with --log: the bytes as they are, escape sequences included")
def console(instance: str, show_log: bool, raw: bool) -> None:
    """Attach to the instance's console: a container's /dev/console, a VM's serial port (detach
    with Ctrl-]). With --log, print its log instead (on a terminal, control sequences the guest
    wrote are shown as escapes, never acted on, unless --raw)."""
    if raw and not show_log:
        raise click.UsageError("--raw goes with --log")
    if show_log:
        data = client().data(f"/1.0/instances/{instance}/console/log")
        if sys.stdout.isatty() and not raw:
            from ctctl.termsafe import show
            sys.stdout.write(show(data))
            if data and not data.endswith(b"\n"):
                sys.stdout.write("\n")
        else:
            sys.stdout.buffer.write(data)
        sys.stdout.flush()
        return
    import asyncio

    from ctctl.stream import run_console
    asyncio.run(run_console(client(), instance))


COMMANDS = (exec_, enter, console)
