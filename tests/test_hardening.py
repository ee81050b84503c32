"""Hostile or broken surroundings refused in one line, before anything is used or
written: folders another user could plant code in, references that would pull
something else than asked."""

from __future__ import annotations

import json
import os
import socket
import socketserver
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers.archives import framed_archive, regular
from helpers.cli import ccache
from helpers.stores import make_entry

from ccache_cli.store.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    make_entry(Store(root), "synthetic", {"inductor/fxgraph/ab/entry": b"graph"})
    return root


def _run(store: Path, env: dict[str, str]) -> tuple[int, str]:
    result = ccache("run", "--", sys.executable, "-c", "pass", store=store, env=env)
    return result.returncode, result.stderr


def test_a_views_folder_others_can_write_is_refused(store: Path, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    code, stderr = _run(store, {"CCACHE_CLI_VIEWS": str(shared)})
    assert code == 1 and f"{shared} is writable by other users" in stderr and "folder of your own" in stderr
    assert list(shared.iterdir()) == []  # nothing was laid out there


def test_a_views_folder_that_is_a_link_is_refused(store: Path, tmp_path: Path) -> None:
    (tmp_path / "real").mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    code, stderr = _run(store, {"CCACHE_CLI_VIEWS": str(tmp_path / "link")})
    assert code == 1 and "is a symbolic link" in stderr
    assert list((tmp_path / "real").iterdir()) == []


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to give a folder to another user")
def test_a_default_views_folder_another_user_made_first_is_refused(store: Path, tmp_path: Path) -> None:
    planted = tmp_path / "tmp" / f"ccache-cli-{os.getuid()}"
    planted.mkdir(parents=True)
    os.chown(planted, 4321, 4321)
    env = {"TMPDIR": str(tmp_path / "tmp"), "CCACHE_CLI_VIEWS": ""}
    code, stderr = _run(store, env)
    assert code == 1 and "belongs to another user (uid 4321)" in stderr and "CCACHE_CLI_VIEWS" in stderr
    assert list(planted.iterdir()) == []
    # A private folder of one's own works.
    code, stderr = _run(store, {"CCACHE_CLI_VIEWS": str(tmp_path / "mine")})
    assert code == 0, stderr


@pytest.mark.parametrize(
    ("reference", "why"),
    [("localhost:5000/cache@", "empty digest after '@'"), ("localhost:99999/cache", "port 99999")],
)
def test_a_reference_that_would_pull_something_else_is_refused(tmp_path: Path, reference: str, why: str) -> None:
    for command in (["pull", reference], ["inspect", reference], ["verify", reference]):
        result = ccache(*command, store=tmp_path / "store")
        assert result.returncode == 2 and why in result.stderr, (command, result.stderr)


@pytest.fixture
def archive(store: Path, tmp_path: Path) -> Path:
    packed = tmp_path / "cache.tar.zst"
    assert ccache("pack", str(packed), store=store).returncode == 0
    return packed


def _export(archive: Path, export: Path, tmp_path: Path):  # noqa: ANN202
    return ccache("unpack", str(archive), "--export-dir", str(export), store=tmp_path / "image-store")


def test_an_export_never_writes_through_a_linked_folder_inside_it(archive: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    export = tmp_path / "export"
    export.mkdir()
    (export / "kept.txt").write_text("mine")
    (export / "fxgraph").symlink_to(outside)  # where the export puts its graphs
    result = _export(archive, export, tmp_path)
    assert result.returncode == 2 and "fxgraph is a symbolic link" in result.stderr, result.stderr
    assert list(outside.iterdir()) == [] and sorted(p.name for p in export.iterdir()) == ["fxgraph", "kept.txt"]
    assert not [p for p in tmp_path.iterdir() if ".exporting-" in p.name]  # no staging folder left


def test_an_export_never_writes_through_a_linked_file_inside_it(archive: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    export = tmp_path / "export"
    (export / "fxgraph" / "ab").mkdir(parents=True)
    (export / "fxgraph" / "ab" / "entry").symlink_to(victim)
    result = _export(archive, export, tmp_path)
    assert result.returncode == 2 and "symbolic link" in result.stderr
    assert victim.read_text() == "precious"


def test_an_export_dir_that_is_a_link_or_a_file_is_refused(archive: Path, tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    result = _export(archive, tmp_path / "link", tmp_path)
    assert result.returncode == 2 and "is a symbolic link" in result.stderr
    (tmp_path / "file").write_text("x")
    assert _export(archive, tmp_path / "file", tmp_path).returncode == 2


def test_an_export_in_the_way_of_a_file_leaves_nothing_partial(archive: Path, tmp_path: Path) -> None:
    export = tmp_path / "export"
    (export / "fxgraph" / "ab" / "entry").mkdir(parents=True)  # a folder where the export has a file
    result = _export(archive, export, tmp_path)
    assert result.returncode == 2 and "in the way" in result.stderr
    assert sorted(str(p.relative_to(export)) for p in export.rglob("*")) == [
        "fxgraph",
        "fxgraph/ab",
        "fxgraph/ab/entry",
    ]


def test_an_export_into_a_new_an_empty_or_an_earlier_export_works(archive: Path, tmp_path: Path) -> None:
    export = tmp_path / "export"
    for _ in range(2):  # new, then over the earlier export
        result = _export(archive, export, tmp_path)
        assert result.returncode == 0, result.stderr
        assert (export / "fxgraph" / "ab" / "entry").read_bytes() == b"graph"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _export(archive, empty, tmp_path).returncode == 0 and (empty / "fxgraph" / "ab" / "entry").is_file()


# -- registries that reset, stall or trickle ----------------------------------


class _Hostile(socketserver.ThreadingTCPServer):
    """A loopback server that answers every request as `mode` says: `reset` (headers,
    part of the body, then a reset connection), `trickle` (a byte every half second,
    so that no read times out) or `mute` (never a response)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.requests = 0
        self.stop = threading.Event()
        super().__init__(("127.0.0.1", 0), _HostileHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


class _HostileHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server: _Hostile = self.server  # type: ignore[assignment]
        self.request.recv(65536)
        server.requests += 1
        if server.mode == "mute":
            server.stop.wait(30)
            return
        body = b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json", "layers": []}' * 20
        head = (
            "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        self.request.sendall(head.encode())
        if server.mode == "reset":
            self.request.sendall(body[:40])
            self.request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return  # closing with linger 0 sends a reset
        for byte in body:
            if server.stop.wait(0.5):
                return
            try:
                self.request.sendall(bytes([byte]))
            except OSError:  # the client gave up
                return


@pytest.mark.extended
@pytest.mark.parametrize(
    ("mode", "env", "said", "commands"),
    [
        ("reset", {}, "lost the connection to", ("pull", "inspect", "verify")),
        (
            "trickle",
            {"CCACHE_CLI_REGISTRY_MIN_RATE": "100000", "CCACHE_CLI_REGISTRY_TIMEOUT": "1.5"},
            "slower than",
            ("pull",),
        ),
        ("mute", {"CCACHE_CLI_REGISTRY_TIMEOUT": "1"}, "timed out", ("pull",)),
    ],
)
def test_a_registry_that_resets_stalls_or_trickles_fails_in_one_line(
    tmp_path: Path, mode: str, env: dict[str, str], said: str, commands: tuple[str, ...]
) -> None:
    server = _Hostile(mode)
    try:
        for command in commands:  # inspect and verify read the manifest as pull does
            started = time.monotonic()
            result = ccache(command, f"{server.host}/cache:v1", store=tmp_path / "store", env=env)
            lines = [line for line in result.stderr.splitlines() if line.strip()]
            assert result.returncode == 1 and len(lines) == 1 and said in lines[0], (command, result.stderr)
            assert "internal error" not in result.stderr and time.monotonic() - started < 30
        assert server.requests == 4 * len(commands)  # each tried again three times
        assert not list((tmp_path / "store").glob("entries/*"))
    finally:
        server.stop.set()
        server.shutdown()
        server.server_close()


def test_unpack_replaces_a_blob_the_store_holds_cut_short(store: Path, archive: Path, tmp_path: Path) -> None:
    target = tmp_path / "target"
    assert ccache("unpack", str(archive), store=target).returncode == 0
    [blob] = [path for path in (target / "objects").rglob("*") if path.is_file() and path.read_bytes() == b"graph"]
    blob.chmod(0o644)
    blob.write_bytes(b"gra")  # as a crash or a full disk leaves a file
    assert ccache("verify", store=target).returncode == 1
    assert ccache("unpack", str(archive), store=target).returncode == 0
    assert blob.read_bytes() == b"graph"
    assert ccache("verify", store=target).returncode == 0


# -- documents that expand ----------------------------------------------------


@pytest.mark.parametrize("filler", [b"[],", b"1.5,", b"{},"])
def test_an_index_that_expands_is_refused_in_bounded_memory(tmp_path: Path, filler: bytes) -> None:
    """A few kilobytes of archive whose index.json is 32 MiB of tiny values: refused
    before it is parsed, by inspect and unpack alike, well under 200 MB."""
    index = b'{"format": 4, "entries": [' + filler * ((32 << 20) // len(filler)) + b"[]]}"
    archive = tmp_path / "hostile.tar.zst"
    members = [regular("index.json", index), regular("blobs.txt", b""), regular("files.json", b"{}")]
    archive.write_bytes(framed_archive(members))
    assert archive.stat().st_size < 64 << 10
    for command in ("inspect", "unpack"):
        code, stderr, peak = _run_measured(command, archive, tmp_path)
        assert code == 2 and "more than any ccache writes" in stderr, stderr
        assert peak < 200, f"{command} peaked at {peak:.0f} MB"


def _run_measured(command: str, archive: Path, tmp_path: Path) -> tuple[int, str, float]:
    """`ccache COMMAND ARCHIVE`: its exit code, its stderr, and the largest resident set
    of it and its children, in MB."""
    probe = (
        "import json, resource, subprocess, sys\n"
        f"done = subprocess.run([sys.executable, '-m', 'ccache_cli', '--store', {str(tmp_path / 'store')!r}, "
        f"{command!r}, {str(archive)!r}], capture_output=True, text=True)\n"
        "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
        "print(json.dumps([done.returncode, done.stderr, peak]))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    code, stderr, peak_kb = json.loads(result.stdout.strip().splitlines()[-1])
    return code, stderr, peak_kb / 1024
