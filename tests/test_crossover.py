"""The counter-based crossover stream: every implementation gives the same bits, the bits are the committed
ones, and they behave like independent uniforms."""

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tasks import crossover, evolve

REFERENCE = Path(__file__).parent / "data" / "crossover_reference.json"
KEYS = [0, 5, 0x1234567890ABCDE, (1 << 63) - 1]


def parents(n: int, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic inputs that need no random generator, so the reference cannot drift with torch's."""
    j = torch.arange(n, dtype=torch.float64)
    return torch.sin(j).to(dtype), torch.cos(0.7 * j + 1).to(dtype)


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def bit_string(m: torch.Tensor) -> str:
    return "".join("1" if b else "0" for b in m.tolist())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("shape", [(0,), (1,), (7, 13), (1000, 333)])
def test_numba_kernel_equals_the_torch_specification(dtype, shape):
    x_i, x_r = (t.reshape(shape) for t in parents(math.prod(shape), dtype))
    for key in KEYS:
        expected = crossover.offspring_torch(x_i, x_r, F=0.37, CR=0.3, key=key)
        got = crossover.offspring_numba(x_i, x_r, F=0.37, CR=0.3, key=key)
        assert got.dtype == dtype and got.shape == x_i.shape
        assert torch.equal(expected.reshape(-1).view(torch.uint8), got.reshape(-1).view(torch.uint8))


def test_numba_kernel_reads_indices_past_two_to_the_32():
    # Coordinates of a tensor with more than 2^32 elements: the high word of the index enters the hash.
    start, n = (1 << 32) - 3, 7
    zeros, ones = torch.zeros(n), torch.ones(n)
    for key in KEYS:
        out = torch.empty(n)
        kernel = crossover.numba_kernel()
        k0, k1 = crossover.split_key(key)
        kernel(zeros.numpy(), ones.numpy(), out.numpy(), np.float32(1.0), np.uint32(crossover.threshold(0.5)), np.uint32(k0), np.uint32(k1), start)
        expected = crossover.uniform_bits(key, start, n) < crossover.threshold(0.5)
        assert torch.equal(out.bool(), expected)
    high = crossover.uniform_bits(9, 1 << 32, 4096)
    low = crossover.uniform_bits(9, 0, 4096)
    assert (high == low).float().mean() < 0.01


def test_bits_match_the_committed_reference():
    """The stream is part of every result: a change to it must be deliberate (regenerate this file and the
    benchmark). Stored: the first 64 mask bits and the sha256 of masks and offspring for fixed keys."""
    reference = json.loads(REFERENCE.read_text())
    for case in reference["masks"]:
        m = crossover.mask(case["numel"], case["key"], case["CR"])
        assert bit_string(m[:64]) == case["first_64_bits"]
        assert digest(m) == case["sha256"]
    for case in reference["offspring"]:
        x_i, x_r = parents(case["numel"], getattr(torch, case["dtype"]))
        child = evolve.offspring_tensor(x_i, x_r, F=case["F"], CR=case["CR"], seed=case["seed"], generation=case["generation"], individual=case["individual"], name=case["name"])
        assert digest(child) == case["sha256"], case


def test_cr_zero_keeps_the_parent_and_cr_one_takes_the_mutant():
    x_i, x_r = parents(10_000)
    assert torch.equal(crossover.offspring(x_i, x_r, F=0.5, CR=0.0, key=3), x_i)
    assert torch.equal(crossover.offspring(x_i, x_r, F=0.5, CR=1.0, key=3), x_i + 0.5 * (x_r - x_i))
    with pytest.raises(ValueError, match="CR must be in"):
        crossover.threshold(1.5)


def test_bits_behave_like_independent_uniforms():
    n = 1 << 20
    u = crossover.uniform_bits(0xC0FFEE, 0, n)
    # Mean of a 24-bit uniform: 2^23 - 0.5, standard error 2^24 / sqrt(12 n).
    assert abs(u.double().mean().item() - (2**23 - 0.5)) < 5 * 2**24 / math.sqrt(12 * n)
    # Every one of the 24 bits is balanced.
    ones = torch.stack([((u >> b) & 1).double().mean() for b in range(24)])
    assert (ones - 0.5).abs().max() < 5 * 0.5 / math.sqrt(n)
    # Neighbouring coordinates, and the same coordinates under a neighbouring key, are uncorrelated.
    x = u.double() - u.double().mean()
    for other in (torch.roll(x, 1), crossover.uniform_bits(0xC0FFEF, 0, n).double()):
        other = other - other.mean()
        r = (x * other).mean() / (x.std() * other.std())
        assert abs(r.item()) < 5 / math.sqrt(n)
    # The mask rate is CR, within binomial error.
    for CR in (0.1, 0.5, 0.9):
        rate = crossover.mask(n, 17, CR).double().mean().item()
        assert abs(rate - CR) < 5 * math.sqrt(CR * (1 - CR) / n)


def test_kernel_choice_and_its_override(monkeypatch):
    monkeypatch.delenv("EVOLVER_CROSSOVER_KERNEL", raising=False)
    assert crossover.kernel_for(torch.device("cpu")) == "numba"
    monkeypatch.setenv("EVOLVER_CROSSOVER_KERNEL", "torch")
    assert crossover.kernel_for(torch.device("cpu")) == "torch"
    x_i, x_r = parents(999)
    assert torch.equal(crossover.offspring(x_i, x_r, F=0.5, CR=0.5, key=1), crossover.offspring_numba(x_i, x_r, F=0.5, CR=0.5, key=1))
    monkeypatch.setenv("EVOLVER_CROSSOVER_KERNEL", "fast")
    with pytest.raises(ValueError, match="EVOLVER_CROSSOVER_KERNEL='fast'"):
        crossover.kernel_for(torch.device("cpu"))


def test_the_stream_before_2026_11_27_is_kept_for_old_results():
    x_i, x_r = parents(5000)
    old = evolve.offspring_tensor(x_i, x_r, F=0.5, CR=0.5, seed=1, generation=1, individual=0, name="w", stream="torch-mt19937")
    generator = torch.Generator().manual_seed(evolve.derive_seed(1, 1, 0, "w"))
    take = torch.rand(x_i.shape, generator=generator) < 0.5
    assert torch.equal(old, torch.where(take, x_i + 0.5 * (x_r - x_i), x_i))
    new = evolve.offspring_tensor(x_i, x_r, F=0.5, CR=0.5, seed=1, generation=1, individual=0, name="w")
    assert not torch.equal(old, new)
    with pytest.raises(ValueError, match="mask stream 'philox'"):
        evolve.offspring_tensor(x_i, x_r, F=0.5, CR=0.5, seed=1, generation=1, individual=0, name="w", stream="philox")


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the CPU side of this check is test_bits_match_the_committed_reference")


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_offspring_equal_the_cpu_bits(dtype):
    x_i, x_r = parents(3_000_017, dtype)
    for key in KEYS:
        on_cpu = crossover.offspring_torch(x_i, x_r, F=0.37, CR=0.3, key=key)
        on_gpu = crossover.offspring_torch(x_i.cuda(), x_r.cuda(), F=0.37, CR=0.3, key=key).cpu()
        assert torch.equal(on_cpu.view(torch.uint8), on_gpu.view(torch.uint8))
        if crossover.triton_available():
            fused = crossover.offspring_triton(x_i.cuda(), x_r.cuda(), F=0.37, CR=0.3, key=key).cpu()
            assert torch.equal(on_cpu.view(torch.uint8), fused.view(torch.uint8))
    assert crossover.kernel_for(torch.device("cuda")) == ("triton" if crossover.triton_available() else "torch")
