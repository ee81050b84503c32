"""JSON read from outside (an archive's index and file lists, a registry's manifest,
config and catalogs), parsed only where what it would become in memory is bounded.

A few kilobytes of zstd can expand to tens of megabytes of `[[],[],...]`, and each
container or number parsed costs 30 to 60 bytes of Python objects: a 32 MiB document of
empty lists took a parse to 0.9 GB. So before parsing, the objects a document can make
are counted from its bytes (every container opens with `[` or `{`, every further element
follows a `,`, cheap counts in C), and a document that could pass the bound is refused.
Nesting deeper than Python's parser allows is refused too.

Standard library only.
"""

from __future__ import annotations

import json
from typing import Any

PEAK_BYTES = 200 << 20  # what parsing one document may take, at most
_CONTAINER_BYTES = 64  # an empty list or dict, and its place in its parent
_ELEMENT_BYTES = 40  # a float or a short string, and its place in its container


def parse(data: bytes | str, what: str, peak: int = PEAK_BYTES) -> Any:
    """`data` parsed; ValueError naming `what` where it could take more than `peak`
    bytes (a share of PEAK_BYTES where several are parsed at once) or is not JSON."""
    raw = data.encode() if isinstance(data, str) else data
    containers = raw.count(b"[") + raw.count(b"{")
    elements = raw.count(b",") + raw.count(b":")
    estimate = len(raw) * 2 + containers * _CONTAINER_BYTES + elements * _ELEMENT_BYTES
    if estimate > peak:
        raise ValueError(f"{what} would take {estimate >> 20} MiB to read, more than any ccache writes")
    try:
        return json.loads(raw)
    except RecursionError:
        raise ValueError(f"{what} is nested deeper than any ccache writes") from None
