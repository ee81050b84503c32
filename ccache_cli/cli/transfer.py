"""What `ccache pack`, `unpack`, `push` and `pull` do, without Typer: the Typer commands
in pack.py and registry.py and the fast start in main.py all call these."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ccache_cli.archive import pack as packing
from ccache_cli.archive import signing
from ccache_cli.archive import unpack as unpacking
from ccache_cli.errors import BadInputError
from ccache_cli.key.compat import fits, this_machine
from ccache_cli.store import manifest
from ccache_cli.store.manifest import Manifest
from ccache_cli.store.store import Store

from .render import err, human_bytes, out, show, warn

if TYPE_CHECKING:
    from ccache_cli.registry.transfer import PullResult, PushResult


def pack(
    store: Store,
    output: str,
    refs: Sequence[str] = (),
    compatible_only: bool = False,
    level: int = 3,
    json_output: bool = False,
    sign: Path | None = None,
) -> None:
    if json_output and output == "-":
        raise BadInputError("--json writes to stdout, so it cannot be used with OUTPUT -")
    signer = signing.Signer(sign) if sign is not None else None
    chosen = _chosen(store, refs, compatible_only, "pack")
    total = sum(manifest.blob_sizes(chosen).values())
    with packing.open_output(output) as handle, progress("packing", total, output != "-") as on_progress:
        result = packing.pack(store, chosen, handle, level, on_progress, signer)
    archive_bytes = Path(output).stat().st_size if output != "-" else None
    show(Packed(result, output, archive_bytes, signer.key_id if signer else None), json_output, _print_packed)


@dataclass(frozen=True)
class Packed:
    result: packing.PackResult
    output: str
    archive_bytes: int | None  # None: written to stdout
    signed_by: str | None  # the signing key's id

    def to_json(self) -> dict[str, Any]:
        return {
            "output": self.output,
            "entries": [entry.id for entry in self.result.entries],
            "blobs": self.result.blobs,
            "bytes": self.result.bytes,
            "archive_bytes": self.archive_bytes,
            "signed_by": self.signed_by,
        }


def _print_packed(packed: Packed) -> None:
    if packed.archive_bytes is None:  # stdout carries the archive
        return
    result = packed.result
    err.print(
        f"Packed {len(result.entries)} entries, {result.blobs} blobs, {human_bytes(result.bytes)} "
        f"into {packed.output} ({human_bytes(packed.archive_bytes)})"
        + (f", signed by key {packed.signed_by[:16]}." if packed.signed_by else ".")
    )


def unpack(
    store: Store,
    source: str,
    compatible_only: bool = False,
    export_dir: Path | None = None,
    entry: str | None = None,
    json_output: bool = False,
    trust: Sequence[Path] = (),
) -> None:
    trusted = signing.trusted_keys(trust)
    # This machine's fingerprint only where it is used: reading it costs every unpack otherwise.
    machine, exact = this_machine(store) if compatible_only or export_dir is not None else ({}, False)
    select = _selection(compatible_only, machine, exact)

    total = Path(source).stat().st_size if source != "-" and Path(source).is_file() else None
    with unpacking.open_source(source) as handle, progress("unpacking", total, not json_output) as on_progress:
        result = unpacking.unpack(store, handle, select, on_progress, trusted)
    exported, pycache_prefix, env = None, None, {}
    if export_dir is not None:
        from ccache_cli.serve import export  # imported here: pack and unpack start faster without it

        if not exact:
            warn(
                "this machine's full fingerprint is unknown (run `ccache fingerprint`); "
                "exporting on the components read without torch"
            )
        done = export.export_fitting(store, [*result.added, *result.kept], entry, export_dir, machine, exact)
        exported, pycache_prefix, env = done.entry, done.pycache, done.env
    show(Unpacked(result, exported, export_dir, pycache_prefix, env), json_output, _print_unpacked)


@dataclass(frozen=True)
class Unpacked:
    result: unpacking.UnpackResult
    exported: Manifest | None  # the entry exported with --export-dir
    export_dir: Path | None
    pycache_prefix: Path | None  # its bytecode tree, if it has one
    env: dict[str, str]  # what a process sets to hit the exported cache

    def to_json(self) -> dict[str, Any]:
        result, exported = self.result, self.exported
        return {
            "added": [entry.id for entry in result.added],
            "kept": [entry.id for entry in result.kept],
            "skipped": list(result.skipped),
            "new_blobs": result.new_blobs,
            "new_bytes": result.new_bytes,
            "exported": None
            if exported is None
            else {
                "entry": exported.id,
                "dir": str(self.export_dir),
                "pycache_prefix": None if self.pycache_prefix is None else str(self.pycache_prefix),
                "env": self.env,
            },
        }


def _print_unpacked(unpacked: Unpacked) -> None:
    result, exported = unpacked.result, unpacked.exported
    out.print(
        f"Unpacked {len(result.added)} new entries ({len(result.kept)} already there, {len(result.skipped)} "
        f"skipped as incompatible); {result.new_blobs} new blobs, {human_bytes(result.new_bytes)}."
    )
    if exported is not None:
        out.print(
            f"Exported entry {exported.short_id} ({exported.name}) to {unpacked.export_dir}; run with "
            + " ".join(f"{name}={value}" for name, value in unpacked.env.items()),
            soft_wrap=True,
        )


def push(
    store: Store,
    reference: str,
    refs: Sequence[str] = (),
    compatible_only: bool = False,
    insecure: bool = False,
    json_output: bool = False,
    sign: Path | None = None,
) -> None:
    from ccache_cli.registry import client, transfer

    signer = signing.Signer(sign) if sign is not None else None
    remote = client.Remote(reference, insecure)
    chosen = _chosen(store, refs, compatible_only, "push")
    total = sum(manifest.blob_sizes(chosen).values())
    with progress("pushing", total, not json_output) as on_progress:
        result = transfer.push(store, chosen, remote, on_progress, signer)
    show(Pushed(result), json_output, _print_pushed)


@dataclass(frozen=True)
class Pushed:
    result: PushResult

    def to_json(self) -> dict[str, Any]:
        r = self.result
        return {
            "reference": r.reference,
            "digest": r.digest,
            "entries": [entry.id for entry in r.entries],
            "layers": r.layers,
            "uploaded": r.uploaded,
            "uploaded_bytes": r.uploaded_bytes,
            "bytes": r.total_bytes,
        }


def _print_pushed(pushed: Pushed) -> None:
    r = pushed.result
    out.print(
        f"Pushed {len(r.entries)} entries to {r.reference} ({r.digest[:19]}): {r.layers} layers, "
        f"{human_bytes(r.total_bytes)}; uploaded {r.uploaded} the registry lacked, {human_bytes(r.uploaded_bytes)}.",
        soft_wrap=True,
    )


def pull(
    store: Store,
    reference: str,
    compatible_only: bool = False,
    insecure: bool = False,
    json_output: bool = False,
    trust: Sequence[Path] = (),
) -> None:
    from ccache_cli.registry import client, transfer

    trusted = signing.trusted_keys(trust)  # before anything is fetched: a bad key file is bad input
    remote = client.Remote(reference, insecure)
    select = _selection(compatible_only, *(this_machine(store) if compatible_only else ({}, False)))

    with progress("pulling", None, not json_output) as on_progress:
        result = transfer.pull(store, remote, select, on_progress, trusted)
    show(Pulled(result), json_output, _print_pulled)


@dataclass(frozen=True)
class Pulled:
    result: PullResult

    def to_json(self) -> dict[str, Any]:
        r = self.result
        return {
            "reference": r.reference,
            "added": [entry.id for entry in r.added],
            "kept": [entry.id for entry in r.kept],
            "skipped": list(r.skipped),
            "new_blobs": r.new_blobs,
            "new_bytes": r.new_bytes,
            "layers": r.layers,
            "downloaded": r.downloaded,
            "downloaded_bytes": r.downloaded_bytes,
        }


def _print_pulled(pulled: Pulled) -> None:
    r = pulled.result
    out.print(
        f"Pulled {len(r.added)} new entries from {r.reference} ({len(r.kept)} already there, {len(r.skipped)} "
        f"skipped as incompatible); {r.new_blobs} new blobs, {human_bytes(r.new_bytes)}; downloaded "
        f"{r.downloaded} of {r.layers} layers, {human_bytes(r.downloaded_bytes)}.",
        soft_wrap=True,
    )
    if r.skipped and not r.added and not r.kept:
        err.print("No entry of the artifact fits this machine.")


def _chosen(store: Store, refs: Sequence[str], compatible_only: bool, verb: str) -> list[Manifest]:
    """The entries `refs` name (all, if none), only those fitting this machine with
    `compatible_only`; BadInputError if that leaves none to `verb`."""
    chosen = [store.find(ref) for ref in refs] if refs else list(store.scan(whole=True).entries)
    if compatible_only:
        chosen = fits(chosen, *this_machine(store))
    if not chosen:
        raise BadInputError(f"nothing to {verb}: no {'compatible ' if compatible_only else ''}entries in {store.root}")
    return chosen


def _selection(compatible_only: bool, machine: dict, exact: bool) -> Callable[[Manifest], bool]:
    """Which entries of an archive or artifact to take: all, or with `compatible_only`
    those that fit `machine`."""
    return lambda candidate: not compatible_only or bool(fits([candidate], machine, exact))


@contextlib.contextmanager
def progress(what: str, total: int | None, enabled: bool) -> Iterator[Callable[[int], None]]:
    if not (enabled and err.is_terminal):
        yield lambda _: None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    columns = (TextColumn(what), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    progress = Progress(*columns, console=err, transient=True)
    task = progress.add_task(what, total=total)

    def advance(count: int) -> None:
        # Shown from the first bytes, not before: unpack has forked its processes by
        # then, which is only safe while this process runs no other thread (the display's).
        progress.start()
        progress.advance(task, count)

    try:
        yield advance
    finally:
        progress.stop()
