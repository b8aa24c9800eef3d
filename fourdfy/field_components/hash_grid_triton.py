"""Optional Triton fast path of the hash grid: one fused kernel per direction instead of ~15 small PyTorch ops per
level and corner (the torch path's many launches made the hash grid the largest cost of a training step on an
H100, see ``benchmarks/results/gpu_session.log``).

Same semantics as :func:`fourdfy.field_components.hash_grid.hash_grid_encode` (tcnn's): ``pos = x * scale + 0.5``, cell =
floor, linear weights over the ``2^D`` corners, dense index ``sum_d (cell_d + bit_d) * stride_d`` or the coherent
prime hash ``xor_d ((cell_d + bit_d) * prime_d)`` on uint32, then modulo the level size. The backward kernel
scatters ``weight * grad`` into the table with atomic adds and, when asked, the input gradient
``scale * sum_c (d weight_c / d pos) * <feature_c, grad>``. Supports D in {2, 3, 4} and F in {1, 2, 4, 8}.

Used on CUDA when Triton imports (``implementation: auto`` or ``triton``). Tests compare it with the torch path,
forward and backward (they run on a GPU, or on the CPU with ``TRITON_INTERPRET=1``).

Vector atomics (:data:`VECTOR_ATOMICS`): the table gradient is a scatter of ``L * 2^D`` rows per point, and the
backward kernel is bound by the atomic additions (about 2.6 ms per million 3-D points on an H200, twice the
forward). With 2 features per level (4D-fy's grids) and a Hopper or newer GPU, each row's two values go out as one
``red.global.add.v2.f32`` (PTX, sm_90) instead of two scalar atomics: half the atomic transactions, the same sums
(in another order, like any atomic scatter). Elsewhere (other feature counts, older GPUs, the CPU interpreter)
Triton's scalar ``atomic_add`` runs.

Launch order (:data:`INTERLEAVE_BYTES`): a kernel program handles one level of one block of points, and the GPU
starts programs in order of their index. Level-major order (every program in flight on the same level) keeps one
level's table in L2 at a time, which the hashed fine levels need (4 MB each; all 16 of them interleaved spill L2
and made the uniform-point backward 1.5x slower on an H200), but at the coarse levels (16^3 cells) the points of a
small object then all add into a few dozen rows at once, and atomic adds to one address serialise (twice the
backward time of spread-out points, ``benchmarks/hash_grid.py --layout clustered``). With :data:`INTERLEAVE_BYTES`
set, the leading (coarse, small) levels whose tables fit in it together are launched level-fastest, a block of
points taking all of them side by side, and the remaining levels level-major after them. Same sums.

Private gradient copies (:data:`PRIVATE_COPIES`, :data:`PRIVATE_BYTES`): the other answer to those collisions,
which keeps the level-major order. The backward kernel adds the rows of the leading (coarse) levels into one of
``PRIVATE_COPIES`` private copies of their gradient, chosen by the block of points (consecutive blocks, which run
together, take different copies), so each row's atomic adds are spread over that many addresses; the copies are
summed into the table gradient after the kernel (a few MB). Same sums, in another order. On by default (16
copies of the levels within 2 MiB): session 10 call A on an H200 (``benchmarks/results/gpu_session_s10_callA.log``),
``benchmarks/hash_grid.py --layout clustered`` 3-D forward + backward 5.90 -> 3.24 ms and 4-D 7.30 -> 5.44 ms,
uniform points unchanged (2.82 -> 2.72, 4.57 -> 4.64); in the training loop, same call, the copies on and off in
alternating processes: ``fourdfy_stage_1`` 0.200 / 0.199 -> 0.176 / 0.177 s/it (every one of the ten paired steps
faster; backward phase 97 -> 71 ms), ``fourdfy_stage_3`` 0.222 -> 0.210 and ``fourdfy_stage_3_vc`` 0.309 -> 0.275
branch-weighted.

The interleave is off by default (level-major throughout). At 8 MiB (5 of 16 levels in 3-D, 3 in 4-D) the clustered
backward ran 5.97 -> 3.98 ms (3-D) and 7.44 -> 6.11 ms (4-D) with uniform points unchanged, but in the training loop the
VideoCrafter2 stage-3 config ran 0.297 s/it against 0.265 level-major in the same call (its render forward slower),
while the ZeroScope one showed no difference beyond the spread of processes (session 9, README "Speed"): until
repeated same-call runs settle it, the default stays the order every earlier measurement used.
"""

