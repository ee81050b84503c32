"""The manifest schema, checked: what an entry's manifest.json must hold before any
part of ccache-cli reads it, whether it comes from the store or from an archive
(manifest.py turns a checked document into typed objects).

Manifests are data from outside (an archive someone else packed, a store on a shared
volume), and they name paths: every file key becomes a path under a folder the tool
writes (the store's views, an exported cache dir, an AOT package scratch). So the
checks are strict and complete: the id is 64 hex digits and the digest of the key;
every file key is a normalised relative path under one of the folders an entry
holds; every field a reader uses is present and of its type. `inside` is the second
line of defence at each place that joins a stored path to a folder.

Standard library only; no torch.
"""

from __future__ import annotations

import datetime as dt
import itertools
import operator
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ccache_cli.errors import BadInputError
from ccache_cli.in_program.engines import var_problem as engine_var_problem
from ccache_cli.in_program.fingerprint import components_for
from ccache_cli.store.hashing import hash_json

FORMAT = 1
HEX64 = re.compile(r"[0-9a-f]{64}")
# An entry's files live under these folders (artifacts.py says what each holds).
_KINDS = ("inductor", "aot", "functions", "bytecode", "outputs", "engines")
BYTECODE_FOLDER = "bytecode/"
BYTECODE_LIST = "bytecode/list.json"  # the blob listing an entry's .pyc files (bytecode_list.py)
_MEGACACHE = "megacache/cache_artifacts.bin"
# A normalised relative path: no empty, `.` or `..` part, no backslash or control
# character. (One pattern for one path; `safe_paths` checks many at once.)
_PART = r"(?!\.\.?(?:/|\Z))[^/\\\x00-\x1f\x7f]+"
_RELATIVE_PATH = re.compile(rf"{_PART}(?:/{_PART})*")
_UNSAFE_IN_JOINED = ("/../", "/./", "//", "/..\n", "/.\n", "/\n", "\\")
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")
_DEVICE = re.compile(r"cpu|cuda(?::[0-9]{1,4})?")
_CREATED = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
_MAX_PATH = 4096
_MAX_NAME = 256
_SCALAR = (str, int, float, bool, type(None))
# What a size's stored code may assume (key/assumptions.py says what each check means).
ASSUMPTION_CHECKS = frozenset(
    {"value", "type", "identity", "code", "keys", "length", "attribute", "own_attribute_absent", "dict_key"}
    | {"tensor", "torch_state", "unchecked"}
)
_MAX_ASSUMPTIONS = 100_000


class ManifestError(BadInputError):
    """A manifest that does not follow the schema: refused, never half read."""


def check(manifest: Any, folder: str | None = None, with_files: bool = True) -> dict[str, Any]:
    """`manifest`, checked; ManifestError names the first field that is wrong.
    `folder`: the entry folder's name, which the id must equal. Without `with_files`
    (an archive's index, which keeps file lists apart), the file list is not looked for."""
    m = _mapping(manifest, "manifest")
    entry_id = m.get("id")
    if not isinstance(entry_id, str) or not HEX64.fullmatch(entry_id):
        named = "manifest" if folder is None else f"manifest of entry {folder[:12]}"
        raise ManifestError(f"{named}: id must be 64 lowercase hex digits")
    where = f"manifest of entry {entry_id[:12]}"
    try:
        if folder is not None and folder != entry_id:
            raise ManifestError(f"id does not match its folder {folder!r}")
        _check_fields(m, with_files)
        if hash_json(m["key"]) != entry_id:
            raise ManifestError("id is not the digest of its key: the manifest was changed after it was written")
    except ManifestError as exc:
        raise ManifestError(f"{where}: {exc}") from None
    return m


