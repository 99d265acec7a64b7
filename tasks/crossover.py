"""Offspring at memory bandwidth: the crossover mask as a counter-based random stream.

Coordinate j (the flat index into a tensor) takes the mutant when

    u_j = mix(mix(lo32(j) ^ k0) ^ hi32(j) ^ k1) >> 8    <    ceil(CR * 2^24)

where mix is Wellons' `lowbias32` integer hash and (k0, k1) are the two 32-bit halves of
`derive_seed(seed, generation, individual, tensor name)`. u_j / 2^24 is a float32-exact uniform in [0, 1),
so the test reads as the algorithm's "U(0,1) < CR". Each bit is a pure function of its key and index: no
generator state, so a chunk, a shard or a device computes its bits alone and they are the same everywhere.

Three implementations compute the same bits and the same offspring (`tests/test_crossover.py`):
- `offspring_torch`: torch integer ops on any device; the specification, and the fallback.
- `offspring_numba`: one fused, multi-threaded loop on the CPU (reads x_i and x_r once, writes once).
- `offspring_triton`: one fused kernel on CUDA, so no mask goes through host memory.
`offspring_many` takes a whole model's tensors at once: on CUDA one Triton launch for all of them
(`offspring_many_triton`), since launching per tensor costs more than the kernel for a model's small tensors.
The float part is the same three IEEE operations everywhere, v = x_i + F (x_r - x_i) in float32 with no
fused multiply-add, so an offspring is bit-identical on every implementation and device.

The stream before this one (`mask_stream: torch-mt19937`, see `tasks.evolve`) drew torch.rand on a CPU
generator per tensor: 4.5 % of this machine's copy bandwidth, and host memory on a GPU.
"""

from __future__ import annotations

import functools
import math
import os

import torch

MULT1 = 0x7FEB352D  # lowbias32's multipliers (Chris Wellons' hash-prospector, bias 0.17)
MULT2 = 0x846CA68B
U32 = 0xFFFFFFFF
UNIFORM_BITS = 24  # the bits of a float32 uniform, as torch.rand draws them
# The torch path works on this many coordinates at a time, so its int64 temporaries stay bounded.
TORCH_CHUNK = 1 << 22


def threshold(CR: float) -> int:
    """The integer form of "U < CR" for a 24-bit uniform: u < ceil(CR * 2^24)."""
    if not 0.0 <= CR <= 1.0:
        raise ValueError(f"CR must be in [0, 1], got {CR}")
    return math.ceil(CR * (1 << UNIFORM_BITS))


def split_key(key: int) -> tuple[int, int]:
    return key & U32, (key >> 32) & U32


# -- the specification: torch integer ops, exact on every device ------------------------------------


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    # (x * c) mod 2^32 for x in [0, 2^32), in int64 without ever overflowing: multiply by c's two 16-bit halves.
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & U32


def _mix(x: torch.Tensor) -> torch.Tensor:
    x = x ^ (x >> 16)
    x = _mul32(x, MULT1)
    x = x ^ (x >> 15)
    x = _mul32(x, MULT2)
    return x ^ (x >> 16)


