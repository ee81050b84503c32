"""Archives: pack and unpack of `.tar.zst` (format 4, docs/archive-format.md), its framed
zstd layout and tar stream, signatures, and the processes that pack and unpack groups
of it in parallel.

Run in other processes: `pack_process.py` and `unpack_process.py` (forked, or
`python -m ccache_cli.archive.pack_process`); they import only frames, tarstream, the
store and errors, to start fast.

May import: ccache_cli.store, ccache_cli.in_program, ccache_cli.errors, zstandard,
cryptography (where a key is used). Never torch, Typer or rich.
"""
