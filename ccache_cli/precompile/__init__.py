"""Precompiling: model specs, the compile plan (the one description of how a size is
compiled, which verify --run and the runtime follow too), the records of outputs, and
the compile worker.

Runs in another process: `compile_process.py` (`python -m ccache_cli.precompile.compile_process`),
the only module here that imports torch at its top.

May import: ccache_cli.key, ccache_cli.store, ccache_cli.in_program, ccache_cli.errors.
No Typer or rich.
"""
