"""Archives built by hand: tar streams in pack's framed layout, with whatever members
a test needs (well formed or not)."""

from __future__ import annotations

import io
import json
import tarfile

from ccache_cli.archive.frames import FRAME_SIZE, FrameWriter
from ccache_cli.store.hashing import hash_json


def framed_archive(
    members: list[tuple[tarfile.TarInfo, bytes | None]], trailing: bytes = b"", groups_at: tuple[int, ...] = (2, 3)
) -> bytes:
    """A tar stream in pack's framed layout: a new group at each member index in
    `groups_at` (by default: the head's two members, files.json, then the rest)."""
    raw = io.BytesIO()
    cuts = [0]
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for i, (info, data) in enumerate(members):
            if i in groups_at:
                cuts.append(tar.offset)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    data = raw.getvalue() + trailing
    out = io.BytesIO()
    frames = FrameWriter(out, level=3)
    for start, end in zip(cuts, [*cuts[1:], len(data)]):
        for at in range(start, max(end, start + 1), FRAME_SIZE):
            frames.write(data[at : min(at + FRAME_SIZE, end)], starts_group=at == start)
    return out.getvalue()


def regular(name: str, data: bytes, size: int | None = None) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data) if size is None else size
    return info, data


def head_members(manifests: list[dict], version: int = 4) -> list[tuple[tarfile.TarInfo, bytes]]:
    """The head members pack writes for these manifests (each as given, checked or not)."""
    refs = {ref["sha256"]: ref["size"] for m in manifests for ref in m["files"].values()}
    index = {
        "format": version,
        "entries": [{k: v for k, v in m.items() if k != "files"} for m in manifests],
        "artifacts": {m["id"]: [] for m in manifests},
        "digests": {m["id"]: hash_json(m) for m in manifests},
    }
    listed = "".join(f"{sha256} {size}\n" for sha256, size in sorted(refs.items()))
    files = {"files": {m["id"]: m["files"] for m in manifests}}
    return [
        regular("index.json", json.dumps(index).encode()),
        regular("blobs.txt", listed.encode()),
        regular("files.json", json.dumps(files).encode()),
    ]
