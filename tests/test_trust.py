"""Nothing outside the store, ever: hostile manifests, signed archives, one bad entry."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
import zstandard
from helpers.archives import framed_archive, head_members, regular
from helpers.cli import ccache, ccache_json
from helpers.stores import make_entry, snapshot, synthetic_manifest

from ccache_cli.store.hashing import hash_json
from ccache_cli.store.schema import ManifestError, inside
from ccache_cli.store.store import Store

BLOB = b"machine code" * 20
SHA = hashlib.sha256(BLOB).hexdigest()


def archive_of(manifests: list[dict], blobs: dict[str, bytes] | None = None) -> bytes:
    """An archive as pack lays it out, for manifests as given (hashes consistent)."""
    blobs = blobs if blobs is not None else {SHA: BLOB}
    return framed_archive(
        [*head_members(manifests), *(regular(f"objects/{sha}", data) for sha, data in sorted(blobs.items()))]
    )


def hostile(change: Callable[[dict], None]) -> bytes:
    """An archive of one entry whose manifest `change` altered, with its id and digest made
    consistent again where the change leaves the key alone, so that only the schema can
    catch it."""
    manifest = synthetic_manifest("evil", {"inductor/fxgraph/ok": {"sha256": SHA, "size": len(BLOB)}})
    change(manifest)
    return archive_of([manifest])


def with_file(path: str) -> Callable[[dict], None]:
    return lambda m: m["files"].update({path: {"sha256": SHA, "size": len(BLOB)}})


def drop_torch(m: dict) -> None:
    del m["key"]["fingerprint"]["torch"]
    m["id"] = hash_json(m["key"])


HOSTILE_MANIFESTS = {
    "file path with ..": (with_file("inductor/../../victim.txt"), "is not a relative path"),
    "file path with many ..": (with_file("inductor/" + "../" * 40 + "tmp/ccache-evil"), "is not a relative path"),
    "absolute file path": (with_file("/tmp/ccache-evil"), "is not a relative path"),
    "file outside the entry's folders": (with_file("victim.txt"), "is not a relative path"),
    "entry id with ..": (lambda m: m.update(id="../../../X"), "id must be 64 lowercase hex digits"),
    "absolute entry id": (lambda m: m.update(id="/tmp/X"), "id must be 64 lowercase hex digits"),
    "entry id with a slash": (lambda m: m.update(id="ab/cd"), "id must be 64 lowercase hex digits"),
    "entry id not its key's digest": (lambda m: m.update(id="f" * 64), "id is not the digest of its key"),
    "missing fingerprint part": (drop_torch, "lacks 'torch'"),
    "created not a date": (lambda m: m.update(created="not a date"), "is not a UTC time"),
    "name with control characters": (lambda m: m.update(name="evil\x1b]0;pwned\x07"), "printable"),
    "size of the wrong type": (lambda m: m["files"]["inductor/fxgraph/ok"].update(size="120"), "sha256 and a size"),
    "bytecode of an unlisted file": (
        lambda m: m.update(bytecode={"bytecode/os.cpython-311.pyc": {"module": "os", "sha256": SHA}}),
        "bytecode must map",
    ),
}


@pytest.fixture
def target(tmp_path: Path) -> Path:
    """A store with one entry of its own, to show that a refused archive changes nothing."""
    store = Store(tmp_path / "target")
    make_entry(store, "own", {"inductor/fxgraph/own": b"own graph"})
    return store.root


def assert_refused(result, needle: str, code: int = 2) -> None:  # type: ignore[no-untyped-def]
    assert result.returncode == code, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ccache: error: ") and needle in lines[0], result.stderr


@pytest.mark.parametrize("case", sorted(HOSTILE_MANIFESTS))
def test_hostile_manifest_is_refused_and_nothing_is_written(case: str, target: Path, tmp_path: Path) -> None:
    change, needle = HOSTILE_MANIFESTS[case]
    work = tmp_path / "work"
    (work / "exp").mkdir(parents=True)
    victim = work / "victim.txt"
    victim.write_text("precious")
    archive = work / "evil.tar.zst"
    archive.write_bytes(hostile(change))
    before, work_before = snapshot(target), snapshot(work)
    result = ccache("unpack", str(archive), "--export-dir", str(work / "exp" / "cache"), store=target, cwd=work)
    assert_refused(result, needle)
    assert snapshot(target) == before and list((target / "tmp").iterdir()) == []
    assert snapshot(work) == work_before and not (work / "exp" / "cache").exists()
    assert not Path("/tmp/ccache-evil").exists() and not (tmp_path / "X").exists()
    # The same archive into a store that does not exist yet leaves no entry, blob or folder above it.
    fresh = tmp_path / "deep" / "fresh"
    assert_refused(ccache("unpack", str(archive), store=fresh, cwd=work), needle)
    assert not (fresh / "entries").exists() or not any((fresh / "entries").iterdir())
    assert not (fresh / "objects").exists() or not any((fresh / "objects").iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) in (["target", "work"], ["deep", "target", "work"])


def test_a_changed_byte_in_a_manifest_is_caught(target: Path, tmp_path: Path) -> None:
    manifest = synthetic_manifest("plain", {"inductor/fxgraph/ok": {"sha256": SHA, "size": len(BLOB)}})
    before = snapshot(target)
    for old, new in ((b'"name": "plain"', b'"name": "plaiN"'), (b'"inductor/fxgraph/ok"', b'"inductor/fxgraph/oK"')):
        members = [regular(info.name, content.replace(old, new)) for info, content in head_members([manifest])]
        assert members != head_members([manifest])
        changed = framed_archive([*members, regular(f"objects/{SHA}", BLOB)])
        archive = tmp_path / "changed.tar.zst"
        archive.write_bytes(changed)
        result = ccache("unpack", str(archive), store=target)
        assert_refused(result, "does not match its digest")
        assert snapshot(target) == before


def test_a_bad_entry_in_the_store_is_a_warning_never_a_crash(target: Path, tmp_path: Path) -> None:
    """A manifest put into the store by hand (a shared volume, an old tool) is skipped with a
    warning by every reader, and `run` links nothing of it."""
    bad = synthetic_manifest("evil", {"inductor/../../../../../../tmp/ccache-evil-link": {"sha256": SHA, "size": 1}})
    broken = target / "entries" / bad["id"]
    broken.mkdir()
    (broken / "manifest.json").write_text(json.dumps(bad))
    undated = synthetic_manifest("undated", {})
    undated["created"] = "not a date"
    (target / "entries" / undated["id"]).mkdir()
    (target / "entries" / undated["id"] / "manifest.json").write_text(json.dumps(undated))
    env = {"CCACHE_CLI_VIEWS": str(tmp_path / "views")}
    for args in (["inspect"], ["inspect", "--json"], ["gc", "--dry-run"], ["gc", "--dry-run", "--json"]):
        result = ccache(*args, store=target, env=env)
        assert result.returncode == 0, (args, result.stderr)
        assert "Traceback" not in result.stderr and result.stderr.count("is skipped") == 2, result.stderr
    assert [e["name"] for e in ccache_json("inspect", store=target, env=env)["entries"]] == ["own"]
    ran = ccache(
        "run",
        "--",
        sys.executable,
        "-c",
        "import os; print(os.environ['TORCHINDUCTOR_CACHE_DIR'])",
        store=target,
        env=env,
    )
    assert ran.returncode == 0, ran.stderr
    view = Path(ran.stdout.strip()).parent
    links = [p for p in view.rglob("*") if p.is_symlink()]
    assert links and all(str(p.resolve()).startswith(str(target)) for p in links)
    assert not Path("/tmp/ccache-evil-link").exists()
    assert ccache("run", "evil", "--", "true", store=target, env=env).returncode == 2


def test_inside_refuses_paths_that_leave_their_folder(tmp_path: Path) -> None:
    assert inside(tmp_path, "a/b") == tmp_path / "a" / "b"
    for escaping in ("../x", "a/../../x", "/etc/passwd", "a/../.."):
        with pytest.raises(ManifestError):
            inside(tmp_path, escaping)


# -- signatures ---------------------------------------------------------------


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("keys")
    for name in ("ours", "theirs"):
        result = ccache("key", "generate", str(folder / name))
        assert result.returncode == 0, result.stderr
    assert oct((folder / "ours").stat().st_mode & 0o777) == "0o600"
    assert (folder / "ours.pub").read_text().startswith("ssh-ed25519 ")
    assert ccache("key", "generate", str(folder / "ours")).returncode == 2  # never overwritten
    return {"ours": folder / "ours", "theirs": folder / "theirs"}


@pytest.fixture
def signed(target: Path, keys: dict[str, Path], tmp_path: Path) -> dict[str, Path]:
    source = Store(tmp_path / "source")
    make_entry(source, "signed", {"inductor/fxgraph/s": b"signed graph", "inductor/ab/k.so": b"\x7fELF" * 100})
    out = {}
    for name, sign in (
        ("unsigned", []),
        ("ours", ["--sign", str(keys["ours"])]),
        ("theirs", ["--sign", str(keys["theirs"])]),
    ):
        out[name] = tmp_path / f"{name}.tar.zst"
        result = ccache("pack", str(out[name]), *sign, store=source.root)
        assert result.returncode == 0, result.stderr
    return out


def test_a_signed_archive_unpacks_where_its_key_is_trusted(
    signed: dict[str, Path], keys: dict[str, Path], target: Path, tmp_path: Path
) -> None:
    again = tmp_path / "again.tar.zst"
    assert ccache("pack", str(again), "signed", "--sign", str(keys["ours"]), store=tmp_path / "source").returncode == 0
    assert again.read_bytes() == signed["ours"].read_bytes()  # deterministic, signature included
    trust = ["--trust", str(keys["theirs"]) + ".pub", "--trust", str(keys["ours"]) + ".pub"]
    listed = ccache_json("inspect", str(signed["ours"]), *trust, store=target)
    assert [e["name"] for e in listed["entries"]] == ["signed"]
    assert ccache("verify", str(signed["ours"]), *trust, store=target).returncode == 0
    unpacked = ccache_json("unpack", str(signed["ours"]), *trust, store=target)
    assert len(unpacked["added"]) == 1
    # Any zstd and tar reader still reads it: the signature is a member like the others.
    stream = zstandard.ZstdDecompressor().stream_reader(signed["ours"].open("rb"), read_across_frames=True)
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        names = [member.name for member in tar]
    assert names[:4] == ["index.json", "blobs.txt", "signature.json", "files.json"]


@pytest.mark.parametrize("case", ["unsigned", "theirs", "altered", "altered files.json"])
def test_an_untrusted_archive_is_refused_before_anything_is_written(
    case: str, signed: dict[str, Path], keys: dict[str, Path], tmp_path: Path
) -> None:
    archive = signed["ours" if case.startswith("altered") else case]
    if case.startswith("altered"):
        archive = tmp_path / "altered.tar.zst"
        archive.write_bytes(_altered(signed["ours"], "index.json" if case == "altered" else "files.json"))
    needle = {
        "unsigned": "is not signed",
        "theirs": "which is not trusted",
        "altered": "changed after it was signed",
        "altered files.json": "does not match its digest",
    }[case]
    trust = str(keys["ours"]) + ".pub"
    fresh = tmp_path / "fresh"
    for args, env in (
        (["unpack", str(archive), "--trust", trust], {}),
        (["unpack", str(archive)], {"CCACHE_CLI_TRUST": trust}),
        (["verify", str(archive), "--trust", trust], {}),
    ):
        result = ccache(*args, store=fresh, env=env)
        assert_refused(result, needle, code=2 if case == "altered files.json" else 1)
        assert not fresh.exists() or case == "altered files.json"
    if case != "altered files.json":  # the head alone tells
        assert_refused(ccache("inspect", str(archive), "--trust", trust, store=fresh), needle, code=1)


def _altered(archive: Path, member: str) -> bytes:
    """The archive with one byte of `member` changed and everything re-framed, as an
    attacker who can write the archive (but has not the key) would make it."""
    stream = zstandard.ZstdDecompressor().stream_reader(archive.open("rb"), read_across_frames=True)
    members = []
    with tarfile.open(fileobj=stream, mode="r|") as tar:
        for info in tar:
            data = tar.extractfile(info).read()  # type: ignore[union-attr]
            if info.name == member:
                data = (
                    data.replace(b'"signed"', b'"SIGNED"', 1)
                    if b'"signed"' in data
                    else data.replace(b"inductor/ab", b"inductor/AB", 1)
                )
            members.append(regular(info.name, data))
    return framed_archive(members, groups_at=(3, 4))


def test_a_public_key_in_pem_is_trusted_too(signed: dict[str, Path], keys: dict[str, Path], tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    public = serialization.load_ssh_public_key((keys["ours"].parent / "ours.pub").read_bytes())
    pem = tmp_path / "ours.pem"
    pem.write_bytes(public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    assert ccache("unpack", str(signed["ours"]), "--trust", str(pem), store=tmp_path / "s").returncode == 0
    not_a_key = tmp_path / "junk.pub"
    not_a_key.write_text("hello")
    assert_refused(
        ccache("unpack", str(signed["ours"]), "--trust", str(not_a_key), store=tmp_path / "s"), "is not a public key"
    )


def test_store_files_are_readable_by_other_users(target: Path, tmp_path: Path) -> None:
    """A store built by one user (root, in an image build) serves another (the server's)."""
    old = os.umask(0o022)
    try:
        assert ccache("fingerprint", store=target).returncode == 0
    finally:
        os.umask(old)
    for path in [target / "store.json", *(target / "machines").iterdir(), *(target / "entries").rglob("*")]:
        assert path.stat().st_mode & 0o044 == 0o044, path
    for path in (target / "objects").rglob("*"):
        assert path.stat().st_mode & 0o044 == 0o044, path


def test_pack_into_a_directory_and_absurd_sizes_are_bad_input(target: Path, tmp_path: Path) -> None:
    assert_refused(ccache("pack", str(tmp_path), store=target), "is a directory")
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".partial")] == []
    assert_refused(
        ccache("precompile", "ccache_cli.examples.tiny_transformer", "--sizes", "99999999999999999999", store=target),
        "--sizes",
    )


