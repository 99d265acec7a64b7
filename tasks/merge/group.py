"""The unit a merging method works on: one parameter tensor across the whole population.

Torch-free at import (only type hints), so that the registry stays importable at DAG-parse time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor


@dataclass
class TensorGroup:
    """One parameter tensor across the population, plus what the method needs beside the tensors.

    stats: Fisher diagonal (same shape) per member for fisher; for regmean the Gram matrix
    (in_features x in_features) of the inputs of the nn.Linear whose weight this is. None where a tensor
    has no statistic: those methods then average.
    seed: the run's per-tensor seed; DARE derives member i's drop mask from (seed, i).
    """

    name: str
    tensors: list[Tensor]
    base: Tensor | None = None
    stats: list[Tensor] | None = None
    seed: int = 0
