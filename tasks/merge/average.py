"""Simple average: theta = mean_i theta_i. Also the fallback of the statistic-weighted methods."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tasks.merge.group import TensorGroup
from tasks.merge.params import AverageParams


def working_dtype(tensor: torch.Tensor) -> torch.dtype:
    """float32 at least, so that half-precision members do not lose the low bits of sums and means."""
    return torch.promote_types(tensor.dtype, torch.float32)


def mean(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """The mean, in the working dtype of the first tensor (the caller casts back)."""
    dtype = working_dtype(tensors[0])
    total = torch.zeros_like(tensors[0], dtype=dtype)
    for tensor in tensors:
        total += tensor.to(dtype)
    return total / len(tensors)


def merge_average(group: TensorGroup, params: AverageParams) -> torch.Tensor:
    return mean(group.tensors).to(group.tensors[0].dtype)
