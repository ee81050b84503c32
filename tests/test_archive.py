"""pack / unpack: determinism, streaming, merging, and hostile archives."""

from __future__ import annotations

import contextlib
import hashlib
import json
import struct
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zstandard
from helpers.archives import framed_archive, head_members, regular
from helpers.cli import ccache, ccache_json, imported_modules
from helpers.stores import make_entry, snapshot, synthetic_manifest

from ccache_cli.store.store import Store


@pytest.fixture
def source_store(tmp_path: Path) -> Path:
    store = Store(tmp_path / "source")
    shared = b"shared kernel header\n" * 100
    make_entry(
        store,
        "alpha",
        {"inductor/fxgraph/ab/x": b"graph a", "inductor/ab/k.py": shared, "inductor/ab/k.so": b"\x7fELF" * 500},
    )
    make_entry(store, "beta", {"inductor/fxgraph/cd/y": b"graph b", "inductor/cd/k.py": shared})
    return store.root


def test_pack_is_deterministic_across_runs_and_stores(source_store: Path, tmp_path: Path) -> None:
    first, second, third = tmp_path / "1.tar.zst", tmp_path / "2.tar.zst", tmp_path / "3.tar.zst"
    assert ccache("pack", str(first), store=source_store).returncode == 0
    assert ccache("pack", str(second), store=source_store).returncode == 0
    assert first.read_bytes() == second.read_bytes()
    other = tmp_path / "other"
    assert ccache("unpack", str(first), store=other).returncode == 0
    assert ccache("pack", str(third), store=other).returncode == 0
    assert third.read_bytes() == first.read_bytes()
    # Any zstd reader reads it as one stream (the frames' size headers are skippable frames).
    stream = zstandard.ZstdDecompressor().stream_reader(first.open("rb"), read_across_frames=True)
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        members = [m for m in tar]
    assert [m.name for m in members[:3]] == ["index.json", "blobs.txt", "files.json"]
    names = [m.name for m in members[3:]]
    assert names == sorted(names) and len(names) == len(set(names)) == 4  # the shared blob once
    assert all(m.mtime == 0 and m.uid == 0 and m.uname == "" for m in members)


def test_tar_headers_are_what_tarfile_writes() -> None:
    from ccache_cli.archive.tarstream import ustar_header

    for name, size in ((f"objects/{'ab' * 32}", 12345), ("index.json", 0), ("files.json", 8**11 - 1)):
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = size, 0, 0o644, 0, 0, "", ""
        assert ustar_header(name, size) == info.tobuf(tarfile.USTAR_FORMAT), name


def test_groups_are_where_one_writer_would_cut_them() -> None:
    """Packing processes each write some groups, laid out from the sizes alone: the
    pieces and their group flags are those of one TarWriter writing every member."""
    import random

    from ccache_cli.archive.frames import FRAME_SIZE
    from ccache_cli.archive.tarstream import TarWriter, group_bounds

    class Pieces:
        def __init__(self) -> None:
            self.written: list[tuple[int, bool]] = []

        def write(self, piece: memoryview, starts_group: bool) -> None:
            self.written.append((len(piece), starts_group))

    edges = [
        0,
        1,
        511,
        512,
        513,
        FRAME_SIZE // 2 - 512,
        FRAME_SIZE - 1024,
        FRAME_SIZE - 512,
        FRAME_SIZE,
        2 * FRAME_SIZE - 512,
    ]
    rng = random.Random(0)
    for _ in range(60):
        sizes = [
            rng.choice([*edges, rng.randint(0, 5000), rng.randint(0, 3 * FRAME_SIZE)])
            for _ in range(rng.randint(1, 30))
        ]
        one = Pieces()
        writer = TarWriter(one)  # type: ignore[arg-type]
        for at, size in enumerate(sizes):
            writer.add(f"m{at}", size=size, data=bytes(size))
        writer.cut()
        grouped = Pieces()
        for start, end in group_bounds(sizes):
            writer = TarWriter(grouped)  # type: ignore[arg-type]
            for at in range(start, end):
                writer.add(f"m{at}", size=sizes[at], data=bytes(sizes[at]))
            writer.cut()
        assert grouped.written == one.written, sizes


