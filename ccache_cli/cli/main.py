"""The `ccache` entry point: error handling, a compiler launcher's command line handed
to the compiler cache (launcher.py), and a fast start for the commands that run in
start-up scripts and image builds.

Typer's import and argument handling cost 0.3 s or more at each start. So the plain forms
`ccache [--store PATH] [-q] run [--no-route] [ENTRY...] -- CMD...`,
`... env [ENTRY...] [--json]`, `... inspect [--json]`,
`... pack OUTPUT [ENTRY...] [--json]`, `... unpack ARCHIVE [--json]`,
`... push REF [ENTRY...] [--json]` and `... pull REF [--json]` are parsed here
without it; anything else (other options, --help, other commands) goes to the Typer
app in app.py, which defines the same options.
"""

from __future__ import annotations

import errno
import gc
import os
import sys
from typing import NamedTuple, NoReturn

from ccache_cli.errors import BadInputError, CcacheError, ExitCode

from . import launcher


class Plain(NamedTuple):
    """A plain command line: what main.py runs without Typer."""

    command: str  # run, env, inspect, pack, unpack, push or pull
    store: str | None
    quiet: bool
    # run, env: the entries; inspect: none; pack: output and entries; unpack: the archive;
    # push: REF and entries; pull: REF
    args: list[str]
    json_output: bool = False
    program: list[str] = []  # run: the command after --
    route: bool = True  # run: not with --no-route


def main() -> None:
    launcher.maybe_hand_over(sys.argv)  # `ccache gcc ...`, `ccache -s`: the compiler cache's
    try:
        plain = plain_command(sys.argv[1:])
        if plain is None:
            _check_usage(sys.argv[1:])
            from .app import app

            # What the imports made lives as long as the process: the collections that
            # reading a large store's index and listings sets off then skip it.
            gc.freeze()
            app()
        else:
            _start(plain)
    except CcacheError as exc:
        if os.environ.get("CCACHE_CLI_DEBUG"):
            raise
        _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("ccache: interrupted\n")
        sys.exit(ExitCode.INTERRUPTED)
    except BrokenPipeError:  # the reader went away (`ccache inspect | head`): nothing to say, as Typer does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the flush at exit writes nowhere
        sys.exit(ExitCode.FAILED)
    except OSError as exc:  # the system refused a read or write: say which, in one line
        if os.environ.get("CCACHE_CLI_DEBUG"):
            raise
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            _fail(
                f"no space left on the device holding {exc.filename or 'a file being written'}; "
                "nothing was changed: free some space (`ccache gc --max-size`) and run it again",
                ExitCode.FAILED,
            )
        _fail(f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""), ExitCode.FAILED)
    except Exception:  # a bug: one line here, the traceback in a log file
        if os.environ.get("CCACHE_CLI_DEBUG"):
            raise
        kind, value = sys.exc_info()[:2]
        _fail(
            f"internal error ({kind.__name__ if kind else 'exception'}: {value}); "
            f"the traceback is in {_write_traceback()}, please report it",
            ExitCode.FAILED,
        )


def _fail(message: str, code: int) -> NoReturn:
    sys.stderr.write(f"ccache: error: {message}\n")  # never quieted
    sys.exit(code)


def _write_traceback() -> str:
    import tempfile
    import traceback

    fd, path = tempfile.mkstemp(prefix="ccache-cli-error-", suffix=".log")
    with os.fdopen(fd, "w", errors="backslashreplace") as log:  # argv may hold bytes that are not UTF-8
        log.write(f"ccache {' '.join(sys.argv[1:])}\n\n{traceback.format_exc()}")
    return path


