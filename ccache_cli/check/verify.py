"""`verify`: will a cache be used, and is it intact? Each check names what fails.

- integrity: every blob present, of its size, hashing to its name; archives are read
  as a stream, never unpacked. A registry artifact is read from its manifest and index
  alone: integrity is then that every entry has its catalog (pull checks each byte).
- compatibility: every key component against this machine or a `--target` fingerprint.
- freshness: every traced source, looked up as it resolves now, hashes as recorded.
- bytecode (this machine only): which stored modules have other sources here; fails
  when torch's or Triton's own files differ from those the entry was compiled with.
- run (store entries, `--run`): see `run_process.py`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ccache_cli.archive.signing import PublicKey
from ccache_cli.archive.unpack import check_blobs, is_archive_path, open_source
from ccache_cli.check import integrity
from ccache_cli.errors import BadInputError, ReportedError
from ccache_cli.in_program import bytecode, engines, fingerprint, usage
from ccache_cli.key import sources
from ccache_cli.registry.reference import is_reference
from ccache_cli.serve import routing
from ccache_cli.store.artifacts import OUTPUTS_PREFIX
from ccache_cli.store.manifest import Manifest, label_order
from ccache_cli.store.schema import ManifestError
from ccache_cli.store.store import Store

_SHOWN = 3  # problems named in one check's detail; the rest are counted


@dataclass(frozen=True)
class Check:
    entry: str  # the entry id
    check: str  # integrity, compatibility, freshness, bytecode or run
    ok: bool
    detail: str


@dataclass(frozen=True)
class VerifyReport:
    checks: tuple[Check, ...]
    target: str  # what compatibility was checked against

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.checks)

    def to_json(self) -> dict[str, Any]:
        checks = [{"entry": c.entry, "check": c.check, "ok": c.ok, "detail": c.detail} for c in self.checks]
        return {"ok": self.ok, "target": self.target, "checks": checks}


def verify(
    store: Store,
    ref: str | None,
    target: Path | None,
    run: bool,
    trusted: Sequence[PublicKey] = (),
    insecure: bool = False,
) -> VerifyReport:
    """Every check of the entries `ref` names: an id prefix or name, an archive (which
    one of the `trusted` keys must have signed, where some are), or (None) the whole store."""
    target_fingerprint = load_target(target) if target is not None else None
    checks: list[Check] = []
    if ref is not None and not is_archive_path(ref) and is_reference(ref):
        if run:
            raise BadInputError("--run needs stored entries: `ccache pull` the artifact, then verify the entries")
        return _verify_remote(
            store, ref, target_fingerprint, str(target) if target is not None else None, insecure, trusted
        )
    if ref is not None and is_archive_path(ref):
        if run:
            raise BadInputError("--run needs stored entries: `ccache unpack` the archive, then verify the entries")
        with open_source(ref) as source:
            entries, broken = check_blobs(source, trusted)
    else:
        if ref is not None:
            entries = [store.find(ref)]
        else:
            scan = store.scan(whole=True)
            entries = list(scan.entries)
            checks += [Check("?", "integrity", False, warning) for warning in scan.warnings]
        broken = integrity.broken_store_blobs(store, entries)
    if not entries and not checks:
        raise BadInputError(f"nothing to verify: no entries in {ref or store.root}")
    machine = target_fingerprint or this_machine_exact(store)
    search = sources.search_path()
    checks += static_checks(entries, broken, machine, search)
    if target is None:  # bytecode matches the sources of the machine that runs it, not a target's
        looked: dict[int, tuple[list[str], int]] = {}  # entries sharing a bytecode list share its check
        checks += [bytecode_check(entry, looked) for entry in entries if entry.bytecode_listed]
    unnamed = integrity.unnamed_broken_blobs(entries, broken)
    checks += [
        Check("?", "integrity", False, f"blob {sha[:12]} (a file of a bytecode list): {why}") for sha, why in unnamed
    ]
    if run:
        checks += [run_check(store, entry, search) for entry in entries]
    return VerifyReport(tuple(checks), str(target) if target is not None else "this machine")


def _verify_remote(
    store: Store,
    reference: str,
    target: dict[str, Any] | None,
    target_name: str | None,
    insecure: bool,
    trusted: Sequence[PublicKey],
) -> VerifyReport:
    """Compatibility and freshness of a pushed artifact's entries, from its manifest and
    index alone (no blob is downloaded); with `trusted` keys, its signature first."""
    from ccache_cli.registry import client, transfer

    artifact, index = transfer.read_listing(client.Remote(reference, insecure), trusted)
    machine = target or this_machine_exact(store)
    checks = []
    for entry in index.entries:
        layer = artifact.catalogs[entry.id]
        detail = f"catalog {layer.digest[7:19]} listed in the manifest; `ccache pull` checks every blob it downloads against its name"
        checks.append(Check(entry.id, "integrity", True, detail))
        checks += [c for c in static_checks([entry], {}, machine, sources.search_path()) if c.check != "integrity"]
    return VerifyReport(tuple(checks), target_name or "this machine")


def load_target(path: Path) -> dict[str, Any]:
    """A fingerprint written by `ccache fingerprint --json` on the deployment machine."""
    try:
        target = json.loads(path.read_text())
    except OSError as exc:
        raise BadInputError(f"cannot read --target {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise BadInputError(f"--target {path} is not JSON ({exc}); write it with `ccache fingerprint --json`") from exc
    if not isinstance(target, dict) or not set(fingerprint.BUILD_COMPONENTS) <= set(target):
        raise BadInputError(f"--target {path} is not a fingerprint; write it with `ccache fingerprint --json`")
    return target


def this_machine_exact(store: Store) -> dict[str, Any]:
    """This machine's full fingerprint: cached by an earlier run, else asked of torch."""
    probe = fingerprint.probe_digest()
    cached = store.cached_machine_fingerprint(probe)
    if cached is not None and fingerprint.knows(cached):
        return cached
    machine = fingerprint.machine_fingerprint()
    store.save_machine_fingerprint(probe, machine)
    return machine


