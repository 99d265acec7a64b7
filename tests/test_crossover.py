"""The counter-based crossover stream: every implementation gives the same bits, the bits are the committed
ones, and they behave like independent uniforms."""

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tasks import crossover, evolve

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(__file__).parent / "data" / "crossover_reference.json"
KEYS = [0, 5, 0x1234567890ABCDE, (1 << 63) - 1]


def parents(n: int, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic inputs that need no random generator, so the reference cannot drift with torch's."""
    j = torch.arange(n, dtype=torch.float64)
    return torch.sin(j).to(dtype), torch.cos(0.7 * j + 1).to(dtype)


def small_integer_parents(n: int, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Parents whose offspring under F = 0.5 are half-integers below 128: exact in every dtype, so no rounding
    mode decides a bit of the result."""
    j = torch.arange(n)
    return ((j * 37) % 129 - 64).to(dtype), ((j * 11) % 101 - 50).to(dtype)


def model_like(sizes: list[int], dtype, parents_of=parents, misaligned: bool = False) -> tuple[list[torch.Tensor], list[torch.Tensor], list[int]]:
    """Targets, references and keys of several tensors; misaligned: each starts one element into its storage."""
    skip = int(misaligned)
    pairs = [tuple(t[skip:] for t in parents_of(n + skip, dtype)) for n in sizes]
    keys = [KEYS[i % len(KEYS)] ^ i for i in range(len(sizes))]
    return [t for t, _ in pairs], [r for _, r in pairs], keys


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))


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


def test_offspring_many_equals_offspring_tensor_by_tensor():
    """On the CPU offspring_many is a loop over `offspring`; mixed dtypes, an integer tensor and reused outputs."""
    targets, references, keys = model_like([0, 1, 2047, 2049, 5000], torch.float32)
    more = model_like([3, 4097], torch.bfloat16)
    targets, references, keys = targets + more[0] + [torch.arange(6)], references + more[1] + [torch.arange(6) * 2], keys + more[2] + [7]
    targets[3] = targets[3].reshape(3, 683)
    references[3] = references[3].reshape(3, 683)
    outs = [torch.empty_like(t) for t in targets]
    children = crossover.offspring_many(targets, references, F=0.37, CR=0.3, keys=keys, outs=outs)
    for child, out, target, reference, key in zip(children, outs, targets, references, keys):
        assert same_bits(child, crossover.offspring_torch(target, reference, F=0.37, CR=0.3, key=key))
        assert child.data_ptr() == out.data_ptr()
    with pytest.raises(ValueError, match="2 targets, 2 references, 1 keys"):
        crossover.offspring_many(targets[:2], references[:2], F=0.5, CR=0.5, keys=keys[:1])


def test_offspring_tensors_key_each_tensor_by_its_name():
    x_i, x_r = parents(3010)
    targets, references = {"bias": x_i[:10], "weight": x_i[10:].reshape(30, 100)}, {"bias": x_r[:10], "weight": x_r[10:].reshape(30, 100)}
    children = evolve.offspring_tensors(targets, references, F=0.5, CR=0.5, seed=3, generation=2, individual=1)
    for name in targets:
        one = evolve.offspring_tensor(targets[name], references[name], F=0.5, CR=0.5, seed=3, generation=2, individual=1, name=name)
        assert same_bits(children[name], one)
    with pytest.raises(ValueError, match="weight: target shape"):
        evolve.offspring_tensors(targets, {**references, "weight": x_r[10:]}, F=0.5, CR=0.5, seed=3, generation=2, individual=1)


def check_triton_kernels_on_the_cpu() -> None:
    """Both Triton kernels under TRITON_INTERPRET=1 (set before triton is imported, so this runs in a process of its
    own) against the torch specification: awkward sizes around small and real blocks, unaligned tensors (the
    multi-tensor kernel's scalar path) and a list of mixed dtypes (one launch per dtype). bfloat16 gets parents
    whose offspring is exact in bfloat16, because the interpreter of triton 3.6 rounds float32 to bfloat16 toward
    zero whatever fp_downcast_rounding says (the compiled kernels round to nearest even, which the CUDA tests check)."""
    assert os.environ.get("TRITON_INTERPRET") == "1"
    for block in (64, 2048):
        sizes = [0, 1, block - 1, block, block + 1, 3 * block + 5, 7]
        cases = ((torch.float32, parents, 0.37), (torch.float16, parents, 0.37), (torch.float64, parents, 0.37), (torch.bfloat16, small_integer_parents, 0.5))
        for dtype, parents_of, F in cases:
            for misaligned in (False, True):
                targets, references, keys = model_like(sizes, dtype, parents_of, misaligned)
                expected = [crossover.offspring_torch(t, r, F=F, CR=0.3, key=k) for t, r, k in zip(targets, references, keys)]
                many = crossover.offspring_many_triton(targets, references, F=F, CR=0.3, keys=keys, block=block)
                assert all(map(same_bits, many, expected)), (block, dtype, misaligned)
                one_by_one = [crossover.offspring_triton(t, r, F=F, CR=0.3, key=k, block=block) for t, r, k in zip(targets, references, keys)]
                assert all(map(same_bits, one_by_one, expected)), (block, dtype, misaligned)
    halves = model_like([100, 64], torch.float16)
    singles = model_like([65, 0, 130], torch.float32)
    targets, references, keys = (h + s for h, s in zip(halves, singles))
    many = crossover.offspring_many_triton(targets, references, F=0.37, CR=0.6, keys=keys, block=64)
    assert all(same_bits(c, crossover.offspring_torch(t, r, F=0.37, CR=0.6, key=k)) for c, t, r, k in zip(many, targets, references, keys))


@pytest.mark.skipif(not crossover.triton_available(), reason="needs triton, whose interpreter runs the kernels on the CPU (pip install triton)")
def test_triton_kernels_in_the_interpreter_equal_the_torch_bits():
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": path}
    code = "from tests.test_crossover import check_triton_kernels_on_the_cpu; check_triton_kernels_on_the_cpu()"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


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


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_cuda_offspring_many_equals_the_cpu_bits(dtype):
    """One launch over many tensors gives each tensor's bits: sizes around a block (2048), a large tensor, unaligned
    tensors, and a list that mixes this dtype with float32 (a launch per dtype)."""
    sizes = [0, 1, 2047, 2048, 2049, 3_000_017, 5, 768]
    cases = [model_like(sizes, dtype), model_like(sizes[:5], dtype, misaligned=True)]
    mixed = model_like([300, 4099], dtype), model_like([2, 2049], torch.float32)
    cases.append(tuple(a + b for a, b in zip(*mixed)))
    for targets, references, keys in cases:
        on_cpu = [crossover.offspring_torch(t, r, F=0.37, CR=0.3, key=k) for t, r, k in zip(targets, references, keys)]
        on_gpu = crossover.offspring_many([t.cuda() for t in targets], [r.cuda() for r in references], F=0.37, CR=0.3, keys=keys)
        assert all(same_bits(c, g.cpu()) for c, g in zip(on_cpu, on_gpu))
        if crossover.triton_available():
            outs = [torch.empty_like(t, device="cuda") for t in targets]
            fused = crossover.offspring_many_triton([t.cuda() for t in targets], [r.cuda() for r in references], F=0.37, CR=0.3, keys=keys, outs=outs)
            assert all(same_bits(c, g.cpu()) and g.data_ptr() == o.data_ptr() for c, g, o in zip(on_cpu, fused, outs))
