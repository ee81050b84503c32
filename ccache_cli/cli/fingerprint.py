"""`ccache fingerprint`: this machine's key components."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import typer
from rich.table import Table

from ccache_cli.build.precompile import check_device
from ccache_cli.hooked import fingerprint

from .render import out, show


@dataclass(frozen=True)
class MachineFingerprint:
    components: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return self.components


def command(
    ctx: typer.Context,
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N: the GPU whose components to report"),
    json_output: bool = typer.Option(False, "--json", help="Write only JSON to stdout"),
) -> None:
    """Print this machine's key components, as torch reports them."""
    machine = fingerprint.machine_fingerprint(check_device(device))
    ctx.obj.save_machine_fingerprint(fingerprint.probe_digest(), machine)
    show(MachineFingerprint(machine), json_output, _print_fingerprint)


def _print_fingerprint(machine: MachineFingerprint) -> None:
    table = Table("component", "value", box=None)
    for name in fingerprint.COMPONENTS:
        value = machine.components.get(name)
        table.add_row(name, "-" if value is None else str(value))
    out.print(table)
