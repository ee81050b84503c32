"""Activation: the environment that makes stored entries active for a program
(`ccache run`, `ccache env`) or for the running process (`ccache_cli.activate()`), and
the register of the processes that use a view, which gc reads.

Activation points TORCHINDUCTOR_CACHE_DIR at the entries' view, unsets
TRITON_CACHE_DIR (Triton's kernels live inside the Inductor cache, as at precompile
time), points each captured engine cache's variable (VLLM_CACHE_ROOT, a `--cache-env`)
at its writable copy in the view, sets PYTHONPYCACHEPREFIX to the view's bytecode tree and the Inductor settings
the entries were compiled with, and puts the start-up hook on PYTHONPATH, which
records usage and says why a process missed (in_program/misses.py).
"""

from __future__ import annotations

import atexit
import dataclasses
import os
import shlex
import shutil
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from ccache_cli.errors import BadInputError, EntryNotFoundError
from ccache_cli.in_program import fingerprint, imports, misses, relocate, usage
from ccache_cli.in_program.usage import VIEW_ENV
from ccache_cli.key import interpreter
from ccache_cli.key.compat import fits, this_machine
from ccache_cli.serve import decisions, routing
from ccache_cli.serve.views import ended_processes, ensure_view
from ccache_cli.store.artifacts import ENGINES_PREFIX
from ccache_cli.store.manifest import Manifest
from ccache_cli.store.store import Store

COMPILED_AT_ENV = "CCACHE_CLI_COMPILED_AT"  # the folders the active entries were compiled in
BYTECODE_ENV = "CCACHE_CLI_BYTECODE"  # 0: do not serve stored bytecode
RUN_PID_ENV = "CCACHE_CLI_RUN_PID"  # the process `ccache run` became (startup_hook/)
_STARTUP_HOOK_DIR = Path(__file__).resolve().parent.parent / "startup_hook"


@dataclass(frozen=True)
class Activation:
    """Entries made available to a process, and the environment that does it."""

    entries: tuple[Manifest, ...]
    view: Path
    set_env: dict[str, str]
    unset_env: tuple[str, ...]
    serves_bytecode: bool  # whether the view serves stored bytecode
    replaced: dict[str, str]  # a user's own settings this activation replaces: say so
    notes: tuple[str, ...] = ()  # what the user should know, such as a fallback taken

    def apply(self, environ: dict[str, str] | os._Environ[str]) -> None:
        for name in self.unset_env:
            environ.pop(name, None)
        environ.update(self.set_env)

    def to_json(self) -> dict[str, Any]:
        return {
            "entries": [entry.id for entry in self.entries],
            "view": str(self.view),
            "set": self.set_env,
            "unset": list(self.unset_env),
        }

    def shell_exports(self) -> str:
        lines = [f"export {name}={shlex.quote(value)}" for name, value in self.set_env.items()]
        return "\n".join([*lines, *(f"unset {name}" for name in self.unset_env)]) + "\n"


def start(
    store: Store, refs: Sequence[str], route: bool = True, command: Sequence[str] = (), guards: str | None = None
) -> Activation:
    """Make the named entries (default: all that fit) active in this process's
    environment, for `command`, about to be exec'd in its place (`ccache run`): for the
    Python it runs, its bytecode and entries (key/interpreter.py). Without `route`,
    the command's torch.compile calls are left alone; `guards`: the guard policy
    (serve/routing.py)."""
    target, note = _target_of(store, command)
    machine = this_machine(store) if target is None else _machine_of(store, target)
    active = activation(store, select_entries(store, refs, machine), None if target is None else target.roots)
    if note is not None:
        active = dataclasses.replace(active, notes=(*active.notes, note))
    if not route:
        os.environ[routing.ROUTE_ENV] = "0"
    if guards is not None:
        os.environ[decisions.GUARDS_ENV] = guards
    os.environ[RUN_PID_ENV] = str(os.getpid())  # exec keeps it: the command's first process says what it did
    register_user(active, store, "run")  # exec keeps the pid: gc sees the command as the user
    active.apply(os.environ)
    # The start-up hook adds each Python process's cache hits and misses at exit, and
    # says why where it missed.
    os.environ[usage.LOGS_ENV] = os.pathsep.join(usage.log_paths(store, [entry.id for entry in active.entries]))
    os.environ["PYTHONPATH"] = with_startup_hook(os.environ.get("PYTHONPATH"))
    return active


