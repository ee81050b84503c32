"""Small models for the tests: each attribute exercises one path of precompile."""

import torch
from torch import nn

NOT_A_MODEL = 3


class Mlp(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.up = nn.Linear(width, 2 * width)
        self.down = nn.Linear(2 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.relu(self.up(x)))


class GraphBreak(Mlp):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.up(x))
        torch._dynamo.graph_break()
        return self.down(x)


def build() -> nn.Module:
    return Mlp()


def build_served() -> nn.Module:
    """In eval mode, as served: precompile builds AOTInductor packages for it."""
    return Mlp().eval()


def build_wide() -> nn.Module:
    return Mlp(width=12)


def build_graph_break() -> nn.Module:
    return GraphBreak().eval()


def build_raises() -> nn.Module:
    raise ValueError("weights not found")


def build_returns_number() -> int:
    return 3


instance = Mlp()


def example_inputs(size: int) -> tuple[torch.Tensor]:
    return (torch.randn(size, 8),)


def wide_inputs(size: int) -> tuple[torch.Tensor]:
    return (torch.randn(size, 12),)
