"""Unit tests of the column lists `inspect` and `verify` print (cli/render.py)."""

from __future__ import annotations

import pytest

from ccache_cli.cli.render import print_columns


def test_columns_align_and_keep_control_characters_from_the_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    # Values from an archive or a registry are any string: none may move the cursor or
    # start an escape sequence.
    print_columns(("id", "gpu", "ok"), [["a1", "H100\r\x1b[2J", ("yes", "green")], ["b\t2", "cpu", ("no", "red")]])
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["id         gpu      ok", "a1         H100[2J  yes", "b       2  cpu      no"]
