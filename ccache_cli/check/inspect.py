"""What a store holds, and whether each entry fits this machine (no torch import)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ccache_cli.in_program import usage
from ccache_cli.in_program.fingerprint import Mismatch
from ccache_cli.in_program.usage import Usage
from ccache_cli.key.compat import compatibility, this_machine
from ccache_cli.store import artifacts, usage_totals
from ccache_cli.store.manifest import Manifest
from ccache_cli.store.store import Store

if TYPE_CHECKING:
    from ccache_cli.archive.signing import PublicKey


@dataclass(frozen=True)
class EntryReport:
    entry: Manifest  # from an archive's index, its manifest lacks "files"
    compatible: bool | None  # None: only a full fingerprint of this machine could tell
    mismatches: tuple[Mismatch, ...]
    kinds: tuple[artifacts.KindSummary, ...]
    usage: Usage | None  # None: an archive's entry

    @property
    def file_count(self) -> int:
        return sum(kind.count for kind in self.kinds)

    @property
    def bytes(self) -> int:
        return sum(kind.bytes for kind in self.kinds)

    def to_json(self) -> dict[str, Any]:
        """An entry as `inspect --json` prints it."""
        report, entry = self, self.entry
        return {
            "id": entry.id,
            "name": entry.name,
            "sizes": entry.sizes,
            "ranges": [list(batch_range) for batch_range in entry.compile.ranges],
            "dynamic": entry.dynamic,
            "device": entry.device,
            "fingerprint": dict(entry.fingerprint),
            "compile": dict(entry.compile.document),
            "model": None if entry.model is None else dict(vars(entry.model)),
            "sources": [{"path": s.path, "module": s.module, "sha256": s.sha256} for s in entry.sources],
            "artifacts": {kind.kind: kind.count for kind in report.kinds},
            "artifact_bytes": {kind.kind: kind.bytes for kind in report.kinds},
            "bytes": report.bytes,
            "created": entry.created,
            "compatible": report.compatible,
            "mismatches": [
                {"component": m.component, "entry": m.entry, "machine": m.target} for m in report.mismatches
            ],
            "aot": {
                **vars(entry.aot),
                "packages": None if entry.aot.packages is None else dict(vars(entry.aot.packages)),
            },
            "engines": [dict(vars(cache)) for cache in entry.engine_caches()],
            "assumptions": dict(entry.totals.assumptions),
            "functions": dict(entry.totals.functions),
            "timings": {
                "sizes": [dict(vars(timing)) for timing in entry.timings],
                "aot": dict(entry.aot_seconds),
                "packages": dict(entry.package_seconds),
            },
            "usage": None if report.usage is None else dict(report.usage.__dict__),
        }


@dataclass(frozen=True)
class InspectReport:
    entries: tuple[EntryReport, ...]
    warnings: tuple[str, ...]
    machine: dict[str, Any]
    machine_exact: bool  # False: only the components readable without torch are known

    def to_json(self) -> dict[str, Any]:
        return {"entries": [entry.to_json() for entry in self.entries], "warnings": list(self.warnings)}


def inspect_store(store: Store, ref: str | None = None) -> InspectReport:
    machine, exact = this_machine(store)
    if ref is None:
        scan = store.scan()
        entries, warnings = scan.entries, scan.warnings
        used = usage_totals.read_all(store, [entry.id for entry in entries])
    else:
        entries, warnings = (store.find(ref),), ()
        used = {entries[0].id: usage.read(store, entries[0].id)}
    reports = tuple(report_entry(entry, machine, exact, None, used[entry.id]) for entry in entries)
    return InspectReport(reports, warnings, machine, exact)


def inspect_archive(store: Store, path: str, trusted: Sequence[PublicKey] = ()) -> InspectReport:
    """The entries of an archive, from its head alone: nothing is extracted."""
    from ccache_cli.archive.head import read_index
    from ccache_cli.archive.unpack import open_source

    machine, exact = this_machine(store)
    with open_source(path) as source:
        index = read_index(source, trusted)
    reports = tuple(report_entry(entry, machine, exact, index.kinds[entry.id], None) for entry in index.entries)
    return InspectReport(reports, (), machine, exact)


def inspect_remote(
    store: Store, reference: str, insecure: bool = False, trusted: Sequence[PublicKey] = ()
) -> InspectReport:
    """The entries of a pushed artifact, from its manifest and index alone (which one of
    the `trusted` keys must have signed, where some are)."""
    from ccache_cli.registry import client, transfer

    machine, exact = this_machine(store)
    _, index = transfer.read_listing(client.Remote(reference, insecure), trusted)
    reports = tuple(report_entry(entry, machine, exact, index.kinds[entry.id], None) for entry in index.entries)
    return InspectReport(reports, (), machine, exact)


def report_entry(
    entry: Manifest,
    machine: dict[str, Any],
    exact: bool,
    kinds: tuple[artifacts.KindSummary, ...] | None = None,
    usage: Usage | None = None,
) -> EntryReport:
    compatible, found = compatibility(entry, machine, exact)
    return EntryReport(entry, compatible, found, entry.totals.kinds if kinds is None else kinds, usage)