def plain_command(argv: list[str]) -> Plain | None:
    """The plain command line `argv` is, or None for the Typer app to handle."""
    store, quiet = None, False
    at = 0
    while at < len(argv):
        if argv[at] == "--store" and at + 1 < len(argv):
            store, at = argv[at + 1], at + 2
        elif argv[at].startswith("--store="):
            store, at = argv[at].partition("=")[2], at + 1
        elif argv[at] in ("-q", "--quiet"):
            quiet, at = True, at + 1
        else:
            break
    command, rest = argv[at] if at < len(argv) else "", argv[at + 1 :]
    if command == "run" and "--" in rest:
        refs, program = rest[: rest.index("--")], rest[rest.index("--") + 1 :]
        route = "--no-route" not in refs
        refs = [ref for ref in refs if ref not in ("--route", "--no-route")]
        if program and not any(ref.startswith("-") for ref in refs):  # an option: the app's to handle
            return Plain(command, store, quiet, refs, program=program, route=route)
    elif command in ("env", "inspect"):
        args = [arg for arg in rest if arg != "--json"]
        if not any(arg.startswith("-") for arg in args) and (command == "env" or not args):
            return Plain(command, store, quiet, args, json_output="--json" in rest)
    elif command in ("pack", "unpack", "push", "pull"):
        args = [arg for arg in rest if arg != "--json"]
        if (
            args
            and not any(arg.startswith("-") and arg != "-" for arg in args)
            and (command in ("pack", "push") or len(args) == 1)
        ):
            return Plain(command, store, quiet, args, json_output="--json" in rest)
    return None


# The commands, for the hints below (app.py defines them).
_COMMANDS = (
    "precompile",
    "inspect",
    "pack",
    "unpack",
    "push",
    "pull",
    "verify",
    "fingerprint",
    "run",
    "env",
    "gc",
    "rm",
)


def _check_usage(argv: list[str]) -> None:
    """Two slips a newcomer makes, told plainly where Typer would say only that an
    argument or option is unexpected (BadInputError)."""
    command = next((at for at, arg in enumerate(argv) if arg in _COMMANDS), None)
    if command is None or "--" in argv[:command] or (argv[command] == "run" and "--" not in argv):
        return  # `run CMD...` without `--`: what follows is the program's own
    rest = argv[command + 1 : argv.index("--") if "--" in argv else len(argv)]
    for at, arg in enumerate(rest):
        if arg == "--store" or arg.startswith("--store="):
            where = arg.partition("=")[2] or (rest[at + 1] if at + 1 < len(rest) else "PATH")
            raise BadInputError(f"--store goes before the command: ccache --store {where} {argv[command]} ...")
        if argv[command] == "precompile" and arg == "--sizes" and at + 2 < len(rest) and rest[at + 2].isdigit():
            numbers = [rest[at + 1], *(n for n in rest[at + 2 :] if n.isdigit())]
            raise BadInputError(f"--sizes takes one comma-separated list: --sizes {','.join(numbers)}")


def _start(plain: Plain) -> None:
    from ccache_cli.store.store import Store

    store = Store(plain.store)
    if plain.command == "run":  # prints only warnings and errors anyway
        from ccache_cli.serve import activation

        active = activation.start(store, plain.args, plain.route, plain.program)
        for message in activation.replaced_warnings(active):
            sys.stderr.write(f"warning: {message}\n")
        activation.exec_command(plain.program)
        return
    from . import render

    if plain.quiet:
        render.set_quiet()
    if plain.command in ("env", "inspect"):
        from . import lists

        gc.freeze()  # as for the app's commands
        if plain.command == "env":
            lists.env(store, plain.args, plain.json_output)
        else:
            lists.listing(store, plain.json_output)
        return
    from . import transfer

    if plain.command == "pack":
        transfer.pack(store, plain.args[0], plain.args[1:], json_output=plain.json_output)
    elif plain.command == "push":
        transfer.push(store, plain.args[0], plain.args[1:], json_output=plain.json_output)
    elif plain.command == "pull":
        transfer.pull(store, plain.args[0], json_output=plain.json_output)
    else:
        transfer.unpack(store, plain.args[0], json_output=plain.json_output)
