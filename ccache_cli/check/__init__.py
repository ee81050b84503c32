"""Checking: `inspect` (what a store, an archive or a pushed artifact holds, and what
fits this machine) and `verify` (and `run_process.py`, the process `verify --run`
starts: `python -m ccache_cli.check.run_process`). Nothing here deletes.

May import: ccache_cli.serve, ccache_cli.precompile, ccache_cli.archive, ccache_cli.key,
ccache_cli.store, ccache_cli.in_program, ccache_cli.errors. No Typer or rich.
"""
