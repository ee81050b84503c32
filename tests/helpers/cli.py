"""The real CLI, run as a user would, and this machine's fingerprint (learned once per run)."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

MODELS = Path(__file__).resolve().parent.parent / "models"
FINGERPRINT_ENV = "CCACHE_CLI_TEST_FINGERPRINT"  # `ccache fingerprint --json`, learned once per run
FINGERPRINT_FILE_ENV = "CCACHE_CLI_TEST_FINGERPRINT_FILE"  # where the controller writes it
EXAMPLE = "ccache_cli.examples.tiny_transformer"


def ccache(
    *args: str,
    store: Path | None = None,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    python_flags: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess, as a user would."""
    command = [sys.executable, *python_flags, "-m", "ccache_cli"]
    if store is not None:
        command += ["--store", str(store)]
    full_env = {**os.environ, "COLUMNS": "200", **(env or {})}
    full_env.pop("CCACHE_CLI_DEBUG", None)
    return subprocess.run(command + list(args), capture_output=True, text=True, cwd=cwd, env=full_env, timeout=900)


def imported_modules(result: subprocess.CompletedProcess[str]) -> set[str]:
    """Top-level module names from `python -X importtime` output."""
    names = set()
    for line in result.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


def ccache_json(*args: str, **kwargs: object) -> dict:
    result = ccache(*args, "--json", **kwargs)  # type: ignore[arg-type]
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@functools.cache
def cpu_fingerprint() -> dict:
    """This machine's CPU fingerprint, as an entry compiled here would carry it."""
    from ccache_cli.in_program.fingerprint import entry_fingerprint

    return entry_fingerprint(json.loads(machine_fingerprint_json()), "cpu")


def machine_fingerprint_json() -> str:
    """`ccache fingerprint --json`, learned once per run where the controller did (in
    the background: waited for here), else once per process."""
    if FINGERPRINT_ENV not in os.environ:
        learned_file = Path(os.environ.get(FINGERPRINT_FILE_ENV, "/nonexistent"))
        deadline = time.monotonic() + 300
        while FINGERPRINT_FILE_ENV in os.environ and time.monotonic() < deadline:
            if learned_file.is_file():
                os.environ[FINGERPRINT_ENV] = learned_file.read_text()
                return os.environ[FINGERPRINT_ENV]
            if learned_file.with_suffix(".failed").exists():
                break
            time.sleep(0.05)
        learned = ccache("fingerprint", "--json")
        assert learned.returncode == 0, learned.stderr
        os.environ[FINGERPRINT_ENV] = learned.stdout
    return os.environ[FINGERPRINT_ENV]
