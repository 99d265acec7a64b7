"""DARE (Yu et al. 2023): drop each task-vector entry with probability p, rescale survivors by 1/(1-p), combine.

Member i's mask comes from a CPU generator seeded with derive_seed(group.seed, i), so a merge is
bit-identical on any device and in any tensor order. Combine: average -> theta0 + mean_i tau_i';
task_arithmetic -> theta0 + lam * sum_i tau_i'; ties -> TIES (trim at `density`, elect, disjoint mean) on the tau_i'.

A tensor merged by blocks of rows draws the same masks: torch's CPU generator fills a tensor element by element
in row-major order, so drawing a block of rows after the blocks above it continues the whole tensor's draw.
The generators live in `group.carry` from one block to the next. With `combine: ties`, each member's trim
threshold is computed over its whole dropped task vector first (`member_threshold`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from tasks.evolve import derive_seed
from tasks.merge.average import mean, working_dtype
from tasks.merge.group import TensorGroup
from tasks.merge.params import DareParams
from tasks.merge.task_arithmetic import task_vectors
from tasks.merge.ties import disjoint_merge, kth_largest, trim


def member_stream(seed: int, index: int) -> torch.Generator:
    """Member `index`'s mask stream for the tensor whose merge seed is `seed`."""
    return torch.Generator(device="cpu").manual_seed(derive_seed(seed, index))


def drop(tau: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    if p == 0:
        return tau
    keep = torch.rand(tau.shape, generator=generator) >= p
    return tau * keep.to(tau.device) / (1 - p)


def member_threshold(member: Callable[[], torch.Tensor], base: Callable[[], torch.Tensor], params: DareParams, seed: int, index: int) -> torch.Tensor | None:
    """`combine: ties` only: the trim threshold of member `index`'s whole dropped task vector, what a merge by
    blocks of rows needs first. The readers return fresh tensors: the task vector is made in place in the member's."""
    if params.combine != "ties" or params.density >= 1:
        return None
    tensor = member()
    dtype = working_dtype(tensor)
    tau = tensor.to(dtype).sub_(base().to(device=tensor.device, dtype=dtype))
    del tensor
    if params.p > 0:
        keep = torch.rand(tau.shape, generator=member_stream(seed, index)) >= params.p
        tau.mul_(keep.to(tau.device)).div_(1 - params.p)
        del keep
    return kth_largest(tau.abs_(), max(1, int(params.density * tau.numel())))


def merge_dare(group: TensorGroup, params: DareParams) -> torch.Tensor:
    base, taus = task_vectors(group)
    if group.carry is None:
        streams = [member_stream(group.seed, i) for i in range(len(taus))]
    else:
        streams = group.carry.setdefault("streams", [member_stream(group.seed, i) for i in range(len(taus))])
    dropped = [drop(tau, params.p, stream) for tau, stream in zip(taus, streams, strict=True)]
    del taus
    if params.combine == "average":
        delta = mean(dropped)
    elif params.combine == "task_arithmetic":
        delta = params.lam * torch.stack(dropped).sum(0)
    else:
        thresholds = group.thresholds or [None] * len(dropped)
        delta = params.lam * disjoint_merge([trim(tau, params.density, threshold) for tau, threshold in zip(dropped, thresholds, strict=True)])
    return (base + delta).to(group.tensors[0].dtype)
