"""Whether an entry fits a machine: its key against this machine's fingerprint (the
exact one an earlier run cached, else the parts readable without torch) or another's."""

from __future__ import annotations

from typing import Any

from ccache_cli.in_program import fingerprint
from ccache_cli.in_program.fingerprint import Mismatch
from ccache_cli.store.manifest import Manifest
from ccache_cli.store.store import Store


def this_machine(store: Store) -> tuple[dict[str, Any], bool]:
    """The exact fingerprint cached by an earlier run on this machine, else a static one."""
    cached = store.cached_machine_fingerprint(fingerprint.probe_digest())
    if cached is not None:
        return cached, True
    return fingerprint.static_fingerprint(), False


def compatibility(entry: Manifest, machine: dict[str, Any], exact: bool) -> tuple[bool | None, tuple[Mismatch, ...]]:
    """Whether `entry` fits `machine` (None: only a full fingerprint could tell), and why not."""
    found = tuple(fingerprint.mismatches(entry.fingerprint, entry.device, machine))
    return (False if found else (True if exact and fingerprint.knows(machine, entry.device) else None)), found


def fits(entries: list[Manifest] | tuple[Manifest, ...], machine: dict[str, Any], exact: bool) -> list[Manifest]:
    """The entries whose key does not contradict `machine` (unknown parts count as fitting)."""
    return [entry for entry in entries if compatibility(entry, machine, exact)[0] is not False]
