"""ctctl completion: the shell completion script for bash, zsh or fish, for the root command of
the running invocation (so this module needs nothing from ctctl/cli.py)."""

from __future__ import annotations

import click


@click.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script: eval "$(ctctl completion bash)"."""
    from click.shell_completion import get_completion_class
    cls = get_completion_class(shell)
    assert cls is not None
    root = click.get_current_context().find_root().command
    click.echo(cls(root, {}, "ctctl", "_CTCTL_COMPLETE").source())


COMMANDS = (completion,)
