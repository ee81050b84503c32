"""A transformers Llama built from a small random config (nothing downloaded), in
bf16 and eval mode as served, called with keyword inputs as transformers models are.
The thin subclass stands for a service's own wrapper: its forward is traced too."""

import torch
from transformers import LlamaConfig, LlamaForCausalLM

LAYERS = 1
TOKENS = 16
VOCAB = 512


class ServedLlama(LlamaForCausalLM):
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, use_cache: bool = False):
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache)


def build(layers: int = LAYERS) -> torch.nn.Module:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    return ServedLlama(config).to(torch.bfloat16).eval()


def example_inputs(size: int) -> dict:
    ids = torch.randint(0, VOCAB, (size, TOKENS), generator=torch.Generator().manual_seed(size))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "use_cache": False}
