"""ctctl's entry point (`ctctl = ctctl.main:main`, `python -m ctctl.main`).

A plain `ctctl list` is answered by ctctl/listing.py before click and the commands load (its
whole process is what a script calling it in a loop pays); every other command line goes to
the click root in ctctl/cli.py. `ctctl.main.cli` and friends are that module's, loaded on use."""

from __future__ import annotations

import sys
from typing import Any


def main() -> None:
    from ctctl.listing import fast_path
    status = fast_path(sys.argv[1:])
    if status is not None:
        sys.exit(status)
    from ctctl.cli import run
    run()


def __getattr__(name: str) -> Any:
    """cli, NOUNS, CtlGroup … (ctctl/cli.py), for the callers that know them from here. Never
    for dunder names: `from ctctl.main import main` asks for __path__, which must not load click."""
    if name.startswith("__"):
        raise AttributeError(name)
    from ctctl import cli
    return getattr(cli, name)


if __name__ == "__main__":
    main()
