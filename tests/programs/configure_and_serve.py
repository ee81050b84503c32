"""A program that builds tests/models/configurable.py, changes one piece of the Python
state its forward reads (CASE), compiles it as a user would, with `torch.compile` (WAY
`route`: ccache routes it) or `ccache_cli.compile` (WAY `api`), and prints as JSON
whether its output equals eager and whether Dynamo traced anything.

    python configure_and_serve.py MODELS_FOLDER WAY CASE [DEVICE]
"""

import json
import sys
import types

import torch

sys.path.insert(0, sys.argv[1])
import configurable  # noqa: E402

import ccache_cli  # noqa: E402
from ccache_cli.precompile.outputs import compare_eager  # noqa: E402

way, case = sys.argv[2], sys.argv[3]
device = sys.argv[4] if len(sys.argv) > 4 else "cpu"
model = configurable.build().to(device)


def doubled(self, x):  # noqa: ANN001, ANN201
    return x * 2.0


CASES = {
    "unchanged": lambda: None,
    "float attribute": lambda: setattr(model.n1, "eps", 0.5),
    "int attribute": lambda: setattr(model.attn, "heads", 2),
    "bool attribute": lambda: setattr(model.n1, "centered", False),
    "string attribute": lambda: setattr(model.n1, "kind", "plain"),
    "config value": lambda: setattr(model.config, "residual", 0.5),
    "module constant": lambda: setattr(configurable, "SCALE", 3.0),
    "global function": lambda: setattr(configurable, "activation", torch.sigmoid),
    "method on the class": lambda: setattr(configurable.Norm, "forward", doubled),
    "forward on the instance": lambda: setattr(model, "forward", types.MethodType(doubled, model)),  # as hooks do
    "matmul precision": lambda: torch.set_float32_matmul_precision("medium"),
    "backends flag": lambda: setattr(torch.backends.cuda.matmul, "allow_tf32", True),
    "deterministic algorithms": lambda: torch.use_deterministic_algorithms(True),
    "default dtype": lambda: torch.set_default_dtype(torch.float64),
}
CASES[case]()
compiled = torch.compile(model) if way == "route" else ccache_cli.compile(model)
(x,) = (t.to(device) for t in configurable.example_inputs(2))
with torch.no_grad():
    mismatch = compare_eager(torch, compiled(x), model(x))
utils = sys.modules.get("torch._dynamo.utils")
frames = utils.counters["stats"]["unique_graphs"] if utils is not None else 0
print(json.dumps({"mismatch": mismatch, "frames": frames}))
