"""RegMean: the linear layer that best reproduces every member's outputs on its own inputs.

For a weight W_i (out x in) with input Gram matrix G_i = X_i^T X_i / n_i, minimising sum_i ||X_i W^T - X_i W_i^T||^2
gives W^T = (sum_i G_i)^-1 sum_i G_i W_i^T. GPT-2's Conv1D stores W^T itself (in x out), so there the solution
is the stored weight. Scaling each G_i's off-diagonal by alpha (G_i' = alpha G_i + (1-alpha)
diag(G_i)) regularises towards the average; alpha=1 is the exact least squares. The solve runs in float64:
Gram matrices of transformer activations are badly conditioned. Tensors without a Gram matrix (biases,
embeddings, LayerNorm) are averaged.
"""

from __future__ import annotations

import torch

from tasks.merge.average import mean
from tasks.merge.group import TensorGroup
from tasks.merge.params import RegMeanParams


def merge_regmean(group: TensorGroup, params: RegMeanParams) -> torch.Tensor:
    first = group.tensors[0]
    if group.stats is None or first.dim() != 2:
        return mean(group.tensors).to(first.dtype)
    inputs, outputs = first.shape if group.input_major else first.shape[::-1]
    gram_sum = torch.zeros(inputs, inputs, dtype=torch.float64, device=first.device)
    rhs = torch.zeros(inputs, outputs, dtype=torch.float64, device=first.device)
    for weight, gram in zip(group.tensors, group.stats, strict=True):
        # In place, one float64 copy at a time: an FFN's Gram matrix is (4 x hidden)^2.
        gram = gram.to(device=first.device, dtype=torch.float64, copy=True)
        diagonal = torch.diagonal(gram).clone()
        gram.mul_(params.alpha)
        torch.diagonal(gram).add_((1 - params.alpha) * diagonal)
        gram_sum += gram
        rhs += gram @ (weight.to(torch.float64) if group.input_major else weight.to(torch.float64).T)
        del gram  # before the next member's is read, and before the solve, which copies gram_sum
    solution, info = torch.linalg.solve_ex(gram_sum, rhs)
    if info.item() != 0:  # singular: an input feature that is zero on every member's data; any solution fits
        solution = torch.linalg.pinv(gram_sum) @ rhs
    return (solution if group.input_major else solution.T).to(first.dtype)
