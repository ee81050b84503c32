"""Registries: `push` and `pull` of entries through an OCI registry, and `inspect REF`
and `verify REF` from a pushed artifact's manifest and config alone.

layout.py is the artifact's layout (docs/registry-format.md): which layers an entry's
blobs go into, and the manifest that lists them. client.py speaks the distribution
protocol, with ccache's own retries and errors (login.py: the credential variables and the hint errors give); credentials.py answers a registry's
401 through the `oras` SDK (Docker's credentials, token flows), imported only then.
transfer.py pushes and pulls: only the layers the other side lacks, several at once,
streamed, every byte checked before the store adopts it; a pull downloads in processes
(downloads.py starts and feeds them, fetch_process.py is one).

May import: ccache_cli.archive (the index and tar stream archives use),
ccache_cli.store, ccache_cli.errors, oras, requests, zstandard. Never torch, Typer
or rich.
"""
