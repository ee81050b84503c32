"""transformers' fast-generation recipe, as its documentation writes it: a random Llama
(bf16), a static KV cache, `model.forward = torch.compile(model.forward)`, then
`generate` at batch 1 and at batch 4, 8 new tokens each, greedy.

Prints one JSON line: the tokens, the seconds from the compile call to both generates
done ("ready", and its parts: the compile call and each generate), from the process's
start ("total"), the time of one warm `generate` at batch 1 (the median of 10), and what
torch compiled here (all of it, the warm calls too) and the pools of compile workers
Inductor started.
With `all-devices`, `generate` compiles the model's `__call__` too (its auto-compile for
static caches, mode reduce-overhead), as it does on a GPU, whatever the device. With
`eager`, nothing is compiled (the floor any warm start is measured against).

    python generate_recipe.py DEVICE LAYERS HIDDEN [MODE] [all-devices] [eager]
"""

import time

STARTED = time.perf_counter()

import json  # noqa: E402
import sys  # noqa: E402

import torch  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM  # noqa: E402

device, layers, hidden = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
options = sys.argv[4:]
all_devices, eager = "all-devices" in options, "eager" in options
mode = next((option for option in options if option not in ("all-devices", "eager", "default")), None)

torch.manual_seed(0)
config = LlamaConfig(
    vocab_size=1024,
    hidden_size=hidden,
    intermediate_size=hidden * 2,
    num_hidden_layers=layers,
    num_attention_heads=max(hidden // 64, 1),
    num_key_value_heads=max(hidden // 128, 1),
    max_position_embeddings=256,
)
model = LlamaForCausalLM(config).to(device=device, dtype=torch.bfloat16).eval()
model.generation_config.cache_implementation = "static"
model.generation_config.pad_token_id = 0
if all_devices:
    from transformers import CompileConfig

    model.generation_config.compile_config = CompileConfig()
    model.generation_config.compile_config._compile_all_devices = True
if eager:
    model.generation_config.disable_compile = True
prompts = {
    batch: torch.randint(1, 1024, (batch, 12), generator=torch.Generator().manual_seed(batch)) for batch in (1, 4)
}
built = time.perf_counter()


def finished() -> float:
    if device != "cpu":
        torch.cuda.synchronize()
    return time.perf_counter()


if not eager:
    model.forward = torch.compile(model.forward, mode=mode, fullgraph=True)
phases = {"compile call": finished() - built}
tokens = {}
with torch.no_grad():
    for batch, prompt in prompts.items():
        started = time.perf_counter()
        out = model.generate(prompt.to(device), max_new_tokens=8, do_sample=False, min_new_tokens=8)
        tokens[batch] = out[:, prompt.shape[1] :].tolist()
        phases[f"generate {batch}"] = finished() - started
done = time.perf_counter()

# Per generate, warm: the median of 10 calls at batch 1 after 5 (a prefill and 7 decode steps each).
seconds = []
with torch.no_grad():
    for _ in range(15):
        started = time.perf_counter()
        model.generate(prompts[1].to(device), max_new_tokens=8, do_sample=False, min_new_tokens=8)
        seconds.append(finished() - started)
per_generate_ms = sorted(seconds[5:])[5] * 1000

compiled = {}
if "torch._dynamo.utils" in sys.modules:
    counters = sys.modules["torch._dynamo.utils"].counters
    compiled = {
        "graphs": counters["stats"]["unique_graphs"],
        "fxgraph_miss": counters["inductor"]["fxgraph_cache_miss"],
        "fxgraph_hit": counters["inductor"]["fxgraph_cache_hit"],
    }
print(
    json.dumps(
        {
            "tokens": tokens,
            "ready_s": done - built,
            "phases_s": phases,
            "total_s": done - STARTED,
            "per_generate_ms": per_generate_ms,
            "dynamo_imported": "torch._dynamo" in sys.modules,
            "compile_pools": len(getattr(sys.modules.get("torch._inductor.async_compile"), "_pool_set", ())),
            **compiled,
        }
    )
)
