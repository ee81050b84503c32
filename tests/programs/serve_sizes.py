"""A program that builds tests/models/configurable.py, changes one piece of the Python
state its forward reads (CASE, as configure_and_serve.py names them), compiles it with
`torch.compile` and calls it at each of SIZES (a JSON list), and prints as JSON whether
every output equals eager's, how many graphs Dynamo traced and how many calls ccache
served from stored code.

    python serve_sizes.py MODELS_FOLDER CASE SIZES
"""

import json
import sys

import torch

sys.path.insert(0, sys.argv[1])
import configurable  # noqa: E402

from ccache_cli.precompile.outputs import compare_eager  # noqa: E402

model = configurable.build()
if sys.argv[2] == "float attribute":
    model.n1.eps = 0.5
compiled = torch.compile(model)
mismatches = []
with torch.no_grad():
    for size in json.loads(sys.argv[3]):
        (x,) = configurable.example_inputs(size)
        mismatches.append(compare_eager(torch, compiled(x), model(x)))
utils = sys.modules.get("torch._dynamo.utils")
decisions = sys.modules["ccache_cli.serve.decisions"]
print(
    json.dumps(
        {
            "mismatches": [m for m in mismatches if m],
            "frames": utils.counters["stats"]["unique_graphs"] if utils is not None else 0,
            "served": sum(decisions._served.values()),
        }
    )
)