def _check_fields(m: Mapping[str, Any], with_files: bool) -> None:
    if m.get("format") != FORMAT:
        raise ManifestError(f"format {m.get('format')!r} is not one this ccache-cli reads (it reads {FORMAT})")
    name = _field(m, "name", str)
    if not 0 < len(name) <= _MAX_NAME or not name.isprintable():
        raise ManifestError(f"name must be 1 to {_MAX_NAME} printable characters")
    created = _field(m, "created", str)
    if not _CREATED.fullmatch(created):
        raise ManifestError(f"created {created!r} is not a UTC time like 2026-11-30T12:00:00Z")
    try:
        dt.datetime(*(int(created[a:b]) for a, b in ((0, 4), (5, 7), (8, 10), (11, 13), (14, 16), (17, 19))))
    except ValueError:
        raise ManifestError(f"created {created!r} is not a valid time") from None
    lookup = m.get("lookup")
    if lookup is not None and not (isinstance(lookup, str) and HEX64.fullmatch(lookup)):
        raise ManifestError("lookup must be a sha256 or null")
    compiled_at = m.get("compiled_at")
    if compiled_at is not None and not (
        isinstance(compiled_at, str)
        and os.path.isabs(compiled_at)
        and len(compiled_at) <= _MAX_PATH
        and compiled_at.isprintable()
    ):
        raise ManifestError("compiled_at must be an absolute path")
    _check_key(_field(m, "key", dict))
    _check_timings(_field(m, "timings", dict))
    _check_aot(_field(m, "aot", dict))
    _check_assumptions(_mapping(m.get("assumptions", {}), "assumptions"))
    if "bytecode_list" in m:
        _check_bytecode_list(_mapping(m["bytecode_list"], "bytecode_list"))
    if with_files:
        files = _field(m, "files", dict)
        check_files(files)
        check_bytecode(_mapping(m.get("bytecode", {}), "bytecode"), files)
        if ("bytecode_list" in m) != (BYTECODE_LIST in files) or (
            BYTECODE_LIST in files and (m.get("bytecode") or sum(p.startswith(BYTECODE_FOLDER) for p in files) > 1)
        ):
            raise ManifestError(f"bytecode_list and {BYTECODE_LIST} go together, and name every .pyc file")
        _check_functions(_mapping(m.get("functions", {}), "functions"), files)
        _check_engine_files(m["key"]["compile"].get("engines", {}), files)


def _check_engine_files(engines: Mapping[str, Any], files: Mapping[str, Any]) -> None:
    """Every file under engines/ in the cache root of an engine the key names."""
    for path in files:
        if path.startswith("engines/") and path.split("/", 2)[1] not in engines:
            raise ManifestError(f"file {path!r} is in the cache root of no engine the key names")


def check_files(files: Mapping[str, Any]) -> None:
    """Every file key a safe path under an entry's folders; every reference a sha256 and
    a size. Checked a field at a time over all files, in C: an entry may name tens of
    thousands of files, and a manifest is checked each time it is read."""
    try:
        refs = list(files.values())
        sizes = list(map(_SIZE, refs))
        good = (
            safe_paths([path for path in files if path != _MEGACACHE], _FOLDERS)
            and all(map(operator.eq, map(dict.keys, refs), itertools.repeat(_REF_FIELDS)))
            and all_hex64(list(map(_SHA256, refs)))
            and {*map(type, sizes)} <= {int}
            and min(sizes, default=0) >= 0
        )
    except (TypeError, ValueError, KeyError):
        good = False
    if not good:
        path = next((path for path, ref in files.items() if not _good_file(path, ref)), "?")
        raise ManifestError(
            f"file {path!r} is not a relative path under {', '.join(_KINDS)} or megacache, "
            "with a sha256 and a size in bytes"
        )
    # A file may not also be a folder of others: with '/' as the lowest character, a
    # path's first successor in sorted order starts with `path/` if any path does.
    ordered = sorted(path.replace("/", "\x01") for path in files)
    if any(map(str.startswith, ordered[1:], [path + "\x01" for path in ordered[:-1]])):
        path = next(a for a, b in zip(ordered, ordered[1:]) if b.startswith(a + "\x01")).replace("\x01", "/")
        raise ManifestError(f"file {path!r} is also a folder of other files")


