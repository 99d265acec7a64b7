"""The Evolver operators: pure tensor and bookkeeping code, no I/O.

Offspring (ALGORITHM.md): v = x_i + F (x_r - x_i); per coordinate u_j = v_j if U(0,1) < CR else x_ij.
Every random draw is keyed by (run seed, generation, individual[, tensor name]), so an offspring is
bit-identical whatever the tensor order, device or number of workers. The crossover masks come from the
counter-based stream of `tasks.crossover`; `mask_stream: torch-mt19937` keeps the stream of runs made before
2026-11-27 (a CPU generator per tensor), so their results can be reproduced.

Acceptance is strict everywhere (a tie keeps the parent). The two schedules are expressed as *rounds*:
a round is a set of candidates evaluated together, then one selection.

- sequential: N rounds per generation, one target each, in a seeded random order (the reference's loop).
- generational: one round with all N offspring from the same population snapshot; in merge mode, when two
  or more offspring improve the merged score, a second round scores all improvers applied together and
  keeps that combination only if it beats the best single improver. The population therefore never
  scores below the best single improving candidate, and every accepted state was actually evaluated.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any tuple of parts; stable across processes and Python versions (unlike hash())."""
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _generator(*parts: object) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(derive_seed(*parts))


def uniform(*parts: object) -> float:
    return torch.rand((), generator=_generator(*parts)).item()


def visit_order(seed: int, generation: int, n: int) -> list[int]:
    """The order in which the sequential schedule visits the individuals of one generation."""
    return torch.randperm(n, generator=_generator(seed, generation, "visit-order")).tolist()


def reference_probability(generation: int, generations: int) -> float:
    """Plain mode: probability of a uniform (rather than the best) reference, p = 0.5/(G-g) + 0.5 (g from 0)."""
    return 0.5 / (generations - (generation - 1)) + 0.5


def choose_reference(
    *, target: int, n: int, fitness: list[float] | None, mode: str, generation: int, generations: int, seed: int
) -> int:
    """Merge mode: uniform among the others. Plain mode: the best other with probability 1-p, else uniform."""
    others = [j for j in range(n) if j != target]
    uniform_pick = others[int(uniform(seed, generation, target, "reference-index") * len(others))]
    if mode == "merge":
        return uniform_pick
    if fitness is None:
        raise ValueError("plain mode chooses the best reference and needs the population's fitness")
    if uniform(seed, generation, target, "reference-kind") < reference_probability(generation, generations):
        return uniform_pick
    # Best other; ties go to the lowest index so the choice is deterministic.
    return max(others, key=lambda j: (fitness[j], -j))


def _check_shapes(name: str, target: torch.Tensor, reference: torch.Tensor) -> None:
    if target.shape != reference.shape:
        raise ValueError(f"{name}: target shape {tuple(target.shape)} != reference shape {tuple(reference.shape)}")


def offspring_tensor(
    target: torch.Tensor,
    reference: torch.Tensor,
    *,
    F: float,
    CR: float,
    seed: int,
    generation: int,
    individual: int,
    name: str,
    stream: str = "counter",
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mutation then per-coordinate crossover for one tensor: a new tensor (never a view of the parent), or, with
    the counter stream, written into `out` (a buffer the caller reuses)."""
    _check_shapes(name, target, reference)
    if stream == "counter":
        from tasks import crossover

        return crossover.offspring(target, reference, F=F, CR=CR, key=derive_seed(seed, generation, individual, name), out=out)
    if stream != "torch-mt19937":
        from tasks.config import MASK_STREAMS

        raise ValueError(f"mask stream {stream!r}: expected one of {', '.join(MASK_STREAMS)}")
    if out is not None:
        raise ValueError("out= needs the counter stream")
    x_i = target.float()
    mutant = x_i + F * (reference.float() - x_i)
    mask = torch.rand(target.shape, generator=_generator(seed, generation, individual, name)) < CR
    return torch.where(mask.to(target.device), mutant, x_i).to(target.dtype)


def offspring_tensors(
    targets: dict[str, torch.Tensor],
    references: dict[str, torch.Tensor],
    *,
    F: float,
    CR: float,
    seed: int,
    generation: int,
    individual: int,
    outs: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """`offspring_tensor` of every tensor of a model at once, with the counter stream and the same bits: on CUDA one
    kernel launch for them all (`crossover.offspring_many`), where a launch per tensor costs more than the kernel."""
    from tasks import crossover

    names = list(targets)
    for name in names:
        _check_shapes(name, targets[name], references[name])
    children = crossover.offspring_many(
        [targets[n] for n in names],
        [references[n] for n in names],
        F=F,
        CR=CR,
        keys=[derive_seed(seed, generation, individual, n) for n in names],
        outs=None if outs is None else [outs[n] for n in names],
    )
    return dict(zip(names, children))


# -- selection ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scored:
    """One evaluated candidate: the target it replaces, its reference, its dev fitness and, with validation
    data, its validation score (never part of fitness)."""

    target: int
    reference: int
    fitness: float
    validation: float | None = None


def within_tolerance(validation: float | None, current: float | None, tolerance: float | None) -> bool:
    """The validation guard: a candidate may not score more than `tolerance` below the state it would replace.
    No tolerance (or no validation data) never rejects."""
    if tolerance is None or validation is None or current is None:
        return True
    return validation >= current - tolerance


def plain_accepts(candidates: list[Scored], fitness: list[float], validation: list[float] | None = None, tolerance: float | None = None) -> list[int]:
    """Plain mode: an offspring replaces its parent when it scores strictly higher (and passes the validation guard)."""
    return [
        c.target
        for c in candidates
        if c.fitness > fitness[c.target] and within_tolerance(c.validation, validation[c.target] if validation else None, tolerance)
    ]


def merge_improvers(candidates: list[Scored], best: float, validation: float | None = None, tolerance: float | None = None) -> list[Scored]:
    """Merge mode: candidates whose merged score beats the best so far (and pass the validation guard), best
    first (ties: lower target first)."""
    better = [c for c in candidates if c.fitness > best and within_tolerance(c.validation, validation, tolerance)]
    return sorted(better, key=lambda c: (-c.fitness, c.target))