def test_a_relative_store_works_from_any_folder(target: Path, tmp_path: Path) -> None:
    archive = tmp_path / "a.tar.zst"
    assert ccache("pack", str(archive), store=target).returncode == 0
    (tmp_path / "elsewhere").mkdir()
    assert ccache("--store", "rel", "unpack", str(archive), cwd=tmp_path).returncode == 0
    check = "import os, pathlib; print(sum(1 for p in pathlib.Path(os.environ['TORCHINDUCTOR_CACHE_DIR']).rglob('*') if p.is_file()))"
    ran = ccache(
        "--store",
        "../rel",
        "run",
        "--",
        sys.executable,
        "-c",
        check,
        cwd=tmp_path / "elsewhere",
        env={"CCACHE_CLI_VIEWS": str(tmp_path / "views")},
    )
    assert ran.returncode == 0, ran.stderr
    assert int(ran.stdout.strip()) == 1  # the entry's one file, readable through the view's link


def test_unexpected_errors_are_one_line_naming_a_log(target: Path, tmp_path: Path) -> None:
    """A bug anywhere still ends in one line; the traceback is kept in a log file."""
    script = tmp_path / "boom.py"
    script.write_text(
        "import sys\nfrom ccache_cli.check import inspect\n"
        "def boom(*a, **k): raise RuntimeError('boom')\n"
        "inspect.inspect_store = boom\n"
        "from ccache_cli.cli.main import main\nsys.argv = ['ccache', '--store', sys.argv[1], 'inspect']\nmain()\n"
    )
    result = __import__("subprocess").run([sys.executable, str(script), str(target)], capture_output=True, text=True)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "internal error (RuntimeError: boom)" in lines[0], result.stderr
    log = Path(lines[0].split("the traceback is in ")[1].split(",")[0])
    assert "Traceback" in log.read_text()
    log.unlink()


def test_inspect_of_a_truncated_archive_is_one_line(target: Path, tmp_path: Path) -> None:
    archive = tmp_path / "a.tar.zst"
    assert ccache("pack", str(archive), store=target).returncode == 0
    for cut in (10, 40, 200, len(archive.read_bytes()) // 2):
        truncated = tmp_path / "t.tar.zst"
        truncated.write_bytes(archive.read_bytes()[:cut])
        result = ccache("inspect", str(truncated), store=target)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, (cut, result.stderr)
        assert "Traceback" not in result.stderr


def test_manifest_copies_are_not_shared_between_checks() -> None:
    """The schema check does not change what it checks."""
    manifest = synthetic_manifest("x", {"inductor/a": {"sha256": SHA, "size": 1}})
    before = copy.deepcopy(manifest)
    from ccache_cli.store import schema

    schema.check(manifest)
    assert manifest == before
    assert io.BytesIO  # keep the import used where the module is trimmed