def uniform_bits(key: int, start: int, count: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """u_j for j in [start, start + count), as int64 in [0, 2^24)."""
    k0, k1 = split_key(key)
    j = torch.arange(start, start + count, dtype=torch.int64, device=device)
    return _mix(_mix((j & U32) ^ k0) ^ (j >> 32) ^ k1) >> (32 - UNIFORM_BITS)


def mask(numel: int, key: int, CR: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """The flat crossover mask of a tensor with `numel` coordinates."""
    return uniform_bits(key, 0, numel, device) < threshold(CR)


def _output(target: torch.Tensor, out: torch.Tensor | None, flat: bool = True) -> torch.Tensor:
    """Where an offspring goes, flat or in the target's shape: a new tensor, or `out` (any shape, the target's size
    and dtype, contiguous), which a caller reuses from tensor to tensor to skip the allocation and its page faults."""
    if out is None:
        return torch.empty(target.numel() if flat else target.shape, dtype=target.dtype, device=target.device)
    if out.numel() != target.numel() or out.dtype != target.dtype or out.device != target.device or not out.is_contiguous():
        raise ValueError(f"out: {out.numel()} {out.dtype} on {out.device} for a target of {target.numel()} {target.dtype} on {target.device}")
    if flat:
        return out.view(-1)
    return out if out.shape == target.shape else out.view(target.shape)


def offspring_torch(target: torch.Tensor, reference: torch.Tensor, *, F: float, CR: float, key: int, out: torch.Tensor | None = None) -> torch.Tensor:
    flat_i, flat_r = target.reshape(-1), reference.reshape(-1)
    out = _output(target, out)
    limit = threshold(CR)
    for s in range(0, flat_i.numel(), TORCH_CHUNK):
        x_i = flat_i[s : s + TORCH_CHUNK].float()
        take = uniform_bits(key, s, x_i.numel(), x_i.device) < limit
        mutant = x_i + F * (flat_r[s : s + TORCH_CHUNK].float() - x_i)
        out[s : s + TORCH_CHUNK] = torch.where(take, mutant, x_i).to(out.dtype)
    return out.view(target.shape)


# -- CPU: one fused numba loop ---------------------------------------------------------------------

_numba_kernel = None


def _build_numba_kernel():
    import numpy as np
    from numba import njit, prange, uint32

    m1, m2, mask32 = np.uint32(MULT1), np.uint32(MULT2), np.uint64(U32)
    shift = uint32(32 - UNIFORM_BITS)

    @njit(inline="always")
    def mix(x):
        x = uint32(x ^ (x >> uint32(16)))
        x = uint32(x * m1)
        x = uint32(x ^ (x >> uint32(15)))
        x = uint32(x * m2)
        return uint32(x ^ (x >> uint32(16)))

    def kernel(x_i, x_r, out, F, limit, k0, k1, start):
        for i in prange(x_i.shape[0]):
            j = np.uint64(start + i)
            u = mix(uint32(mix(uint32(j & mask32) ^ k0) ^ uint32(j >> np.uint64(32)) ^ k1)) >> shift
            a = x_i[i]
            out[i] = a + F * (x_r[i] - a) if u < limit else a

    # No fastmath: without it LLVM may not contract a * b + c into an FMA, which would change the bits.
    try:
        return njit(parallel=True, cache=True)(kernel)  # machine code cached on disk: a task loads it in ~0.1 s
    except RuntimeError:  # nowhere writable to cache (a read-only install): compile in each process instead
        return njit(parallel=True)(kernel)


@functools.cache
def numba_available() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def numba_kernel():
    """The compiled kernel for float32 tensors, built once per process (numba caches the machine code on disk)."""
    global _numba_kernel
    if _numba_kernel is None:
        from numba import float32, int64, uint32

        kernel = _build_numba_kernel()
        array = float32[::1]
        kernel.compile((array, array, array, float32, uint32, uint32, uint32, int64))
        _numba_kernel = kernel
    return _numba_kernel


def offspring_numba(target: torch.Tensor, reference: torch.Tensor, *, F: float, CR: float, key: int, out: torch.Tensor | None = None) -> torch.Tensor:
    import numpy as np

    kernel = numba_kernel()
    k0, k1 = split_key(key)
    args = (np.float32(F), np.uint32(threshold(CR)), np.uint32(k0), np.uint32(k1))
    flat_i, flat_r = target.reshape(-1), reference.reshape(-1)
    out = _output(target, out)
    if target.dtype == torch.float32:
        kernel(flat_i.contiguous().numpy(), flat_r.contiguous().numpy(), out.numpy(), *args, 0)
        return out.view(target.shape)
    # Half precision: float32 chunks through the same kernel, then rounded back as torch rounds (nearest even).
    chunk = torch.empty(min(TORCH_CHUNK, flat_i.numel()), dtype=torch.float32)
    for s in range(0, flat_i.numel(), TORCH_CHUNK):
        a, b = flat_i[s : s + TORCH_CHUNK].float(), flat_r[s : s + TORCH_CHUNK].float()
        part = chunk[: a.numel()]
        kernel(a.numpy(), b.numpy(), part.numpy(), *args, s)
        out[s : s + TORCH_CHUNK] = part.to(out.dtype)
    return out.view(target.shape)


# -- CUDA: one fused Triton kernel (tasks/crossover_triton.py) -------------------------------------

@functools.cache
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def offspring_triton(
    target: torch.Tensor, reference: torch.Tensor, *, F: float, CR: float, key: int, out: torch.Tensor | None = None, block: int = 2048, num_warps: int = 16
) -> torch.Tensor:
    # block and num_warps: the best of a 4 x 3 sweep on an H200 (0.82 and 0.92 of torch.add's bandwidth on 94 MB and
    # 304 MB tensors; the default 4096 / 4 gave 0.47 and 0.58). bench/README.md has the sweep.
    from tasks.crossover_triton import offspring_kernel

    # The key words travel as int32 bit patterns, so every key compiles to the same kernel signature.
    k0, k1 = (k - (1 << 32) if k >= 1 << 31 else k for k in split_key(key))
    flat_i, flat_r = target.reshape(-1).contiguous(), reference.reshape(-1).contiguous()
    out = _output(target, out)
    n = flat_i.numel()
    if n:
        # enable_fp_fusion=False keeps a + F * (b - a) as three rounded operations, as on the CPU.
        offspring_kernel[((n + block - 1) // block,)](
            flat_i, flat_r, out, n, float(F), threshold(CR), k0, k1, BLOCK=block, num_warps=num_warps, enable_fp_fusion=False
        )
    return out.view(target.shape)


# -- CUDA, a whole model at once: one Triton launch over a table of tensors -------------------------


# A row of the multi-tensor kernel's table, int64 words.
TABLE_ORDER = ("x_i address", "x_r address", "output address", "numel", "key word 0", "key word 1")
# The element types the multi-tensor kernel reads and writes (by the same names in triton.language).
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _outputs_for(targets: list, references: list, keys: list, outs: list | None) -> list:
    """`outs` as a list, one per target (None: allocate), after checking that the lists pair up."""
    outs = [None] * len(targets) if outs is None else list(outs)
    if not len(targets) == len(references) == len(keys) == len(outs):
        raise ValueError(f"{len(targets)} targets, {len(references)} references, {len(keys)} keys, {len(outs)} outputs")
    return outs


@functools.lru_cache(maxsize=16)
def _block_map(numels: tuple[int, ...], block: int, device: torch.device) -> torch.Tensor:
    """Per program of the multi-tensor kernel, (tensor index, block index within that tensor) as int32 on the
    device. It depends on the sizes alone, so a model's map is built and copied once and serves every offspring."""
    import numpy as np

    blocks = np.array([-(-n // block) for n in numels], dtype=np.int64)
    if blocks.max(initial=0) >= 1 << 31:
        raise ValueError(f"a tensor of {max(numels)} coordinates has more than 2^31 blocks of {block}")
    tensor = np.repeat(np.arange(len(numels), dtype=np.int32), blocks)
    first_program = np.repeat(np.cumsum(blocks) - blocks, blocks)
    block_in_tensor = (np.arange(int(blocks.sum())) - first_program).astype(np.int32)
    return torch.from_numpy(np.stack([tensor, block_in_tensor], axis=1)).to(device)


def _tensor_table(targets: list[torch.Tensor], references: list[torch.Tensor], outs: list[torch.Tensor], keys: list[int]) -> tuple[torch.Tensor, bool]:
    """The kernel's per-tensor rows (in TABLE_ORDER), built on the host and sent in one copy, and whether every
    address in them is a multiple of 16 bytes (the kernel's vector loads need that)."""
    import numpy as np

    # The kernel gets bare addresses, which keep nothing alive; torch's allocator hands freed memory only to work
    # queued behind the kernel on the same stream, so the tensors need outlive only the launch.
    rows = [(x.data_ptr(), r.data_ptr(), o.data_ptr(), x.numel(), key & U32, (key >> 32) & U32) for x, r, o, key in zip(targets, references, outs, keys)]
    table = np.array(rows, dtype=np.int64).reshape(len(rows), len(TABLE_ORDER))
    aligned = not (table[:, :3] % 16).any()
    device = targets[0].device
    if device.type != "cuda":  # the Triton interpreter, which reads host memory
        return torch.from_numpy(table), aligned
    # From pinned memory the copy is queued behind the device's work instead of waiting for it; torch's host
    # allocator keeps the pinned page until the copy has run.
    return torch.from_numpy(table).pin_memory().to(device, non_blocking=True), aligned


def offspring_many_triton(
    targets: list[torch.Tensor],
    references: list[torch.Tensor],
    *,
    F: float,
    CR: float,
    keys: list[int],
    outs: list[torch.Tensor | None] | None = None,
    block: int = 2048,
    num_warps: int = 16,
) -> list[torch.Tensor]:
    """`offspring_triton` of every tensor in one launch per (target dtype, reference dtype): floating-point tensors
    on one CUDA device (or on the CPU under TRITON_INTERPRET=1)."""
    import triton.language as tl

    from tasks.crossover_triton import offspring_many_kernel

    outs = _outputs_for(targets, references, keys, outs)
    # Only addresses and sizes reach the kernel, so nothing is reshaped: at a model's hundreds of tensors the host's
    # microseconds per tensor add up to more than the kernel's time.
    parents_i, parents_r, children = [], [], []
    device = targets[0].device if targets else None
    for target, reference, out in zip(targets, references, outs):
        if target.shape != reference.shape or target.device != device or reference.device != device:
            raise ValueError(f"target {tuple(target.shape)} on {target.device}, reference {tuple(reference.shape)} on {reference.device}: "
                             f"expected the same shape, all on {device}")
        if target.dtype not in TRITON_DTYPES or reference.dtype not in TRITON_DTYPES:
            raise ValueError(f"the multi-tensor kernel takes {', '.join(map(str, TRITON_DTYPES))}, not {target.dtype} and {reference.dtype}")
        # Copies of non-contiguous parents live in these lists until the launch has been queued, which is enough:
        # their memory goes back to the same stream, behind the kernel.
        parents_i.append(target if target.is_contiguous() else target.contiguous())
        parents_r.append(reference if reference.is_contiguous() else reference.contiguous())
        children.append(_output(target, out, flat=False))

    groups: dict[tuple[torch.dtype, torch.dtype], list[int]] = {}
    for i, (x, r) in enumerate(zip(parents_i, parents_r)):
        groups.setdefault((x.dtype, r.dtype), []).append(i)
    limit = threshold(CR)
    for (x_dtype, r_dtype), members in groups.items():
        numels = tuple(parents_i[i].numel() for i in members)
        if not sum(numels):
            continue
        blocks = _block_map(numels, block, device)
        table, aligned = _tensor_table(
            [parents_i[i] for i in members], [parents_r[i] for i in members], [children[i] for i in members], [keys[i] for i in members]
        )
        element = {dtype: getattr(tl, str(dtype).removeprefix("torch.")) for dtype in (x_dtype, r_dtype)}  # tl.bfloat16, ...
        # enable_fp_fusion=False keeps a + F * (b - a) as three rounded operations, as on the CPU.
        offspring_many_kernel[(blocks.shape[0],)](
            table, blocks, float(F), limit, X_I=element[x_dtype], X_R=element[r_dtype], OUT=element[x_dtype], ALIGNED=aligned,
            BLOCK=block, num_warps=num_warps, enable_fp_fusion=False,
        )
    return children


# -- dispatch -----------------------------------------------------------------------------------------

# EVOLVER_CROSSOVER_KERNEL=torch forces the specification (for a check, or where numba/triton misbehave).
KERNELS = ("auto", "torch", "numba", "triton")


def kernel_for(device: torch.device) -> str:
    chosen = os.environ.get("EVOLVER_CROSSOVER_KERNEL", "auto")
    if chosen not in KERNELS:
        raise ValueError(f"EVOLVER_CROSSOVER_KERNEL={chosen!r}: expected one of {', '.join(KERNELS)}")
    if chosen != "auto":
        return chosen
    if device.type == "cuda" and triton_available():
        return "triton"
    if device.type == "cpu" and numba_available():
        return "numba"
    return "torch"


def offspring(target: torch.Tensor, reference: torch.Tensor, *, F: float, CR: float, key: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """Mutation then crossover of one tensor with the counter stream, in the target's dtype: a new tensor, or
    written into `out`."""
    kernel = kernel_for(target.device)
    if kernel == "numba" and target.is_floating_point():
        return offspring_numba(target, reference, F=F, CR=CR, key=key, out=out)
    if kernel == "triton" and target.is_floating_point():
        return offspring_triton(target, reference, F=F, CR=CR, key=key, out=out)
    return offspring_torch(target, reference, F=F, CR=CR, key=key, out=out)


def offspring_many(
    targets: list[torch.Tensor], references: list[torch.Tensor], *, F: float, CR: float, keys: list[int], outs: list[torch.Tensor | None] | None = None
) -> list[torch.Tensor]:
    """`offspring` of each (target, reference, key), the same bits: on CUDA with Triton, one launch for all
    floating-point tensors of a dtype (`offspring_many_triton`); elsewhere, and for other dtypes, tensor by tensor."""
    outs = _outputs_for(targets, references, keys, outs)
    children: list[torch.Tensor | None] = [None] * len(targets)
    if targets and kernel_for(targets[0].device) == "triton":
        fused = [i for i, (t, r) in enumerate(zip(targets, references)) if t.dtype in TRITON_DTYPES and r.dtype in TRITON_DTYPES]
        fused_children = offspring_many_triton(
            [targets[i] for i in fused], [references[i] for i in fused], F=F, CR=CR, keys=[keys[i] for i in fused], outs=[outs[i] for i in fused]
        )
        for i, child in zip(fused, fused_children):
            children[i] = child
    for i, child in enumerate(children):
        if child is None:
            children[i] = offspring(targets[i], references[i], F=F, CR=CR, key=keys[i], out=outs[i])
    return children
