"""The one place output is formatted: rich for people, JSON for machines."""

from __future__ import annotations

import datetime as dt
import json
import sys
from typing import Any

from rich.console import Console

# rich honours NO_COLOR (and FORCE_COLOR), and draws no progress in pipes.
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)  # progress and summaries that keep stdout clean
_warnings = Console(stderr=True, highlight=False)  # --quiet leaves warnings and errors


def set_quiet() -> None:
    """--quiet: only errors, warnings and the data a command was asked for (--json, env)."""
    out.quiet = err.quiet = True


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n")


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


def yes_no(value: bool | None) -> str:
    return {True: "[green]yes[/green]", False: "[red]no[/red]", None: "[yellow]?[/yellow]"}[value]
