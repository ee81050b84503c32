"""The artifact store: content-addressed blobs, entries and their manifests (the schema
every manifest is checked against), the write lock, durable writes, and which process
owns a staging folder.

May import: ccache_cli.in_program, ccache_cli.errors and the standard library (filelock,
imported only by writers). No torch, Typer or rich.
"""
