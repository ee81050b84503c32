"""An entry's manifest, typed: the one description of what `manifest.json` holds,
the one parser (which checks the document against the schema first, schema.py) and
the one builder (precompile and capture make entries with it).

The document, format 1:

    {"format": 1, "id": sha256 of the key's canonical JSON, "name", "created" (UTC),
     "lookup": sha256 of the key parts known before compiling, or null,
     "key": {"fingerprint": {component: value}, "compile": {"device", "sizes",
             "ranges" (optional: [[low, high]]), "dynamic", "mode", "backend", ...},
             "model": {"module", "attr", "inputs"} or null,
             "inputs": {size or "low-high": [input description]},
             "sources": [{"module", "path", "sha256"}]},
     "timings": {"sizes": [per size report], "aot": {size: s}, "packages": {size: s}},
     "aot": {"status", "reason", "packages": {"status", "reason", "model"}},
     "assumptions": {size: {"frame": {"module", "qualname"}, "unserialized": count,
                            "assumptions": [[check, path, expected, guard]]}} (optional),
     "functions": {"functions/...pt": {"function": module:qualname, "code": digest, "mode", "inference_mode",
                   "globals": {name: module}, "assumptions": as a size's}} (optional: captures),
     "bytecode_list": {"modules", "bytes", "tops"} (optional: its .pyc files, listed in
                      the blob bytecode/list.json, bytecode_list.py; older manifests name
                      them in "files" and "bytecode": {.pyc: {"module", "sha256"}}),
     "compiled_at": folder, "files": {path: {"sha256", "size"}}}

Files stay the stored dicts (an entry may name tens of thousands: `refs` builds an
object per file only where asked). `files` is the manifest's own list; `all_files`
adds the bytecode list's, read where the blobs are (`read_blob`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ccache_cli.store import bytecode_list, schema
from ccache_cli.store.assumptions import SizeAssumptions
from ccache_cli.store.hashing import hash_json
from ccache_cli.store.totals import Totals

FORMAT = schema.FORMAT
ID_DISPLAY_LENGTH = 12


@dataclass(frozen=True)
class FileRef:
    sha256: str
    size: int


@dataclass(frozen=True)
class Source:
    """A Python file Dynamo traced, named independently of where it lies."""

    module: str
    path: str  # relative to its sys.path root, '/'-separated
    sha256: str


@dataclass(frozen=True)
class CompileOptions:
    device: str
    sizes: tuple[int, ...]
    ranges: tuple[tuple[int, int], ...]  # each served whole by one package with a dynamic batch
    dynamic: bool
    mode: str | None
    backend: str | None
    devices: tuple[int, ...]  # GPU indices compiled for (`precompile --devices`), or none
    inductor_env: Mapping[str, str]  # TORCHINDUCTOR_* settings compiled with
    engines: Mapping[str, str | None]  # captured engine caches: VAR -> the engine's version, if known
    document: Mapping[str, Any] = field(repr=False)  # every option, as the key holds them


@dataclass(frozen=True)
class ModelRef:
    module: str
    attr: str
    inputs: str | None  # `module:function` of the example inputs


@dataclass(frozen=True)
class SizeTiming:
    """A size's first call at precompile."""

    label: str
    wall_s: float
    dynamo_s: float
    aot_autograd_s: float
    inductor_s: float
    kernel_compile_s: float


@dataclass(frozen=True)
class PackageStatus:
    status: str  # stored, skipped or disabled
    reason: str | None
    structure: str | None  # the model the packages were built for (precompile/plan.model_structure)


@dataclass(frozen=True)
class AotStatus:
    """The aot_compile functions' status, and the AOTInductor packages'."""

    status: str
    reason: str | None
    packages: PackageStatus | None


@dataclass(frozen=True)
class EngineCache:
    """An engine's cache root stored with a captured entry (in_program/engines.py)."""

    var: str  # the environment variable that names it
    version: str | None  # the engine's, where known
    files: int  # none counted for an archive's index, which lists no files
    bytes: int


