"""The entries' index (store/index.py): a cache of each manifest's summary that
listing and lookups read instead of every manifest. Whatever happens to the entries
folder (an entry added by hand, replaced, removed, the index corrupted, a reader
killed while writing it), commands list exactly the entries there are."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.cli import ccache, ccache_json
from helpers.stores import make_entry, small_tmpfs

from ccache_cli.errors import StoreError
from ccache_cli.store import index
from ccache_cli.store.store import Store


def listed(store: Path) -> dict[str, str]:
    """id -> name, as `inspect --json` lists the store."""
    return {entry["id"]: entry["name"] for entry in ccache_json("inspect", store=store)["entries"]}


def indexed(store: Path) -> set[str]:
    return set(index.load(store))


def index_body(store: Path) -> tuple[bytes, dict]:
    """The index's first line (its format and digest) and the rest, parsed."""
    head, _, body = (store / "index.json").read_bytes().partition(b"\n")
    return head, json.loads(body)


def rewrite_manifest(folder: Path, change: dict) -> None:
    """Replace an entry's manifest by another file (a new inode), as a copy tool would."""
    document = json.loads((folder / "manifest.json").read_text())
    document.update(change)
    (folder / "manifest.new").write_text(json.dumps(document))
    os.replace(folder / "manifest.new", folder / "manifest.json")