_FOLDERS = tuple(f"{kind}/" for kind in _KINDS)


def safe_paths(paths: list[str], folders: tuple[str, ...]) -> bool:
    """Whether every path is a normalised relative path (no empty, `.` or `..` part, no
    backslash or control character) with more than its first part, which is one of
    `folders`. In C over them all: a few substring scans of the paths joined by newlines."""
    if not paths:
        return True
    joined = "\n".join(paths) + "\n"
    return (
        joined.count("\n") == len(paths)
        and all(map(str.startswith, paths, itertools.repeat(folders)))
        and _CONTROL.search(joined) is None
        and not any(map(joined.__contains__, _UNSAFE_IN_JOINED))
        and max(map(len, paths)) <= _MAX_PATH
    )


_REF_FIELDS = {"sha256", "size"}
_SHA256 = operator.itemgetter("sha256")
_SIZE = operator.itemgetter("size")


def all_match(pattern: re.Pattern[str], texts: Iterable[str]) -> bool:
    """Whether every text matches `pattern` whole: one match over them all, joined by
    newlines (so a text holding one fails)."""
    texts = list(texts)
    joined, one = "\n".join(texts), f"(?:{pattern.pattern})"
    return not texts or joined.count("\n") == len(texts) - 1 and re.fullmatch(f"{one}(?:\n{one})*", joined) is not None


def all_hex64(texts: list[str]) -> bool:
    """Whether every text is a sha256 in lowercase hex."""
    return {*map(len, texts)} <= {64} and not "".join(texts).encode("ascii").translate(None, b"0123456789abcdef")


def _good_file(path: str, ref: Any) -> bool:
    return (
        isinstance(path, str)
        and (path == _MEGACACHE or safe_paths([path], _FOLDERS))
        and type(ref) is dict
        and ref.keys() == _REF_FIELDS
        and type(ref["size"]) is int
        and ref["size"] >= 0
        and isinstance(ref["sha256"], str)
        and HEX64.fullmatch(ref["sha256"]) is not None
    )


def _check_key(key: Mapping[str, Any]) -> None:
    compile_options = _field(key, "compile", dict, "key.")
    device = _field(compile_options, "device", str, "key.compile.")
    if not _DEVICE.fullmatch(device):
        raise ManifestError(f"key.compile.device {device!r} is not a device such as cpu or cuda:0")
    sizes = _field(compile_options, "sizes", list, "key.compile.")
    if not all(type(size) is int and size > 0 for size in sizes):
        raise ManifestError("key.compile.sizes must be positive integers")
    ranges = compile_options.get("ranges", [])
    if not isinstance(ranges, list) or not all(
        isinstance(r, list) and len(r) == 2 and all(type(n) is int for n in r) and 0 < r[0] < r[1] for r in ranges
    ):
        raise ManifestError("key.compile.ranges must be [low, high] pairs of batch sizes, low below high")
    _field(compile_options, "dynamic", bool, "key.compile.")
    devices = compile_options.get("devices", [])
    if not isinstance(devices, list) or not all(type(index) is int and index >= 0 for index in devices):
        raise ManifestError("key.compile.devices must be GPU indices")
    for name in ("mode", "backend"):
        if not isinstance(compile_options.get(name), (str, type(None))):
            raise ManifestError(f"key.compile.{name} must be a string or null")
    engines = _mapping(compile_options.get("engines", {}), "key.compile.engines")
    for var, version in engines.items():
        if not isinstance(version, (str, type(None))) or engine_var_problem(var) is not None:
            raise ManifestError(f"key.compile.engines[{var!r}] must map a cache root's variable to a version or null")
    for var, digests in _mapping(compile_options.get("engine_settings", {}), "key.compile.engine_settings").items():
        if var not in engines or not all(isinstance(d, str) for d in _mapping(digests, "engine settings").values()):
            raise ManifestError(f"key.compile.engine_settings[{var!r}] must map setting names to digests")
    fingerprint = _field(key, "fingerprint", dict, "key.")
    for component in components_for(device):
        if component not in fingerprint:
            raise ManifestError(f"key.fingerprint lacks {component!r}")
    if not all(isinstance(value, _SCALAR) for value in fingerprint.values()):
        raise ManifestError("key.fingerprint values must be strings, numbers or null")
    model = key.get("model")
    if model is not None:
        model = _mapping(model, "key.model")
        for name in ("module", "attr"):
            _field(model, name, str, "key.model.")
    inputs = _field(key, "inputs", dict, "key.")
    for size, described in inputs.items():
        if not isinstance(described, list) or not all(isinstance(arg, dict) for arg in described):
            raise ManifestError(f"key.inputs[{size!r}] must be a list of input descriptions")
    for source in _field(key, "sources", list, "key."):
        source = _mapping(source, "key.sources[]")
        if not isinstance(source.get("module"), str):
            raise ManifestError("key.sources[].module must be a string")
        path = source.get("path")
        if not (isinstance(path, str) and len(path) <= _MAX_PATH and _RELATIVE_PATH.fullmatch(path)):
            raise ManifestError(f"key.sources[].path {path!r} is not a normalised relative path")
        if not (isinstance(source.get("sha256"), str) and HEX64.fullmatch(source["sha256"])):
            raise ManifestError(f"key.sources[] {path!r} has no valid sha256")


