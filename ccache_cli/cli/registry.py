"""`ccache push` and `ccache pull`: entries to and from an OCI registry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import typer

from ccache_cli.errors import BadInputError
from ccache_cli.key.compat import fits, this_machine
from ccache_cli.store.manifest import Manifest

from .render import err, human_bytes, out, show
from .transfer import progress

if TYPE_CHECKING:
    from ccache_cli.registry.transfer import PullResult, PushResult

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
    json_output: bool = typer.Option(False, "--json", help="Write a JSON summary to stdout"),
) -> None:
    """Upload entries to a registry as one artifact under REF: only the layers it lacks. Does not import torch."""
    from ccache_cli.registry import client, transfer

    store = ctx.obj
    remote = client.Remote(reference, insecure)
    chosen = [store.find(ref) for ref in entries] if entries else list(store.scan().entries)
    if compatible_only:
        chosen = fits(chosen, *this_machine(store))
    if not chosen:
        raise BadInputError(f"nothing to push: no {'compatible ' if compatible_only else ''}entries in {store.root}")
    total = sum({ref["sha256"]: ref["size"] for e in chosen for ref in e.files.values()}.values())
    with progress("pushing", total, not json_output) as on_progress:
        result = transfer.push(store, chosen, remote, on_progress)
    show(Pushed(result), json_output, _print_pushed)


@dataclass(frozen=True)
class Pushed:
    result: PushResult

    def to_json(self) -> dict[str, Any]:
        r = self.result
        return {
            "reference": r.reference,
            "digest": r.digest,
            "entries": [entry.id for entry in r.entries],
            "layers": r.layers,
            "uploaded": r.uploaded,
            "uploaded_bytes": r.uploaded_bytes,
            "bytes": r.total_bytes,
        }


def _print_pushed(pushed: Pushed) -> None:
    r = pushed.result
    out.print(
        f"Pushed {len(r.entries)} entries to {r.reference} ({r.digest[:19]}): {r.layers} layers, "
        f"{human_bytes(r.total_bytes)}; uploaded {r.uploaded} the registry lacked, {human_bytes(r.uploaded_bytes)}.",
        soft_wrap=True,
    )


def pull_command(
    ctx: typer.Context,
    reference: str = typer.Argument(..., metavar="REF", help="host[:port]/repository[:tag]"),
    compatible_only: bool = typer.Option(False, "--compatible-only", help="Only entries that fit this machine"),
    insecure: bool = INSECURE_OPTION,
    json_output: bool = typer.Option(False, "--json", help="Write only JSON to stdout"),
) -> None:
    """Merge an artifact's entries into the store, downloading only the layers holding blobs it lacks and checking every byte. Does not import torch."""
    from ccache_cli.registry import client, transfer

    store = ctx.obj
    remote = client.Remote(reference, insecure)
    machine, exact = this_machine(store) if compatible_only else ({}, False)

    def select(candidate: Manifest) -> bool:
        return not compatible_only or bool(fits([candidate], machine, exact))

    with progress("pulling", None, not json_output) as on_progress:
        result = transfer.pull(store, remote, select, on_progress)
    show(Pulled(result), json_output, _print_pulled)


@dataclass(frozen=True)
class Pulled:
    result: PullResult

    def to_json(self) -> dict[str, Any]:
        r = self.result
        return {
            "reference": r.reference,
            "added": [entry.id for entry in r.added],
            "kept": [entry.id for entry in r.kept],
            "skipped": list(r.skipped),
            "new_blobs": r.new_blobs,
            "new_bytes": r.new_bytes,
            "layers": r.layers,
            "downloaded": r.downloaded,
            "downloaded_bytes": r.downloaded_bytes,
        }


def _print_pulled(pulled: Pulled) -> None:
    r = pulled.result
    out.print(
        f"Pulled {len(r.added)} new entries from {r.reference} ({len(r.kept)} already there, {len(r.skipped)} "
        f"skipped as incompatible); {r.new_blobs} new blobs, {human_bytes(r.new_bytes)}; downloaded "
        f"{r.downloaded} of {r.layers} layers, {human_bytes(r.downloaded_bytes)}.",
        soft_wrap=True,
    )
    if r.skipped and not r.added and not r.kept:
        err.print("No entry of the artifact fits this machine.")