def test_pack_is_the_same_whatever_the_process_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import random

    from ccache_cli.archive import frames, pack

    store = Store(tmp_path / "store")
    rng = random.Random(0)
    make_entry(store, "big", {f"inductor/{i:02x}/k.so": rng.randbytes(rng.randint(1, 400_000)) for i in range(40)})
    entries = list(store.scan().entries)
    packed = []
    for count in (1, 3, 8):
        monkeypatch.setattr(frames, "cpu_count", lambda count=count: count)
        path = tmp_path / f"{count}.tar.zst"
        with path.open("wb") as out:
            pack.pack(store, entries, out)
        packed.append(path.read_bytes())
    assert packed[0] == packed[1] == packed[2]
    assert ccache("unpack", str(tmp_path / "8.tar.zst"), store=tmp_path / "target").returncode == 0
    assert snapshot(tmp_path / "target" / "objects") == snapshot(store.root / "objects")


def test_pack_of_a_damaged_store_fails_and_leaves_no_file(source_store: Path, tmp_path: Path) -> None:
    blob = next(p for p in (source_store / "objects").rglob("*") if p.is_file())
    blob.chmod(0o644)
    blob.unlink()
    out = tmp_path / "out"
    out.mkdir()
    result = ccache("pack", str(out / "a.tar.zst"), store=source_store)
    assert result.returncode == 1 and f"blob {blob.name[:12]} is missing" in result.stderr, result.stderr
    assert list(out.iterdir()) == []


def test_unpack_merges_dedupes_and_is_idempotent(source_store: Path, tmp_path: Path) -> None:
    archive = tmp_path / "a.tar.zst"
    assert ccache("pack", str(archive), store=source_store).returncode == 0
    target = tmp_path / "target"
    first = ccache_json("unpack", str(archive), store=target)
    assert len(first["added"]) == 2 and first["new_blobs"] == 4
    before = snapshot(target)
    again = ccache_json("unpack", str(archive), store=target)
    assert again["added"] == [] and len(again["kept"]) == 2 and again["new_blobs"] == 0
    assert snapshot(target) == before
    assert snapshot(target / "objects") == snapshot(Path(source_store) / "objects")
    assert list((target / "tmp").iterdir()) == []


def test_pack_and_unpack_do_not_import_torch(source_store: Path, tmp_path: Path) -> None:
    archive = tmp_path / "a.tar.zst"
    for args, store in ((("pack", str(archive)), source_store), (("unpack", str(archive)), tmp_path / "t")):
        result = ccache(*args, store=store, python_flags=["-X", "importtime"])
        assert result.returncode == 0, result.stderr
        modules = imported_modules(result)
        assert "zstandard" in modules and "torch" not in modules


def test_pack_selected_entries_to_stdout_and_unpack_from_stdin(source_store: Path, tmp_path: Path) -> None:
    beta = next(e for e in Store(source_store).scan().entries if e.name == "beta")
    packed = subprocess.run(
        [sys.executable, "-m", "ccache_cli", "--store", str(source_store), "pack", "-", "beta"],
        capture_output=True,
        check=True,
    )
    assert packed.stderr == b""  # no progress in a pipe
    target = tmp_path / "target"
    unpacked = subprocess.run(
        [sys.executable, "-m", "ccache_cli", "--store", str(target), "unpack", "-", "--json"],
        input=packed.stdout,
        capture_output=True,
        check=True,
    )
    assert json.loads(unpacked.stdout)["added"] == [beta.id]


def test_inspect_archive_reads_the_index_only(source_store: Path, tmp_path: Path) -> None:
    archive = tmp_path / "a.tar.zst"
    assert ccache("pack", str(archive), store=source_store).returncode == 0
    listed = ccache_json("inspect", str(archive), store=tmp_path / "empty")
    assert sorted(e["name"] for e in listed["entries"]) == ["alpha", "beta"]
    stored = {e["id"]: e for e in ccache_json("inspect", store=source_store)["entries"]}
    for entry in listed["entries"]:
        for key in ("artifacts", "artifact_bytes", "bytes", "sizes", "fingerprint", "sources"):
            assert entry[key] == stored[entry["id"]][key], key
    assert not (tmp_path / "empty").exists()


def test_export_dir_writes_a_plain_inductor_dir(source_store: Path, tmp_path: Path) -> None:
    archive = tmp_path / "a.tar.zst"
    assert ccache("pack", str(archive), "alpha", store=source_store).returncode == 0
    export = tmp_path / "export"
    result = ccache_json("unpack", str(archive), "--export-dir", str(export), store=tmp_path / "t")
    assert result["exported"]["dir"] == str(export)
    assert (export / "fxgraph" / "ab" / "x").read_bytes() == b"graph a"
    assert (export / "ab" / "k.so").read_bytes() == b"\x7fELF" * 500