_TIMING_NUMBERS = ("wall_s", "compile_s", "dynamo_s", "aot_autograd_s", "inductor_s", "kernel_compile_s")


def _check_timings(timings: Mapping[str, Any]) -> None:
    for report in _field(timings, "sizes", list, "timings."):
        report = _mapping(report, "timings.sizes[]")
        _field(report, "label", str, "timings.sizes[].")
        for name in _TIMING_NUMBERS:
            if not isinstance(report.get(name), (int, float, type(None))) or isinstance(report.get(name), bool):
                raise ManifestError(f"timings.sizes[].{name} must be a number")
        counters = _mapping(report.get("counters", {}), "timings.sizes[].counters")
        if not all(type(value) is int for value in counters.values()):
            raise ManifestError("timings.sizes[].counters must be integers")
    for name in ("aot", "packages"):
        seconds = timings.get(name)
        if seconds is not None and not all(
            isinstance(v, (int, float)) for v in _mapping(seconds, f"timings.{name}").values()
        ):
            raise ManifestError(f"timings.{name} must map sizes to seconds")


_SIZE_LABEL = re.compile(r"[0-9]+(-[0-9]+)?")  # a size, or a range (manifest.range_label)


def _check_assumptions(by_size: Mapping[str, Any]) -> None:
    """Per size: what its stored code assumes (`_check_recorded`)."""
    for size, recorded in by_size.items():
        if not (isinstance(size, str) and _SIZE_LABEL.fullmatch(size)):
            raise ManifestError(f"assumptions[{size!r}]: sizes are decimal numbers, ranges two joined by '-'")
        _check_recorded(recorded, f"assumptions[{size!r}]")


def _check_recorded(recorded: Any, where: str) -> None:
    """The traced function's module and name, and rows of [check, path, expected, guard]."""
    recorded = _mapping(recorded, where)
    frame = _mapping(recorded.get("frame"), f"{where}.frame")
    if not all(isinstance(frame.get(name), str) for name in ("module", "qualname")):
        raise ManifestError(f"{where}.frame must name a module and a qualname")
    rows = recorded.get("assumptions")
    if not isinstance(rows, list) or len(rows) > _MAX_ASSUMPTIONS:
        raise ManifestError(f"{where}.assumptions must be a list of at most {_MAX_ASSUMPTIONS}")
    for row in rows:
        if not (
            isinstance(row, list)
            and len(row) == 4
            and row[0] in ASSUMPTION_CHECKS
            and isinstance(row[1], str)
            and isinstance(row[3], str)
        ):
            raise ManifestError(f"{where}: an assumption is not [check, path, expected, guard]")
    if not isinstance(recorded.get("unserialized", 0), int):
        raise ManifestError(f"{where}.unserialized must be a count")


