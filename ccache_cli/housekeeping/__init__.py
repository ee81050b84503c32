"""Housekeeping: what `gc` and `rm` remove (least recently used entries, blobs no entry
names, the leftovers of killed writers; never an entry a running program uses), as a
plan a `--dry-run` shows, and removing it.

May import: ccache_cli.serve, ccache_cli.store, ccache_cli.in_program, ccache_cli.errors.
No Typer or rich, no torch.
"""
