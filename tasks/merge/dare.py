"""DARE (Yu et al. 2023): drop each task-vector entry with probability p, rescale survivors by 1/(1-p), combine.

Member i's mask comes from a CPU generator seeded with derive_seed(group.seed, i), so a merge is
bit-identical on any device and in any tensor order. Combine: average -> theta0 + mean_i tau_i';
task_arithmetic -> theta0 + lam * sum_i tau_i'; ties -> TIES (trim at `density`, elect, disjoint mean) on the tau_i'.
"""

from __future__ import annotations

import torch

from tasks.evolve import derive_seed
from tasks.merge.average import mean
from tasks.merge.group import TensorGroup
from tasks.merge.params import DareParams
from tasks.merge.task_arithmetic import task_vectors
from tasks.merge.ties import disjoint_merge, trim


def drop(tau: torch.Tensor, p: float, seed: int) -> torch.Tensor:
    if p == 0:
        return tau
    generator = torch.Generator(device="cpu").manual_seed(seed)
    keep = torch.rand(tau.shape, generator=generator) >= p
    return tau * keep.to(tau.device) / (1 - p)


def merge_dare(group: TensorGroup, params: DareParams) -> torch.Tensor:
    base, taus = task_vectors(group)
    dropped = [drop(tau, params.p, derive_seed(group.seed, i)) for i, tau in enumerate(taus)]
    if params.combine == "average":
        delta = mean(dropped)
    elif params.combine == "task_arithmetic":
        delta = params.lam * torch.stack(dropped).sum(0)
    else:
        delta = params.lam * disjoint_merge([trim(tau, params.density) for tau in dropped])
    return (base + delta).to(group.tensors[0].dtype)
