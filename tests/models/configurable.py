"""A small model whose forward reads Python state of every kind a program may change
after building it: float, int, bool and string attributes, a config object, a
module-level constant, a module-level function, a method on its class, and torch's
global state (the default dtype in a tensor it makes, matmul precision)."""

import torch
from torch import nn

DIM = 8
TOKENS = 4
SCALE = 2.0


def activation(x: torch.Tensor) -> torch.Tensor:
    return torch.tanh(x)


class Config:
    def __init__(self) -> None:
        self.residual = 1.0


class Norm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(0.5, 1.5, DIM))
        self.eps = 1e-6
        self.centered = True
        self.kind = "rms"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.centered:
            x = x - x.mean(-1, keepdim=True)
        if self.kind == "rms":
            x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return x * self.weight


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.heads = 4
        self.qkv = nn.Linear(DIM, 3 * DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).unbind(2)
        weights = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", q, k), dim=-1)
        return torch.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, t, d)


class Configurable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.config = Config()
        self.n1 = Norm()
        self.attn = Attention()
        self.out = nn.Linear(DIM, DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.attn(self.n1(x)) + x * self.config.residual
        bias = torch.full((DIM,), 0.25, device=x.device)  # in the default dtype
        return self.out(activation(h) * SCALE) + bias


def build() -> nn.Module:
    torch.manual_seed(0)
    return Configurable().eval()


def example_inputs(size: int) -> tuple[torch.Tensor]:
    generator = torch.Generator().manual_seed(size)
    return (torch.randn(size, TOKENS, DIM, generator=generator, dtype=torch.float32),)
