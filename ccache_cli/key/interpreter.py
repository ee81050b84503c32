"""The Python a command runs, and what an entry's key and bytecode need to know of it.

ccache-cli may live in an environment of its own (a pipx or `uv tool` install, a
system install beside a server's venv). Then `ccache run -- /srv/venv/bin/python
serve.py` must lay the stored bytecode out for where *that* interpreter finds torch,
and choose entries for its Python and torch; `precompile --python` compiles there.

`find` reads the command the way the kernel and a shell would, without running it: a
Python executable, a script's `#!` line (a console script such as `vllm`), `env` and
`sh -c` where they are plain. `probe` asks the interpreter, once and cheaply (no
torch import), for its version, the key components readable without torch, the
digest that names its cached machine fingerprint, and where its top-level packages
live, by running in_program/fingerprint.py and in_program/bytecode.py there, by path.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ccache_cli.errors import BadInputError

PYTHON_ENV = "CCACHE_CLI_PYTHON"  # precompile's default interpreter
_PYTHON_NAME = re.compile(r"(python|pypy)[0-9.]*[a-z]?")
_SHELLS = ("sh", "bash", "dash", "zsh", "ash")
_SHELL_SYNTAX = re.compile(r"[;&|<>`$(){}\n*?]")
_HOOKED = Path(__file__).resolve().parent.parent / "in_program"
_HOOK = Path(__file__).resolve().parent.parent / "startup_hook"

# Run in the target interpreter: the fingerprint and bytecode modules, loaded by path.
_PROBE = """
import importlib.util, json, sys
def load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
folder, tops = sys.argv[1], json.loads(sys.argv[2])
fingerprint = load("_ccache_cli_probe_fingerprint", folder + "/fingerprint.py")
bytecode = load("_ccache_cli_probe_bytecode", folder + "/bytecode.py")
roots = {}
for top in tops:
    bytecode.source_root(top, roots, every_finder=False)
print(json.dumps({"executable": sys.executable, "static": fingerprint.static_fingerprint(),
                  "digest": fingerprint.probe_digest(), "roots": roots}))
"""


@dataclass(frozen=True)
class Target:
    """An interpreter as `probe` found it."""

    executable: str
    static: Mapping[str, Any]  # the key components readable without torch
    digest: str  # names its exact machine fingerprint once one was recorded
    roots: Mapping[str, str | None]  # top-level module -> the folder holding it


def find(command: Sequence[str], environ: Mapping[str, str] | None = None) -> str:
    """The Python executable `command` runs; BadInputError saying why where it cannot tell."""
    environ = os.environ if environ is None else environ
    words = list(command)
    for _ in range(8):  # wrappers of wrappers, within reason
        if not words:
            raise BadInputError("the command is empty")
        name = os.path.basename(words[0])
        if name == "env":
            words = _after_env(words[1:])
            continue
        if name in _SHELLS and len(words) >= 3 and words[1] == "-c":
            words = _plain_shell_command(words[2])
            continue
        path = _resolve(words[0], environ)
        if _PYTHON_NAME.fullmatch(os.path.basename(path)):
            return path
        interpreter = _shebang(path)
        if interpreter is None:
            raise BadInputError(f"{words[0]} is not a Python executable or a script with a #! line")
        words = [*interpreter, path, *words[1:]]
    raise BadInputError(f"{command[0]} wraps too many commands to follow")


def is_this_interpreter(executable: str) -> bool:
    """Whether `executable` is the Python running ccache-cli (the same file in the same folder)."""
    here = Path(sys.executable)
    there = Path(executable)
    try:
        return there.parent.resolve() == here.parent.resolve() and there.resolve() == here.resolve()
    except OSError:
        return False


def probe(executable: str, tops: Sequence[str] = (), environ: Mapping[str, str] | None = None) -> Target:
    """Ask `executable` what `Target` holds (about 50 ms: no torch import)."""
    found = json.loads(
        _run(executable, [_PROBE, str(_HOOKED), json.dumps(sorted(set(tops)))], environ or os.environ, 60)
    )
    return Target(found["executable"], found["static"], found["digest"], found["roots"])


_MACHINE = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("_ccache_cli_probe_fingerprint", sys.argv[1] + "/fingerprint.py")
fingerprint = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = fingerprint
spec.loader.exec_module(fingerprint)
print(json.dumps(fingerprint.machine_fingerprint(sys.argv[2])))
"""


def machine_fingerprint(executable: str, device: str) -> dict[str, Any]:
    """`executable`'s exact machine fingerprint for `device` (it imports torch there)."""
    return json.loads(_run(executable, [_MACHINE, str(_HOOKED), device], os.environ, 600))


def _run(executable: str, args: list[str], environ: Mapping[str, str], timeout: int) -> str:
    """The last line `executable -c ARGS...` prints, in the environment CMD gets, less
    ccache's start-up hook."""
    environ = dict(environ)
    kept = [entry for entry in environ.get("PYTHONPATH", "").split(os.pathsep) if entry and entry != str(_HOOK)]
    environ["PYTHONPATH"] = os.pathsep.join(kept)
    try:
        result = subprocess.run([executable, "-c", *args], capture_output=True, text=True, env=environ, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BadInputError(f"cannot run {executable}: {getattr(exc, 'strerror', None) or exc}") from None
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise BadInputError(f"{executable} could not be asked for its environment: {last}")
    return lines[-1]


def _resolve(word: str, environ: Mapping[str, str]) -> str:
    if os.sep in word:
        if not os.path.isfile(word):
            raise BadInputError(f"{word} does not exist")
        return word
    found = shutil.which(word, path=environ.get("PATH"))
    if found is None:
        raise BadInputError(f"{word} is not on PATH")
    return found


def _shebang(path: str) -> list[str] | None:
    """The interpreter and argument of a script's #! line, or None."""
    try:
        with open(path, "rb") as handle:
            first = handle.readline(512)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    words = first[2:].decode(errors="replace").split()
    return words or None


def _after_env(words: list[str]) -> list[str]:
    """What `env [-S] [NAME=VALUE]... COMMAND` runs; other options are not plain."""
    if words and words[0] == "-S" and len(words) > 1:  # a #! line's `env -S "python3 -u"`
        words = [*_split(words[1]), *words[2:]]
    elif words and words[0].startswith("-S"):
        words = [*_split(words[0][2:]), *words[1:]]
    at = 0
    while at < len(words) and "=" in words[at] and not words[at].startswith("-"):
        at += 1
    if at < len(words) and words[at].startswith("-"):
        raise BadInputError(f"env {words[at]} is not a plain env wrapper")
    return words[at:]


def _plain_shell_command(script: str) -> list[str]:
    """`sh -c SCRIPT` where SCRIPT is one plain command (`exec` and assignments allowed)."""
    if _SHELL_SYNTAX.search(script):
        raise BadInputError("the sh -c script is more than one plain command")
    words = _split(script)
    while words and (words[0] == "exec" or ("=" in words[0] and not words[0].startswith("-"))):
        words = words[1:]
    return words


def _split(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError as exc:  # an unbalanced quote
        raise BadInputError(f"cannot read {text!r}: {exc}") from None
