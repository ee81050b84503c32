"""`ccache precompile MODEL --sizes 1,8,32`."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from ccache_cli.check.inspect import EntryReport, report_entry
from ccache_cli.key.compat import this_machine
from ccache_cli.key.interpreter import PYTHON_ENV
from ccache_cli.precompile import precompile as core
from ccache_cli.precompile.plan import MODES
from ccache_cli.store.manifest import PackageStatus

from . import parsing
from .render import TIMING_COLUMNS, human_bytes, out, show, timing_cells


def command(
    ctx: typer.Context,
    model: str = typer.Argument(
        ..., metavar="MODEL", help="pkg.module[:attr] or path/to/file.py[:attr]; attr defaults to build"
    ),
    sizes: str = typer.Option(
        ...,
        "--sizes",
        help="Batch sizes to compile, e.g. 1,8,32; a range such as 1-64 gets one package with a dynamic batch "
        "dimension that serves every size in it (1,8,1-64: sizes 1 and 8 static besides)",
    ),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N"),
    devices: str | None = typer.Option(
        None,
        "--devices",
        metavar="0,1,...",
        help="Compile for each of these GPU indices (one process per GPU, as tensor-parallel servers run)",
    ),
    dynamic: bool = typer.Option(
        False, "--dynamic", help="Also compile a general shape with the batch dimension dynamic"
    ),
    mode: str = typer.Option("default", "--mode", help="torch.compile mode: " + ", ".join(MODES)),
    name: str | None = typer.Option(None, "--name", help="A name for the entry [default: module:attr]"),
    inputs: str | None = typer.Option(
        None,
        "--inputs",
        metavar="MOD:FN",
        help="example_inputs(size) -> a tuple of positional inputs or a dict of keyword inputs, "
        "if not beside the model",
    ),
    force: bool = typer.Option(False, "--force", help="Compile again even if the store has this entry"),
    aot: bool = typer.Option(True, "--aot/--no-aot", help="Also store AOT-compiled functions (needs fullgraph)"),
    bytecode: bool = typer.Option(
        True,
        "--bytecode/--no-bytecode",
        help="Also store the .pyc of the modules the compile imported, for images without .pyc files "
        "(--no-bytecode where the image has them: the entry is then a fraction of the size)",
    ),
    python: str | None = typer.Option(
        None,
        "--python",
        metavar="PATH",
        envvar=PYTHON_ENV,
        help="Compile in this Python's environment (its torch and packages; ccache-cli need not be installed there) "
        "[default: this one]",
    ),
    jobs: int | None = typer.Option(
        None,
        "--jobs",
        "-j",
        min=1,
        help="Build this many sizes' AOTInductor packages at once, each in a process with its own copy of the "
        "model [default: one per 8 cores, at most 4]",
    ),
    json_output: bool = typer.Option(False, "--json", help="Write only JSON to stdout"),
) -> None:
    """Compile MODEL for each size in an isolated cache and store the artifacts as one entry."""
    if mode not in MODES:
        raise typer.BadParameter(f"expected one of {', '.join(MODES)}", param_hint="--mode")
    static_sizes, ranges = parsing.parse_sizes(sizes)
    request = core.PrecompileRequest(
        model=model,
        sizes=static_sizes,
        ranges=ranges,
        device=device,
        devices=parsing.parse_devices(devices) if devices is not None else (),
        dynamic=dynamic,
        mode=mode,
        name=name,
        inputs=inputs,
        force=force,
        aot=aot,
        bytecode=bytecode,
        python=python,
        jobs=jobs,
    )
    store = ctx.obj
    with _progress(live=out.is_terminal, shown=not json_output) as on_progress:
        result = core.precompile(store, request, on_progress)
    show(Precompiled(result, report_entry(result.entry, *this_machine(store))), json_output, _print_summary)


@dataclass(frozen=True)
class Precompiled:
    """What precompile did, with the entry as inspect reports it."""

    result: core.PrecompileResult
    entry: EntryReport

    def to_json(self) -> dict[str, Any]:
        result = self.result
        return {
            "entry": self.entry.to_json(),
            "reused": result.reused,
            "reports": [asdict(report) for report in result.reports],
            "new_bytes": result.new_bytes,
            "seconds": round(result.seconds, 3),
        }


@contextlib.contextmanager
def _progress(live: bool, shown: bool) -> Iterator[Callable[[core.Progress], None]]:
    """Each step as it goes, on stdout (stderr keeps to warnings and the one line of an
    error): drawn live at a terminal; elsewhere (a CI log) a line as a step starts and
    as it ends, at the seconds since precompile began."""
    if not shown:
        yield lambda _: None
        return
    if not live:
        began = time.perf_counter()

        def log_line(event: core.Progress) -> None:
            took = f" done ({event.wall_s:.1f} s)" if event.done and event.wall_s is not None else ""
            out.print(f"{time.perf_counter() - began:7.1f} s  {_step(event)}{took}", soft_wrap=True, markup=False)

        yield log_line
        return
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=out, transient=False) as progress:
        tasks: dict[tuple[str, str | None], int] = {}

        def on_progress(event: core.Progress) -> None:
            key = (event.phase, event.label)
            if key not in tasks:
                for (phase, _), other in tasks.items():  # one step at a time, but packages beside others
                    if phase not in ("package", "export"):
                        progress.update(other, total=1, completed=1)
                tasks[key] = progress.add_task(_step(event), total=None)
            if event.done:
                progress.update(tasks[key], total=1, completed=1)

        yield on_progress
        for task in tasks.values():
            progress.update(task, total=1, completed=1)


def _step(event: core.Progress) -> str:
    what = {
        "loading": "loading model and torch",
        "compile": "compile",
        "aot": "aot_compile",
        "package": "AOTInductor package",
        "export": "torch.export for the package of",
        "check": "loading the packages in a fresh process",
        "bytecode": "bytecode of the imported modules",
    }[event.phase]
    if event.label in (None, "bytecode"):
        return what
    return what + (" dynamic shape" if event.label == "dynamic" else f" size {event.label}")


def _print_summary(precompiled: Precompiled) -> None:
    result = precompiled.result
    entry = result.entry
    if result.reused:
        out.print(
            f"Entry [bold]{entry.short_id}[/bold] ({entry.name}) already holds sizes "
            f"{', '.join(entry.size_labels)} for this environment and these sources; "
            "nothing compiled (--force compiles again)."
        )
        return
    table = Table(title=f"Compiled {entry.name} on {entry.device}", title_justify="left")
    for column in (*TIMING_COLUMNS, "fx graph hit/miss", "aot_autograd hit/miss"):
        table.add_column(column, justify="right")
    for report in result.reports:
        c = report.counters
        table.add_row(
            *timing_cells(report),
            f"{c['fxgraph_cache_hit']}/{c['fxgraph_cache_miss']}",
            f"{c['autograd_cache_hit']}/{c['autograd_cache_miss']}",
        )
    out.print(table)
    aot = entry.aot
    packages = aot.packages or PackageStatus("skipped", "not built", None)
    for what, status, reason, spent in (
        ("AOTInductor packages", packages.status, packages.reason, entry.package_seconds),
        ("AOT-compiled functions", aot.status, aot.reason, entry.aot_seconds),
    ):
        if status == "stored":
            out.print(f"{what} stored for every size ({sum(spent.values()):.1f} s).")
        else:
            out.print(f"{what} {status}: {reason}", soft_wrap=True)
    out.print(
        f"Stored entry [bold]{entry.short_id}[/bold] ({entry.name}): {len(entry.all_files)} files, "
        f"{human_bytes(entry.bytes)} ({human_bytes(result.new_bytes)} new) in {result.seconds:.1f} s."
    )
