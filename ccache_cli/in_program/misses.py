"""No silent miss: when a process that runs with entries active (under `ccache run`,
or after `ccache_cli.activate()`) compiled graphs the stored cache did not hold, it
says why at exit, in one line on stderr, and the reason goes to the entries' usage
logs, where `inspect` shows it.

The reason names what differs between this process and the active entry of the model
it ran (one whose traced modules it loaded; else the closest): a
key component (with both values), the device index, a TORCHINDUCTOR_* setting, a
traced source that changed; else that the graphs were not among those precompiled
(other input shapes, dtypes or options).

Standard library only, with no package-relative imports: the start-up hook loads it
by path; the modules it needs (fingerprint, usage) are passed in.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

ACTIVATION_FILE = "activation.json"


def report_at_exit(
    view: str,
    logs: list[str],
    fingerprint: ModuleType,
    usage: ModuleType,
    by: str,
    routing: Callable[[str], dict[str, Any] | None] | None = None,
) -> None:
    """Append this process's cache hits and misses, and what `routing` (serve/routing.py's
    summary for an entry id) says it did, to `logs` (`<entry id>.log` each); on misses,
    say why."""
    routed = {log: routing(os.path.basename(log)[: -len(".log")]) for log in logs} if routing is not None else {}
    utils = sys.modules.get("torch._dynamo.utils")
    if utils is None and not any(routed.values()):  # this process compiled nothing
        return
    hits = misses = 0
    if utils is not None:
        counters = utils.counters["inductor"]
        hits, misses = counters["fxgraph_cache_hit"], counters["fxgraph_cache_miss"]
    reason = None
    # Stored code not used because an assumption of it did not hold: that is why the
    # process compiled what it did, and is said even where the compile hit a cache.
    refused = sorted({why for summary in routed.values() if summary for why in summary.get("refused", {})})
    if refused:
        reason = "; ".join(refused[:2]) + (f" and {len(refused) - 2} more" if len(refused) > 2 else "")
        compiled = f" ({misses} graphs compiled)" if misses else ""
        sys.stderr.write(f"ccache: stored code not used, torch.compile ran instead{compiled}: {reason}\n")
    elif misses:
        try:
            with open(os.path.join(view, ACTIVATION_FILE)) as handle:
                entries = json.load(handle)["entries"]
            reason = explain(sys.modules["torch"], entries, fingerprint, os.environ)
        except Exception as exc:  # never let the explanation break a program's exit
            reason = f"the reason could not be told ({type(exc).__name__}: {exc})"
        sys.stderr.write(f"ccache: {misses} of {hits + misses} compiled graphs missed the stored cache: {reason}\n")
    line: dict[str, Any] = {"at": usage.now(), "by": by, "result": True, "hits": hits, "misses": misses}
    if reason is not None:
        line["reason"] = reason
    for log in logs:
        usage.append([log], {**line, "routing": routed[log]} if routed.get(log) else line)


def explain(torch: Any, entries: list[dict[str, Any]], fingerprint: ModuleType, environ: Any) -> str:
    """Why graphs compiled in this process were not in `entries` (activation.json's)."""
    device = _device_in_use(torch)
    machines: dict[bool, dict[str, Any]] = {}
    found = []
    for entry in entries:
        options = entry["compile"]
        entry_device = options["device"]
        gpu = fingerprint.is_gpu_device(entry_device)
        reasons = []
        if gpu != fingerprint.is_gpu_device(device):
            reasons.append(f"device: entry compiled for {entry_device}, this process runs on {device}")
        else:
            if gpu not in machines:
                machines[gpu] = fingerprint.machine_fingerprint(device, cpu=not gpu)
            reasons += [
                f"{m.component}: entry has {m.entry!r}, this process has {m.target!r}"
                for m in fingerprint.mismatches(entry["fingerprint"], entry_device, machines[gpu])
            ]
            if gpu and device not in [f"cuda:{index}" for index in options.get("devices") or []] + [entry_device]:
                reasons.append(
                    f"device: entry compiled for {entry_device}, this process runs on {device} "
                    f"(precompile with --devices to serve other GPU indices)"
                )
        recorded = options.get("inductor_env") or {}
        current = fingerprint.inductor_env(environ)
        for name in sorted(set(recorded) | set(current)):
            if recorded.get(name) != current.get(name):
                reasons.append(
                    f"{name}: entry compiled with {recorded.get(name)!r}, this process has {current.get(name)!r}"
                )
        reasons += [f"traced source {path} changed since precompile" for path in _changed_sources(entry["sources"])]
        # The entry of the model this process ran: one whose traced modules it loaded.
        theirs = any(source["module"] in sys.modules for source in entry["sources"])
        found.append((not theirs, len(reasons), entry["name"], reasons))
    if not found:
        return "no entry is active"
    _, _, name, reasons = min(found)
    if not reasons:
        return (
            f"entry {name} fits this process, so the graphs were not among those it stored "
            "(other input shapes, dtypes or compile options than precompile compiled)"
        )
    return (
        f"closest entry {name}: "
        + "; ".join(reasons[:3])
        + (f" and {len(reasons) - 3} more" if len(reasons) > 3 else "")
    )


def _device_in_use(torch: Any) -> str:
    cuda = getattr(torch, "cuda", None)
    if cuda is not None and cuda.is_initialized():
        return f"cuda:{cuda.current_device()}"
    return "cpu"


def _changed_sources(sources: list[dict[str, str]]) -> list[str]:
    """The traced sources whose module this process loaded from a file that differs."""
    changed = []
    for source in sources:
        module = sys.modules.get(source["module"])
        path = getattr(module, "__file__", None)
        if not isinstance(path, str):
            continue
        try:
            with open(path, "rb") as handle:
                if hashlib.sha256(handle.read()).hexdigest() != source["sha256"]:
                    changed.append(source["path"])
        except OSError:
            continue
    return changed