def static_checks(
    entries: Sequence[Manifest], broken_blobs: dict[str, str], target: dict[str, Any], search_path: Sequence[str]
) -> list[Check]:
    """Integrity, compatibility and freshness of each entry.

    `broken_blobs` maps a blob's sha256 to what is wrong with it.
    """
    checks = []
    lookups = sources.Lookups()
    for entry in entries:
        problems = integrity.problems(entry, broken_blobs)
        checks.append(_check(entry, "integrity", problems, f"{integrity.file_count(entry)} files intact"))
        mismatches = [str(m) for m in fingerprint.mismatches(entry.fingerprint, entry.device, target)]
        checks.append(_check(entry, "compatibility", mismatches, "every key component matches"))
        stale = [
            f"{status.state}: {status.source.path}" + (f" (at {status.found_at})" if status.found_at else "")
            for status in sources.check(entry.sources, search_path, lookups)
            if status.state != "fresh"
        ]
        checks.append(_check(entry, "freshness", stale, f"{len(entry.sources)} traced sources unchanged"))
        if entry.stores_aot_code:
            checks.append(assumptions_check(entry))
        if entry.compile.engines:
            checks.append(engines_check(entry))
    return checks


def engines_check(entry: Manifest) -> Check:
    """Whether each engine whose cache the entry captured is installed here at the
    version it was captured with (an engine of another version compiles again)."""
    problems, found = [], []
    for cache in entry.engine_caches():
        module = engines.KNOWN_ENGINES.get(cache.var)
        here = engines.installed_version(module) if module else None
        if module and cache.version and here is not None and here != cache.version:
            problems.append(f"{cache.var}: captured with {module} {cache.version}, this environment has {here}")
        if module and here is None:
            found.append(f"{cache.var} ({module} is not installed beside ccache-cli: its version is told at run time)")
        else:
            found.append(
                f"{cache.var} ({module} {here})" if module else f"{cache.var} (an engine ccache does not know)"
            )
    return _check(entry, "engines", problems, f"engine caches captured for this environment: {', '.join(found)}")


