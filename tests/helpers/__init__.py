"""What the tests share, by subject: `cli` (running the real CLI, this machine's
fingerprint), `stores` (synthetic entries, folders built once per run, store
snapshots, small file systems), `archives` (tar streams in pack's framed layout) and
`serving` (the programs in tests/programs/ that serve the example model and report
torch's cache counters). Fixtures and pytest's hooks stay in conftest.py."""