def _target_of(store: Store, command: Sequence[str]) -> tuple[interpreter.Target | None, str | None]:
    """The interpreter `command` runs, where it is not this one; and a note where it
    cannot be told, so that this one's layout is used."""
    if not command or shutil.which(command[0]) is None:  # exec says it is not found
        return None, None
    try:
        executable = interpreter.find(command)
        if interpreter.is_this_interpreter(executable):
            return None, None
        tops = {top for entry in store.scan().entries for top in entry.totals.bytecode_tops}
        return interpreter.probe(executable, tops), None
    except Exception as exc:  # whatever the command or its interpreter does, CMD still runs
        return None, (
            f"cannot tell which Python `{command[0]}` runs ({exc}); entries and bytecode are chosen "
            f"for ccache's own, {sys.executable}"
        )


def _machine_of(store: Store, target: interpreter.Target) -> tuple[dict[str, Any], bool]:
    """The target's exact fingerprint where one was recorded, else what it read without torch."""
    cached = store.cached_machine_fingerprint(target.digest)
    return (cached, True) if cached is not None else (dict(target.static), False)


def replaced_warnings(active: Activation) -> list[str]:
    return [
        *(
            f"{name}={previous} is replaced by the stored bytecode tree ({BYTECODE_ENV}=0 keeps yours)"
            for name, previous in active.replaced.items()
        ),
        *active.notes,
    ]


def exec_command(command: Sequence[str]) -> NoReturn:
    """Replace this process with `command`: its exit code, its signals."""
    try:
        os.execvp(command[0], list(command))
    except FileNotFoundError:
        raise BadInputError(f"command not found: {command[0]}") from None


def with_startup_hook(pythonpath: str | None) -> str:
    """PYTHONPATH with ccache-cli's start-up hook (a `sitecustomize`) first: under
    `ccache run` it records usage results, under `--capture` what the key needs."""
    return os.pathsep.join(filter(None, [str(_STARTUP_HOOK_DIR), pythonpath]))


def register_user(active: Activation, store: Store, by: str) -> None:
    """Mark the view as used by this process (gc keeps its entries while it runs) and
    record the use. Neither may stop a program: a read-only place is skipped."""
    users = active.view / "users"
    try:
        users.mkdir(exist_ok=True)
        for name in ended_processes(users):
            os.unlink(users / name)
        (users / str(os.getpid())).touch()
    except OSError:
        pass
    usage.record(store, [entry.id for entry in active.entries], by)


def select_entries(
    store: Store, refs: Sequence[str] = (), machine: tuple[dict[str, Any], bool] | None = None
) -> list[Manifest]:
    """The named entries, or every entry that fits `machine` (default: this one)."""
    if refs:
        return [store.find(ref) for ref in refs]
    entries = store.scan().entries
    fitting = fits(entries, *(machine or this_machine(store)))
    if not fitting:
        what = f"none of its {len(entries)} entries fits this machine" if entries else "it holds no entries"
        raise EntryNotFoundError(f"nothing to activate in store {store.root}: {what} (run `ccache inspect`)")
    return fitting


