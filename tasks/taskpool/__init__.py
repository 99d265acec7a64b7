"""The task pool: evaluation data, tokenised once per run, scored shard by shard into sufficient statistics.

A shard returns statistics that add up exactly (confusion counts, entity counts, predictions); metrics come
from the summed statistics, never from averaging per-shard scores (macro-F1, Matthews correlation, Pearson and
entity F1 are not means). Shards are cut on batch boundaries, so every example is always evaluated in the same
batch with the same neighbours and padding: a model's score is bit-identical for any number of shards.

- `data`: sources, tokenisation, shards and batches, validation rows (shared by every task type);
- `registry`: task type name -> its implementation (torch-free, read by `tasks.config`);
- `classification`, `regression`, `tokens`: one module per task type, behind `task(name)`.

Torch-free at import: names resolve on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

from tasks.taskpool.registry import LOWER_IS_BETTER, METRIC_NAMES, TASK_TYPE_NAMES, TASK_TYPES, fitness_value, get_task_type

_LAZY = {
    "tasks.taskpool.data": (
        "DataError",
        "MODEL_INPUTS",
        "batch_bounds",
        "encode",
        "read_conll",
        "read_source",
        "shard_range",
        "table",
        "validation_mask",
        "validation_rows",
    ),
    "tasks.taskpool.base": ("AGGREGATES", "Task", "task"),
    "tasks.taskpool.classification": ("add_confusions", "aggregate_score", "confusion", "encode_labels", "grouped_confusion", "metrics"),
}
_WHERE = {name: module for module, names in _LAZY.items() for name in names}

__all__ = ["LOWER_IS_BETTER", "METRIC_NAMES", "TASK_TYPES", "TASK_TYPE_NAMES", "fitness_value", "get_task_type", *_WHERE]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'tasks.taskpool' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value
