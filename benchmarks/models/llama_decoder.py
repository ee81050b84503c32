"""A transformers Llama decoder from a random config (nothing downloaded), in bf16 and
eval mode as served, scoring prompts of LLAMA_TOKENS tokens: the model of the
warm-start figures. 16 layers of hidden size 1024 by default; LLAMA_LAYERS,
LLAMA_HIDDEN and LLAMA_TOKENS make it smaller or larger."""

import os

import torch
from transformers import LlamaConfig, LlamaForCausalLM

LAYERS = int(os.environ.get("LLAMA_LAYERS", "16"))
HIDDEN = int(os.environ.get("LLAMA_HIDDEN", "1024"))
TOKENS = int(os.environ.get("LLAMA_TOKENS", "128"))
VOCAB = 32000


def build() -> torch.nn.Module:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=HIDDEN * 11 // 4,
        num_hidden_layers=LAYERS,
        num_attention_heads=HIDDEN // 64,
        num_key_value_heads=HIDDEN // 256,
        max_position_embeddings=4096,
    )
    return LlamaForCausalLM(config).to(torch.bfloat16).eval()


def example_inputs(size: int) -> dict:
    ids = torch.randint(0, VOCAB, (size, TOKENS), generator=torch.Generator().manual_seed(size))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "use_cache": False}