import functools
import os
import typing
from typing import Any, Optional

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from fourdfy.field_components.hash_grid_layout import HASH_PRIMES, GridLayout

try:  # optional dependency
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised where triton is absent
    triton = None
    tl = None

BLOCK = 128

VECTOR_ATOMICS = True
"""Let the backward kernel scatter 2-feature rows with one vector atomic where it can (see the module docstring);
false: always Triton's scalar atomics (for comparisons)."""


INTERLEAVE_BYTES = 0
"""Table bytes of the leading levels launched level-fastest (see the module docstring); 0 (the default):
level-major throughout."""

PRIVATE_COPIES = 16
"""Private gradient copies of the leading levels (see the module docstring); 1: none, every program adds into the
one table gradient."""

PRIVATE_BYTES = 2 * 2**20
"""fp32 table bytes of the leading levels that get private gradient copies: the most leading levels that fit in it
together (4D-fy's grids: levels 0-3 of the 3-D grid, 1.3 MB; level 0 of the 4-D grid, 0.5 MB)."""


def leading_levels_within(layout: GridLayout, budget: int) -> int:
    """How many leading levels have fp32 tables that fit together in ``budget`` bytes (levels grow, so these are
    the first ones)."""
    row_bytes = 4 * layout.n_features_per_level
    return sum((lv.offset + lv.size) * row_bytes <= budget for lv in layout.levels)


def interleaved_levels(layout: GridLayout) -> int:
    """How many leading levels the kernels launch level-fastest: the most whose fp32 tables fit together in
    :data:`INTERLEAVE_BYTES`, at least 1 (one level alone is level-major order)."""
    return max(1, leading_levels_within(layout, INTERLEAVE_BYTES))


def private_levels(layout: GridLayout) -> int:
    """How many leading levels the backward kernel scatters into :data:`PRIVATE_COPIES` private gradient copies:
    the most whose fp32 tables fit together in :data:`PRIVATE_BYTES`; 0 when the copies are off."""
    return leading_levels_within(layout, PRIVATE_BYTES) if PRIVATE_COPIES > 1 else 0