# What an index holds of a manifest apart (index.py): the parts that grow with the
# model and its environment, read only where an entry is used.
HEAVY_FIELDS = ("files", "bytecode", "assumptions", "functions")


@dataclass(frozen=True, repr=False)
class Manifest:
    """An entry's manifest, from the whole document (`parse`) or an index's summary
    (`from_summary`), whose heavy fields are read from the entry's folder when first
    asked for. Each part is built when first asked for: a listing builds what it shows."""

    summary: Mapping[str, Any]  # the document less HEAVY_FIELDS
    recorded_totals: Totals | None  # from an index; else added up when asked
    load: Callable[[], Mapping[str, Any]] = field(compare=False)  # the whole document, checked
    # Reads a blob by sha256 where the entry's blobs are at hand (its bytecode list).
    read_blob: bytecode_list.ReadBlob | None = field(default=None, compare=False)

    def __repr__(self) -> str:
        return f"Manifest({self.short_id}, {self.name!r})"

    id = property(lambda self: self.summary["id"], doc="sha256 of the key's canonical JSON")
    name = property(lambda self: self.summary["name"])
    created = property(lambda self: self.summary["created"], doc="UTC, ISO 8601")
    lookup = property(lambda self: self.summary.get("lookup"), doc="of the key parts known before compiling")
    compiled_at = property(lambda self: self.summary.get("compiled_at"), doc="the Inductor cache folder compiled in")
    fingerprint = property(lambda self: self.summary["key"]["fingerprint"])
    inputs = property(lambda self: self.summary["key"]["inputs"], doc="size label -> input descriptions")
    aot_seconds = property(lambda self: self.summary["timings"].get("aot") or {}, doc="per size, aot_compile")
    package_seconds = property(lambda self: self.summary["timings"].get("packages") or {}, doc="per size")

    compile = functools.cached_property(lambda self: self._part(_compile_options))
    model = functools.cached_property(lambda self: self._part(_model))  # None: captured from a command
    sources = functools.cached_property(lambda self: self._part(_sources))
    timings = functools.cached_property(lambda self: self._part(_timings))
    aot = functools.cached_property(lambda self: self._part(_aot_status))

    def _part(self, build: Callable[[Mapping[str, Any]], Any]) -> Any:
        """A part built from the summary; from the manifest itself, checked, where an
        index record is damaged (the command goes on, as if the index had no record)."""
        try:
            return build(self.summary)
        except (KeyError, TypeError, ValueError, AttributeError):
            return build(self.document)

    @functools.cached_property
    def document(self) -> Mapping[str, Any]:
        return self.load()

    @functools.cached_property
    def totals(self) -> Totals:
        return self.recorded_totals or Totals.of(self.document)

    @functools.cached_property
    def files(self) -> Mapping[str, Mapping[str, Any]]:
        """Its own file list, path -> {"sha256", "size"}; none from an archive's index."""
        return self.document.get("files", {})

    @functools.cached_property
    def all_files(self) -> Mapping[str, Mapping[str, Any]]:
        """Its files and its bytecode list's: every file of the entry."""
        return {**self.files, **self.bytecode_files} if self.bytecode_files else self.files

    @functools.cached_property
    def bytecode_files(self) -> Mapping[str, Mapping[str, Any]]:
        """The files its bytecode list names (one object for every entry naming the list)."""
        listed = self._bytecode_list()
        return {} if listed is None else listed.files

    @functools.cached_property
    def assumptions(self) -> Mapping[str, SizeAssumptions]:
        """Per size; none recorded: its stored code is never served."""
        found = self.document.get("assumptions", {})
        return {size: SizeAssumptions.from_json(sizes) for size, sizes in found.items()}

    @functools.cached_property
    def functions(self) -> Mapping[str, Mapping[str, Any]]:
        """The functions a capture compiled: file -> {"function", "code", "mode",
        "globals", "assumptions"} (serve/functions.py)."""
        return self.document.get("functions", {})

    @functools.cached_property
    def bytecode(self) -> Mapping[str, Mapping[str, str]]:
        """stored .pyc -> {"module", "sha256"}"""
        listed = self._bytecode_list()
        return self.document.get("bytecode", {}) if listed is None else listed.modules

    @property
    def bytecode_listed(self) -> bool:
        """Whether it stores bytecode (inline or in a list), read without the list."""
        return bytecode_list.LIST_PATH in self.files or bool(self.document.get("bytecode"))

    def _bytecode_list(self) -> bytecode_list.BytecodeList | None:
        """Its bytecode list, or None (inline, or no bytecode); ManifestError if unreadable."""
        ref = self.files.get(bytecode_list.LIST_PATH)
        if ref is None:
            return None
        if self.read_blob is None:
            raise schema.ManifestError(f"entry {self.short_id}: its bytecode list is not at hand here")
        return bytecode_list.read(ref, self.read_blob, self.summary.get("bytecode_list"))

    def reading(self, read_blob: bytecode_list.ReadBlob) -> Manifest:
        """The same manifest, its blobs read with `read_blob`."""
        return dataclasses.replace(self, read_blob=read_blob)

    short_id = property(lambda self: self.id[:ID_DISPLAY_LENGTH])
    device = property(lambda self: self.compile.device)
    sizes = property(lambda self: list(self.compile.sizes))
    dynamic = property(lambda self: self.compile.dynamic)

    @property
    def size_labels(self) -> list[str]:
        """Its sizes, then its ranges (`1-64`), as a person reads them."""
        return [*map(str, self.compile.sizes), *map(range_label, self.compile.ranges)]

    @property
    def stores_aot_code(self) -> bool:
        """Whether it holds stored code (aot_compile functions or AOTInductor packages)."""
        packages = self.aot.packages
        return self.aot.status == "stored" or (packages is not None and packages.status == "stored")

    bytes = property(lambda self: self.totals.bytes)

    @functools.cached_property  # built once, and only where asked for
    def refs(self) -> dict[str, FileRef]:
        return {path: FileRef(ref["sha256"], ref["size"]) for path, ref in self.all_files.items()}

    def engine_caches(self) -> list[EngineCache]:
        return [
            EngineCache(var, self.compile.engines[var], *self.totals.engine_files.get(var, (0, 0)))
            for var in sorted(self.compile.engines)
        ]

    def blobs(self) -> set[str]:
        """The sha256 of every file, its bytecode list's too."""
        return {ref["sha256"] for ref in self.all_files.values()}

    def digest(self) -> str:
        """The SHA-256 of the whole document's canonical JSON (what an archive's index records)."""
        return hash_json(dict(self.document))

    def without_files(self) -> dict[str, Any]:
        """The document less its file list (what an archive's index holds)."""
        return {name: value for name, value in self.document.items() if name != "files"}

    def with_files(self, files: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
        return {**self.document, "files": files}


def blob_sizes(entries: Iterable[Manifest]) -> dict[str, int]:
    """Each blob of `entries` once, with its size (what pack writes, verify re-hashes)."""
    return {ref["sha256"]: ref["size"] for entry in entries for ref in entry.all_files.values()}


def range_label(batch_range: tuple[int, int]) -> str:
    """How a range is named in an entry (its inputs, assumptions, package): `1-64`."""
    return f"{batch_range[0]}-{batch_range[1]}"


def range_bounds(label: str) -> tuple[int, int]:
    """The range a `range_label` names."""
    low, _, high = label.partition("-")
    return int(low), int(high)


def label_order(label: str) -> tuple[int, ...]:
    """Sort key of a size's or range's label (`8`, `1-64`): sizes first, each by number."""
    return (0, int(label)) if label.isdigit() else (1, *range_bounds(label))


def parse(
    document: Any,
    folder: str | None = None,
    with_files: bool = True,
    read_blob: bytecode_list.ReadBlob | None = None,
) -> Manifest:
    """A manifest from its JSON document, checked against the schema (ManifestError);
    `folder`: its entry folder's name, which the id must equal; without `with_files`,
    an archive index's manifest, whose files come apart; `read_blob`: where its blobs
    are read (Manifest.read_blob)."""
    d = schema.check(document, folder, with_files)
    return from_summary(summarize(d), None, lambda: d, read_blob)


def summarize(document: Mapping[str, Any]) -> dict[str, Any]:
    """The document less its heavy fields: what an index keeps of it."""
    return {name: value for name, value in document.items() if name not in HEAVY_FIELDS}


def _compile_options(d: Mapping[str, Any]) -> CompileOptions:
    options = d["key"]["compile"]
    return CompileOptions(
        device=options["device"],
        sizes=tuple(options["sizes"]),
        ranges=tuple((low, high) for low, high in options.get("ranges", ())),
        dynamic=options["dynamic"],
        mode=options.get("mode"),
        backend=options.get("backend"),
        devices=tuple(options.get("devices", ())),
        inductor_env=options.get("inductor_env") or {},
        engines=options.get("engines") or {},
        document=options,
    )


def _model(d: Mapping[str, Any]) -> ModelRef | None:
    model = d["key"].get("model")
    return None if model is None else ModelRef(model["module"], model["attr"], model.get("inputs"))


def _sources(d: Mapping[str, Any]) -> tuple[Source, ...]:
    return tuple(Source(s["module"], s["path"], s["sha256"]) for s in d["key"]["sources"])


def _timings(d: Mapping[str, Any]) -> tuple[SizeTiming, ...]:
    names = ("wall_s", "dynamo_s", "aot_autograd_s", "inductor_s", "kernel_compile_s")
    return tuple(SizeTiming(t["label"], *(t.get(name) or 0.0 for name in names)) for t in d["timings"]["sizes"])


def _aot_status(d: Mapping[str, Any]) -> AotStatus:
    aot, packages = d["aot"], d["aot"].get("packages")
    if packages is not None:
        packages = PackageStatus(packages["status"], packages.get("reason"), packages.get("model"))
    return AotStatus(aot["status"], aot.get("reason"), packages)


def from_summary(
    d: Mapping[str, Any],
    totals: Totals | None,
    load: Callable[[], Mapping[str, Any]],
    read_blob: bytecode_list.ReadBlob | None = None,
) -> Manifest:
    """A manifest from a checked document's summary; `load` reads the whole document.
    TypeError where a field read as it is (not built into a part) is damaged."""
    key = d["key"]
    if not all(isinstance(d[name], str) for name in ("id", "name", "created")) or not all(
        isinstance(part, dict) for part in (key["fingerprint"], key["inputs"], key["compile"], d["timings"], d["aot"])
    ):
        raise TypeError("a damaged summary")
    return Manifest(summary=d, recorded_totals=totals, load=load, read_blob=read_blob)


def build(
    *,
    name: str,
    key: Mapping[str, Any],
    lookup: str | None,
    timings: Mapping[str, Any],
    aot: Mapping[str, Any],
    assumptions: Mapping[str, Any] | None = None,
    functions: Mapping[str, Any] | None = None,
    bytecode_summary: Mapping[str, Any] | None,
    compiled_at: str,
    files: Mapping[str, Mapping[str, Any]],
) -> Manifest:
    """A new entry's manifest, checked: its id is the digest of `key`, created now.
    `files`: its own file list and `bytecode_summary` its bytecode list's summary, as
    staging.stage_bytecode_list makes them."""
    return parse(
        {
            "format": FORMAT,
            "id": hash_json(key),
            "name": name,
            "created": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "lookup": lookup,
            "key": key,
            "timings": timings,
            "aot": aot,
            **({"assumptions": assumptions} if assumptions else {}),
            **({"functions": functions} if functions else {}),
            **({"bytecode_list": bytecode_summary} if bytecode_summary else {}),
            "compiled_at": compiled_at,
            "files": files,
        }
    )
