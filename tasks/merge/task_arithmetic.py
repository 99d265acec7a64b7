"""Task arithmetic: theta = theta0 + lam * sum_i tau_i, with task vectors tau_i = theta_i - theta0."""

from __future__ import annotations

import torch

from tasks.merge.average import working_dtype
from tasks.merge.group import TensorGroup
from tasks.merge.params import TaskArithmeticParams


def task_vectors(group: TensorGroup) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The base and each member's task vector, in the working dtype (the difference of nearby half-precision weights loses bits)."""
    if group.base is None:
        raise ValueError(f"{group.name}: this merging method needs the pre-trained base tensor")
    dtype = working_dtype(group.tensors[0])
    base = group.base.to(device=group.tensors[0].device, dtype=dtype)
    return base, [tensor.to(dtype) - base for tensor in group.tensors]


def merge_task_arithmetic(group: TensorGroup, params: TaskArithmeticParams) -> torch.Tensor:
    base, taus = task_vectors(group)
    return (base + params.lam * torch.stack(taus).sum(0)).to(group.tensors[0].dtype)