# -- hostile archives --------------------------------------------------------


def frame_declaring(size: int, content: bytes) -> bytes:
    """A frame whose sizes header declares `size` bytes around a zstd frame of `content`."""
    frame = zstandard.ZstdCompressor().compress(content)
    return struct.pack("<IIIII", 0x184D2A5C, 12, len(frame), size, 1) + frame


def index_for(blobs: dict[str, bytes], version: int = 4) -> list[tuple[tarfile.TarInfo, bytes]]:
    """index.json, blobs.txt and files.json for one entry that needs every blob, so
    that a wrong publish would show."""
    refs = {f"inductor/{name}": {"sha256": hashlib.sha256(d).hexdigest(), "size": len(d)} for name, d in blobs.items()}
    return head_members([synthetic_manifest("hostile", refs)], version)


BLOB = b"kernel bytes" * 10
SHA = hashlib.sha256(BLOB).hexdigest()


def special(name: str, kind: bytes, link: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info, None


def listing(lines: str) -> list[tuple[tarfile.TarInfo, bytes]]:
    """index_for one blob, with its blobs.txt replaced by `lines`."""
    index, _, files = index_for({"b": BLOB})
    return [index, regular("blobs.txt", lines.encode()), files]


HOSTILE = {
    "not zstd": (b"PK\x03\x04 this is a zip", "not a zstd-compressed archive"),
    # The unpacking processes hold the list as fixed-width names and unsigned sizes.
    "listed name not a sha256": (
        framed_archive([*listing(f"../{SHA[3:]} 1\n{SHA} {len(BLOB)}\n")]),
        "blobs.txt is malformed",
    ),
    "listed size negative": (framed_archive([*listing(f"{SHA} -1\n")]), "blobs.txt is malformed"),
    "listed twice": (framed_archive([*listing(f"{SHA} {len(BLOB)}\n" * 2)]), "listed twice"),
    "truncated": (framed_archive([*index_for({"b": BLOB}), regular(f"objects/{SHA}", BLOB)])[:-20], "truncated"),
    "absolute path": (framed_archive([*index_for({"b": BLOB}), regular("/etc/passwd", BLOB)]), "unsafe path"),
    "dot dot": (framed_archive([*index_for({"b": BLOB}), regular(f"objects/../../{SHA}", BLOB)]), "unsafe path"),
    "symlink": (
        framed_archive([*index_for({"b": BLOB}), special(f"objects/{SHA}", tarfile.SYMTYPE, "/etc/passwd")]),
        "is a link",
    ),
    "hardlink": (
        framed_archive([*index_for({"b": BLOB}), special(f"objects/{SHA}", tarfile.LNKTYPE, "index.json")]),
        "is a link",
    ),
    "fifo": (
        framed_archive([*index_for({"b": BLOB}), special(f"objects/{SHA}", tarfile.FIFOTYPE)]),
        "not a regular file",
    ),
    "device": (
        framed_archive([*index_for({"b": BLOB}), special(f"objects/{SHA}", tarfile.CHRTYPE)]),
        "not a regular file",
    ),
    "duplicate": (
        framed_archive([*index_for({"b": BLOB}), regular(f"objects/{SHA}", BLOB), regular(f"objects/{SHA}", BLOB)]),
        "appears twice",
    ),
    "bad hash": (
        framed_archive([*index_for({"b": BLOB}), regular(f"objects/{SHA}", BLOB[:-1] + b"!")]),
        "does not match its hash",
    ),
    "larger than index": (
        framed_archive([*index_for({"b": BLOB}), regular(f"objects/{SHA}", BLOB + b"x" * 10)]),
        "blobs.txt says",
    ),
    # The member's bytes run on far past the size its header declares: reading stops
    # at the declared size and what follows is rejected, never written out.
    "runs past declared size": (
        framed_archive([*index_for({"b": BLOB}), regular(f"objects/{SHA}", BLOB)], trailing=b"\xff" * (64 << 20)),
        "corrupt",
    ),
    "plain zstd": (zstandard.ZstdCompressor().compress(b"\0" * 10240), "plain zstd stream"),
    # A frame whose zstd header declares 64 MiB where its sizes header says 4 KiB is
    # refused before anything is decompressed.
    "frame larger than declared": (frame_declaring(4096, bytes(64 << 20)), "does not match its header"),
    "future format": (framed_archive([*index_for({"b": BLOB}, version=99)]), "format 99 is not supported"),
    "older format": (framed_archive([*index_for({"b": BLOB}, version=3)]), "pack it again with this version"),
    "no index": (framed_archive([regular(f"objects/{SHA}", BLOB)]), "does not start with index.json"),
}


def test_a_blob_in_two_groups_is_refused_from_a_pipe(source_store: Path) -> None:
    """From a pipe, groups go to one process per core: a blob repeated in another
    group (so likely another process) is still caught."""
    data = framed_archive(
        [*index_for({"b": BLOB}), regular(f"objects/{SHA}", BLOB), regular(f"objects/{SHA}", BLOB)], groups_at=(2, 3, 4)
    )
    before = snapshot(source_store)
    result = subprocess.run(
        [sys.executable, "-m", "ccache_cli", "--store", str(source_store), "unpack", "-"],
        input=data,
        capture_output=True,
    )
    assert result.returncode == 2 and b"appears twice" in result.stderr, result.stderr
    assert snapshot(source_store) == before
    assert list((source_store / "tmp").iterdir()) == []


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archive_is_rejected_and_store_unchanged(case: str, source_store: Path, tmp_path: Path) -> None:
    data, needle = HOSTILE[case]
    archive = tmp_path / "hostile.tar.zst"
    archive.write_bytes(data)
    before = snapshot(source_store)
    result = ccache("unpack", str(archive), store=source_store, cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ccache: error: ") and needle in lines[0], result.stderr
    assert snapshot(source_store) == before
    assert list((source_store / "tmp").iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hostile.tar.zst", "source"]


@contextlib.contextmanager
def threaded_and_recording_workers(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[list[str]]]:
    """This process running a second thread, and the command lines of the worker
    processes started meanwhile: forking a threaded process is not safe, so they are
    new interpreters (the CLI, which runs no other thread, forks them)."""
    from ccache_cli.archive import processes

    started: list[list[str]] = []
    real_popen = subprocess.Popen

    def recording_popen(args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        started.append(args)
        return real_popen(args, **kwargs)

    monkeypatch.setattr(processes.subprocess, "Popen", recording_popen)
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        yield started
    finally:
        stop.set()
        other.join()


def test_a_process_with_threads_packs_through_new_interpreters(
    source_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ccache_cli.archive import pack

    forked = tmp_path / "forked.tar.zst"
    assert ccache("pack", str(forked), store=source_store).returncode == 0
    store = Store(source_store)
    with threaded_and_recording_workers(monkeypatch) as started, (tmp_path / "spawned.tar.zst").open("wb") as out:
        pack.pack(store, list(store.scan().entries), out)
    assert started and all(args[1:] == ["-m", "ccache_cli.archive.pack_process"] for args in started)
    assert (tmp_path / "spawned.tar.zst").read_bytes() == forked.read_bytes()


def test_a_process_with_threads_unpacks_through_new_interpreters(
    source_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ccache_cli.archive import unpack

    packed = tmp_path / "a.tar.zst"
    assert ccache("pack", str(packed), store=source_store).returncode == 0
    with threaded_and_recording_workers(monkeypatch) as started, packed.open("rb") as source:
        result = unpack.unpack(Store(tmp_path / "target"), source)
    assert started and all(args[1:] == ["-m", "ccache_cli.archive.unpack_process"] for args in started)
    assert len(result.added) == 2
    assert snapshot(tmp_path / "target" / "objects") == snapshot(source_store / "objects")


def test_concurrent_unpacks_into_one_store(source_store: Path, tmp_path: Path) -> None:
    archives = {name: tmp_path / f"{name}.tar.zst" for name in ("alpha", "beta", "all")}
    for name, path in archives.items():
        selection = [] if name == "all" else [name]
        assert ccache("pack", str(path), *selection, store=source_store).returncode == 0
    target = tmp_path / "target"
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "ccache_cli", "--store", str(target), "unpack", str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for path in [*archives.values(), archives["all"]]
    ]
    for process in processes:
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr
    assert snapshot(target / "objects") == snapshot(source_store / "objects")
    assert sorted(p.name for p in (target / "entries").iterdir()) == sorted(
        p.name for p in (source_store / "entries").iterdir()
    )
    for entry in Store(target).scan().entries:
        for ref in entry.refs.values():
            assert hashlib.sha256(Store(target).blob_path(ref.sha256).read_bytes()).hexdigest() == ref.sha256
    assert list((target / "tmp").iterdir()) == []
