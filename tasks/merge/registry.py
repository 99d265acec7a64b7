"""Name -> merging method.

A method merges one parameter tensor at a time across the population (mergekit's shape), so that a merge
never needs more than N copies of a single tensor in memory. Entries are import paths, not functions, so
that `tasks.config` (imported by the DAG at parse time) can list the names without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch


class TensorMerger(Protocol):
    def __call__(self, name: str, tensors: list[torch.Tensor]) -> torch.Tensor: ...


_MERGERS: dict[str, str] = {
    "average": "tasks.merge.average:merge_average",
}

MERGER_NAMES: tuple[str, ...] = tuple(_MERGERS)


def get_merger(name: str) -> TensorMerger:
    try:
        module_name, attr = _MERGERS[name].split(":")
    except KeyError:
        raise ValueError(f"unknown merger {name!r}; registered: {', '.join(MERGER_NAMES)}") from None
    return getattr(importlib.import_module(module_name), attr)
