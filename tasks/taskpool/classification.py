"""Sequence classification: one label per example (or per pair of texts), scored by confusion counts.

A shard's statistics per group are a confusion matrix (true label x predicted label): integers, so they add
up exactly in any order. Accuracy, macro-F1 and Matthews correlation come from the summed matrix.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch

from tasks.taskpool.base import Scorer, Task, task
from tasks.taskpool.data import DataError


class _ConfusionScorer(Scorer):
    def __init__(self, n_groups: int, num_labels: int, device: torch.device):
        self.n_groups, self.k = n_groups, num_labels
        self.counts = torch.zeros(n_groups * num_labels * num_labels, dtype=torch.long, device=device)  # stays on the device

    def update(self, logits, labels, groups):
        cell = groups * self.k * self.k + labels.long() * self.k + logits.argmax(-1)
        self.counts += torch.bincount(cell, minlength=len(self.counts))

    def result(self):
        return self.counts.view(self.n_groups, self.k, self.k).tolist()


class Classification(Task):
    name = "sequence_classification"

    def encode_labels(self, raw: Sequence, *, label2id: dict[str, int], num_labels: int, source: str) -> torch.Tensor:
        return encode_labels(raw, label2id, num_labels, source)

    def scorer(self, *, n_groups, num_labels, device):
        return _ConfusionScorer(n_groups, num_labels, device)

    def add(self, parts):
        return add_confusions(parts)

    def size(self, stats):
        return int(np.asarray(stats).sum())

    def metrics(self, stats):
        return metrics(stats)

    def fisher_loss(self, logits, inputs):
        log_probs = logits.float().log_softmax(-1)
        return torch.nn.functional.nll_loss(log_probs, log_probs.argmax(-1))

    def check_head(self, num_labels, architectures, where):
        if num_labels < 2:
            raise DataError(f"{where}: a head with {num_labels} output scores regression, not classification; set task_type: regression")


def encode_labels(raw: Sequence, label2id: dict[str, int], num_labels: int, source: str) -> torch.Tensor:
    """Integer labels pass through (checked against the label count); names go through the models' label2id."""
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in raw):
        ids = [int(v) for v in raw]
    else:
        unknown = sorted({str(v) for v in raw} - set(label2id))
        if unknown:
            raise DataError(f"{source}: labels {unknown[:10]} are not in the models' label2id {sorted(label2id)}")
        ids = [label2id[str(v)] for v in raw]
    out_of_range = sorted({i for i in ids if not 0 <= i < num_labels})
    if out_of_range:
        raise DataError(f"{source}: label ids {out_of_range[:10]} outside 0..{num_labels - 1}")
    return torch.tensor(ids, dtype=torch.long)


def confusion(
    model: torch.nn.Module, data: dict[str, torch.Tensor], rows: range, *, batch_size: int, num_labels: int, batch_tokens: int | None = None
) -> list[list[int]]:
    """Confusion-matrix counts (true label x predicted label) of `model` on the examples in `rows`."""
    return grouped_confusion(model, data, rows, batch_size=batch_size, num_labels=num_labels, batch_tokens=batch_tokens)[0]


def grouped_confusion(model, data, rows, *, batch_size, num_labels, groups=None, n_groups=1, batch_tokens=None) -> list[list[list[int]]]:
    """One confusion matrix per group: `Task.score` of this task type."""
    return task(Classification.name).score(
        model, data, rows, batch_size=batch_size, num_labels=num_labels, groups=groups, n_groups=n_groups, batch_tokens=batch_tokens
    )


def add_confusions(matrices: Sequence[Sequence[Sequence[int]]]) -> list[list[int]]:
    return np.sum(np.asarray(matrices, dtype=np.int64), axis=0).tolist()


def aggregate_score(by_source: Sequence[Sequence[Sequence[int]]], metric: str, aggregate: str) -> float:
    """Fitness from per-source confusion counts: `Task.aggregate` of this task type."""
    return task(Classification.name).aggregate(by_source, metric, aggregate)


def metrics(matrix: Sequence[Sequence[int]]) -> dict[str, float]:
    """Accuracy, macro-F1 and Matthews correlation (scikit-learn) from summed confusion counts."""
    counts = np.asarray(matrix, dtype=np.int64)
    k = counts.shape[0]
    truth = np.repeat(np.repeat(np.arange(k), k), counts.ravel())
    predicted = np.repeat(np.tile(np.arange(k), k), counts.ravel())
    if truth.size == 0:
        raise DataError("no examples were evaluated")
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    with warnings.catch_warnings():  # one domain's rows may hold a single label: the scores are still defined
        warnings.simplefilter("ignore", UserWarning)
        return {
            "accuracy": float(accuracy_score(truth, predicted)),
            "macro_f1": float(f1_score(truth, predicted, average="macro", zero_division=0)),
            "mcc": float(matthews_corrcoef(truth, predicted)),
            "n": int(truth.size),
        }
