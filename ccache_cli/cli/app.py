"""The `ccache` command: global options, the commands, and error handling."""

from __future__ import annotations

from pathlib import Path

import typer

from ccache_cli.store.store import Store

from . import fingerprint, housekeeping, inspect, pack, precompile, registry, run, verify
from .render import set_quiet

app = typer.Typer(
    name="ccache",
    help="Precompile torch.compile caches, store them, and carry them into images so services start warm.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts are plain: "[default: ...]" is text, not markup
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"ccache-cli {version('ccache-cli')}")
        raise typer.Exit()


@app.callback()
def _options(
    ctx: typer.Context,
    store: Path | None = typer.Option(
        None,
        "--store",
        metavar="PATH",
        help="Artifact store [default: $CCACHE_CLI_STORE, else $XDG_CACHE_HOME/ccache-cli]",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only errors, warnings and requested data (--json)"),
    version: bool = typer.Option(
        False, "--version", "-V", is_eager=True, help="Print ccache-cli's version and exit", callback=_print_version
    ),
) -> None:
    if quiet:
        set_quiet()
    ctx.obj = Store(store)


app.command("precompile")(precompile.command)
app.command("inspect")(inspect.command)
app.command("pack")(pack.pack_command)
app.command("unpack")(pack.unpack_command)
app.command("push")(registry.push_command)
app.command("pull")(registry.pull_command)
app.command("verify")(verify.command)
app.command("fingerprint")(fingerprint.command)
app.command("env")(run.env_command)
app.command("gc")(housekeeping.gc_command)
app.command("rm")(housekeeping.rm_command)
key_app = typer.Typer(
    name="key", help="Signing keys for archives.", no_args_is_help=True, add_completion=False, rich_markup_mode=None
)
key_app.command("generate")(pack.key_generate_command)
app.add_typer(key_app)
app.command("run", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})(run.run_command)
