"""Signed archives: Ed25519 keys, the signature an archive carries, and the check
that an archive was signed by a trusted key (through `cryptography`, imported only
where a key is used).

What is signed identifies all the content: the SHA-256 of the archive's index.json
(every manifest but its file list, and the SHA-256 of each complete manifest, file
list included) and of its blobs.txt (every blob's SHA-256 and size). Unpacking checks
each manifest against the index and each blob against blobs.txt, so a signature over
those two covers every byte that is unpacked. The signature is the member
`signature.json` of the archive's head, after blobs.txt:

    {"format": 1, "algorithm": "ed25519", "key": "<SHA-256 of the raw public key, hex>",
     "signature": "<base64 of the Ed25519 signature>"}

over the bytes of the canonical JSON (sorted keys, no spaces)
`{"archive":"ccache-cli","blobs.txt":"<sha256 hex>","format":<archive format>,"index.json":"<sha256 hex>"}`.

Keys: `ccache key generate PATH` writes the private key as PKCS#8 PEM (mode 0600)
and the public key in OpenSSH's one-line form at PATH.pub. Either form of either
key (PEM or OpenSSH) is read.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ccache_cli.errors import BadInputError, CcacheError
from ccache_cli.store import durable
from ccache_cli.store.hashing import canonical_json

SIGNATURE_NAME = "signature.json"
TRUST_ENV = "CCACHE_CLI_TRUST"  # public key files, separated like PATH
_FORMAT = 1
SIGNATURE_LIMIT = 4096  # bytes: a signature.json is about 250


class TrustError(CcacheError):
    """An archive or registry artifact that is not signed by a key the user trusts (exit 1)."""


@dataclass(frozen=True)
class PublicKey:
    raw: bytes  # the 32 bytes of an Ed25519 public key
    source: str  # where it was read from, for messages

    @property
    def id(self) -> str:
        return hashlib.sha256(self.raw).hexdigest()


def generate(path: Path) -> tuple[Path, str]:
    """Write a new private key to `path` (0600) and its public key to `path`.pub; the
    public key's path and id. An existing file is never overwritten."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    public_path = path.with_name(path.name + ".pub")
    for target in (path, public_path):
        if target.exists():
            raise BadInputError(f"{target} exists; remove it or choose another PATH")
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(private)
            handle.flush()
            os.fsync(handle.fileno())
        durable.atomic_write(public_path, public + b" ccache-cli\n")
    except OSError as exc:
        raise CcacheError(f"cannot write key {path}: {exc.strerror or exc}") from exc
    return public_path, PublicKey(_public_raw(key.public_key()), str(public_path)).id


class Signer:
    """A private key, read from a file, that signs archives."""

    def __init__(self, path: Path) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519

        data = _read(path, "--sign key")
        try:
            if data.lstrip().startswith(b"-----BEGIN OPENSSH PRIVATE KEY"):
                key = serialization.load_ssh_private_key(data, password=None)
            else:
                key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise BadInputError(f"--sign {path} is not an unencrypted private key ({exc})") from None
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise BadInputError(f"--sign {path} is not an Ed25519 key; make one with `ccache key generate`")
        self._key = key
        self.key_id = PublicKey(_public_raw(key.public_key()), str(path)).id

    def signature(self, archive_format: int, index: bytes, blobs: bytes) -> bytes:
        """signature.json for an archive with this index.json and blobs.txt."""
        return self.sign(_message(archive_format, index, blobs))

    def sign(self, message: bytes) -> bytes:
        """The signature document of `message` (what signature.json holds)."""
        signature = self._key.sign(message)
        return canonical_json(
            {
                "format": _FORMAT,
                "algorithm": "ed25519",
                "key": self.key_id,
                "signature": base64.b64encode(signature).decode(),
            }
        )


def load_public(path: Path) -> PublicKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    data = _read(path, "--trust key")
    try:
        if data.lstrip().startswith(b"ssh-"):
            key: Any = serialization.load_ssh_public_key(data.strip())
        else:
            key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, IndexError) as exc:
        raise BadInputError(f"--trust {path} is not a public key ({exc})") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise BadInputError(f"--trust {path} is not an Ed25519 public key")
    return PublicKey(_public_raw(key), str(path))


def trusted_keys(paths: Iterable[str | Path] = ()) -> tuple[PublicKey, ...]:
    """The keys given with --trust, and those $CCACHE_CLI_TRUST names. A setting that
    names no file (empty, or separators only) is refused: it would turn trust off."""
    setting = os.environ.get(TRUST_ENV)
    from_env = [name for name in (setting or "").split(os.pathsep) if name]
    if setting is not None and not from_env:
        raise BadInputError(f"{TRUST_ENV}={setting!r} names no public key file; unset it to trust any cache")
    named = [*paths, *from_env]
    if any(not str(path).strip() for path in named):
        raise BadInputError("--trust '' names no public key file")
    return tuple(load_public(Path(path)) for path in named)


def check(
    signature: bytes | None, archive_format: int, index: bytes, blobs: bytes, trusted: Sequence[PublicKey]
) -> str | None:
    """The id of the trusted key that signed an archive with this head; TrustError if
    none did. Without trusted keys, nothing is required (None)."""
    return check_message(signature, _message(archive_format, index, blobs), trusted, "archive", SIGNATURE_NAME)


def artifact_message(config_digest: str) -> bytes:
    """What a registry artifact's signature covers: its config's digest. The config is
    the archive's index.json, which pins each manifest's digest, and each catalog is
    checked against it, so every byte a pull keeps is covered."""
    return canonical_json({"artifact": "ccache-cli", "config": config_digest})


def check_message(
    signature: bytes | None, message: bytes, trusted: Sequence[PublicKey], what: str, where_kept: str
) -> str | None:
    """The id of the trusted key whose signature of `message` `signature` is;
    TrustError if none. Without trusted keys, nothing is required (None)."""
    if not trusted:
        return None
    where = " or ".join(key.source for key in trusted)
    if signature is None:
        raise TrustError(f"{what} is not signed, and only caches signed by {where} are trusted")
    try:
        fields = json.loads(signature)
        key_id, algorithm = fields["key"], fields["algorithm"]
        raw_signature = base64.b64decode(fields["signature"], validate=True)
        if fields["format"] != _FORMAT or algorithm != "ed25519" or not isinstance(key_id, str):
            raise ValueError("unknown signature format")
    except (ValueError, KeyError, TypeError) as exc:
        raise TrustError(f"{what}'s {where_kept} is malformed ({exc}); it is not trusted") from None
    key = next((key for key in trusted if key.id == key_id), None)
    if key is None:
        raise TrustError(f"{what} is signed by key {key_id[:16]}, which is not trusted (trusted: {where})")
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric import ed25519

    try:
        ed25519.Ed25519PublicKey.from_public_bytes(key.raw).verify(raw_signature, message)
    except InvalidSignature:
        raise TrustError(
            f"{what}'s signature by {key.source} does not match its content: it was changed after it was signed"
        ) from None
    return key.id


def _message(archive_format: int, index: bytes, blobs: bytes) -> bytes:
    return canonical_json(
        {
            "archive": "ccache-cli",
            "format": archive_format,
            "index.json": hashlib.sha256(index).hexdigest(),
            "blobs.txt": hashlib.sha256(blobs).hexdigest(),
        }
    )


def _public_raw(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)  # type: ignore[no-any-return]


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise BadInputError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
