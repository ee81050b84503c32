import torch


def scaled_gelu(x: torch.Tensor) -> torch.Tensor:
    return 2.0 * torch.nn.functional.gelu(x)


def unused_by_forward(x: torch.Tensor) -> torch.Tensor:
    return x
