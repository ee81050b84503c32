"""Property tests of everything that reads bytes from outside: the archive reader, the
frame reader, blobs.txt and the manifest schema.

Random valid stores pack and unpack to the same store and the same bytes; random
mutations, truncations and insertions in a valid archive are either refused with one
line (the store as it was, nothing left in tmp/, nothing written outside it) or, where
they touch nothing that matters (padding), unpack to exactly the same store. Never a
traceback, never a hang.

CI runs the `ci` profile (about a minute); release checks run
`HYPOTHESIS_PROFILE=release` (see docs/development.md).
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers.stores import snapshot, synthetic_manifest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ccache_cli.archive import pack, unpack
from ccache_cli.archive.bloblist import BlobList
from ccache_cli.archive.frames import FrameReader
from ccache_cli.errors import CcacheError
from ccache_cli.store import manifest, schema
from ccache_cli.store.hashing import hash_json
from ccache_cli.store.store import Store

settings.register_profile("ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("release", max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

_NAME_CHARS = st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="/\\~")
folder = st.text(_NAME_CHARS, min_size=1, max_size=12).filter(lambda part: part not in (".", ".."))
file_name = st.text(_NAME_CHARS, max_size=12).map(lambda name: name + "~")  # never also a folder
file_path = st.builds(
    lambda kind, folders, name: "/".join([kind, *folders, name]),
    st.sampled_from(["inductor", "aot", "bytecode"]),
    st.lists(folder, max_size=3),
    file_name,
)
entry_files = st.dictionaries(file_path, st.binary(max_size=3000), min_size=1, max_size=8)
stores = st.lists(entry_files, min_size=1, max_size=3)


@contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    """Fail, rather than hang, past `seconds`."""

    def hung(*_: object) -> None:
        raise TimeoutError(f"took more than {seconds} s: a hang")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def build_store(root: Path, entries: list[dict[str, bytes]]) -> Store:
    store = Store(root)
    for number, files in enumerate(entries):
        with store.staging() as staging:
            refs = {}
            for at, (path, data) in enumerate(files.items()):
                staged = staging / f"f{at}"
                staged.write_bytes(data)
                ref = store.stage_blob(staging, staged)
                refs[path] = {"sha256": ref.sha256, "size": ref.size}
            made = synthetic_manifest(f"entry{number}", refs)
            made["key"]["compile"]["sizes"] = [number + 1]  # a key, and so an id, of its own
            made["id"] = hash_json(made["key"])
            store.publish([manifest.parse(made)], staging, {ref["sha256"] for ref in refs.values()})
    return store


def packed(store: Store) -> bytes:
    out = tempfile.TemporaryFile()
    pack.pack(store, list(store.scan().entries), out)
    out.seek(0)
    return out.read()


def store_content(root: Path) -> dict[str, bytes]:
    return {path: data for path, data in snapshot(root).items() if path.startswith(("objects/", "entries/"))}


@given(stores)
def test_random_stores_pack_and_unpack_identically(entries: list[dict[str, bytes]]) -> None:
    with tempfile.TemporaryDirectory() as folder, time_limit(60):
        source = build_store(Path(folder) / "source", entries)
        data = packed(source)
        target = Store(Path(folder) / "target")
        result = unpack.unpack(target, io.BytesIO(data))
        assert len(result.added) == len(entries)
        assert store_content(target.root) == store_content(source.root)
        assert packed(target) == data


@pytest.fixture(scope="module")
def valid_archive(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, dict[str, bytes]]:
    """A small valid archive, and the store content it unpacks to."""
    folder = tmp_path_factory.mktemp("fuzz")
    source = build_store(
        folder / "source",
        [
            {"inductor/fxgraph/a": b"graph a" * 50, "inductor/ab/k.so": bytes(range(256)) * 8},
            {
                "inductor/fxgraph/b": b"graph b" * 30,
                "aot/size-1.pt2": b"package" * 40,
                "inductor/ab/k.so": bytes(range(256)) * 8,
            },
        ],
    )
    data = packed(source)
    target = Store(folder / "target")
    unpack.unpack(target, io.BytesIO(data))
    return data, store_content(target.root)


def mutations(length: int) -> st.SearchStrategy[tuple[str, int, bytes]]:
    return st.tuples(
        st.sampled_from(["flip", "truncate", "insert", "delete", "overwrite"]),
        st.integers(0, length - 1),
        st.binary(min_size=1, max_size=16),
    )


def mutate(data: bytes, kind: str, at: int, extra: bytes) -> bytes:
    if kind == "flip":
        return data[:at] + bytes([data[at] ^ (extra[0] or 1)]) + data[at + 1 :]
    if kind == "truncate":
        return data[:at]
    if kind == "insert":
        return data[:at] + extra + data[at:]
    if kind == "delete":
        return data[:at] + data[at + len(extra) :]
    return data[:at] + extra + data[at + len(extra) :]


@settings(max_examples=int(settings().max_examples * 2.5))
@given(data=st.data())
def test_mutated_archives_are_refused_cleanly_or_unpack_the_same(
    valid_archive: tuple[bytes, dict[str, bytes]], data: st.DataObject
) -> None:
    original, expected = valid_archive
    kind, at, extra = data.draw(mutations(len(original)))
    mutated = mutate(original, kind, at, extra)
    with tempfile.TemporaryDirectory() as folder, time_limit(60):
        root = Path(folder)
        target = Store(root / "target")
        shutil.copytree(Path(__file__).parent / "models" / "two_files", root / "neighbour")
        before = snapshot(root)
        try:
            unpack.unpack(target, io.BytesIO(mutated))
        except CcacheError as exc:
            assert str(exc) and "\n" not in str(exc)
            assert not store_content(target.root)
            assert not (target.root / "tmp").exists() or not any((target.root / "tmp").iterdir())
            outside = {path: content for path, content in snapshot(root).items() if not path.startswith("target/")}
            assert outside == before
            return
        assert store_content(target.root) == expected  # accepted: exactly what the original gives


@given(st.binary(max_size=4096))
def test_the_frame_reader_refuses_random_bytes_cleanly(noise: bytes) -> None:
    reader = FrameReader(io.BytesIO(noise))
    with time_limit(10):
        try:
            while (frame := reader.read()) is not None:
                frame.decompress()
        except CcacheError as exc:
            assert str(exc) and "\n" not in str(exc)


@given(
    st.binary(max_size=2048)
    | st.lists(st.tuples(st.binary(min_size=32, max_size=32), st.integers(-5, 10**20))).map(
        lambda lines: "".join(f"{sha.hex()} {size}\n" for sha, size in lines).encode()
    )
)
def test_blob_lists_are_parsed_or_refused(listing: bytes) -> None:
    try:
        blobs = BlobList.parse(listing)
    except CcacheError:
        return
    sizes = blobs.sizes()
    assert list(sizes) == sorted(sizes) and all(len(name) == 64 for name in sizes)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


def _paths(value: object, prefix: tuple = ()) -> Iterator[tuple]:
    yield prefix
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _paths(inner, (*prefix, key))
    elif isinstance(value, list):
        for at, inner in enumerate(value):
            yield from _paths(inner, (*prefix, at))


def _changed(document: dict, field: tuple, value: object, delete: bool) -> dict:
    changed = copy.deepcopy(document)
    holder = changed
    for key in field[:-1]:
        holder = holder[key]
    if delete and isinstance(holder, dict):
        del holder[field[-1]]
    else:
        holder[field[-1]] = value
    return changed


VALID = synthetic_manifest(
    "valid",
    {
        "inductor/fxgraph/a": {"sha256": "a" * 64, "size": 3},
        "bytecode/os.cpython-311.pyc": {"sha256": "b" * 64, "size": 9},
    },
)
VALID["bytecode"] = {"bytecode/os.cpython-311.pyc": {"module": "os", "sha256": "c" * 64}}
FIELDS = [path for path in _paths(VALID) if path]


@given(st.sampled_from(FIELDS), json_values, st.booleans())
def test_the_manifest_schema_refuses_or_accepts_only_safe_manifests(field: tuple, value: object, delete: bool) -> None:
    changed = _changed(VALID, field, value, delete)
    try:
        checked = schema.check(changed)
    except schema.ManifestError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    with tempfile.TemporaryDirectory() as folder:
        for path in checked["files"]:
            assert schema.inside(folder, path)  # every accepted path stays inside
    json.dumps(checked)


@pytest.mark.parametrize(
    ("created", "accepted"),
    [
        ("2026-12-07T09:04:59Z", True),
        ("2026-13-01T00:00:00Z", False),
        ("2026-02-30T00:00:00Z", False),
        ("2026-12-07T24:00:00Z", False),
        ("2026-12-07T09:04:60Z", False),
        ("2026-12-07 09:04:00Z", False),
    ],
)
def test_the_manifest_schema_takes_only_real_utc_times(created: str, accepted: bool) -> None:
    changed = {**VALID, "created": created}
    if accepted:
        schema.check(changed)
    else:
        with pytest.raises(schema.ManifestError, match="created"):
            schema.check(changed)


@given(
    st.lists(
        st.text(st.characters(min_codepoint=1, max_codepoint=0x10FFFF), min_size=1, max_size=20), min_size=1, max_size=6
    )
)
def test_accepted_file_paths_never_leave_their_folder(parts: list[str]) -> None:
    path = "inductor/" + "/".join(parts)
    files = {path: {"sha256": hashlib.sha256(b"").hexdigest(), "size": 0}}
    try:
        schema.check_files(files)
    except schema.ManifestError:
        return
    with tempfile.TemporaryDirectory() as folder:
        joined = schema.inside(folder, path)
        assert str(joined).startswith(folder + os.sep)


# -- the registry client's parsers ------------------------------------------------


def _registry_documents() -> tuple[dict, dict, object, object]:
    """A valid artifact manifest and catalog for VALID, as push writes them, and the
    index and listed manifest a catalog is checked against."""
    from ccache_cli.archive.head import index_document, parse_index
    from ccache_cli.registry import layout

    entry = manifest.parse(copy.deepcopy(VALID))
    index_bytes = index_document([entry])
    index = layout.Layer.of(layout.INDEX_TYPE, index_bytes)
    catalog = json.loads(zstandard_decompress(layout.catalog_bytes(entry, [], sorted(entry.blobs()))))
    layer = layout.Layer.of(layout.CATALOG_TYPE, b"", {layout.ENTRY_ANNOTATION: entry.id})
    sizes = {ref["sha256"]: ref["size"] for ref in entry.files.values()}
    blobs = [layout.Layer(layout.BLOB_TYPE, "sha256:" + sha, sizes[sha]) for sha in sorted(entry.blobs())]
    document = json.loads(layout.manifest_bytes(index, [layer, *blobs], entry.created))
    parsed_index = parse_index(index_bytes)
    return document, catalog, parsed_index, parsed_index.entries[0]


def zstandard_decompress(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()


REGISTRY_MANIFEST, REGISTRY_CATALOG, REGISTRY_INDEX, REGISTRY_LISTED = _registry_documents()


@given(st.sampled_from([p for p in _paths(REGISTRY_MANIFEST) if p]), json_values, st.booleans(), st.binary(max_size=64))
def test_registry_manifests_are_parsed_or_refused_in_one_line(
    field: tuple, value: object, delete: bool, noise: bytes
) -> None:
    from ccache_cli.registry import layout

    for data in (json.dumps(_changed(REGISTRY_MANIFEST, field, value, delete)).encode(), noise):
        try:
            artifact = layout.parse_manifest(data, "registry.example/cache:v1")
        except CcacheError as exc:
            assert str(exc) and "\n" not in str(exc)
            continue
        assert all(layer.digest.startswith("sha256:") for layer in artifact.layers.values())


@given(st.sampled_from([p for p in _paths(REGISTRY_CATALOG) if p]), json_values, st.booleans())
def test_registry_catalogs_are_parsed_or_refused_in_one_line(field: tuple, value: object, delete: bool) -> None:
    import zstandard

    from ccache_cli.registry import layout

    artifact = layout.parse_manifest(json.dumps(REGISTRY_MANIFEST).encode(), "registry.example/cache:v1")
    data = zstandard.ZstdCompressor().compress(json.dumps(_changed(REGISTRY_CATALOG, field, value, delete)).encode())
    try:
        catalog = layout.parse_catalog(data, REGISTRY_LISTED, REGISTRY_INDEX, artifact)
    except CcacheError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert catalog.entry.id == REGISTRY_LISTED.id  # what is accepted still hashes to the index's digest


def test_the_registry_fuzz_starts_from_documents_that_parse() -> None:
    import zstandard

    from ccache_cli.registry import layout

    artifact = layout.parse_manifest(json.dumps(REGISTRY_MANIFEST).encode(), "registry.example/cache:v1")
    data = zstandard.ZstdCompressor().compress(json.dumps(REGISTRY_CATALOG).encode())
    assert layout.parse_catalog(data, REGISTRY_LISTED, REGISTRY_INDEX, artifact).entry.id == REGISTRY_LISTED.id
