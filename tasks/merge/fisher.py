"""Fisher merging: theta = sum_i F_i theta_i / sum_i F_i, with F_i the member's Fisher diagonal + smoothing.

Each coordinate leans towards the members whose likelihood is most sensitive to it. Tensors without a
Fisher diagonal, and coordinates where every weight is zero (possible with smoothing=0), get the average.
"""

from __future__ import annotations

import torch

from tasks.merge.average import mean, working_dtype
from tasks.merge.group import TensorGroup
from tasks.merge.params import FisherParams


def merge_fisher(group: TensorGroup, params: FisherParams) -> torch.Tensor:
    first = group.tensors[0]
    if group.stats is None:
        return mean(group.tensors).to(first.dtype)
    dtype = working_dtype(first)
    weighted = torch.zeros_like(first, dtype=dtype)
    total = torch.zeros_like(first, dtype=dtype)
    for tensor, fisher in zip(group.tensors, group.stats, strict=True):
        weight = fisher.to(device=first.device, dtype=dtype) + params.smoothing
        weighted += weight * tensor.to(dtype)
        total += weight
    merged = torch.where(total > 0, weighted / total, mean(group.tensors))
    return merged.to(first.dtype)
