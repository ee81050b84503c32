"""The house rules the layout keeps that import-linter cannot check."""

from __future__ import annotations

from pathlib import Path

import ccache_cli

MAX_LINES = 400


def test_no_module_is_over_400_lines() -> None:
    package = Path(ccache_cli.__file__).parent
    long = {
        str(path.relative_to(package)): lines
        for path in sorted(package.rglob("*.py"))
        if (lines := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}, f"split these modules by what they own: {long}"
