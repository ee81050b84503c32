"""`ccache push` and `ccache pull`: entries to and from an OCI registry. Their work is in
transfer.py, which main.py also calls for their plain forms."""

from __future__ import annotations

from pathlib import Path

import typer

from . import transfer
from .pack import SIGN_OPTION, TRUST_OPTION

INSECURE_OPTION = typer.Option(
    False, "--insecure", help="Plain HTTP to this registry (loopback registries always use it)"
)


def push_command(
    ctx: typer.Context,
    reference: str = typer.Argument(
        ..., metavar="REF", help="host[:port]/repository[:tag], e.g. registry.example.com/team/model-cache:v1"
    ),
    entries: list[str] | None = typer.Argument(
        None, metavar="[ENTRY...]", help="Manifest id prefixes or names [default: all]"
    ),
    compatible_only: bool = typer.Option(False, "--compatible-only", help="Only entries that fit this machine"),
    insecure: bool = INSECURE_OPTION,
    sign: Path | None = SIGN_OPTION,
    json_output: bool = typer.Option(False, "--json", help="Write a JSON summary to stdout"),
) -> None:
    """Upload entries to a registry as one artifact under REF: only the layers it lacks. Does not import torch."""
    transfer.push(ctx.obj, reference, entries or [], compatible_only, insecure, json_output, sign)


def pull_command(
    ctx: typer.Context,
    reference: str = typer.Argument(..., metavar="REF", help="host[:port]/repository[:tag]"),
    compatible_only: bool = typer.Option(False, "--compatible-only", help="Only entries that fit this machine"),
    insecure: bool = INSECURE_OPTION,
    trust: list[Path] | None = TRUST_OPTION,
    json_output: bool = typer.Option(False, "--json", help="Write only JSON to stdout"),
) -> None:
    """Merge an artifact's entries into the store, downloading only the layers holding blobs it lacks and checking every byte. Does not import torch."""
    transfer.pull(ctx.obj, reference, compatible_only, insecure, json_output, trust or [])
