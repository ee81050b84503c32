"""Running programs on stored entries: views (a writable folder of links to the
entries' blobs), activation (`ccache run`, `env`, `ccache_cli.activate()`), the
`ccache_cli.compile` API that serves stored AOT code, and `run --capture`.

May import: ccache_cli.precompile, ccache_cli.key, ccache_cli.store, ccache_cli.in_program,
ccache_cli.errors; torch only inside the API's calls. No Typer or rich.
"""