def _check_functions(functions: Mapping[str, Any], files: Mapping[str, Any]) -> None:
    """Each captured function: a file under functions/, its code, mode, globals and assumptions."""
    for path, described in functions.items():
        where = f"functions[{path!r}]"
        if not (path.startswith("functions/") and path in files):
            raise ManifestError(f"{where}: not a file of the entry under functions/")
        described = _mapping(described, where)
        named = all(isinstance(described.get(name), str) for name in ("function", "code", "mode"))
        if not (named and isinstance(described.get("inference_mode", False), bool)):
            raise ManifestError(f"{where} must name its function, code digest, mode and inference mode")
        installed = _mapping(described.get("globals"), f"{where}.globals")
        if not all(isinstance(name, str) and isinstance(module, str) for name, module in installed.items()):
            raise ManifestError(f"{where}.globals must map names to modules")
        _check_recorded(described.get("assumptions"), f"{where}.assumptions")


def _check_aot(aot: Mapping[str, Any]) -> None:
    _field(aot, "status", str, "aot.")
    if not isinstance(aot.get("reason"), (str, type(None))):
        raise ManifestError("aot.reason must be a string or null")
    packages = aot.get("packages")
    if packages is not None:
        packages = _mapping(packages, "aot.packages")
        _field(packages, "status", str, "aot.packages.")
        if not isinstance(packages.get("reason"), (str, type(None))):
            raise ManifestError("aot.packages.reason must be a string or null")
        if "model" in packages and not (isinstance(packages["model"], str) and HEX64.fullmatch(packages["model"])):
            raise ManifestError("aot.packages.model must be a sha256")


def _check_bytecode_list(summary: Mapping[str, Any]) -> None:
    """What a manifest keeps of its bytecode list (bytecode_list.py): counts and names."""
    tops = summary.get("tops")
    counts = all(type(n) is int and n >= 0 for n in (summary.get("modules"), summary.get("bytes")))
    names = isinstance(tops, list) and all(isinstance(top, str) for top in tops)
    if not (counts and names and all_match(_MODULE, tops)):
        raise ManifestError("bytecode_list must hold modules and bytes (counts) and tops (module names)")


def check_bytecode(stored: Mapping[str, Any], files: Mapping[str, Any]) -> None:
    """Each stored .pyc is a file of the entry, with its module's name and its source's hash."""
    try:
        good = (
            stored.keys() <= files.keys()
            and all(map(str.endswith, stored, itertools.repeat(".pyc")))
            and all(map(operator.eq, map(dict.keys, stored.values()), itertools.repeat(_BYTECODE_FIELDS)))
            and all_match(_MODULE, map(_MODULE_NAME, stored.values()))
            and all_hex64(list(map(_SHA256, stored.values())))
        )
    except (TypeError, ValueError, KeyError):
        good = False
    if not good:
        raise ManifestError("bytecode must map stored .pyc files to their module and its source's sha256")


_BYTECODE_FIELDS = {"module", "sha256"}
_MODULE = re.compile(r"[\w-]+(?:\.[\w-]+)*")
_MODULE_NAME = operator.itemgetter("module")


def _field(mapping: Mapping[str, Any], name: str, kind: type, where: str = "") -> Any:
    value = mapping.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ManifestError(f"{where}{name} is missing or not a {kind.__name__}")
    return value


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ManifestError(f"{where} must be an object")
    return value


def inside(folder: Path | str, relative: str) -> Path:
    """`folder / relative`, refusing a path that would lie outside `folder`: the check
    every place that writes a stored path under a folder makes, whatever was checked
    before."""
    joined = os.path.normpath(os.path.join(folder, relative))
    base = os.path.normpath(folder)
    if os.path.isabs(relative) or not joined.startswith(base.rstrip(os.sep) + os.sep):
        raise ManifestError(f"stored path {relative!r} would lie outside {folder}")
    return Path(joined)
