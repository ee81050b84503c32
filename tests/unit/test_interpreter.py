"""Unit tests of how `ccache run` tells which Python a command runs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from ccache_cli.errors import BadInputError
from ccache_cli.key.interpreter import find, is_this_interpreter


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "venv" / "bin"
    folder.mkdir(parents=True)
    (folder / "python3.12").write_text("")  # stands for an interpreter: only its name is read
    os.chmod(folder / "python3.12", 0o755)
    for name, line in (
        ("vllm", f"#!{folder / 'python3.12'}\n"),
        ("served", "#!/usr/bin/env python3.12\n"),
        ("tool", "#!/bin/sh\n"),
        ("long", "#!/usr/bin/env -S python3.12 -u\r\n"),
        ("binary", "\x7fELF"),
    ):
        (folder / name).write_text(line + "import sys\n")
        os.chmod(folder / name, 0o755)
    return folder


def test_pythons_console_scripts_and_plain_wrappers(bin_dir: Path) -> None:
    env = {"PATH": f"{bin_dir}{os.pathsep}/usr/bin:/bin"}
    python = str(bin_dir / "python3.12")
    for command in (
        [python, "serve.py"],
        ["python3.12", "-m", "vllm.entrypoints.openai.api_server"],
        ["vllm", "serve", "model"],  # a console script's #! line
        [str(bin_dir / "vllm")],
        ["served"],  # #!/usr/bin/env python3.12
        ["env", "CUDA_VISIBLE_DEVICES=0", "vllm", "serve"],
        ["sh", "-c", "exec OMP_NUM_THREADS=4 python3.12 serve.py --port 8000"],
        ["/usr/bin/env", "python3.12", "x.py"],
        ["env", "-S", "python3.12 -u", "x.py"],
        ["long"],  # #!/usr/bin/env -S python3.12 -u, with CRLF line ends
    ):
        assert find(command, env) == python, command


@pytest.mark.parametrize(
    ("command", "why"),
    [
        (["tool"], "is not a Python executable"),
        (["binary"], "is not a Python executable"),
        (["nowhere-to-be-found"], "is not on PATH"),
        (["/no/such/python"], "does not exist"),
        (["env", "-u", "X", "python3.12"], "not a plain env wrapper"),
        (["sh", "-c", "cd /srv && python3.12 serve.py"], "more than one plain command"),
        (["bash", "-c", "python3.12 $SCRIPT"], "more than one plain command"),
        (["sh", "-c", "python3.12 it's"], "cannot read"),
        ([], "empty"),
    ],
)
def test_what_it_cannot_tell_it_says(bin_dir: Path, command: list[str], why: str) -> None:
    with pytest.raises(BadInputError, match=why):
        find(command, {"PATH": f"{bin_dir}{os.pathsep}/usr/bin:/bin"})


def test_this_interpreter_is_recognised() -> None:
    assert is_this_interpreter(sys.executable)
    assert not is_this_interpreter("/usr/bin/python3-not-this-one")