def test_the_index_follows_every_change_to_the_entries(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = Store(root)
    first = make_entry(store, "first", {"inductor/a": b"a"})
    second = make_entry(store, "second", {"inductor/b": b"b"})
    assert indexed(root) == {first, second}  # publishing brings it up to date
    assert listed(root) == {first: "first", second: "second"}

    # Changed in place: the index's record no longer matches the file, which is read again.
    rewrite_manifest(root / "entries" / first, {"name": "renamed"})
    assert listed(root) == {first: "renamed", second: "second"}

    # Copied in by hand, and removed by hand: listed as the folder is.
    third_folder = tmp_path / "third"
    shutil.copytree(root / "entries" / second, third_folder)
    shutil.rmtree(root / "entries" / second)
    third = make_entry(Store(tmp_path / "other"), "third", {"inductor/c": b"c"})
    shutil.copytree(tmp_path / "other" / "entries" / third, root / "entries" / third)
    assert listed(root) == {first: "renamed", third: "third"}
    assert indexed(root) == {first, third}

    # A corrupt manifest is a warning, never an indexed entry.
    (root / "entries" / third / "manifest.json").write_text("{not json")
    report = ccache_json("inspect", store=root)
    assert [entry["id"] for entry in report["entries"]] == [first]
    assert any(third[:12] in warning for warning in report["warnings"])
    assert indexed(root) == {first}


@pytest.mark.parametrize(
    "damage",
    [
        b"",
        b"{not json",
        b'{"format": 4, "sha256": "00"}\n{"shared": [], "entries": {}}',  # not its digest
        b'{"format": 3, "shared": [], "entries": {}}',  # an older format
        b'{"format": 99}',
        b"[" * 100_000 + b"]" * 100_000,  # deeper than the JSON parser goes
    ],
)
def test_a_damaged_index_is_rebuilt(tmp_path: Path, damage: bytes) -> None:
    root = tmp_path / "store"
    ids = {make_entry(Store(root), name, {f"inductor/{name}": name.encode()}) for name in ("one", "two")}
    (root / "index.json").write_bytes(damage)
    assert set(listed(root)) == ids
    assert indexed(root) == ids


def test_values_entries_hold_alike_are_written_once(tmp_path: Path) -> None:
    root = tmp_path / "store"
    (root / "tmp").mkdir(parents=True)
    tops = [f"package_{number}" for number in range(100)]
    sources = [{"module": f"module_{number}", "path": f"module_{number}.py"} for number in range(20)]
    records = {
        name: [
            [1, 2, 3],
            # keys differ (each entry's own), the traced sources in them do not
            {
                "name": name,
                "bytecode_list": {"tops": tops},
                "key": {"sources": sources, "compile": {"sizes": [size] * 50}},
            },
            {"bytes": 1, "bytecode_tops": tops},
        ]
        for size, name in enumerate(("one", "two", "three"))
    }
    index.save(root, records, root / "tmp")
    text = (root / "index.json").read_text()
    assert text.count("package_99") == 1  # the summary's list and the totals' are one value
    assert text.count("module_19.py") == 1
    assert index.load(root) == records


def test_an_index_edited_by_hand_is_not_trusted(tmp_path: Path) -> None:
    """Records whose manifests' signatures still match, edited: one that is no record, a
    count that is a string. The index's digest no longer matches, so it is not read:
    the entries are listed from their manifests, and the index is written anew."""
    root = tmp_path / "store"
    one, two = (make_entry(Store(root), name, {f"inductor/{name}": name.encode()}) for name in ("one", "two"))
    head, document = index_body(root)
    document["entries"][one] = 1
    kinds = document["entries"][two][2][0]["kinds"]
    document["entries"][two][2][0]["kinds"] = [[kind, count, str(size)] for kind, count, size in kinds]
    (root / "index.json").write_bytes(head + b"\n" + json.dumps(document).encode())
    assert index.load(root) == {}
    assert listed(root) == {one: "one", two: "two"}
    assert ccache("inspect", store=root).returncode == 0
    assert indexed(root) == {one, two}
    assert index_body(root)[1]["entries"][two][2][0]["kinds"] == kinds


def test_parts_of_a_damaged_record_are_built_from_the_manifest(tmp_path: Path) -> None:
    """A record whose parts are built only when asked for (sizes, sources, timings...):
    where one cannot be built, the manifest is read for it, and every command goes on."""
    root = tmp_path / "store"
    one = make_entry(Store(root), "one", {"inductor/a": b"a"})
    sizes = ccache_json("inspect", store=root)["entries"][0]["sizes"]
    records = index.load(root)
    key = records[one][1]["key"]
    records[one][1]["key"] = {**key, "compile": {**key["compile"], "sizes": 5}, "sources": [{"module": 1}]}
    index.save(root, records, root / "tmp")
    [entry] = ccache_json("inspect", store=root)["entries"]
    assert (
        entry["sizes"] == sizes
        and entry["sources"] == json.loads((root / "entries" / one / "manifest.json").read_text())["key"]["sources"]
    )
    for command in (["inspect"], ["env"], ["run", "--", "true"]):
        result = ccache(*command, store=root)
        assert result.returncode == 0, result.stderr


def test_an_entry_replaced_after_listing_is_never_read_as_the_listed_one(tmp_path: Path) -> None:
    root = tmp_path / "store"
    entry_id = make_entry(Store(root), "kept", {"inductor/a": b"a"})
    [entry] = Store(root).scan().entries  # from the index: its file list not read yet
    rewrite_manifest(root / "entries" / entry_id, {"name": "replaced"})
    with pytest.raises(StoreError, match="removed or replaced while ccache read it"):
        entry.files  # noqa: B018
    shutil.rmtree(root / "entries" / entry_id)
    with pytest.raises(StoreError, match="removed or replaced"):
        entry.bytecode  # noqa: B018


def test_readers_killed_while_writing_the_index_leave_it_whole(tmp_path: Path) -> None:
    """Readers that find the index stale write it; killed at random moments, they leave
    the old index or a new one, whole, and temporary files that gc reclaims."""
    root = tmp_path / "store"
    store = Store(root)
    ids = {make_entry(store, f"entry{n}", {f"inductor/{n}": str(n).encode()}) for n in range(30)}
    rng = random.Random(5)
    for _ in range(6):
        (root / "index.json").unlink(missing_ok=True)
        reader = subprocess.Popen(
            [sys.executable, "-m", "ccache_cli", "--store", str(root), "inspect", "--json"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(0.05, 0.6))
        reader.send_signal(signal.SIGKILL)
        reader.wait()
        if (root / "index.json").exists():
            assert indexed(root) <= ids  # whole: it parses
    assert set(listed(root)) == ids and indexed(root) == ids
    # What a killed write left is reclaimed once it is older than any live write.
    stray = root / "tmp" / ".index.json.killed"
    stray.write_text("{")
    assert stray.name not in " ".join(ccache_json("gc", "--dry-run", store=root)["abandoned_staging"])
    os.utime(stray, (time.time() - 3600, time.time() - 3600))
    assert str(stray) in ccache_json("gc", "--dry-run", store=root)["abandoned_staging"]
    assert ccache("gc", store=root).returncode == 0
    assert not stray.exists()


def test_a_read_only_store_is_listed_without_an_index(tmp_path: Path) -> None:
    """As in an image whose store was unpacked by an older ccache-cli: nothing to write."""
    with small_tmpfs(tmp_path / "image", "size=16m") as image:
        root = image / "store"
        ids = {make_entry(Store(root), name, {f"inductor/{name}": name.encode()}) for name in ("one", "two")}
        (root / "index.json").unlink()
        subprocess.run(["mount", "-o", "remount,ro", str(image)], check=True)
        result = ccache("inspect", "--json", store=root)
        assert result.returncode == 0, result.stderr
        assert {entry["id"] for entry in json.loads(result.stdout)["entries"]} == ids
        assert not (root / "index.json").exists()
        subprocess.run(["mount", "-o", "remount,rw", str(image)], check=True)


def test_an_id_prefix_is_found_among_the_folders_and_a_damaged_one_is_named(tmp_path: Path) -> None:
    """A command given an id prefix reads that entry alone: another entry's damaged
    manifest is no concern of it, and the damaged one, asked for, is named with what is
    wrong (not "no entry matches"). A name is still looked up in the listing."""
    root = tmp_path / "store"
    store = Store(root)
    good = make_entry(store, "good", {"inductor/a": b"a"})
    damaged = make_entry(store, "damaged", {"inductor/b": b"b"})
    (root / "entries" / damaged / "manifest.json").write_text('{"id": "not an id"}')
    found = ccache_json("inspect", good[:12], store=root)
    assert [entry["id"] for entry in found["entries"]] == [good] and found["warnings"] == []
    assert ccache_json("inspect", "good", store=root)["entries"][0]["id"] == good
    result = ccache("inspect", damaged[:12], store=root)
    assert result.returncode == 2
    assert (
        result.stderr.strip() == f"ccache: error: manifest of entry {damaged[:12]}: id must be 64 lowercase hex digits"
    )
