"""How output reaches people and machines: rich for people, JSON for machines.

Where each output contract lives: a command's `--json` document is its result's
`to_json()`, defined beside the result (the frozen dataclass the core returns, in
check/, serve/ and store/, or a CLI wrapper of one in cli/): `show` here prints that or
the human view. Two outputs are formats of their own: `verify --junit`'s XML
(cli/verify.py `junit_xml`) and `ccache env`'s shell exports (serve/activation.py
`Activation.shell_exports`, which `activate()` uses too). Everything human is
formatted in cli/.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from rich.cells import cell_len
from rich.console import COLOR_SYSTEMS, Console
from rich.style import Style


def _console(stderr: bool) -> Console:
    # In a pipe or a CI log nothing is cut to fit a width: ids and versions are shown
    # whole. rich honours NO_COLOR (and FORCE_COLOR), and draws no progress in pipes.
    stream = sys.stderr if stderr else sys.stdout  # None where the program was started with it closed
    return Console(stderr=stderr, highlight=False, width=None if stream is not None and stream.isatty() else 100_000)


out = _console(stderr=False)
err = _console(stderr=True)  # progress and summaries that keep stdout clean
_warnings = _console(stderr=True)  # --quiet leaves warnings and errors


class Result(Protocol):
    """What a command returns: `to_json()` is its --json document (the contract scripts
    rely on); a command's human view prints the rest."""

    def to_json(self) -> dict[str, Any]: ...


R = TypeVar("R", bound=Result)


def show(result: R, json_output: bool, human: Callable[[R], None]) -> None:
    """Print a command's result: its warnings on stderr, then JSON or the human view."""
    for message in getattr(result, "warnings", ()):
        warn(message)
    if json_output:
        _emit_json(result.to_json())
    else:
        human(result)


def set_quiet() -> None:
    """--quiet: only errors, warnings and the data a command was asked for (--json, env)."""
    out.quiet = err.quiet = True


def _emit_json(data: Any) -> None:
    # Indented for a person at a terminal; one line for a program, which json's C
    # encoder writes (indenting falls back to the pure-Python one).
    indent = 2 if sys.stdout is not None and sys.stdout.isatty() else None
    write_data(json.dumps(data, indent=indent, sort_keys=True) + "\n")


def write_data(text: str) -> None:
    """Write what a command was asked for (JSON, shell exports) to stdout, as it is."""
    if sys.stdout is None:  # started with it closed: the data would be lost
        raise OSError(errno.EBADF, "standard output is closed")
    sys.stdout.write(text)


def warn(message: str) -> None:
    _warnings.print(f"[yellow]warning:[/yellow] {message}", soft_wrap=True)


def human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def age(created: str) -> str:
    then = dt.datetime.fromisoformat(created.replace("Z", "+00:00"))
    seconds = max((dt.datetime.now(dt.timezone.utc) - then).total_seconds(), 0)
    for unit, length in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= length:
            return f"{int(seconds // length)}{unit} ago"
    return "just now"


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


# A size's compile timings, as precompile reports them and the manifest records them.
TIMING_COLUMNS = ("size", "first call s", "dynamo s", "aot_autograd s", "inductor s", "kernels s")


def timing_cells(timing: Any) -> list[str]:
    """The TIMING_COLUMNS cells of a precompile SizeReport or a manifest SizeTiming."""
    values = (timing.wall_s, timing.dynamo_s, timing.aot_autograd_s, timing.inductor_s, timing.kernel_compile_s)
    return [timing.label, *map(seconds, values)]


def yes_no(value: bool | None) -> str:
    text, style = yes_no_cell(value)
    return f"[{style}]{text}[/{style}]"


def yes_no_cell(value: bool | None) -> tuple[str, str]:
    return {True: ("yes", "green"), False: ("no", "red"), None: ("?", "yellow")}[value]


Cell = str | tuple[str, str]  # a cell's text, or its text and a rich style


def print_columns(headers: Sequence[str], rows: Sequence[Sequence[Cell]]) -> None:
    """A list of many rows (entries, checks), as aligned columns under a bold header.
    A rich Table measures and renders each cell as an object of its own (1,000 entries
    took 0.8 s to print), and one rich Text with a span per styled cell spent 50 ms
    combining styles: the styled cells are written here with their terminal codes."""
    if out.quiet:
        return
    styled = [[(header, "bold") for header in headers]]
    styled += [[_printable(cell) if isinstance(cell, str) else cell for cell in row] for row in rows]
    lengths = [[cell_len(text) for text, _ in row] for row in styled]
    widths = [max(row[column] for row in lengths) for column in range(len(headers))]
    widths[-1] = 0  # the last column unpadded: no trailing spaces
    lines = [
        "  ".join(
            _painted(text, style) + " " * max(width - length, 0)
            for (text, style), length, width in zip(row, row_lengths, widths)
        ).rstrip()
        for row, row_lengths in zip(styled, lengths)
    ]
    out.file.write("\n".join(lines) + "\n")


def _printable(cell: str) -> tuple[str, None]:
    """A plain cell without the characters a terminal would act on (a carriage return,
    an escape sequence in a value an archive or a registry gave), tabs as spaces."""
    if not cell.isprintable():
        cell = "".join(char for char in cell.expandtabs() if char.isprintable())
    return cell, None


def _painted(text: str, style: str | None) -> str:
    """`text` in a rich `style` as `out` would print it: plain in a pipe, and without
    colours where NO_COLOR is set."""
    if style is None:  # most cells: no look at the terminal
        return text
    system = COLOR_SYSTEMS.get(out.color_system or "")
    if system is None:
        return text
    parsed = Style.parse(style)
    return (parsed.without_color if out.no_color else parsed).render(text, color_system=system)
