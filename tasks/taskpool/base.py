"""What every task type shares: the scoring loop over a shard's batches, and fitness from per-source statistics.

A task type (one module each, registered in `registry`) says how labels are encoded, what one batch adds to
its statistics, how statistics add up, and which metrics they give; `Task.score` and `Task.aggregate` are the
same for all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from tasks import faults
from tasks.taskpool.data import MODEL_INPUTS, DataError, batch_bounds
from tasks.taskpool.registry import TaskType, fitness_value, get_task_type

AGGREGATES = ("pooled", "mean_domain", "worst_domain")


class Scorer:
    """Accumulates one shard's statistics, one per group, batch after batch (on the model's device where it can)."""

    def update(self, logits: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor) -> None:
        raise NotImplementedError

    def result(self) -> list[Any]:
        raise NotImplementedError


class Task:
    """One task type. Statistics are JSON values that `add` sums exactly, in any grouping of the same rows."""

    name: str
    # The encoded tensors `forward` reads (rows first, tokens last; those the data lacks are left out).
    inputs: tuple[str, ...] = MODEL_INPUTS

    def __init__(self, label2id: dict[str, int] | None = None):
        # The members' label names: token classification reads entity types from them.
        self.label2id = dict(label2id or {})

    @property
    def type(self) -> TaskType:
        return get_task_type(self.name)

    def encode_labels(self, raw: Sequence, *, label2id: dict[str, int], num_labels: int, source: str) -> Any:
        raise NotImplementedError

    def scorer(self, *, n_groups: int, num_labels: int, device: torch.device) -> Scorer:
        raise NotImplementedError

    def add(self, parts: Sequence[Any]) -> Any:
        raise NotImplementedError

    def size(self, stats: Any) -> int:
        """How many examples the statistics cover (0: none, e.g. a validation source in the fitness counts)."""
        raise NotImplementedError

    def metrics(self, stats: Any) -> dict[str, float]:
        raise NotImplementedError

    def fisher_loss(self, logits: torch.Tensor, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The loss whose gradient squared is the Fisher diagonal ("hard" variant: the model's own predictions
        are the targets, so no labels are needed)."""
        raise NotImplementedError

    def forward(self, model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """What one batch gives the scorer and the Fisher loss: the model's logits."""
        return model(**{name: inputs[name] for name in MODEL_INPUTS if name in inputs}).logits

    def check_head(self, num_labels: int, architectures: Sequence[str], where: str) -> None:
        """Refuse a checkpoint whose head cannot score this task type (before any compute)."""

    @torch.inference_mode()
    def score(
        self,
        model: torch.nn.Module,
        data: dict[str, torch.Tensor],
        rows: range,
        *,
        batch_size: int,
        num_labels: int,
        groups: torch.Tensor | None = None,
        n_groups: int = 1,
        batch_tokens: int | None = None,
    ) -> list[Any]:
        """Statistics of `model` on the examples in `rows`, one per group (`groups[i]` in 0..n_groups-1 names
        example i's group; default: one group). Every example is scored in the same batch whatever the grouping,
        so the groups add up to the ungrouped statistics. The rows go to the model's device once."""
        device = next(model.parameters()).device
        scorer = self.scorer(n_groups=n_groups, num_labels=num_labels, device=device)
        if len(rows) == 0:
            return scorer.result()
        bounds = batch_bounds(data["lengths"], batch_size, batch_tokens, rows.start, rows.stop)
        part = slice(rows.start, rows.stop)
        width = int(data["lengths"][part].max())
        inputs = {name: data[name][part, ..., :width].to(device, non_blocking=True).long() for name in self.inputs if name in data}
        labels = data["labels"][part]
        labels = (labels[:, :width] if labels.dim() == 2 else labels).to(device)
        group = groups[part].to(device).long() if groups is not None else torch.zeros(len(rows), dtype=torch.long, device=device)
        widths = data["lengths"][part]
        for start, stop in zip(bounds[:-1], bounds[1:]):
            batch = slice(start - rows.start, stop - rows.start)
            width = int(widths[batch].max())  # pad only to the longest example of this batch
            logits = self.forward(model, {name: tensor[batch, ..., :width] for name, tensor in inputs.items()})
            scorer.update(logits, labels[batch, :width] if labels.dim() == 2 else labels[batch], group[batch])
            faults.point("evaluate.mid_forward")  # a worker lost between batches, its shard half scored
        return scorer.result()

    def aggregate(self, by_source: Sequence[Any], metric: str, aggregate: str) -> float:
        """One fitness from per-source statistics, on the maximised scale (`fitness_value`): `pooled` is the
        metric of the summed statistics (every example weighs the same); `mean_domain` the mean of the per-source
        metrics; `worst_domain` the worst of them. Sources without examples are left out."""
        present = [s for s in by_source if self.size(s) > 0]
        if not present:
            raise DataError("no examples were evaluated")
        if aggregate == "pooled":
            return fitness_value(metric, self.metrics(self.add(present))[metric])
        scores = [fitness_value(metric, self.metrics(s)[metric]) for s in present]
        if aggregate == "mean_domain":
            return float(np.mean(scores))
        if aggregate == "worst_domain":
            return float(min(scores))
        raise ValueError(f"unknown fitness aggregate {aggregate!r}; use one of {AGGREGATES}")


def task(name: str, label2id: dict[str, int] | None = None) -> Task:
    """The task type called `name`, for members with these labels."""
    return get_task_type(name).load()(label2id)
