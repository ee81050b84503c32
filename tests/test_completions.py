"""Shell completions: generated from the app, up to date, and working in bash."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import typer.main

from ccache_cli.cli.app import app

ROOT = Path(__file__).resolve().parent.parent
COMPLETIONS = ROOT / "completions"


def test_completion_scripts_are_up_to_date() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_completions.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_every_command_and_option_is_in_every_script() -> None:
    group = typer.main.get_command(app)
    texts = {name: (COMPLETIONS / name).read_text() for name in ("ccache.bash", "_ccache", "ccache.fish")}
    for name, command in group.commands.items():
        for param in command.params:
            if param.param_type_name != "option":
                continue
            for option in [*param.opts, *param.secondary_opts]:
                for file, text in texts.items():
                    needle = f"-l {option[2:]}" if file == "ccache.fish" else option
                    assert needle in text, f"{option} of {name} missing from {file}"
        for file, text in texts.items():
            assert name in text, f"command {name} missing from {file}"


def complete(*words: str) -> list[str]:
    """What bash offers for the last word, with the real script loaded."""
    script = (
        f"source {COMPLETIONS / 'ccache.bash'}; COMP_WORDS=({' '.join(repr(w) for w in words)}); "
        f"COMP_CWORD={len(words) - 1}; _ccache; printf '%s\\n' \"${{COMPREPLY[@]}}\""
    )
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    return result.stdout.split()


def test_bash_completes_commands_options_and_paths(tmp_path: Path) -> None:
    assert complete("ccache", "pre") == ["precompile"]
    assert complete("ccache", "--store", "/somewhere", "unpack", "--ex") == ["--export-dir"]
    assert "--older-than" in complete("ccache", "gc", "--")
    (tmp_path / "model.py").write_text("")
    assert complete("ccache", "verify", "--target", str(tmp_path / "mod")) == [str(tmp_path / "model.py")]
