"""A small transformer-like model: the README's main command precompiles it.

Embedding, a stack of pre-norm MLP blocks and a head, shaped like the feed-forward
half of a transformer. Sizes are batch sizes; every input has a fixed sequence length.
"""

from __future__ import annotations

import os

import torch
from torch import nn

VOCAB = 1000
SEQ_LEN = 16
# Small by default so that it compiles in seconds on a laptop CPU; the benchmarks
# and GPU runs set CCACHE_EXAMPLE_DIM / CCACHE_EXAMPLE_BLOCKS for a bigger model.
DIM = int(os.environ.get("CCACHE_EXAMPLE_DIM", "128"))
BLOCKS = int(os.environ.get("CCACHE_EXAMPLE_BLOCKS", "2"))


class Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, 4 * dim)
        self.down = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(torch.nn.functional.gelu(self.up(self.norm(x))))


class TinyTransformer(nn.Module):
    def __init__(self, dim: int = DIM, blocks: int = BLOCKS, vocab: int = VOCAB) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(Block(dim) for _ in range(blocks))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def build() -> nn.Module:
    torch.manual_seed(0)
    return TinyTransformer().eval()


def example_inputs(size: int) -> tuple[torch.Tensor]:
    generator = torch.Generator().manual_seed(size)
    return (torch.randint(0, VOCAB, (size, SEQ_LEN), generator=generator),)
