"""Builds a C++ extension with torch's `load_inline` (JIT, into $TORCH_EXTENSIONS_DIR,
where torch keeps its build folder and ninja's) and calls it; prints, as JSON, the
seconds `load_inline` took, whether the library was built (written) again, and the
call's result."""

import json
import os
import time

import torch
from torch.utils.cpp_extension import load_inline

NAME = "ccache_inline_probe"
SOURCE = "torch::Tensor twice_plus_one(torch::Tensor x) { return x * 2 + 1; }"
LIBRARY = os.path.join(os.environ["TORCH_EXTENSIONS_DIR"], NAME, f"{NAME}.so")


def written() -> int | None:
    return os.stat(LIBRARY).st_mtime_ns if os.path.exists(LIBRARY) else None


before = written()
start = time.perf_counter()
module = load_inline(NAME, SOURCE, functions=["twice_plus_one"])
seconds = time.perf_counter() - start
compiled = written() != before
print(
    json.dumps(
        {"seconds": round(seconds, 2), "compiled": compiled, "result": module.twice_plus_one(torch.ones(2)).tolist()}
    )
)
