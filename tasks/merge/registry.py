"""Name -> merging method (mergekit's shape: one small module per method, merging one tensor at a time).

A method merges one parameter tensor across the population at a time, so a merge never holds more than
N copies of a single tensor. Implementations are import paths, loaded lazily: `tasks.config` imports this
module at DAG-parse time and must not pay for torch.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel

from tasks.merge.group import TensorGroup
from tasks.merge.params import (
    AverageParams,
    DareParams,
    FisherParams,
    MergeParams,
    RegMeanParams,
    TaskArithmeticParams,
    TiesParams,
)

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class MergeMethod:
    name: str
    impl: str  # "module:function"
    params: type[BaseModel]
    needs_base: bool  # works on task vectors theta_i - theta0: the caller must fill TensorGroup.base
    statistic: Literal["fisher", "gram"] | None  # per-member statistic the caller must fill TensorGroup.stats with
    # Whether each row of the output depends only on the same row of the inputs (Fisher diagonals are cut like
    # the tensors, Gram matrices stay whole), given `whole_tensor`'s per-member values: then a tensor too large
    # to hold N times is merged a block of rows at a time, with the same result (DARE: its mask streams continue
    # from block to block in `TensorGroup.carry`).
    row_blocks: bool = False
    # "module:function"(member, base, params, seed, index) -> TensorGroup.thresholds[index]: member and base are
    # zero-argument readers that return fresh copies of the whole tensors (the function may change them), called
    # only where the params need a whole-tensor value.
    whole_tensor: str | None = None

    def load(self) -> Callable[[TensorGroup, BaseModel], torch.Tensor]:
        return _function(self.impl)

    def load_whole_tensor(self) -> Callable[..., torch.Tensor | None] | None:
        return _function(self.whole_tensor) if self.whole_tensor else None


def _function(path: str) -> Callable:
    module, function = path.split(":")
    return getattr(importlib.import_module(module), function)


METHODS: dict[str, MergeMethod] = {
    m.name: m
    for m in (
        MergeMethod("average", "tasks.merge.average:merge_average", AverageParams, needs_base=False, statistic=None, row_blocks=True),
        MergeMethod("fisher", "tasks.merge.fisher:merge_fisher", FisherParams, needs_base=False, statistic="fisher", row_blocks=True),
        MergeMethod("regmean", "tasks.merge.regmean:merge_regmean", RegMeanParams, needs_base=False, statistic="gram", row_blocks=True),
        MergeMethod(
            "task_arithmetic",
            "tasks.merge.task_arithmetic:merge_task_arithmetic",
            TaskArithmeticParams,
            needs_base=True,
            statistic=None,
            row_blocks=True,
        ),
        MergeMethod(
            "ties", "tasks.merge.ties:merge_ties", TiesParams, needs_base=True, statistic=None, row_blocks=True, whole_tensor="tasks.merge.ties:member_threshold"
        ),
        MergeMethod(
            "dare", "tasks.merge.dare:merge_dare", DareParams, needs_base=True, statistic=None, row_blocks=True, whole_tensor="tasks.merge.dare:member_threshold"
        ),
    )
}

MERGER_NAMES: tuple[str, ...] = tuple(METHODS)

# MergeParams is written out by hand (for its titles and comments); a method added here without it fails at import.
_fields = MergeParams.model_fields
if list(_fields) != list(METHODS) or any(_fields[name].annotation is not method.params for name, method in METHODS.items()):
    raise RuntimeError("tasks.merge.params.MergeParams must have one field per registered method, typed with its params")


def get_method(name: str) -> MergeMethod:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown merging method {name!r}; registered: {', '.join(MERGER_NAMES)}") from None

