"""Regression: one real-valued target per example, scored by a one-output head (`num_labels: 1`, as STS-B).

Pearson's r needs only (n, sum x, sum y, sum x^2, sum y^2, sum xy), but float sums of per-shard sums depend on
how the rows were cut (addition of floats is not associative), and Spearman needs the predictions themselves
anyway. So a shard returns its predictions and targets (float32 values, exact in JSON), per group in row
order; concatenated in shard order they are the rows in order, and every metric is computed from the same
arrays for any shard count: bit-identical scores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from tasks.taskpool.base import Scorer, Task
from tasks.taskpool.data import DataError


class _PredictionScorer(Scorer):
    def __init__(self, n_groups: int):
        self.n_groups = n_groups
        self.parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def update(self, logits, labels, groups):
        self.parts.append((logits[:, 0].float(), labels.float(), groups))

    def result(self):
        if not self.parts:
            return [{"predictions": [], "targets": []} for _ in range(self.n_groups)]
        predictions, targets, groups = (torch.cat(t).cpu() for t in zip(*self.parts))
        return [
            {"predictions": predictions[groups == g].tolist(), "targets": targets[groups == g].tolist()} for g in range(self.n_groups)
        ]


class Regression(Task):
    name = "regression"

    def encode_labels(self, raw: Sequence, *, label2id, num_labels, source) -> torch.Tensor:
        bad = [v for v in raw if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not math.isfinite(v)]
        if bad:
            raise DataError(f"{source}: regression targets must be finite numbers; found {[str(v) for v in bad[:5]]}")
        return torch.tensor([float(v) for v in raw], dtype=torch.float32)

    def scorer(self, *, n_groups, num_labels, device):
        return _PredictionScorer(n_groups)

    def add(self, parts):
        return {key: [v for part in parts for v in part[key]] for key in ("predictions", "targets")}

    def size(self, stats):
        return len(stats["targets"])

    def metrics(self, stats):
        x = np.asarray(stats["predictions"], dtype=np.float64)
        y = np.asarray(stats["targets"], dtype=np.float64)
        if y.size == 0:
            raise DataError("no examples were evaluated")
        return {"pearson": pearson(x, y), "spearman": spearman(x, y), "mse": float(np.mean((x - y) ** 2)), "n": int(y.size)}

    def fisher_loss(self, logits, inputs):
        # A Gaussian likelihood of fixed variance has Fisher information E[grad f grad f^T]: the gradient of the
        # prediction itself (the model's own prediction as the target would give a zero gradient).
        return logits[:, 0].float().mean()

    def check_head(self, num_labels, architectures, where):
        if num_labels != 1:
            raise DataError(f"{where}: regression needs a head with one output (num_labels: 1); this one has {num_labels}")


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson's r, centred first (raw sums of squares lose digits to cancellation); 0 where either side is
    constant (the correlation is undefined)."""
    dx, dy = x - x.mean(), y - y.mean()
    sxx, syy = float(np.dot(dx, dx)), float(np.dot(dy, dy))
    if sxx == 0 or syy == 0:
        return 0.0
    return float(np.clip(np.dot(dx, dy) / math.sqrt(sxx * syy), -1.0, 1.0))


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho: Pearson's r of the ranks, ties given their mean rank (as scipy.stats.spearmanr)."""
    from scipy.stats import rankdata

    return pearson(rankdata(x), rankdata(y))