def assumptions_check(entry: Manifest) -> Check:
    """Whether every size's stored code records what it assumes of the program, all of it
    checkable. The assumptions on the program itself (its model's attributes, its code,
    its module's globals) need the program: `verify --run` checks them on a model built
    as precompile built it; the runtime checks them on the program's own."""
    if not entry.assumptions:
        return _check(
            entry,
            "assumptions",
            ["none recorded (precompiled by an older ccache-cli), so its stored code never serves: precompile again"],
            "",
        )
    problems, on_program = [], 0
    for size, recorded in sorted(entry.assumptions.items(), key=lambda item: label_order(item[0])):
        unchecked = [a for a in recorded.assumptions if a.check == "unchecked"]
        if unchecked:
            problems.append(
                f"size {size}: {len(unchecked)} assumption(s) ccache cannot check (first: {unchecked[0].guard} on "
                f"{unchecked[0].path}: {unchecked[0].expected}), so its stored code never serves"
            )
        on_program = max(on_program, sum(a.check != "torch_state" for a in recorded.assumptions))
    detail = (
        f"every size records its assumptions; up to {on_program} of them read the program "
        "(attributes, globals, code) and are checked on it when it runs (`verify --run` checks them here)"
    )
    return _check(entry, "assumptions", problems, detail)


def bytecode_check(entry: Manifest, looked: dict[int, tuple[list[str], int]]) -> Check:
    """Which stored modules have other sources here. Python compiles those afresh, so
    this costs start-up time, not correctness; it fails only for torch's and Triton's
    own files, which then are not the build the entry was compiled with (a patched
    torch of the same version), whatever the version says."""
    try:
        stored = entry.bytecode
    except ManifestError as exc:  # an archive's entry, whose bytecode list is a blob in it; or a damaged list
        if entry.read_blob is None:
            return Check(entry.id, "bytecode", True, "checked once unpacked (its bytecode list is a blob of it)")
        return Check(entry.id, "bytecode", False, str(exc))
    if id(stored) not in looked:  # a list is read once per process: one object for every entry naming it
        looked[id(stored)] = bytecode.changed_sources(stored)
    changed, absent = looked[id(stored)]
    compile_stack = [module for module in changed if module.partition(".")[0] in ("torch", "triton")]
    served = f"{len(stored) - absent - len(changed)} of {len(stored)} modules' bytecode matches their sources here"
    if changed:
        served += f"; {len(changed)} have other sources and would be compiled afresh: {_first(changed)}"
    differs = f"torch or Triton differs from the build the entry was compiled with: {_first(compile_stack)}"
    return _check(entry, "bytecode", [differs] if compile_stack else [], served)


