"""What `ccache env` and `ccache inspect` print, without Typer: the Typer commands in
run.py and inspect.py and the fast start in main.py (their plain forms, which start
programs and list large stores) all call these."""

from __future__ import annotations

from collections.abc import Sequence

from ccache_cli.check.inspect import InspectReport, inspect_store
from ccache_cli.in_program import usage
from ccache_cli.serve import activation
from ccache_cli.store.store import Store

from .render import age, human_bytes, out, print_columns, show, warn, write_data, yes_no_cell


def env(store: Store, refs: Sequence[str], json_output: bool) -> None:
    """`ccache env [ENTRY...] [--json]`."""
    active = activation.activation(store, activation.select_entries(store, refs))
    warn_replaced(active)
    usage.record(store, [entry.id for entry in active.entries], "env")
    show(active, json_output, lambda a: write_data(a.shell_exports()))


def warn_replaced(active: activation.Activation) -> None:
    for message in activation.replaced_warnings(active):
        warn(message)


def listing(store: Store, json_output: bool) -> None:
    """`ccache inspect [--json]`: the store's entries."""
    show(inspect_store(store), json_output, lambda report: print_table(report, store.root))


def print_table(report: InspectReport, root: object) -> None:
    if not report.entries:
        out.print(f"No entries in {root}. `ccache precompile MODEL --sizes 1,8,32` makes one.")
        return
    rows = []
    for item in report.entries:
        e = item.entry
        sizes = ",".join(e.size_labels) + (",dyn" if e.dynamic else "")
        device = e.fingerprint.get("gpu") or e.device
        used = (
            "-"
            if item.usage is None or not item.usage.times_used
            else f"{item.usage.times_used}x, {age(item.usage.last_used)}"
        )
        rows.append(
            [
                e.short_id,
                e.name,
                sizes,
                device,
                e.fingerprint["torch"],
                human_bytes(item.bytes),
                age(e.created),
                used,
                yes_no_cell(item.compatible),
            ]
        )
    print_columns(("id", "name", "sizes", "device", "torch", "size", "age", "used", "compatible"), rows)
    if not report.machine_exact:
        out.print(
            "? = the components readable without torch match; `ccache fingerprint` records the rest for this machine."
        )
