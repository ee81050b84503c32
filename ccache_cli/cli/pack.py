"""`ccache pack` and `ccache unpack`: entries to and from .tar.zst archives. Their
work is in transfer.py, which main.py also calls for their plain forms."""

from __future__ import annotations

from pathlib import Path

import typer

from . import transfer
from .render import out

TRUST_OPTION = typer.Option(
    None,
    "--trust",
    metavar="KEY.pub",
    help="Refuse a cache (archive or registry artifact) not signed by this public key "
    "(repeatable; also $CCACHE_CLI_TRUST, separated by ':')",
)
SIGN_OPTION = typer.Option(None, "--sign", metavar="KEY", help="Sign with this private key (`ccache key generate`)")


def key_generate_command(
    path: Path = typer.Argument(
        ..., metavar="PATH", help="Where to write the private key; the public key goes to PATH.pub"
    ),
) -> None:
    """Make an Ed25519 key pair for `pack --sign` and `--trust`: PATH (private, mode 0600) and PATH.pub. Does not import torch."""
    from ccache_cli.archive import signing

    public, key_id = signing.generate(path)
    out.print(f"Wrote private key {path} (keep it secret) and public key {public}; key id {key_id[:16]}.")


def pack_command(
    ctx: typer.Context,
    output: str = typer.Argument(..., metavar="OUTPUT.tar.zst|-", help="Archive to write, or - for stdout"),
    entries: list[str] | None = typer.Argument(
        None, metavar="[ENTRY...]", help="Manifest id prefixes or names [default: all]"
    ),
    compatible_only: bool = typer.Option(False, "--compatible-only", help="Only entries that fit this machine"),
    level: int = typer.Option(3, "--level", min=1, max=22, help="zstd level"),
    json_output: bool = typer.Option(False, "--json", help="Write a JSON summary to stdout (not with -)"),
    sign: Path | None = SIGN_OPTION,
) -> None:
    """Write entries and their blobs to a deterministic .tar.zst archive. Does not import torch."""
    transfer.pack(ctx.obj, output, entries or [], compatible_only, level, json_output, sign)


def unpack_command(
    ctx: typer.Context,
    source: str = typer.Argument(..., metavar="ARCHIVE|-", help="Archive to read, or - for stdin"),
    compatible_only: bool = typer.Option(False, "--compatible-only", help="Only entries that fit this machine"),
    export_dir: Path | None = typer.Option(
        None,
        "--export-dir",
        metavar="DIR",
        help="Also write one entry's plain Inductor cache dir here (for TORCHINDUCTOR_CACHE_DIR), its bytecode in DIR/pycache (for PYTHONPYCACHEPREFIX)",
    ),
    entry: str | None = typer.Option(
        None, "--entry", help="With --export-dir: the entry to export [default: the one that fits this machine]"
    ),
    json_output: bool = typer.Option(False, "--json", help="Write only JSON to stdout"),
    trust: list[Path] | None = TRUST_OPTION,
) -> None:
    """Merge an archive's entries into the store, checking every byte. Does not import torch."""
    transfer.unpack(ctx.obj, source, compatible_only, export_dir, entry, json_output, trust or [])
