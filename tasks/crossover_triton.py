"""The Triton kernels of `tasks.crossover`: mutation and crossover fused in one pass on CUDA.

A module of its own because Triton resolves a kernel's helpers and constants from module globals, and
importing triton must stay optional (CPU machines have none). The bits and the float operations are
`crossover.offspring_torch`'s, which the tests compare against.

Two kernels share one block's work (`_offspring_block`): `offspring_kernel` takes one tensor per launch, and
`offspring_many_kernel` a whole model's tensors in one launch, since a launch costs tens of microseconds of
Python and driver time and a model has hundreds of tensors, most of them small.
"""

import triton
import triton.language as tl

from tasks import crossover

MULT1 = tl.constexpr(crossover.MULT1)
MULT2 = tl.constexpr(crossover.MULT2)
SHIFT = tl.constexpr(32 - crossover.UNIFORM_BITS)
# The multi-tensor kernel reads, per tensor, a row of int64 words in crossover.TABLE_ORDER.
TABLE_COLUMNS = tl.constexpr(len(crossover.TABLE_ORDER))


@triton.jit
def _mix(x):
    x = x ^ (x >> 16)
    x = x * tl.full(x.shape, MULT1, tl.uint32)
    x = x ^ (x >> 15)
    x = x * tl.full(x.shape, MULT2, tl.uint32)
    return x ^ (x >> 16)


@triton.jit
def _offspring_block(x_i_ptr, x_r_ptr, out_ptr, offsets, n, F, limit, k0, k1, MASKED: tl.constexpr):
    """Coordinates `offsets` (indices within their own tensor, int64) of one tensor; k0, k1 and limit as uint32.
    MASKED=False where every offset is inside the tensor: without a mask the loads can be vector loads."""
    inside = (offsets < n) if MASKED else None
    lo = (offsets & 0xFFFFFFFF).to(tl.uint32)
    hi = (offsets >> 32).to(tl.uint32)
    u = _mix(_mix(lo ^ k0) ^ hi ^ k1) >> SHIFT
    a = tl.load(x_i_ptr + offsets, mask=inside).to(tl.float32)
    b = tl.load(x_r_ptr + offsets, mask=inside).to(tl.float32)
    mutant = a + F * (b - a)
    child = tl.where(u < limit, mutant, a)
    if out_ptr.dtype.element_ty.primitive_bitwidth < 32:  # half precision: round as torch rounds, to nearest even
        child = child.to(out_ptr.dtype.element_ty, fp_downcast_rounding="rtne")
    tl.store(out_ptr + offsets, child.to(out_ptr.dtype.element_ty), mask=inside)


# No specialisation on values: a key word or a threshold that happens to be 1 would otherwise become a constant.
@triton.jit(do_not_specialize=["n", "F", "limit", "k0", "k1"])
def offspring_kernel(x_i_ptr, x_r_ptr, out_ptr, n, F, limit, k0, k1, BLOCK: tl.constexpr):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    k0, k1 = k0.to(tl.uint32, bitcast=True), k1.to(tl.uint32, bitcast=True)
    _offspring_block(x_i_ptr, x_r_ptr, out_ptr, offsets, n, F, limit.to(tl.uint32), k0, k1, MASKED=True)


@triton.jit(do_not_specialize=["F", "limit"])
def offspring_many_kernel(
    table_ptr, blocks_ptr, F, limit, X_I: tl.constexpr, X_R: tl.constexpr, OUT: tl.constexpr, ALIGNED: tl.constexpr, BLOCK: tl.constexpr
):
    """Program p computes block blocks[p, 1] of tensor blocks[p, 0]. The table's addresses are bare integers, so
    X_I, X_R and OUT give the element types, and ALIGNED says that every address is a multiple of 16 bytes
    (which Triton learns of a pointer argument by itself, and of these only when told)."""
    program = tl.program_id(0).to(tl.int64)
    tensor = tl.load(blocks_ptr + 2 * program).to(tl.int64)
    block_in_tensor = tl.load(blocks_ptr + 2 * program + 1).to(tl.int64)
    row = table_ptr + tensor * TABLE_COLUMNS
    x_i_ptr = tl.load(row).to(tl.pointer_type(X_I), bitcast=True)
    x_r_ptr = tl.load(row + 1).to(tl.pointer_type(X_R), bitcast=True)
    out_ptr = tl.load(row + 2).to(tl.pointer_type(OUT), bitcast=True)
    if ALIGNED:
        x_i_ptr, x_r_ptr, out_ptr = tl.multiple_of(x_i_ptr, 16), tl.multiple_of(x_r_ptr, 16), tl.multiple_of(out_ptr, 16)
    n = tl.load(row + 3)
    k0, k1 = tl.load(row + 4).to(tl.uint32), tl.load(row + 5).to(tl.uint32)
    offsets = block_in_tensor * BLOCK + tl.arange(0, BLOCK)
    if (block_in_tensor + 1) * BLOCK <= n:
        _offspring_block(x_i_ptr, x_r_ptr, out_ptr, offsets, n, F, limit.to(tl.uint32), k0, k1, MASKED=False)
    else:  # the tensor's last block
        _offspring_block(x_i_ptr, x_r_ptr, out_ptr, offsets, n, F, limit.to(tl.uint32), k0, k1, MASKED=True)