def _first(names: Sequence[str], shown: int = 5) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def run_check(store: Store, entry: Manifest, search: Sequence[str]) -> Check:
    """Start a fresh process on a copy of the entry's Inductor cache (see run_process.py)."""
    model = entry.model
    if model is None:  # captured from a command: there is no model to build here
        return Check(
            entry.id, "run", True, "skipped: a captured entry has no model to run; run its command under `ccache run`"
        )
    roots = _import_roots(entry, search)
    with tempfile.TemporaryDirectory(prefix="ccache-verify-") as scratch:
        inductor_dir = Path(scratch) / "inductor"
        store.materialize(entry, inductor_dir, "inductor/")
        request, result_file = Path(scratch) / "request.json", Path(scratch) / "result.json"
        recorded = {
            label: json.loads(store.blob_path(entry.files[path]["sha256"]).read_bytes())
            for label, path in _recorded_outputs(entry).items()
        }
        request.write_text(
            json.dumps(
                {
                    "model": dataclasses.asdict(model),
                    "compile": entry.compile.document,
                    "recorded": recorded,
                    "assumptions": {size: found.to_json() for size, found in entry.assumptions.items()},
                }
            )
        )
        # As activation sets it: the Inductor settings the entry was compiled with.
        env = {**os.environ, **entry.compile.inductor_env, "TORCHINDUCTOR_CACHE_DIR": str(inductor_dir)}
        env.pop("TRITON_CACHE_DIR", None)
        env[routing.ROUTE_ENV] = "0"  # the check is of the caches torch.compile finds, not of the packages
        env["PYTHONPATH"] = os.pathsep.join([*roots, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        process = subprocess.run(
            [sys.executable, "-m", "ccache_cli.check.run_process", str(request), str(result_file)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=None if os.environ.get("CCACHE_CLI_DEBUG") else subprocess.DEVNULL,
        )
        if process.returncode != 0 or not result_file.is_file():
            return Check(entry.id, "run", False, f"the check process exited with code {process.returncode}")
        result = json.loads(result_file.read_text())
    if "error" in result:
        return Check(
            entry.id, "run", False, f"running the model failed: {ReportedError.from_json(result['error']).message}"
        )
    misses = sum(outcome["fxgraph_miss"] for outcome in result["runs"].values())
    hits = sum(1 for outcome in result["runs"].values() if not outcome["fxgraph_miss"])
    usage.record(store, [entry.id], "verify --run", hits=hits, misses=misses)
    problems = []
    for label, outcome in result["runs"].items():
        misses = [
            f"{outcome[key]} {what} cache miss(es)"
            for key, what in (("fxgraph_miss", "FX-graph"), ("autograd_miss", "AOTAutograd"))
            if outcome[key]
        ]
        if misses:
            problems.append(f"size {label}: " + ", ".join(misses) + " (its artifacts are missing or do not match)")
        if outcome["mismatch"]:
            problems.append(f"size {label}: {outcome['mismatch']}")
        if outcome.get("assumption"):
            problems.append(f"size {label}: its stored code would not serve the model: {outcome['assumption']}")
    if result["recompile"]:
        problems.append(f"recompiled under fail_on_recompile at {result['recompile']}")
    unrecorded = [label for label, outcome in result["runs"].items() if not outcome["recorded"]]
    cold = sum(timing.wall_s for timing in entry.timings)
    timing = f"warm start {result['warm_s']:.2f} s (model built at {result['built_s']:.2f} s), recorded cold compile {cold:.2f} s"
    unlisted = f", unlisted sizes {result['unlisted']} served without compiling" if result["unlisted"] else ""
    compared = "outputs match eager" + (
        " and those recorded at precompile"
        if not unrecorded
        else f" (size {', '.join(unrecorded)}: not the recorded call, as the example "
        "inputs or weights are drawn at random, or nothing recorded)"
    )
    return _check(entry, "run", problems, f"{timing}; {len(result['runs'])} sizes hit, {compared}{unlisted}")


def _recorded_outputs(entry: Manifest) -> dict[str, str]:
    """Size label -> the entry's file holding its recorded outputs."""
    return {
        path[len(OUTPUTS_PREFIX) :].removeprefix("size-").removesuffix(".json"): path
        for path in entry.files
        if path.startswith(OUTPUTS_PREFIX)
    }


def _import_roots(entry: Manifest, search: Sequence[str]) -> list[str]:
    """The sys.path roots the entry's traced sources resolve from now, so that the
    check process imports the model as precompile did."""
    roots = []
    for status in sources.check(entry.sources, search):
        if status.found_at:
            root = status.found_at[: -len(status.source.path)].rstrip("/") or "/"
            if root not in roots:
                roots.append(root)
    return roots


def _check(entry: Manifest, name: str, problems: list[str], ok_detail: str) -> Check:
    if not problems:
        return Check(entry.id, name, True, ok_detail)
    shown = "; ".join(problems[:_SHOWN])
    more = f"; and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
    return Check(entry.id, name, False, shown + more)
