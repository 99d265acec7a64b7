"""TIES merging (Yadav et al. 2023): trim, elect sign, disjoint mean.

1. Trim: keep each task vector's entries whose magnitude reaches its k-th largest, k = max(1, int(density * n))
   (mergekit's count), zero the rest. Entries tied with the k-th are all kept, as in the paper's code
   (`>= kth_value`): which of several equal entries to drop would otherwise be an arbitrary, device-dependent
   choice (mergekit's argsort order); without ties exactly k are kept, as in mergekit. Trimming is per
   tensor, as in mergekit (the paper's code ranks the whole model's task vector at once); one tensor at a
   time is what keeps a merge at N copies of a single tensor.
2. Elect: per coordinate, the sign of the summed trimmed task vectors (a zero sum elects +, as in mergekit).
3. Disjoint mean: average only the entries whose sign agrees with the elected one; a coordinate with no
   agreeing entry stays 0. Result: theta0 + lam * that.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from tasks.merge.average import working_dtype
from tasks.merge.group import TensorGroup
from tasks.merge.params import TiesParams
from tasks.merge.task_arithmetic import task_vectors


def trim_threshold(tau: torch.Tensor, density: float) -> torch.Tensor | None:
    """The magnitude an entry of `tau` must reach to be kept (None: density 1 keeps everything)."""
    if density >= 1:
        return None
    return kth_largest(tau.abs(), max(1, int(density * tau.numel())))


def kth_largest(magnitude: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th largest value of `magnitude` (a value, not an index, so independent of tie order), which it may
    reorder. On the CPU a selection in place (numpy's introselect): torch's kthvalue copies the tensor and
    allocates an int64 index per entry, three times an embedding matrix, for the same value."""
    flat = magnitude.reshape(-1)
    if flat.device.type != "cpu" or flat.dtype not in (torch.float32, torch.float64):
        return flat.kthvalue(flat.numel() - k + 1).values
    values = flat.numpy()
    values.partition(flat.numel() - k)
    return torch.tensor(values[flat.numel() - k], dtype=flat.dtype)


def trim(tau: torch.Tensor, density: float, threshold: torch.Tensor | None = None) -> torch.Tensor:
    """Zero the entries below the threshold, computed here from `tau` unless given (a block of rows of a larger
    tensor carries its whole tensor's threshold)."""
    if density >= 1:
        return tau
    if threshold is None:
        threshold = trim_threshold(tau, density)
    return tau * (tau.abs() >= threshold)


def member_threshold(member: Callable[[], torch.Tensor], base: Callable[[], torch.Tensor], params: TiesParams, seed: int, index: int) -> torch.Tensor | None:
    """One member's trim threshold over its whole tensor: what a merge by blocks of rows needs first. The
    readers return fresh tensors, read only when needed: the task vector is made in place in the member's."""
    if params.density >= 1:
        return None
    tensor = member()
    dtype = working_dtype(tensor)
    magnitude = tensor.to(dtype).sub_(base().to(device=tensor.device, dtype=dtype)).abs_()
    del tensor
    return kth_largest(magnitude, max(1, int(params.density * magnitude.numel())))


def disjoint_merge(taus: list[torch.Tensor]) -> torch.Tensor:
    """Steps 2 and 3 on already trimmed task vectors."""
    stacked = torch.stack(taus)
    elected = torch.where(stacked.sum(0) >= 0, 1.0, -1.0).to(stacked.dtype)
    agree = stacked.sign() == elected
    return (stacked * agree).sum(0) / agree.sum(0).clamp(min=1)


def merge_ties(group: TensorGroup, params: TiesParams) -> torch.Tensor:
    base, taus = task_vectors(group)
    thresholds = group.thresholds or [None] * len(taus)
    merged = disjoint_merge([trim(tau, params.density, threshold) for tau, threshold in zip(taus, thresholds, strict=True)])
    return (base + params.lam * merged).to(group.tensors[0].dtype)
