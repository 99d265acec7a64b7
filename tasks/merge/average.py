"""Simple average: theta = mean_i theta_i."""

from __future__ import annotations

import torch


def merge_average(name: str, tensors: list[torch.Tensor]) -> torch.Tensor:
    # Accumulate in float32 at least, so that half-precision members do not lose the mean's low bits.
    acc_dtype = torch.promote_types(tensors[0].dtype, torch.float32)
    total = torch.zeros_like(tensors[0], dtype=acc_dtype)
    for tensor in tensors:
        total += tensor.to(acc_dtype)
    return (total / len(tensors)).to(tensors[0].dtype)
