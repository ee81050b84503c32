"""`ccache run --capture NAME -- CMD`: store what any command compiles as an entry.

CMD runs with an empty Inductor cache of its own (Triton's inside it) in the store's
staging area, an empty cache root for each engine (vLLM's VLLM_CACHE_ROOT, SGLang's
SGLANG_JIT_CACHE_ROOT and every `--cache-env VAR`: in_program/engines.py), and a start-up
hook (`ccache_cli/startup_hook`) that records, in every Python process CMD starts, the
files Dynamo traces, the engines' versions and the machine's key components, and
compiles the calls of its function compiles into functions that later runs load
(serve/functions.py). When CMD succeeds, the files it wrote in those folders become the
entry's blobs, and the records, the command line and the engines' versions its key;
when it fails, nothing is stored.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ccache_cli.errors import BadInputError, CcacheError
from ccache_cli.in_program import engines, fingerprint
from ccache_cli.in_program.usage import VIEW_ENV
from ccache_cli.key import interpreter, sources
from ccache_cli.serve.activation import with_startup_hook
from ccache_cli.serve.function_capture import CAPTURE_FUNCTIONS_ENV, CAPTURE_RECORDS_ENV, FUNCTION_RECORDS
from ccache_cli.store import manifest
from ccache_cli.store.artifacts import BYTECODE_PREFIX, ENGINES_PREFIX, FUNCTIONS_PREFIX
from ccache_cli.store.manifest import Manifest
from ccache_cli.store.staging import space_free, stage_artifacts, stage_bytecode_list, staged_blobs
from ccache_cli.store.store import Store

CAPTURE_BYTECODE_ENV = "CCACHE_CLI_CAPTURE_BYTECODE"  # 0: the start-up hook records no .pyc


class CaptureError(CcacheError):
    """The captured command failed, or compiled nothing that could be stored."""


@dataclass(frozen=True)
class CaptureResult:
    entry: Manifest
    new: bool  # False: an identical entry was already stored
    files: int
    seconds: float
    functions_not_stored: tuple[str, ...] = ()  # function compiles that got no stored code, with why

    @property
    def functions(self) -> int:
        return sum(self.entry.totals.functions.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "entry": self.entry.id,
            "name": self.entry.name,
            "new": self.new,
            "files": self.files,
            "bytes": self.entry.bytes,
            "seconds": round(self.seconds, 3),
            "engines": {cache.var: cache.files for cache in self.entry.engine_caches()},
            "functions": self.functions,
            "functions_not_stored": list(self.functions_not_stored),
        }


def check_cache_envs(cache_envs: Sequence[str]) -> list[str]:
    """Every engine cache root a capture gives its command: vLLM's and `cache_envs`
    (BadInputError for a name that cannot be one)."""
    for var in cache_envs:
        if (problem := engines.var_problem(var)) is not None:
            raise BadInputError(f"--cache-env {var!r}: {problem}")
    return list(dict.fromkeys([*engines.KNOWN_ENGINES, *cache_envs]))


def capture(
    store: Store,
    name: str,
    command: Sequence[str],
    stdout: int | None = None,
    cache_envs: Sequence[str] = (),
    bytecode: bool = True,
    functions: bool = True,
) -> CaptureResult:
    """Run `command` to completion on an empty cache and store what it compiled;
    its standard output goes to `stdout` (a file descriptor) if given. Each of
    `cache_envs` names an engine cache root it gets empty, and whose files are stored;
    without `functions`, its function compiles are not captured (serve/function_capture.py);
    without `bytecode`, the .pyc of the modules it imported are not."""
    roots = check_cache_envs(cache_envs)
    with store.staging() as staging, contextlib.ExitStack() as stack:
        (staging / "artifacts" / "inductor").mkdir(parents=True)
        artifacts = stack.enter_context(space_free(staging / "artifacts"))
        inductor = artifacts / "inductor"
        engine_roots = {var: artifacts / ENGINES_PREFIX / var for var in roots}
        for folder in engine_roots.values():
            folder.mkdir(parents=True)
        records = staging / "records"
        records.mkdir()
        env = {var: value for var, value in os.environ.items() if var not in ("TRITON_CACHE_DIR", VIEW_ENV)}
        env.update(
            {
                "TORCHINDUCTOR_CACHE_DIR": str(inductor),
                CAPTURE_RECORDS_ENV: str(records),
                **({CAPTURE_FUNCTIONS_ENV: str(artifacts / "functions")} if functions else {}),
                CAPTURE_BYTECODE_ENV: "1" if bytecode else "0",
                "PYTHONPATH": with_startup_hook(os.environ.get("PYTHONPATH")),
                **{var: str(folder) for var, folder in engine_roots.items()},
            }
        )
        started = time.perf_counter()
        code = _run(command, env, stdout)
        seconds = time.perf_counter() - started
        if code != 0:
            raise CaptureError(f"{command[0]} exited with code {code}; nothing was stored")
        written = [var for var, folder in engine_roots.items() if engines.files_under(str(folder))]
        if not written and not any(path.is_file() for path in inductor.rglob("*")):
            raise CaptureError(
                f"{command[0]} wrote nothing to the Inductor cache or to an engine's cache root "
                f"({', '.join(engine_roots)}): it compiled nothing with torch.compile"
            )
        for var in set(engine_roots) - set(written):  # lock files or empty folders at most
            shutil.rmtree(engine_roots[var])
        process_records = [json.loads(path.read_text()) for path in sorted(records.glob("*.json"))]
        record = _merged_record(process_records, bool(written))
        if record["device"] in fingerprint.PRIMARY_DEVICES:  # as precompile: inspect can then answer without torch
            store.save_machine_fingerprint(fingerprint.probe_digest(), record["machine"])
        key = {
            "fingerprint": fingerprint.entry_fingerprint(record["machine"], record["device"]),
            "compile": {
                "backend": "inductor",
                "device": record["device"],
                "sizes": [],
                "dynamic": False,
                "mode": None,
                "captured": list(command),
                **({} if bytecode else {"bytecode": False}),
                **(
                    {
                        "engines": {var: _engine_version(process_records, var) for var in written},
                        "engine_settings": {var: engines.settings(var, os.environ) for var in written},
                    }
                    if written
                    else {}
                ),
            },
            "model": None,
            "inputs": {},
            "sources": [source.__dict__ for source in record["sources"]],
        }
        stored_bytecode = _gather_bytecode(records, process_records, staging / "artifacts")
        functions, not_stored = _captured_functions(records / FUNCTION_RECORDS, artifacts)
        files, _ = stage_artifacts(store, staging, staging / "artifacts")
        own, bytecode_summary = stage_bytecode_list(store, staging, files, stored_bytecode)
        entry = manifest.build(
            name=name,
            key=key,
            lookup=None,
            timings={"sizes": [], "aot": None, "captured_s": round(seconds, 3)},
            aot={"status": "disabled", "reason": "captured from a command"},
            functions=functions,
            bytecode_summary=bytecode_summary,
            compiled_at=str(inductor),
            files=own,
        )
        [(entry, new)] = store.publish([entry], staging, staged_blobs(files) | staged_blobs(own))
    return CaptureResult(entry, new, len(files), seconds, not_stored)


def _run(command: Sequence[str], env: dict[str, str], stdout: int | None) -> int:
    """Run the command to completion; Ctrl-C reaches it (same process group), not us."""
    try:
        process = subprocess.Popen(list(command), env=env, stdout=stdout)
    except FileNotFoundError:
        raise BadInputError(f"command not found: {command[0]}") from None
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return process.wait()
    finally:
        signal.signal(signal.SIGINT, previous)


def _gather_bytecode(
    records: Path, process_records: list[dict[str, Any]], artifacts: Path
) -> dict[str, dict[str, str]]:
    """Move the bytecode each process recorded (under `records`) into the entry's
    artifacts (the first process to record a module wins: the same source gives the
    same bytecode)."""
    gathered: dict[str, dict[str, str]] = {}
    for record in process_records:
        folder = records / f"bytecode-{record['pid']}"
        for stored, info in record["bytecode"].items():
            if stored in gathered:
                continue
            target = artifacts / stored
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(folder / stored[len(BYTECODE_PREFIX) :], target)
            gathered[stored] = info
    return gathered


def _captured_functions(records: Path, artifacts: Path) -> tuple[dict[str, Any], tuple[str, ...]]:
    """What the command's processes recorded of their function compiles: those stored
    (entry path -> description, as the manifest holds it), and why the others were not."""
    stored: dict[str, Any] = {}
    not_stored = []
    for path in sorted(records.glob("*.json")) if records.is_dir() else ():
        record = json.loads(path.read_text())
        if "error" in record:
            not_stored.append(f"{record['function']}: {record['error']}")
            continue
        entry_path = f"{FUNCTIONS_PREFIX}{record['file']}"
        if (artifacts / entry_path).is_file():
            stored[entry_path] = {
                name: record[name] for name in ("function", "code", "mode", "inference_mode", "globals", "assumptions")
            }
    return stored, tuple(dict.fromkeys(not_stored))


def _engine_version(process_records: list[dict[str, Any]], var: str) -> str | None:
    """The version of the engine whose cache root `var` names, as its processes recorded it."""
    found = sorted({record["engines"][var] for record in process_records if var in record.get("engines", {})})
    return found[-1] if found else None


def _merged_record(process_records: list[dict[str, Any]], engine_files: bool) -> dict[str, Any]:
    """What the key needs, from the records of the processes that compiled (with
    `engine_files`, of those that imported torch: an engine may compile in one)."""
    compiled = [record for record in process_records if record["traced"] or (engine_files and "torch_dir" in record)]
    if not compiled:
        raise CaptureError(
            "no Python process of the command traced anything with torch.compile that ccache could see "
            "(a process that replaces PYTHONPATH, or exits without running exit handlers, is not seen)"
        )
    devices = sorted({record["device"] for record in compiled if "device" in record})
    if not devices:
        raise CaptureError(f"could not read the machine's key components: {compiled[0].get('error')}")
    device = devices[-1]  # a GPU over the CPU when processes differ
    on_device = [record for record in compiled if record.get("device") == device]
    machine = next((record["machine"] for record in on_device if record.get("machine")), None)
    if machine is None:  # none could say (killed at exit, or traced nothing): ask its interpreter
        machine = interpreter.machine_fingerprint(on_device[0]["executable"], device)
    traced_sources: dict[str, sources.Source] = {}
    for record in compiled:
        for source in sources.collect(record["traced"], record["sys_path"], record.get("torch_dir"), record["modules"]):
            traced_sources[source.path] = source
    return {"device": device, "machine": machine, "sources": [traced_sources[p] for p in sorted(traced_sources)]}
