"""`ccache gc` and `ccache rm`: keep the store from growing forever. Do not import torch."""

from __future__ import annotations

import typer

from ccache_cli.errors import BadInputError
from ccache_cli.housekeeping import removal
from ccache_cli.store.store import Store

from . import parsing
from .render import human_bytes, out, show, warn


def gc_command(
    ctx: typer.Context,
    max_size: str | None = typer.Option(
        None,
        "--max-size",
        metavar="SIZE",
        help="Shrink the store to SIZE (500M, 2G), least recently used entries first",
    ),
    older_than: str | None = typer.Option(
        None, "--older-than", metavar="AGE", help="Remove entries not used for AGE (30d, 12h, 2w)"
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would go; change nothing"),
    json_output: bool = typer.Option(False, "--json", help="Write only JSON to stdout"),
) -> None:
    """Remove least recently used entries, blobs no entry names and the leftovers of killed writers. Never an entry in use by a running program."""
    store: Store = ctx.obj
    plan = removal.plan_gc(
        store,
        parsing.parse_size(max_size) if max_size is not None else None,
        parsing.parse_age(older_than) if older_than is not None else None,
    )
    _finish(store, plan, dry_run, json_output)


def rm_command(
    ctx: typer.Context,
    entries: list[str] = typer.Argument(..., metavar="ENTRY...", help="Manifest id prefixes or names"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would go; change nothing"),
    json_output: bool = typer.Option(False, "--json", help="Write only JSON to stdout"),
) -> None:
    """Remove entries, and the blobs no other entry names."""
    if not entries:
        raise BadInputError("name the entries to remove")
    store: Store = ctx.obj
    _finish(store, removal.plan_rm(store, entries), dry_run, json_output)


def _finish(store: Store, plan: removal.Plan, dry_run: bool, json_output: bool) -> None:
    show(removal.carry_out(store, plan, dry_run), json_output, _print_cleanup)


def _print_cleanup(cleanup: removal.Cleanup) -> None:
    plan, dry_run = cleanup.plan, cleanup.dry_run
    for entry in plan.in_use:
        warn(f"kept entry {entry.short_id} ({entry.name}): a running program uses it")
    verb = "would remove" if dry_run else "removed"
    for entry in plan.remove:
        out.print(f"{verb} entry {entry.short_id} ({entry.name})")
    for folder in plan.abandoned:
        out.print(f"{verb} tmp/{folder.name}, left by a writer that was killed")
    if plan.pycache_bytes:
        out.print(
            f"{verb} pycache/, precompile's bytecode of the compile stack ({human_bytes(plan.pycache_bytes)}; made again as needed)"
        )
    out.print(
        f"{'Would free' if dry_run else 'Freed'} {human_bytes(plan.freed_bytes)} in {len(plan.blobs)} blobs; "
        f"the store {'would hold' if dry_run else 'holds'} {human_bytes(plan.store_bytes_after)}."
    )
