"""`ccache inspect [ENTRY] [--json]`: what the store holds."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ccache_cli.archive.signing import trusted_keys
from ccache_cli.archive.unpack import is_archive_path
from ccache_cli.check.inspect import InspectReport, inspect_archive, inspect_remote, inspect_store
from ccache_cli.in_program import fingerprint
from ccache_cli.registry.reference import is_reference
from ccache_cli.store.assumptions import SizeAssumptions
from ccache_cli.store.manifest import Manifest, label_order

from . import lists
from .pack import TRUST_OPTION
from .registry import INSECURE_OPTION
from .render import TIMING_COLUMNS, age, human_bytes, out, show, timing_cells, yes_no


def command(
    ctx: typer.Context,
    entry: str | None = typer.Argument(
        None,
        metavar="[ENTRY|ARCHIVE|REF]",
        help="An entry id prefix or name to show in detail, a .tar.zst archive or a registry REF to list",
    ),
    json_output: bool = typer.Option(False, "--json", help="Write only JSON to stdout"),
    trust: list[Path] | None = TRUST_OPTION,
    insecure: bool = INSECURE_OPTION,
) -> None:
    """List the stored entries, or show one in detail, or list an archive's or a pushed artifact's (its manifest and index only). Does not import torch."""
    if entry is None:
        lists.listing(ctx.obj, json_output)
    elif is_archive_path(entry):
        show(
            inspect_archive(ctx.obj, entry, trusted_keys(trust or [])),
            json_output,
            lambda r: lists.print_table(r, entry),
        )
    elif is_reference(entry):
        report = inspect_remote(ctx.obj, entry, insecure, trusted_keys(trust or []))
        show(report, json_output, lambda r: lists.print_table(r, entry))
    else:
        show(inspect_store(ctx.obj, entry), json_output, _print_detail)


def _print_detail(report: InspectReport) -> None:
    item = report.entries[0]
    e = item.entry
    out.print(f"[bold]{e.id}[/bold]  {e.name}")
    out.print(f"created {e.created} ({age(e.created)}), {item.file_count} files, {human_bytes(item.bytes)}")
    if item.usage is not None and item.usage.times_used:
        u = item.usage
        out.print(
            f"used {u.times_used} times, last {age(u.last_used)}; recorded cache hits {u.hits}, misses {u.misses}"
        )
        if u.miss_reason:
            out.print(f"latest miss: {u.miss_reason}", soft_wrap=True)
        if u.routed or u.not_routed:
            out.print(f"torch.compile calls routed to the stored code: {u.routed}; model calls it ran: {u.served}")
            for why, number in sorted(u.not_routed.items(), key=lambda item: -item[1]):
                out.print(f"  not served {number}x: {why}", soft_wrap=True)
    key = Table("key part", "entry", "this machine", title="Fingerprint", title_justify="left")
    for name in fingerprint.components_for(e.device):
        here = report.machine.get(name, "(unknown without torch)")
        mark = "" if here == e.fingerprint.get(name) or name not in report.machine else " [red]≠[/red]"
        key.add_row(name, str(e.fingerprint.get(name)), f"{here}{mark}")
    out.print(key)
    out.print(f"compatible with this machine: {yes_no(item.compatible)}")
    compile_table = Table("option", "value", title="Compile options", title_justify="left")
    for name, value in e.compile.document.items():
        compile_table.add_row(name, str(value))
    if e.model is not None:  # None: captured from a command, which the options show
        compile_table.add_row("model", f"{e.model.module}:{e.model.attr}")
    out.print(compile_table)
    traced = Table("module", "path", "sha256", title="Traced sources", title_justify="left")
    for source in e.sources:
        traced.add_row(source.module, source.path, source.sha256[:16])
    out.print(traced)
    kinds = Table("kind", "files", "bytes", title="Artifacts", title_justify="left")
    for kind in item.kinds:
        kinds.add_row(kind.kind, str(kind.count), human_bytes(kind.bytes))
    out.print(kinds)
    if e.compile.engines:
        caches = Table("variable", "engine version", "files", "bytes", title="Engine caches", title_justify="left")
        for cache in e.engine_caches():
            caches.add_row(cache.var, cache.version or "-", str(cache.files), human_bytes(cache.bytes))
        out.print(caches)
    timings = Table(*TIMING_COLUMNS, title="Recorded compile timings", title_justify="left")
    for timing in e.timings:
        timings.add_row(*timing_cells(timing))
    out.print(timings)
    aot = e.aot
    out.print(f"AOT: {aot.status}" + (f" ({aot.reason})" if aot.reason else ""), soft_wrap=True)
    if aot.packages is not None:
        out.print(
            f"AOTInductor packages: {aot.packages.status}"
            + (f" ({aot.packages.reason})" if aot.packages.reason else ""),
            soft_wrap=True,
        )
    _print_assumptions(e)
    _print_functions(e)


def _print_functions(e: Manifest) -> None:
    """The functions a capture compiled, and what each assumes, by kind of check."""
    if not e.functions:
        return
    table = Table(
        "function", "stored code", "checked before it serves", title="Captured function compiles", title_justify="left"
    )
    for path, described in sorted(e.functions.items(), key=lambda item: item[1]["function"]):
        recorded = SizeAssumptions.from_json(described["assumptions"])
        cells = ", ".join(f"{kind} {number}" for kind, number in sorted(recorded.counts().items()))
        table.add_row(described["function"], path.rpartition("/")[2], cells)
    out.print(table)


def _print_assumptions(e: Manifest) -> None:
    """What each size's stored code assumes of the program, by kind of check."""
    if e.stores_aot_code and not e.assumptions:
        out.print("Assumptions: none recorded (precompiled by an older ccache-cli): its stored code is never served")
    if not e.assumptions:
        return
    table = Table(
        "size",
        "traced forward",
        "checked before stored code serves",
        "of them aot_compile's guards drop",
        title="Assumptions of the stored code",
        title_justify="left",
    )
    for size, recorded in sorted(e.assumptions.items(), key=lambda item: label_order(item[0])):
        counts = recorded.counts()
        unchecked = counts.pop("unchecked", 0)
        cells = ", ".join(f"{kind} {number}" for kind, number in sorted(counts.items()))
        if unchecked:
            cells += f"; [red]{unchecked} ccache cannot check: never served[/red]"
        table.add_row(size, f"{recorded.frame.module}:{recorded.frame.qualname}", cells, str(recorded.unserialized))
    out.print(table)
