"""Modules that run inside users' programs: the start-up hook (startup_hook/) loads
them by path, since the program may not have ccache-cli installed. Standard library
only, no package-relative imports; torch is used only when the program has imported
it. The rest of ccache-cli imports them as usual.

- fingerprint: this machine's key components
- bytecode: the compile stack's .pyc files, recorded and laid out
- tracing: the files Dynamo traces
- usage: per-entry usage logs
- misses: why a process missed the stored cache, said at exit
- relocate: autotuning results looked up in the process's own cache
- imports: patching a module right after its first import

May import: the standard library only.
"""
