"""A user's model whose forward calls helpers from a second file."""

import torch
from helpers import scaled_gelu
from torch import nn


class TwoFileModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return scaled_gelu(self.linear(x))


def build() -> nn.Module:
    torch.manual_seed(0)
    return TwoFileModel().eval()


def example_inputs(size: int) -> tuple[torch.Tensor]:
    return (torch.randn(size, 16),)