def activation(store: Store, entries: Sequence[Manifest], roots: Mapping[str, str | None] | None = None) -> Activation:
    """The environment that makes `entries` active, building their view if needed.

    The stored bytecode is served through PYTHONPYCACHEPREFIX unless
    CCACHE_CLI_BYTECODE=0; a PYTHONPYCACHEPREFIX of the user's is replaced, and
    reported in `replaced` so that the caller says so. `roots`: where another
    interpreter's top-level modules live, for its bytecode tree (key/interpreter.py).
    """
    view, serves_bytecode = ensure_view(store, entries, roots)
    # Triton then keeps its kernels inside the Inductor cache, as at precompile time.
    set_env = {"TORCHINDUCTOR_CACHE_DIR": str(view / "inductor"), VIEW_ENV: str(view)}
    notes = []
    for var in sorted({var for entry in entries for var in entry.compile.engines}):
        set_env[var] = str(view / ENGINES_PREFIX / var)
        if os.environ.get(var) not in (None, "", set_env[var]):
            notes.append(f"{var}={os.environ[var]} is replaced by the captured engine cache in the view")
    compiled_at = sorted({entry.compiled_at for entry in entries if entry.compiled_at})
    if compiled_at:  # where autotuning results are looked up (relocate.py)
        set_env[COMPILED_AT_ENV] = os.pathsep.join(compiled_at)
    # Inductor settings the entries were compiled with are part of every graph's cache
    # key: the ones they agree on, and the user has not set, are set as they were.
    for name, value in _agreed_inductor_env(entries).items():
        if name not in os.environ:
            set_env[name] = value
    replaced = {}
    if serves_bytecode and os.environ.get(BYTECODE_ENV, "1") != "0":
        set_env["PYTHONPYCACHEPREFIX"] = str(view / "bytecode")
        if os.environ.get("PYTHONPYCACHEPREFIX") not in (None, "", set_env["PYTHONPYCACHEPREFIX"]):
            replaced["PYTHONPYCACHEPREFIX"] = os.environ["PYTHONPYCACHEPREFIX"]
    unset = () if "TRITON_CACHE_DIR" in set_env else ("TRITON_CACHE_DIR",)
    return Activation(tuple(entries), view, set_env, unset, serves_bytecode, replaced, tuple(notes))


def _agreed_inductor_env(entries: Sequence[Manifest]) -> dict[str, str]:
    """The TORCHINDUCTOR_* settings every entry that records them was compiled with."""
    settings = [dict(entry.compile.inductor_env) for entry in entries if "inductor_env" in entry.compile.document]
    if not settings:
        return {}
    return {
        name: value for name, value in settings[0].items() if all(other.get(name) == value for other in settings[1:])
    }


_reporting: list[bool] = []  # set once this process reports its usage at exit


def activate(
    store: Store | str | os.PathLike[str] | None = None, entry: str | Sequence[str] | None = None
) -> Activation:
    """Make stored entries active in this process (see `ccache_cli.activate`)."""
    store = store if isinstance(store, Store) else Store(store)
    refs = [entry] if isinstance(entry, str) else list(entry or ())
    active = activation(store, select_entries(store, refs))
    active.apply(os.environ)
    register_user(active, store, "activate")
    if "PYTHONPYCACHEPREFIX" in active.set_env and sys.pycache_prefix is None:
        sys.pycache_prefix = active.set_env["PYTHONPYCACHEPREFIX"]  # for the modules this process imports next
    for name, previous in active.replaced.items():
        warnings.warn(f"ccache_cli.activate() replaced {name}={previous}", stacklevel=2)
    relocate.install(
        active.set_env.get(COMPILED_AT_ENV, "").split(os.pathsep),
        active.set_env["TORCHINDUCTOR_CACHE_DIR"],
        imports.when_imported,
    )
    if routing.enabled():
        routing.install_when_torch_is_imported()
    if usage.LOGS_ENV in os.environ or _reporting:  # the start-up hook reports, or an earlier activate()
        return active
    _reporting.append(True)
    atexit.register(
        misses.report_at_exit,
        str(active.view),
        usage.log_paths(store, [e.id for e in active.entries]),
        fingerprint,
        usage,
        "activate",
        decisions.summary,
    )
    return active
