"""`ccache fingerprint`: this machine's key components."""

from __future__ import annotations

import typer
from rich.table import Table

from ccache_cli.build.precompile import check_device
from ccache_cli.hooked import fingerprint

from .render import emit_json, out


def command(
    ctx: typer.Context,
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N: the GPU whose components to report"),
    json_output: bool = typer.Option(False, "--json", help="Write only JSON to stdout"),
) -> None:
    """Print this machine's key components, as torch reports them."""
    machine = fingerprint.machine_fingerprint(check_device(device))
    ctx.obj.save_machine_fingerprint(fingerprint.probe_digest(), machine)
    if json_output:
        emit_json(machine)
        return
    table = Table("component", "value", box=None)
    for name in fingerprint.COMPONENTS:
        table.add_row(name, "-" if machine.get(name) is None else str(machine[name]))
    out.print(table)
