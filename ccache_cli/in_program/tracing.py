"""Record the file of every code object Dynamo traces, inlined calls included.

Dynamo appends each traced code object to `TracingContext.traced_code`; a list that
records on append sees them all without holding on to any tracing state.

Standard library only, with no package-relative imports: `ccache run --capture` loads
this file by path into programs that may not have ccache-cli installed.
"""

from __future__ import annotations

from typing import Any


def record_traced_files(tracing_context_class: Any, filenames: set[str]) -> Any:
    """Make every new TracingContext add its traced files to `filenames`; returns
    the original `__init__`, to put back when done."""
    original_init = tracing_context_class.__init__

    class RecordingList(list):  # type: ignore[type-arg]
        def append(self, code: Any) -> None:
            filenames.add(code.co_filename)
            super().append(code)

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        filenames.update(code.co_filename for code in self.traced_code)
        self.traced_code = RecordingList(self.traced_code)

    tracing_context_class.__init__ = init
    return original_init


def modules_by_file(filenames: set[str], loaded: dict[str, Any]) -> dict[str, str]:
    """Real path -> module name, for the files among `filenames` that `loaded`
    (sys.modules) imported as modules."""
    import os

    wanted = {os.path.realpath(name) for name in filenames}
    found = {}
    for name, module in list(loaded.items()):
        path = getattr(module, "__file__", None)
        if isinstance(path, str) and name != "__main__":
            real = os.path.realpath(path)
            if real in wanted:
                found[real] = name
    return found
