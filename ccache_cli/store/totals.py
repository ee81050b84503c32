"""What an entry's heavy fields add up to (manifest.HEAVY_FIELDS), kept in the store's
index beside each manifest's summary (index.py)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ccache_cli.store import artifacts, bytecode_list
from ccache_cli.store.assumptions import SizeAssumptions
from ccache_cli.store.hashing import hash_json


@dataclass(frozen=True)
class Totals:
    """What an entry's heavy fields add up to, kept in an index beside its summary, so
    that listing and choosing entries reads no file list."""

    bytes: int  # of all its files
    files_digest: str  # of its file list: a view is named by it
    kinds: tuple[artifacts.KindSummary, ...]  # files and bytes per artifact kind
    engine_files: Mapping[str, tuple[int, int]]  # per engine cache: files and bytes
    assumptions: Mapping[str, Mapping[str, Any]]  # per size: {"frame", "checks" (counts), "unserialized"}
    bytecode_tops: tuple[str, ...]  # the top-level packages of its stored bytecode's modules
    functions: Mapping[str, int] = field(default_factory=dict)  # captured functions: how many per `module:qualname`

    @classmethod
    def of(cls, document: Mapping[str, Any]) -> Totals:
        files = document.get("files", {})
        engine_files: dict[str, tuple[int, int]] = {}
        for path, ref in files.items():
            if (var := artifacts.engine_var_of(path)) is not None:
                count, size = engine_files.get(var, (0, 0))
                engine_files[var] = (count + 1, size + ref["size"])
        assumptions = {}
        for size, found in document.get("assumptions", {}).items():
            recorded = SizeAssumptions.from_json(found)
            assumptions[size] = {
                "frame": f"{recorded.frame.module}:{recorded.frame.qualname}",
                "checks": recorded.counts(),
                "unserialized": recorded.unserialized,
            }
        listed = document.get("bytecode_list")  # .pyc files listed apart (bytecode_list.py)
        kinds = artifacts.kinds_of(files)
        if listed is not None:
            kinds = _with_listed_bytecode(kinds, listed["modules"], listed["bytes"])
        return cls(
            bytes=sum(kind.bytes for kind in kinds),
            files_digest=hash_json(dict(files)),
            kinds=kinds,
            engine_files=engine_files,
            assumptions=assumptions,
            bytecode_tops=tuple(
                listed["tops"] if listed is not None else bytecode_list.tops(document.get("bytecode", {}))
            ),
            functions=_counted(described["function"] for described in document.get("functions", {}).values()),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "bytes": self.bytes,
            "files_digest": self.files_digest,
            "kinds": [[kind.kind, kind.count, kind.bytes] for kind in self.kinds],
            "engine_files": {var: list(counts) for var, counts in self.engine_files.items()},
            "assumptions": self.assumptions,
            "bytecode_tops": list(self.bytecode_tops),
            "functions": dict(self.functions),
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> Totals:
        return cls(
            bytes=document["bytes"],
            files_digest=document["files_digest"],
            kinds=tuple(artifacts.KindSummary(*kind) for kind in document["kinds"]),
            engine_files={var: (count, size) for var, (count, size) in document["engine_files"].items()},
            assumptions=document["assumptions"],
            bytecode_tops=tuple(document["bytecode_tops"]),
            functions=document.get("functions", {}),
        )


def _with_listed_bytecode(
    kinds: tuple[artifacts.KindSummary, ...], files: int, size: int
) -> tuple[artifacts.KindSummary, ...]:
    """`kinds` with the .pyc files of the entry's bytecode list counted as bytecode too."""
    found = {kind.kind: kind for kind in kinds}
    own = found.get("bytecode", artifacts.KindSummary("bytecode", 0, 0))
    found["bytecode"] = artifacts.KindSummary("bytecode", own.count + files, own.bytes + size)
    return tuple(sorted(found.values(), key=lambda kind: (-kind.bytes, kind.kind)))


def _counted(names: Iterable[str]) -> dict[str, int]:
    counted: dict[str, int] = {}
    for name in names:
        counted[name] = counted.get(name, 0) + 1
    return counted
