"""Typed parameters of each merging method, and `MergeParams`, which holds one set per method.

Pydantic only (no torch): `tasks.config` imports this at DAG-parse time, and the UI form is built from
these fields, so every field carries its bounds, a title and a description.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    # extra="forbid" turns a misspelt parameter (`densty: 0.5`) into an error instead of a silent default.
    model_config = ConfigDict(extra="forbid", validate_default=True)


class AverageParams(_Strict):
    """The simple average has nothing to tune."""


class FisherParams(_Strict):
    # 8 batches is the reference code's default: enough for a stable diagonal on a few hundred dev rows.
    batches: int = Field(8, ge=1, title="Batches", description="Batches of dev data the Fisher diagonal is estimated on.")
    # The reference adds 1e-10 so that coordinates no member is sensitive to get equal weights, not 0/0.
    smoothing: float = Field(1e-10, ge=0, title="Smoothing", description="Added to every Fisher entry before weighting.")
    # Off by default: the statistics describe the members' own data fit, and the reference computes them once.
    recompute: bool = Field(
        False,
        title="Recompute",
        description="Recompute statistics from the current population each generation instead of once from the original checkpoints.",
    )


class RegMeanParams(_Strict):
    # 0.1 is the low end of the paper's 0.1-0.5: shrinking the off-diagonals keeps the solve well conditioned.
    alpha: float = Field(
        0.1,
        ge=0,
        le=1,
        title="α",
        description="Off-diagonal entries of each Gram matrix are scaled by alpha (alpha=1: exact least squares).",
    )
    # Same reasoning as FisherParams.batches.
    batches: int = Field(8, ge=1, title="Batches", description="Batches of dev data the Gram matrices are computed on.")
    # Same reasoning as FisherParams.recompute.
    recompute: bool = Field(
        False,
        title="Recompute",
        description="Recompute statistics from the current population each generation instead of once from the original checkpoints.",
    )


# λ = 1 adds the task vectors unscaled; the bound of 10 only keeps typos (100 for 1.00) out.
_LAM = dict(ge=0, le=10, title="λ", description="Scale of the combined task vector added to the base.")
# TIES paper's default: keep the 20% largest-magnitude entries of each task vector.
_DENSITY = dict(gt=0, le=1, title="Density", description="Fraction of each task vector's largest-magnitude entries kept.")


class TaskArithmeticParams(_Strict):
    # theta = theta0 + lam * sum_i (theta_i - theta0); lam = 1 is plain task addition.
    lam: float = Field(1.0, **_LAM)


class TiesParams(_Strict):
    # The TIES paper's top-20% trim.
    density: float = Field(0.2, **_DENSITY)
    # TIES already averages the agreeing entries, so 1 keeps the merged task vector at members' scale.
    lam: float = Field(1.0, **_LAM)


class DareParams(_Strict):
    # 0.3 is a conservative drop rate; the DARE paper shows rates up to 0.9 survive after rescaling.
    p: float = Field(0.3, ge=0, lt=1, title="Drop rate", description="Probability of dropping each task-vector entry.")
    # Task arithmetic is the DARE paper's main pairing.
    combine: Literal["average", "task_arithmetic", "ties"] = Field(
        "task_arithmetic", title="Combine", description="How the dropped and rescaled task vectors are combined."
    )
    # Used by task_arithmetic and ties (average has no scale).
    lam: float = Field(1.0, **_LAM)
    # Used only when combine == "ties".
    density: float = Field(0.2, **_DENSITY)


class MergeParams(_Strict):
    """One parameter set per registered method; `tasks.merge.registry` checks at import that the fields match."""

    # Every method's defaults are filled in, so a config only names what it changes.
    average: AverageParams = Field(default_factory=AverageParams, title="Average")
    fisher: FisherParams = Field(default_factory=FisherParams, title="Fisher")
    regmean: RegMeanParams = Field(default_factory=RegMeanParams, title="RegMean")
    task_arithmetic: TaskArithmeticParams = Field(default_factory=TaskArithmeticParams, title="Task arithmetic")
    ties: TiesParams = Field(default_factory=TiesParams, title="TIES")
    dare: DareParams = Field(default_factory=DareParams, title="DARE")
