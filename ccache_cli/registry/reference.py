"""Registry references (`host[:port]/repository[:tag][@sha256:digest]`): which arguments
name one, cheap to ask (no import of the registry client), and their parts, checked
against the distribution grammar here, so that a typo is refused with exit 2 instead
of being sent to another registry or answered with an HTTP 500."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from ccache_cli.errors import BadInputError

_LOOKS_LIKE = re.compile(r"^[^/\s]+[.:][^/\s]*/[^\s]+$|^localhost/[^\s]+$")
_HOST = re.compile(
    r"^(localhost|\[[0-9a-fA-F:]+\]|[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*)(:[0-9]{1,5})?$"
)
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
EXAMPLE = "registry.example.com/team/model-cache:v1"


def is_reference(text: str) -> bool:
    """Whether an argument names a registry artifact: its first part is a host, with a
    dot or a port, or localhost. An existing file is never one."""
    return bool(_LOOKS_LIKE.match(text)) and not os.path.exists(text)


@dataclass(frozen=True)
class Reference:
    host: str  # with its port
    repository: str
    tag: str | None
    digest: str | None  # "sha256:<hex>"

    @property
    def version(self) -> str:
        """What the manifest is asked for by: the digest, else the tag (`latest` if none)."""
        return self.digest or self.tag or "latest"


def parse(text: str) -> Reference:
    """A reference, every part checked (BadInputError, exit 2, naming the part)."""
    if not is_reference(text):
        raise BadInputError(
            f"{text!r} is not a registry reference: write it as host[:port]/repository[:tag], e.g. {EXAMPLE}"
        )
    host, rest = text.split("/", 1)
    rest, at, digest = rest.partition("@")
    if at and not digest:  # `REF@$DIGEST` with the variable unset: never fall back to a mutable tag
        raise BadInputError(f"{text!r} ends in an empty digest after '@': give @sha256:<64 hex digits>, or no '@'")
    repository, tag = rest, None
    if ":" in rest.rsplit("/", 1)[-1]:
        repository, tag = rest.rsplit(":", 1)
    problems = []
    port = host.rpartition(":")[2] if not host.endswith("]") and ":" in host else None
    if not _HOST.match(host):
        problems.append(f"host {host!r}")
    elif port is not None and not 0 < int(port) <= 65535:
        problems.append(f"port {port} (1 to 65535)")
    if not _REPOSITORY.match(repository) or len(repository) > 255:
        problems.append(
            f"repository {repository!r} (lowercase letters, digits and . _ - separators, parts joined by /)"
        )
    if tag is not None and not _TAG.match(tag):
        problems.append(f"tag {tag!r}")
    if digest and not _DIGEST.match(digest):
        problems.append(f"digest {digest!r} (sha256:<64 hex digits>)")
    if problems:
        raise BadInputError(f"{text!r} is not a registry reference: bad {', '.join(problems)}")
    return Reference(host, repository, tag, digest or None)
