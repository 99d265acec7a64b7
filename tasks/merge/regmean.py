"""RegMean: the linear layer that best reproduces every member's outputs on its own inputs.

For a weight W_i (out x in) with input Gram matrix G_i = X_i^T X_i / n_i, minimising sum_i ||X_i W^T - X_i W_i^T||^2
gives W^T = (sum_i G_i)^-1 sum_i G_i W_i^T. GPT-2's Conv1D stores W^T itself (in x out), so there the solution
is the stored weight. Scaling each G_i's off-diagonal by alpha (G_i' = alpha G_i + (1-alpha)
diag(G_i)) regularises towards the average; alpha=1 is the exact least squares. The solve runs in float64:
Gram matrices of transformer activations are badly conditioned. Tensors without a Gram matrix (biases,
embeddings, LayerNorm) are averaged.

Memory: an FFN's Gram matrix is (4 x hidden)^2, 0.3 GB in float64 at hidden 1536. The merge holds one such
matrix at a time: the right-hand side is summed one member's float64 Gram matrix after the other, then their
sum is built a block of rows at a time into the matrix that LAPACK factorises in place. `group.tensors` and
`group.stats` may read a member's tensor when indexed (`stages._ReadOnAccess`); each is indexed in order.
The bits are those of `torch.linalg.solve_ex` on the summed matrix (a test checks it).
"""

from __future__ import annotations

import torch

from tasks.merge.average import mean
from tasks.merge.group import TensorGroup
from tasks.merge.params import RegMeanParams

# Rows of a member's Gram matrix converted to float64 at a time while summing: 256 x 6144 x 8 B = 12.6 MB.
SUM_BLOCK_ROWS = 256


def merge_regmean(group: TensorGroup, params: RegMeanParams) -> torch.Tensor:
    first = group.tensors[0]
    if group.stats is None or first.dim() != 2:
        return mean(list(group.tensors)).to(first.dtype)
    device, dtype = first.device, first.dtype
    inputs, outputs = first.shape if group.input_major else first.shape[::-1]
    del first  # read again in its turn: a lazy sequence would keep a second copy alive
    rhs = torch.zeros(inputs, outputs, dtype=torch.float64, device=device)
    for index, gram in enumerate(group.stats):
        gram = _regularised(gram.to(device), params.alpha)
        weight = group.tensors[index].to(torch.float64)
        rhs += gram @ (weight if group.input_major else weight.T)
        del gram, weight  # before the next member's are read
    gram_sum = _gram_sum(group.stats, params.alpha, inputs, device)
    pivots = torch.empty(inputs, dtype=torch.int32, device=device)
    info = torch.empty((), dtype=torch.int32, device=device)
    torch.linalg.lu_factor_ex(gram_sum, out=(gram_sum, pivots, info))  # in place: gram_sum is column-major
    if info.item() == 0:
        solution = torch.linalg.lu_solve(gram_sum, pivots, rhs)
    else:  # singular: an input feature that is zero on every member's data; any solution fits
        del gram_sum  # the factorisation overwrote it
        solution = torch.linalg.pinv(_gram_sum(group.stats, params.alpha, inputs, device)) @ rhs
    return (solution if group.input_major else solution.T).to(dtype)


def _regularised(gram: torch.Tensor, alpha: float, first_row: int = 0) -> torch.Tensor:
    """alpha G + (1 - alpha) diag(G) in float64, for rows first_row.. of a Gram matrix (all of it by default)."""
    gram = gram.to(dtype=torch.float64, copy=True)
    diagonal = torch.diagonal(gram, offset=first_row).clone()
    gram.mul_(alpha)
    torch.diagonal(gram, offset=first_row).add_((1 - alpha) * diagonal)
    return gram


def _gram_sum(stats, alpha: float, inputs: int, device) -> torch.Tensor:
    """sum_i G_i', laid out column-major: LAPACK's layout, which lets lu_factor work in place instead of on a
    copy. The values (and so the solve's bits) are those of summing whole regularised matrices."""
    total = torch.zeros(inputs, inputs, dtype=torch.float64, device=device).t()
    for gram in stats:
        gram = gram.to(device)
        for start in range(0, inputs, SUM_BLOCK_ROWS):
            rows = slice(start, start + SUM_BLOCK_ROWS)
            total[rows] += _regularised(gram[rows], alpha, first_row=start)
        del gram
    return total
