"""Checking and housekeeping: `inspect`, `verify` (and `run_process.py`, the process
`verify --run` starts: `python -m ccache_cli.check.run_process`), `gc` and `rm`.

May import: ccache_cli.serve, ccache_cli.build, ccache_cli.archive, ccache_cli.key,
ccache_cli.store, ccache_cli.hooked, ccache_cli.errors. No Typer or rich.
"""
