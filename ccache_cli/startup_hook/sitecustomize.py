"""Loaded at start-up by every Python process under `ccache run`, which puts this
folder first on PYTHONPATH.

Under `ccache run` ($CCACHE_CLI_VIEW and $CCACHE_CLI_USAGE_LOGS set), it appends the
process's FX-graph cache hits and misses to the active entries' usage logs at exit,
and where graphs missed the stored cache, says why on stderr; once the program imports
torch, it routes its torch.compile calls to the stored AOT code where they fit
(serve/routing.py, unless CCACHE_CLI_ROUTE=0); and it has torch look up autotuning
results in the view (relocate.py).

Under `ccache run --capture`, the hook stays idle
until the program imports torch's tracing module, then records the files Dynamo
traces; at exit it writes them, with what the key needs, the engines' versions and
the bytecode of the modules it imported, to $CCACHE_CLI_CAPTURE_DIR, and the program's
function compiles are captured (serve/functions.py). In the first
process of `ccache run`, it says at exit where a captured engine cache was not used
(engines.py). It never imports torch itself, and it then runs the
sitecustomize it shadows, if there is one.
"""

import atexit
import functools
import importlib.machinery
import importlib.util
import json
import os
import sys
import time

_STARTED = time.time()  # what this process's engines write into the view is newer

_HERE = os.path.dirname(os.path.abspath(__file__))
_RECORDS = os.environ.get("CCACHE_CLI_CAPTURE_DIR")
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(_HERE))  # the folder holding ccache_cli/
_USAGE_LOGS = os.environ.get("CCACHE_CLI_USAGE_LOGS")
_LOGS = [path for path in (_USAGE_LOGS or "").split(os.pathsep) if path]  # the active entries' usage logs
_VIEW = os.environ.get("CCACHE_CLI_VIEW")
_TRACED = set()


@functools.cache
def _load(name):
    """A module of ccache-cli that needs only the standard library, by path: the
    program may not have ccache-cli installed."""
    path = os.path.join(_PACKAGE_ROOT, "ccache_cli", "in_program", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_ccache_cli_capture_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as import does: dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _write_record():
    """Write what this process traced, then add the slow parts (the machine's key
    components, the bytecode) and write it again: an engine that kills its workers a
    few seconds after asking them to exit still leaves what they traced."""
    torch = sys.modules.get("torch")
    record = {
        "pid": os.getpid(),
        "argv": sys.argv,
        "executable": sys.executable,
        "traced": sorted(_TRACED),
        "sys_path": sys.path,
        "error": None,
        "modules": _load("tracing").modules_by_file(_TRACED, sys.modules) if _TRACED else {},
        "engines": _load("engines").versions(sys.modules),
        "bytecode": {},
    }
    if torch is not None:  # also where nothing was traced: an engine's process may only load its cache
        record["torch_dir"] = os.path.dirname(torch.__file__)
        try:
            cuda = getattr(torch, "cuda", None)
            initialized = cuda is not None and cuda.is_initialized()
            record["device"] = f"cuda:{cuda.current_device()}" if initialized else "cpu"
        except Exception as exc:
            record["error"] = f"{type(exc).__name__}: {exc}"
    _save_record(record)
    if torch is None:
        return
    try:
        if _TRACED:  # Inductor is loaded: its CPU probe works at exit (else capture asks a fresh process)
            record["machine"] = _load("fingerprint").machine_fingerprint(record["device"])
        if os.environ.get("CCACHE_CLI_CAPTURE_BYTECODE") != "0":  # `run --capture --no-bytecode`
            # The bytecode of everything this process imported, for the entry's bytecode/.
            folder = os.path.join(_RECORDS, f"bytecode-{os.getpid()}")
            record["bytecode"] = _load("bytecode").record(dict(sys.modules), folder)
    except Exception as exc:
        record["error"] = f"{type(exc).__name__}: {exc}"
    _save_record(record)


def _save_record(record):
    path = os.path.join(_RECORDS, f"{os.getpid()}.json")
    with open(path + ".tmp", "w") as handle:
        json.dump(record, handle)
    os.replace(path + ".tmp", path)


def _run_shadowed_sitecustomize():
    others = [entry for entry in sys.path if os.path.abspath(entry or os.curdir) != _HERE]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", others)
    if spec is not None and spec.loader is not None:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)


def _routing():
    """ccache-cli's routing of torch.compile (serve/routing.py), from ccache-cli's own
    package loaded by path where the program cannot import it: it and the modules it
    uses need only the standard library and the program's torch."""
    if "ccache_cli" not in sys.modules:
        folder = os.path.join(_PACKAGE_ROOT, "ccache_cli")
        spec = importlib.util.spec_from_file_location(
            "ccache_cli", os.path.join(folder, "__init__.py"), submodule_search_locations=[folder]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules["ccache_cli"] = module
        spec.loader.exec_module(module)
    return importlib.import_module("ccache_cli.serve.routing")


def _route(torch):
    """Route the program's torch.compile calls, right after its torch is imported: a
    process that never imports torch (a compiler probe, a tool the program starts) does
    not load ccache-cli's routing."""
    try:
        _routing().install(torch)
    except Exception as exc:  # never stop the program's import of torch
        sys.stderr.write(f"ccache: torch.compile is not routed in this process ({type(exc).__name__}: {exc})\n")


def _report_usage():
    """Append this process's cache hits and misses, and what routing did, to the
    entries' usage logs, and say why where it missed (misses.py)."""
    if "torch" not in sys.modules:  # it compiled nothing and ran no stored code
        return
    decisions = sys.modules.get("ccache_cli.serve.decisions")  # loaded with routing, if it ran
    summary = decisions.summary if decisions is not None else None
    _load("misses").report_at_exit(_VIEW, _LOGS, _load("fingerprint"), _load("usage"), "run", summary)


def _report_engines():
    """Say where a captured engine cache was not used, on stderr and in the usage logs."""
    try:
        lines = _load("engines").not_used(_VIEW, os.environ, sys.modules, _STARTED)
    except Exception as exc:  # never let the report break a program's exit
        lines = [f"engine caches: could not tell whether they were used ({type(exc).__name__}: {exc})"]
    for line in lines:
        sys.stderr.write(f"ccache: {line}\n")
    if lines and _LOGS:
        usage = _load("usage")
        usage.append(_LOGS, {"at": usage.now(), "by": "run", "result": True, "reason": "; ".join(lines)})


if _VIEW and _USAGE_LOGS is not None:
    atexit.register(_report_usage)
if _VIEW and os.environ.get("CCACHE_CLI_RUN_PID") == str(os.getpid()):  # the command `ccache run` started
    atexit.register(_report_engines)
# torch.compile of a module runs the stored code; under a capture, function compiles are captured
if (_VIEW or _RECORDS) and os.environ.get("CCACHE_CLI_ROUTE", "1") != "0":
    _load("imports").when_imported("torch", _route)
if _VIEW and os.environ.get("CCACHE_CLI_COMPILED_AT"):  # autotuning results where this process keeps its cache
    _load("relocate").install(
        os.environ["CCACHE_CLI_COMPILED_AT"].split(os.pathsep),
        os.environ["TORCHINDUCTOR_CACHE_DIR"],
        _load("imports").when_imported,
    )
if _RECORDS:  # the files Dynamo traces, recorded from when its tracing module is imported
    _load("imports").when_imported(
        "torch._guards", lambda guards: _load("tracing").record_traced_files(guards.TracingContext, _TRACED)
    )
    atexit.register(_write_record)
_run_shadowed_sitecustomize()
