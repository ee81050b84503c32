"""`ccache fingerprint`: this machine's key components."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import typer
from rich.table import Table

from ccache_cli.in_program import fingerprint
from ccache_cli.key import interpreter
from ccache_cli.precompile.precompile import check_device

from .render import out, show


@dataclass(frozen=True)
class MachineFingerprint:
    components: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return self.components


def command(
    ctx: typer.Context,
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N: the GPU whose components to report"),
    python: str | None = typer.Option(
        None,
        "--python",
        metavar="PATH",
        envvar=interpreter.PYTHON_ENV,
        help="The components of this Python's environment [default: this one]",
    ),
    json_output: bool = typer.Option(False, "--json", help="Write only JSON to stdout"),
) -> None:
    """Print this machine's key components, as torch reports them."""
    device = check_device(device)
    if python is None or interpreter.is_this_interpreter(python):
        machine, digest = fingerprint.machine_fingerprint(device), fingerprint.probe_digest()
    else:
        machine, digest = interpreter.machine_fingerprint(python, device), interpreter.probe(python).digest
    ctx.obj.save_machine_fingerprint(digest, machine)
    show(MachineFingerprint(machine), json_output, _print_fingerprint)


def _print_fingerprint(machine: MachineFingerprint) -> None:
    table = Table("component", "value", box=None)
    for name in fingerprint.COMPONENTS:
        value = machine.components.get(name)
        table.add_row(name, "-" if value is None else str(value))
    out.print(table)
