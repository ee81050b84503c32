"""The `ccache` entry point: error handling, and a fast start for `ccache run`.

`ccache [--store PATH] [-q] run [ENTRY...] -- CMD...` starts every warm server, so
that form is parsed here without Typer, whose import and argument handling cost
0.2 s or more at each start; anything else (other options, --help, other commands)
goes to the Typer app in app.py, which defines the same options.
"""

from __future__ import annotations

import os
import sys

from ..core.errors import CcacheError


def main() -> None:
    try:
        plain_run = _plain_run(sys.argv[1:])
        if plain_run is None:
            from .app import app

            app()
        else:
            _run(*plain_run)
    except CcacheError as exc:
        if os.environ.get("CCACHE_CLI_DEBUG"):
            raise
        sys.stderr.write(f"ccache: error: {exc}\n")  # never quieted
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("ccache: interrupted\n")
        sys.exit(130)


def _plain_run(argv: list[str]) -> tuple[str | None, list[str], list[str]] | None:
    """(store, entries, command) of a plain `run` command line, else None."""
    store = None
    at = 0
    while at < len(argv):
        if argv[at] == "--store" and at + 1 < len(argv):
            store, at = argv[at + 1], at + 2
        elif argv[at].startswith("--store="):
            store, at = argv[at].partition("=")[2], at + 1
        elif argv[at] in ("-q", "--quiet"):  # run prints only warnings and errors anyway
            at += 1
        else:
            break
    rest = argv[at + 1 :]
    if argv[at : at + 1] != ["run"] or "--" not in rest:
        return None
    refs, command = rest[: rest.index("--")], rest[rest.index("--") + 1 :]
    if not command or any(ref.startswith("-") for ref in refs):  # an option: the app's to handle
        return None
    return store, refs, command


def _run(store: str | None, refs: list[str], command: list[str]) -> None:
    from ..core import runtime
    from ..core.store import Store

    active = runtime.start(Store(store), refs)
    for message in runtime.replaced_warnings(active):
        sys.stderr.write(f"warning: {message}\n")
    runtime.exec_command(command)
