"""What an entry is valid for: the traced sources it was compiled from, and whether
its key fits a machine. (The machine's fingerprint itself is in in_program/fingerprint.py,
which programs load without ccache-cli installed.)

May import: ccache_cli.store, ccache_cli.in_program, ccache_cli.errors. No torch, Typer or rich.
"""
