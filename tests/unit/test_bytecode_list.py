"""The bytecode list: one blob naming an entry's .pyc files and their modules, checked
whole when read, and the manifest rules that go with it."""

from __future__ import annotations

import hashlib

import pytest
from helpers.stores import synthetic_manifest

from ccache_cli.store import bytecode_list, schema

PYC = "bytecode/os.cpython-311.pyc"
FILES = {"inductor/fxgraph/a": {"sha256": "a" * 64, "size": 3}, PYC: {"sha256": "b" * 64, "size": 9}}
MODULES = {PYC: {"module": "os", "sha256": "c" * 64}}


def _ref_of(data: bytes) -> dict:
    return {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}


def _listed(files: dict = FILES, modules: dict = MODULES) -> tuple[dict, bytes, dict]:
    own, data, summary = bytecode_list.split(files, modules)
    assert data is not None and summary is not None
    own[bytecode_list.LIST_PATH] = _ref_of(data)
    return own, data, summary


def test_a_list_round_trips_and_the_manifest_names_no_pyc() -> None:
    own, data, summary = _listed()
    assert set(own) == {"inductor/fxgraph/a", bytecode_list.LIST_PATH}
    assert summary == {"modules": 1, "bytes": 9, "tops": ["os"]}
    found = bytecode_list.read(own[bytecode_list.LIST_PATH], {hashlib.sha256(data).hexdigest(): data}.__getitem__)
    assert dict(found.files) == {PYC: FILES[PYC]} and dict(found.modules) == MODULES
    document = synthetic_manifest("listed", own)
    schema.check({**document, "bytecode_list": summary})


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"bytecode_list": None}, "go together"),  # a list without its summary
        ({"files": {PYC: FILES[PYC]}}, "go together"),  # a .pyc named beside the list
        ({"bytecode": MODULES}, "bytecode"),  # modules inline beside the list
    ],
)
def test_the_schema_refuses_a_list_with_inline_bytecode_or_no_summary(change: dict, why: str) -> None:
    own, _, summary = _listed()
    document = {**synthetic_manifest("listed", own), "bytecode_list": summary}
    if change.get("bytecode_list", 1) is None:
        del document["bytecode_list"]
    elif "files" in change:
        document["files"] = {**document["files"], **change["files"]}
    else:
        document.update(change)
    with pytest.raises(schema.ManifestError, match=why):
        schema.check(document)


def test_a_damaged_missing_or_lying_list_is_refused_in_one_line() -> None:
    own, data, summary = _listed()
    ref = own[bytecode_list.LIST_PATH]
    with pytest.raises(schema.ManifestError, match="damaged"):
        bytecode_list.read(ref, lambda _: data[:-1] + b" ")

    def missing(_: str) -> bytes:
        raise FileNotFoundError(2, "No such file or directory")

    with pytest.raises(schema.ManifestError, match="unreadable"):
        bytecode_list.read(ref, missing)
    with pytest.raises(schema.ManifestError, match="not the one the manifest summarises"):
        bytecode_list.read(ref, lambda _: data, {**summary, "modules": 2})
    outside = {"files": {"inductor/x.pyc": FILES[PYC]}, "modules": {"inductor/x.pyc": MODULES[PYC]}}
    bad = repr(outside).replace("'", '"').encode()
    with pytest.raises(schema.ManifestError, match="outside bytecode"):
        bytecode_list.read(_ref_of(bad), lambda _: bad)
