"""The unit a merging method works on: one parameter tensor across the whole population.

Torch-free at import (only type hints), so that the registry stays importable at DAG-parse time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor


@dataclass
class TensorGroup:
    """One parameter tensor across the population, plus what the method needs beside the tensors.

    tensors: one per member; a list, or for a tensor with Gram matrices a sequence that reads a member's
    tensor each time it is indexed (RegMean then holds one at a time).
    stats: Fisher diagonal (same shape) per member for fisher; for regmean the Gram matrix
    (in_features x in_features) of the inputs of the linear layer whose weight this is. None where a tensor
    has no statistic: those methods then average.
    input_major: the weight is stored in_features x out_features (GPT-2's Conv1D), not out x in (nn.Linear).
    seed: the run's per-tensor seed; DARE derives member i's drop mask from (seed, i).
    thresholds: per member, what a method computes over the whole tensor before merging it elementwise (TIES's
    trim threshold), when `tensors` hold only a block of its rows: the caller merges a tensor too large to hold
    N times a block of rows at a time (`MergeMethod.row_blocks`). None: the tensors are whole.
    carry: with blocks of rows, one dict that the blocks of the same tensor share, in row order: what a method
    carries from one block to the next (DARE's random streams go on where the previous block stopped). None: the
    tensors are whole, and nothing carries over from an earlier merge.
    """

    name: str
    tensors: Sequence[Tensor]
    base: Tensor | None = None
    stats: Sequence[Tensor] | None = None
    seed: int = 0
    thresholds: list[Tensor | None] | None = None
    carry: dict | None = None
    input_major: bool = False
