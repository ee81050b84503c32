"""Which arguments name a registry artifact: cheap to ask (no import of the
registry client), so every command that takes one can tell it from an entry or an
archive path."""

from __future__ import annotations

import os
import re

_REFERENCE = re.compile(r"^[^/\s]+[.:][^/\s]*/[^\s]+$|^localhost/[^\s]+$")


def is_reference(text: str) -> bool:
    """Whether an argument names a registry artifact (`host[:port]/repository[:tag]`):
    its first part is a host, with a dot or a port, or localhost. An existing file
    is never one."""
    return bool(_REFERENCE.match(text)) and not os.path.exists(text)
