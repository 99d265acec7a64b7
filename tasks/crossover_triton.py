"""The Triton kernel of `tasks.crossover`: mutation and crossover fused in one pass on CUDA.

A module of its own because Triton resolves a kernel's helpers and constants from module globals, and
importing triton must stay optional (CPU machines have none). The bits and the float operations are
`crossover.offspring_torch`'s, which the tests compare against.
"""

import triton
import triton.language as tl

from tasks import crossover

MULT1 = tl.constexpr(crossover.MULT1)
MULT2 = tl.constexpr(crossover.MULT2)
SHIFT = tl.constexpr(32 - crossover.UNIFORM_BITS)


@triton.jit
def _mix(x):
    x = x ^ (x >> 16)
    x = x * tl.full(x.shape, MULT1, tl.uint32)
    x = x ^ (x >> 15)
    x = x * tl.full(x.shape, MULT2, tl.uint32)
    return x ^ (x >> 16)


# No specialisation on values: a key word or a threshold that happens to be 1 would otherwise become a constant.
@triton.jit(do_not_specialize=["n", "F", "limit", "k0", "k1"])
def offspring_kernel(x_i_ptr, x_r_ptr, out_ptr, n, F, limit, k0, k1, BLOCK: tl.constexpr):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = offsets < n
    lo = (offsets & 0xFFFFFFFF).to(tl.uint32)
    hi = (offsets >> 32).to(tl.uint32)
    u = _mix(_mix(lo ^ k0.to(tl.uint32, bitcast=True)) ^ hi ^ k1.to(tl.uint32, bitcast=True)) >> SHIFT
    a = tl.load(x_i_ptr + offsets, mask=inside).to(tl.float32)
    b = tl.load(x_r_ptr + offsets, mask=inside).to(tl.float32)
    mutant = a + F * (b - a)
    child = tl.where(u < limit.to(tl.uint32), mutant, a)
    tl.store(out_ptr + offsets, child.to(out_ptr.dtype.element_ty, fp_downcast_rounding="rtne"), mask=inside)
