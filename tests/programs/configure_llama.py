"""A program that builds tests/models/llama.py (a transformers Llama from a small
random config), changes Python state its forward reads as serving code does (CASE),
compiles it with `torch.compile` (WAY `route`) or `ccache_cli.compile` (WAY `api`),
and prints as JSON whether its output equals eager and whether Dynamo traced anything.

    python configure_llama.py MODELS_FOLDER WAY CASE
"""

import json
import sys

import torch
from transformers.models.llama import modeling_llama

sys.path.insert(0, sys.argv[1])
from llama import build, example_inputs  # noqa: E402

import ccache_cli  # noqa: E402
from ccache_cli.precompile.outputs import compare_eager  # noqa: E402

way, case = sys.argv[2], sys.argv[3]
model = build()


def sharper_rotary(q, k, cos, sin, *args, **kwargs):  # noqa: ANN001, ANN201, ANN002, ANN003
    """A kernel library's replacement, as it patches transformers' module (here, one
    that changes the numbers enough to see)."""
    return q * 8, k * 8


def norm_without_eps(self, hidden_states):  # noqa: ANN001, ANN201
    return self.weight * hidden_states


CASES = {
    "unchanged": lambda: None,
    "config value": lambda: setattr(model.config, "output_hidden_states", True),
    "patched function": lambda: setattr(modeling_llama, "apply_rotary_pos_emb", sharper_rotary),
    "patched method": lambda: setattr(modeling_llama.LlamaRMSNorm, "forward", norm_without_eps),
}
CASES[case]()
compiled = torch.compile(model) if way == "route" else ccache_cli.compile(model)
with torch.no_grad():
    mismatch = compare_eager(torch, compiled(**example_inputs(2)), model(**example_inputs(2)))
utils = sys.modules.get("torch._dynamo.utils")
frames = utils.counters["stats"]["unique_graphs"] if utils is not None else 0
print(json.dumps({"mismatch": mismatch, "frames": frames}))