def launch_grid(n_points: int, n_levels: int) -> tuple[int]:
    """The kernels' 1-D launch grid, one program per level and block of ``BLOCK`` points (1-D because a grid's
    second dimension is capped at 65,535 blocks)."""
    return (n_levels * ((n_points + BLOCK - 1) // BLOCK),)


def uses_vector_atomics(n_features: int, device: torch.device) -> bool:
    """Whether the backward kernel scatters rows with ``red.global.add.v2.f32``: :data:`VECTOR_ATOMICS`, 2 features
    per level, a CUDA device of compute capability 9.0 or newer, and not Triton's CPU interpreter."""
    if not VECTOR_ATOMICS or n_features != 2 or device.type != "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
        return False
    return torch.cuda.get_device_capability(device)[0] >= 9


def triton_available() -> bool:
    """Whether the Triton kernels can run (Triton imports)."""
    return triton is not None


def supports(layout: GridLayout) -> bool:
    """Whether the kernels handle this layout."""
    return 2 <= layout.n_input_dims <= 4 and layout.n_features_per_level in (1, 2, 4, 8)


@functools.lru_cache(maxsize=64)
def level_tables(layout: GridLayout, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Per-level constants on ``device``: scale f32 [L], size i64 [L], offset i64 [L], hashed i32 [L],
    dense strides i64 [L, 4] (zero for dimensions outside tcnn's stride loop)."""
    levels = layout.levels
    strides = torch.zeros(len(levels), 4, dtype=torch.int64)
    for i, lv in enumerate(levels):
        for d, s in enumerate(lv.strides):
            strides[i, d] = s
    return (
        torch.tensor([lv.scale for lv in levels], dtype=torch.float32, device=device),
        torch.tensor([lv.size for lv in levels], dtype=torch.int64, device=device),
        torch.tensor([lv.offset for lv in levels], dtype=torch.int64, device=device),
        torch.tensor([int(lv.hashed) for lv in levels], dtype=torch.int32, device=device),
        strides.to(device),
    )


if triton is not None:

    @typing.no_type_check  # keep the test-suite's jaxtyping import hook away from Triton's AST
    @triton.jit
    def _dim(x_ptr, offs, mask, d: tl.constexpr, D: tl.constexpr, scale):
        pos = tl.load(x_ptr + offs * D + d, mask=mask, other=0.0) * scale + 0.5
        cell_f = tl.floor(pos)
        return cell_f.to(tl.int64), pos - cell_f

    @typing.no_type_check  # keep the test-suite's jaxtyping import hook away from Triton's AST
    @triton.jit
    def _block_and_level(N, BLOCK: tl.constexpr, C: tl.constexpr):
        """This program's block of points and level: programs ``[0, C * blocks)`` take levels ``0..C-1``
        level-fastest, the rest the remaining levels level-major (see :func:`interleaved_levels`)."""
        p = tl.program_id(0)
        blocks = tl.cdiv(N, BLOCK)
        head = C * blocks
        q = p - head
        in_head = p < head
        return tl.where(in_head, p // C, q % blocks), tl.where(in_head, p % C, C + q // blocks)

    @typing.no_type_check  # keep the test-suite's jaxtyping import hook away from Triton's AST
    @triton.jit
    def _cells(x_ptr, offs, mask, D: tl.constexpr, scale):
        """Integer cell and fractional position of every point along each dimension (unused ones repeat dim 0)."""
        c0, f0 = _dim(x_ptr, offs, mask, 0, D, scale)
        c1, f1 = _dim(x_ptr, offs, mask, 1, D, scale)
        c2, f2 = c0, f0
        c3, f3 = c0, f0
        if D > 2:
            c2, f2 = _dim(x_ptr, offs, mask, 2, D, scale)
        if D > 3:
            c3, f3 = _dim(x_ptr, offs, mask, 3, D, scale)
        return c0, f0, c1, f1, c2, f2, c3, f3

    @typing.no_type_check  # keep the test-suite's jaxtyping import hook away from Triton's AST
    @triton.jit
    def _fold(c: tl.constexpr, d: tl.constexpr, cell, frac, stride, prime: tl.constexpr, h, dense, w):
        """Fold dimension ``d`` of corner ``c`` into the hash, the dense index and the weight."""
        if (c >> d) & 1:
            cd = cell + 1
            w = w * frac
        else:
            cd = cell
            w = w * (1.0 - frac)
        h = h ^ ((cd * prime) & 0xFFFFFFFF)
        dense = dense + cd * stride
        return h, dense, w

    @typing.no_type_check  # keep the test-suite's jaxtyping import hook away from Triton's AST
    @triton.jit
    def _corner_row(
        c: tl.constexpr, level, D: tl.constexpr, c0, f0, c1, f1, c2, f2, c3, f3, size_ptr, offset_ptr, hashed_ptr,
        strides_ptr, P0: tl.constexpr, P1: tl.constexpr, P2: tl.constexpr, P3: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        """Table row and interpolation weight of corner ``c`` for every point of the block."""
        h = tl.zeros((BLOCK,), dtype=tl.int64)
        dense = tl.zeros((BLOCK,), dtype=tl.int64)
        w = tl.full((BLOCK,), 1.0, dtype=tl.float32)
        h, dense, w = _fold(c, 0, c0, f0, tl.load(strides_ptr + level * 4 + 0), P0, h, dense, w)
        h, dense, w = _fold(c, 1, c1, f1, tl.load(strides_ptr + level * 4 + 1), P1, h, dense, w)
        if D > 2:
            h, dense, w = _fold(c, 2, c2, f2, tl.load(strides_ptr + level * 4 + 2), P2, h, dense, w)
        if D > 3:
            h, dense, w = _fold(c, 3, c3, f3, tl.load(strides_ptr + level * 4 + 3), P3, h, dense, w)
        idx = tl.where(tl.load(hashed_ptr + level) != 0, h, dense & 0xFFFFFFFF)
        return tl.load(offset_ptr + level) + idx % tl.load(size_ptr + level), w

    @typing.no_type_check  # keep the test-suite's jaxtyping import hook away from Triton's AST
    # N (the point count) changes every step: not specialised on divisibility by 16, so each kernel compiles once
    # per configuration instead of again, mid-training, the first time N happens to be a multiple of 16
    @triton.jit(do_not_specialize=["N"])
    def _hash_grid_fwd(
        x_ptr, params_ptr, out_ptr, scale_ptr, size_ptr, offset_ptr, hashed_ptr, strides_ptr, N,
        D: tl.constexpr, F: tl.constexpr, L: tl.constexpr, BLOCK: tl.constexpr, C: tl.constexpr,
        P0: tl.constexpr, P1: tl.constexpr, P2: tl.constexpr, P3: tl.constexpr,
    ):  # fmt: skip
        pid, level = _block_and_level(N, BLOCK, C)
        offs = (pid * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
        mask = offs < N
        scale = tl.load(scale_ptr + level)
        c0, f0, c1, f1, c2, f2, c3, f3 = _cells(x_ptr, offs, mask, D, scale)
        feat_offs = tl.arange(0, F)
        acc = tl.zeros((BLOCK, F), dtype=tl.float32)
        for c in tl.static_range(1 << D):
            row, w = _corner_row(c, level, D, c0, f0, c1, f1, c2, f2, c3, f3, size_ptr, offset_ptr, hashed_ptr,
                                 strides_ptr, P0, P1, P2, P3, BLOCK)
            feats = tl.load(params_ptr + row[:, None] * F + feat_offs[None, :], mask=mask[:, None], other=0.0)
            acc += w[:, None] * feats
        out_offs = offs[:, None] * (L * F) + level * F + feat_offs[None, :]
        tl.store(out_ptr + out_offs, acc, mask=mask[:, None])

    @typing.no_type_check  # keep the test-suite's jaxtyping import hook away from Triton's AST
    @triton.jit
    def _red_add_v2(ptr, a, b, mask):
        """``ptr[0] += a; ptr[1] += b`` as one vector reduction per point where ``mask`` (``ptr`` 8-byte aligned)."""
        return tl.inline_asm_elementwise(
            "{ .reg .pred p; setp.ne.b32 p, $2, 0; @p red.global.add.v2.f32 [$1], {$3, $4}; mov.u32 $0, 0; }",
            "=r,l,r,f,f", [ptr.to(tl.int64), mask.to(tl.int32), a, b], dtype=tl.int32, is_pure=False, pack=1,
        )

    @typing.no_type_check  # keep the test-suite's jaxtyping import hook away from Triton's AST
    # N (the point count) changes every step: not specialised on divisibility by 16, so each kernel compiles once
    # per configuration instead of again, mid-training, the first time N happens to be a multiple of 16
    @triton.jit(do_not_specialize=["N"])
    def _hash_grid_bwd(
        x_ptr, params_ptr, grad_out_ptr, grad_params_ptr, grad_x_ptr, scale_ptr, size_ptr, offset_ptr, hashed_ptr,
        strides_ptr, N, ROWS, PRIV_ROWS, D: tl.constexpr, F: tl.constexpr, L: tl.constexpr, BLOCK: tl.constexpr,
        NEED_PARAMS: tl.constexpr, NEED_X: tl.constexpr, VEC2: tl.constexpr, C: tl.constexpr,
        PRIV_LEVELS: tl.constexpr, COPIES: tl.constexpr,
        P0: tl.constexpr, P1: tl.constexpr, P2: tl.constexpr, P3: tl.constexpr,
    ):  # fmt: skip
        pid, level = _block_and_level(N, BLOCK, C)
        # rows of the leading PRIV_LEVELS levels go to this block's private copy, stored after the table's ROWS rows
        private_shift = tl.where(level < PRIV_LEVELS, ROWS + (pid % COPIES).to(tl.int64) * PRIV_ROWS, 0)
        offs = (pid * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
        mask = offs < N
        scale = tl.load(scale_ptr + level)
        c0, f0, c1, f1, c2, f2, c3, f3 = _cells(x_ptr, offs, mask, D, scale)
        feat_offs = tl.arange(0, F)
        g = tl.load(grad_out_ptr + offs[:, None] * (L * F) + level * F + feat_offs[None, :], mask=mask[:, None], other=0.0)
        if VEC2:  # F == 2: the two features of the point's gradient as two vectors
            g0 = tl.load(grad_out_ptr + offs * (L * F) + level * F, mask=mask, other=0.0)
            g1 = tl.load(grad_out_ptr + offs * (L * F) + level * F + 1, mask=mask, other=0.0)
        gx0 = tl.zeros((BLOCK,), dtype=tl.float32)
        gx1 = tl.zeros((BLOCK,), dtype=tl.float32)
        gx2 = tl.zeros((BLOCK,), dtype=tl.float32)
        gx3 = tl.zeros((BLOCK,), dtype=tl.float32)
        for c in tl.static_range(1 << D):
            row, w = _corner_row(c, level, D, c0, f0, c1, f1, c2, f2, c3, f3, size_ptr, offset_ptr, hashed_ptr,
                                 strides_ptr, P0, P1, P2, P3, BLOCK)
            ptrs = row[:, None] * F + feat_offs[None, :]
            if NEED_PARAMS:
                grad_row = row + private_shift
                if VEC2:
                    _red_add_v2(grad_params_ptr + grad_row * 2, w * g0, w * g1, mask)
                else:
                    tl.atomic_add(grad_params_ptr + grad_row[:, None] * F + feat_offs[None, :], w[:, None] * g,
                                  mask=mask[:, None])
            if NEED_X:
                feats = tl.load(params_ptr + ptrs, mask=mask[:, None], other=0.0)
                sc = tl.sum(feats * g, axis=1)  # dL/d(weight_c)
                # d(weight_c)/d(pos_d): the weight with dimension d's factor replaced by its sign
                gx0 += _weight_grad(c, 0, D, f0, f1, f2, f3) * sc
                gx1 += _weight_grad(c, 1, D, f0, f1, f2, f3) * sc
                if D > 2:
                    gx2 += _weight_grad(c, 2, D, f0, f1, f2, f3) * sc
                if D > 3:
                    gx3 += _weight_grad(c, 3, D, f0, f1, f2, f3) * sc
        if NEED_X:
            tl.atomic_add(grad_x_ptr + offs * D + 0, gx0 * scale, mask=mask)
            tl.atomic_add(grad_x_ptr + offs * D + 1, gx1 * scale, mask=mask)
            if D > 2:
                tl.atomic_add(grad_x_ptr + offs * D + 2, gx2 * scale, mask=mask)
            if D > 3:
                tl.atomic_add(grad_x_ptr + offs * D + 3, gx3 * scale, mask=mask)

    @typing.no_type_check  # keep the test-suite's jaxtyping import hook away from Triton's AST
    @triton.jit
    def _factor(c: tl.constexpr, d: tl.constexpr, grad_dim: tl.constexpr, frac):
        """Dimension ``d``'s factor of corner ``c``'s weight, or its derivative when ``d == grad_dim``."""
        if d == grad_dim:
            if (c >> d) & 1:
                return tl.full(frac.shape, 1.0, tl.float32)
            return tl.full(frac.shape, -1.0, tl.float32)
        if (c >> d) & 1:
            return frac
        return 1.0 - frac

    @typing.no_type_check  # keep the test-suite's jaxtyping import hook away from Triton's AST
    @triton.jit
    def _weight_grad(c: tl.constexpr, grad_dim: tl.constexpr, D: tl.constexpr, f0, f1, f2, f3):
        """d(weight of corner c)/d(pos along grad_dim)."""
        out = _factor(c, 0, grad_dim, f0) * _factor(c, 1, grad_dim, f1)
        if D > 2:
            out = out * _factor(c, 2, grad_dim, f2)
        if D > 3:
            out = out * _factor(c, 3, grad_dim, f3)
        return out


class _TritonHashGrid(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, params: Tensor, layout: GridLayout) -> Tensor:
        xc = x.contiguous().float()
        table = params.contiguous().float()
        n, d = xc.shape
        f, n_levels = layout.n_features_per_level, len(layout.levels)
        out = torch.empty(n, n_levels * f, dtype=torch.float32, device=x.device)
        primes = HASH_PRIMES[:4]
        grid = launch_grid(n, n_levels)
        _hash_grid_fwd[grid](
            xc, table, out, *level_tables(layout, x.device), n, D=d, F=f, L=n_levels, BLOCK=BLOCK,
            C=interleaved_levels(layout), P0=primes[0], P1=primes[1], P2=primes[2], P3=primes[3],
        )  # fmt: skip
        ctx.save_for_backward(xc, table)
        ctx.layout = layout
        ctx.dtypes = (x.dtype, params.dtype)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Optional[Tensor], Optional[Tensor], None]:
        xc, table = ctx.saved_tensors
        x_dtype, p_dtype = ctx.dtypes
        grad_x, grad_params = hash_grid_backward_triton(
            xc, table, ctx.layout, grad_out, need_x=ctx.needs_input_grad[0], need_params=ctx.needs_input_grad[1]
        )
        grad_x = None if grad_x is None else grad_x.to(x_dtype)
        grad_params = None if grad_params is None else grad_params.to(p_dtype)
        return grad_x, grad_params, None


def hash_grid_backward_triton(
    x: Tensor, params: Tensor, layout: GridLayout, grad_out: Tensor, need_x: bool, need_params: bool
) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """The Triton version of :func:`fourdfy.field_components.hash_grid.hash_grid_backward`: float32
    ``(dL/dx or None, dL/dparams or None)`` at ``x``, from the points and the table alone."""
    xc = x.contiguous().float()
    table = params.contiguous().float()
    n, d = xc.shape
    f, n_levels = layout.n_features_per_level, len(layout.levels)
    rows = layout.n_entries
    priv_levels = private_levels(layout) if need_params else 0
    copies = PRIVATE_COPIES if priv_levels else 1
    priv_rows = layout.levels[priv_levels - 1].offset + layout.levels[priv_levels - 1].size if priv_levels else 0
    # the table gradient, then the private copies of the leading levels' rows (summed into it below)
    grad_buffer = table.new_zeros((rows + copies * priv_rows) * f) if need_params else table.new_zeros(1)
    grad_x = torch.zeros_like(xc) if need_x else xc.new_zeros(1)
    primes = HASH_PRIMES[:4]
    grid = launch_grid(n, n_levels)
    _hash_grid_bwd[grid](
        xc, table, grad_out.contiguous().float(), grad_buffer, grad_x, *level_tables(layout, xc.device), n,
        rows, priv_rows, D=d, F=f, L=n_levels, BLOCK=BLOCK, NEED_PARAMS=need_params, NEED_X=need_x,
        VEC2=need_params and uses_vector_atomics(f, xc.device), C=interleaved_levels(layout),
        PRIV_LEVELS=priv_levels, COPIES=copies, P0=primes[0], P1=primes[1], P2=primes[2], P3=primes[3],
    )  # fmt: skip
    grad_params = grad_buffer[: rows * f]  # a view: the copies' few MB stay allocated with the gradient
    if priv_levels:
        grad_params[: priv_rows * f] += grad_buffer[rows * f :].view(copies, priv_rows * f).sum(0)
    return (grad_x if need_x else None), (grad_params if need_params else None)


def hash_grid_encode_triton(x: Tensor, params: Tensor, layout: GridLayout) -> Tensor:
    """The Triton version of :func:`fourdfy.field_components.hash_grid.hash_grid_encode` (float32 output)."""
    if triton is None:
        raise RuntimeError("the Triton hash grid needs the `triton` package")
    if not supports(layout):
        raise ValueError(f"the Triton hash grid supports D in 2..4 and F in (1, 2, 4, 8), got {layout}")
    return _TritonHashGrid.apply(x, params, layout)
