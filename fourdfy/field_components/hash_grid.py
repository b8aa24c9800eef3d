"""Multiresolution hash grid with tiny-cuda-nn's semantics, in pure PyTorch (any input dimension).

What "tcnn semantics" means here (each point is reproduced, so a tcnn checkpoint's flat ``params`` vector and
this module's ``params`` are interchangeable):

* **Levels.** For level ``l`` the scale is ``2^(l * log2(per_level_scale)) * base_resolution - 1`` and the
  resolution is ``ceil(scale) + 1``. tcnn evaluates both in float32 (``exp2f``/``log2f``); :func:`level_scale`
  emulates that, so the rare level whose scale lands next to an integer gets the same resolution.
* **Layout.** A level holds ``next_multiple(resolution^D, 8)`` entries, capped at ``2^log2_hashmap_size``
  (``Hash`` grids) or at ``base_resolution^D`` (``Tiled``); ``Dense`` grids are never capped. Levels are
  stored one after the other; inside a level entry-major, then feature: the flat index of feature ``f`` of
  entry ``e`` of level ``l`` is ``(offset_l + e) * F + f``.
* **Indexing.** The dense index accumulates ``coord_d * stride`` with ``stride`` growing by ``resolution`` per
  dimension while ``stride <= level size``; if the grid is ``Hash`` and the level size is smaller than the
  final stride, the coherent prime hash (xor of ``coord_d * prime_d``) replaces it. Everything is uint32
  arithmetic (wrapping), then ``index mod level size``.
* **Interpolation.** ``pos = x * scale + 0.5``, ``cell = floor(pos)``, multilinear weights over all ``2^D``
  corners. Nothing is clamped: coordinates outside ``[0, 1]`` wrap through the uint32 index arithmetic exactly
  as in tcnn (this matters for the deformation variant, whose warped points ``x + dx`` are unclamped).

Design (memory): the torch path is one ``autograd.Function`` that loops over levels and saves only ``x`` and
``params`` for the backward pass; the backward recomputes each level's corner indices and weights. Plain
autograd would keep, per level, the ``[N, 2^D]`` int64 indices, the weights and the gathered ``[N, 2^D, F]``
features -- about 0.6 GB per level for 10^6 4-D points, ~10 GB for 16 levels -- while the recompute costs one
extra forward's worth of index arithmetic. Peak extra memory is one level's temporaries (for ``D = 4`` and
``N = 10^6``: ~130 MB of int64 indices plus ~130 MB of gathered features). The price is that the function is
once-differentiable (no double backward), which 4D-fy never needs: its normals are finite differences.

Fast path: with ``implementation="auto"`` a CUDA input goes through ``tinycudann`` when it is importable (the
same flat ``params`` tensor is handed to tcnn, so state dicts do not change); ``"torch"`` always uses the code
below, ``"tcnn"`` requires tcnn and CUDA inputs.
"""

import logging
from typing import Any, Optional

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from fourdfy.field_components.hash_grid_layout import (  # noqa: F401  (re-exported: the grid's public API)
    GRID_TYPES,
    HASH_PRIMES,
    UINT32_MASK,
    GridLayout,
    LevelSpec,
    grid_layout,
    level_scale,
)

logger = logging.getLogger(__name__)

IMPLEMENTATIONS: tuple[str, ...] = ("auto", "torch", "tcnn", "triton")


# --------------------------------------------------------------------------------------------------------------
# Per-level corner indices and weights
# --------------------------------------------------------------------------------------------------------------


def _outer(a: Tensor, b: Tensor, op: str) -> Tensor:
    """Combine per-dimension corner factors: ``a`` [N, K] (lower dims), ``b`` [N, 2] (next dim) -> [N, 2K].

    Either operand may have a leading dimension of 1 (broadcast).

    The new dimension becomes the more significant bit of the corner id, so corner ``c`` takes dimension
    ``d``'s upper vertex iff bit ``d`` of ``c`` is set (tcnn's corner order).
    """
    if op == "xor":
        out = torch.bitwise_xor(b.unsqueeze(2), a.unsqueeze(1))
    else:
        out = b.unsqueeze(2) * a.unsqueeze(1)
    return out.reshape(out.shape[0], -1)


def level_corners(
    x: Float[Tensor, "N D"], level: LevelSpec
) -> tuple[Int[Tensor, "N C"], Float[Tensor, "N C"], Float[Tensor, "N D"]]:
    """Table rows and multilinear weights of the ``2^D`` corners around each point, for one level.

    Args:
        x: points (normally in ``[0, 1]^D``; outside values wrap like tcnn).
        level: the level.

    Returns:
        ``(rows, weights, frac)``: global table rows (level offset included) ``[N, 2^D]`` int64, weights
        ``[N, 2^D]`` in ``x``'s dtype, and the fractional positions ``[N, D]`` (needed for input gradients).
    """
    pos = x * level.scale + 0.5
    cell_f = torch.floor(pos)
    frac = pos - cell_f
    cell = cell_f.to(torch.int64)
    n_dims = x.shape[1]
    mask = UINT32_MASK
    if level.hashed:
        rows = None
        for d in range(n_dims):
            lo = cell[:, d] * HASH_PRIMES[d]
            pair = torch.stack([lo, lo + HASH_PRIMES[d]], dim=1) & mask  # (c + 1) * p = c * p + p
            rows = pair if rows is None else _outer(rows, pair, "xor")
    else:
        # index(corner) = sum_d (cell_d + bit_d) * stride_d = base + corner_offset; dimensions past tcnn's
        # stride loop do not enter the index (both of their vertices map to the same row).
        corner_ids = torch.arange(1 << n_dims, dtype=torch.int64, device=x.device)  # no host->device copy
        base = torch.zeros_like(cell[:, 0])
        corner_offsets = torch.zeros_like(corner_ids)
        for d, stride in enumerate(level.strides):
            base = base + cell[:, d] * stride
            corner_offsets = corner_offsets + ((corner_ids >> d) & 1) * stride
        rows = (base.unsqueeze(1) + corner_offsets.unsqueeze(0)) & mask
    size = level.size
    rows = rows & (size - 1) if size & (size - 1) == 0 else rows % size  # uint32 values are >= 0 here
    rows = rows + level.offset
    weights = None
    for d in range(n_dims):
        f = frac[:, d]
        pair = torch.stack([1.0 - f, f], dim=1)
        weights = pair if weights is None else _outer(weights, pair, "mul")
    return rows, weights, frac


def _weight_derivatives(frac: Tensor) -> list[Tensor]:
    """d(weight_c)/d(pos_d) for every dimension ``d``: a list of D tensors [N, 2^D]."""
    n_dims = frac.shape[1]
    sign = (torch.arange(2, dtype=frac.dtype, device=frac.device) * 2.0 - 1.0).unsqueeze(0)  # [[-1, +1]]
    pairs = [torch.stack([1.0 - frac[:, d], frac[:, d]], dim=1) for d in range(n_dims)]
    out = []
    for grad_dim in range(n_dims):
        acc = None
        for d in range(n_dims):
            pair = sign if d == grad_dim else pairs[d]
            acc = pair if acc is None else _outer(acc, pair, "mul")
        out.append(acc)
    return out


# --------------------------------------------------------------------------------------------------------------
# Autograd function (torch path)
# --------------------------------------------------------------------------------------------------------------


class _HashGridFunction(torch.autograd.Function):
    """Forward over all levels; backward recomputes indices/weights level by level (see module docstring)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, params: Tensor, layout: GridLayout) -> Tensor:
        dtype = torch.promote_types(torch.promote_types(x.dtype, params.dtype), torch.float32)
        xc = x.to(dtype)
        table = params.view(-1, layout.n_features_per_level)
        n_feat = layout.n_features_per_level
        out = torch.empty(x.shape[0], layout.n_output_dims, dtype=dtype, device=x.device)
        for i, level in enumerate(layout.levels):
            rows, weights, _ = level_corners(xc, level)
            feats = table.index_select(0, rows.reshape(-1)).view(*rows.shape, n_feat).to(dtype)
            out[:, i * n_feat : (i + 1) * n_feat] = (feats * weights.unsqueeze(-1)).sum(dim=1)
        ctx.save_for_backward(x, params)
        ctx.layout = layout
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Optional[Tensor], Optional[Tensor], None]:
        x, params = ctx.saved_tensors
        grad_x, grad_params = hash_grid_backward(
            x, params, ctx.layout, grad_out, need_x=ctx.needs_input_grad[0], need_params=ctx.needs_input_grad[1]
        )
        return grad_x, grad_params, None


def hash_grid_backward(
    x: Float[Tensor, "N D"], params: Float[Tensor, " P"], layout: GridLayout, grad_out: Float[Tensor, "N C"],
    need_x: bool, need_params: bool,
) -> tuple[Optional[Tensor], Optional[Tensor]]:  # fmt: skip
    """The vector-Jacobian product of :func:`hash_grid_encode` at ``x``: ``(dL/dx or None, dL/dparams or None)``
    for ``grad_out = dL/d(encoding)``. It needs only the points and the table, not the forward's values, so a
    caller that encoded ``x`` elsewhere can still take the gradient (:class:`HashGrid.attach_gradient`)."""
    n_feat = layout.n_features_per_level
    dtype = grad_out.dtype
    xc = x.to(dtype)
    table = params.view(-1, n_feat)
    grad_table = torch.zeros(table.shape, dtype=dtype, device=params.device) if need_params else None
    grad_x = torch.zeros_like(xc) if need_x else None
    for i, level in enumerate(layout.levels):
        g = grad_out[:, i * n_feat : (i + 1) * n_feat]
        rows, weights, frac = level_corners(xc, level)
        if need_params:
            contrib = weights.unsqueeze(-1) * g.unsqueeze(1)  # [N, 2^D, F]
            grad_table.index_add_(0, rows.reshape(-1), contrib.reshape(-1, n_feat))
        if need_x:
            feats = table.index_select(0, rows.reshape(-1)).view(*rows.shape, n_feat).to(dtype)
            s = (feats * g.unsqueeze(1)).sum(dim=-1)  # dL/d(weight_c), [N, 2^D]
            for d, dw in enumerate(_weight_derivatives(frac)):
                grad_x[:, d] += level.scale * (dw * s).sum(dim=1)  # dpos/dx = scale
    grad_params = grad_table.reshape(-1).to(params.dtype) if need_params else None
    return (grad_x.to(x.dtype) if need_x else None), grad_params


class _AttachGridGradient(torch.autograd.Function):
    """``values`` passed through unchanged; the backward passes their gradient on and adds the grid's table
    gradient at ``x`` as if ``values`` had been the grid's encoding of ``x`` (:meth:`HashGrid.attach_gradient`)."""

    @staticmethod
    def forward(ctx: Any, values: Tensor, x: Tensor, params: Tensor, grid: "HashGrid") -> Tensor:
        ctx.save_for_backward(x, params)
        ctx.grid = grid
        return values  # autograd makes the output a view of ``values`` with this node as its history

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Optional[Tensor], None, Optional[Tensor], None]:
        x, params = ctx.saved_tensors
        grad_params = ctx.grid.backward_at(x, params, grad_out) if ctx.needs_input_grad[2] else None
        return (grad_out if ctx.needs_input_grad[0] else None), None, grad_params, None


def hash_grid_encode(x: Float[Tensor, "N D"], params: Float[Tensor, " P"], layout: GridLayout) -> Float[Tensor, "N C"]:
    """Encode points with a multiresolution grid (torch implementation).

    Args:
        x: points, normally in ``[0, 1]^D``.
        params: the flat table, ``layout.n_params`` values (level-major, entry-major, then feature).
        layout: the grid's :class:`GridLayout`.

    Returns:
        ``[N, L * F]`` features, level-major (``F`` per level), in the promoted dtype of ``x`` and ``params``
        (at least float32). Differentiable once w.r.t. ``x`` and ``params``.
    """
    if x.shape[1] != layout.n_input_dims:
        raise ValueError(f"x has {x.shape[1]} coordinates per point, the grid expects {layout.n_input_dims}")
    if params.numel() != layout.n_params:
        raise ValueError(f"params has {params.numel()} values, the layout needs {layout.n_params}")
    return _HashGridFunction.apply(x, params, layout)


# --------------------------------------------------------------------------------------------------------------
# Optional tiny-cuda-nn fast path
# --------------------------------------------------------------------------------------------------------------

_tcnn_module: Any = None
_tcnn_checked = False


def tcnn_module() -> Any:
    """Return the ``tinycudann`` module, or ``None`` if it cannot be imported (checked once, logged once)."""
    global _tcnn_module, _tcnn_checked
    if not _tcnn_checked:
        _tcnn_checked = True
        try:
            import tinycudann  # noqa: PLC0415  (optional dependency)

            _tcnn_module = tinycudann
        except (ImportError, OSError) as e:  # tcnn raises EnvironmentError (OSError) without a usable GPU
            logger.info("tinycudann is not available (%s); hash grids use the pure-PyTorch implementation.", e)
            _tcnn_module = None
    return _tcnn_module


# --------------------------------------------------------------------------------------------------------------
# Module
# --------------------------------------------------------------------------------------------------------------


class HashGrid(nn.Module):
    """Trainable multiresolution grid (tcnn ``HashGrid``/``Grid`` semantics) for ``n_input_dims``-D inputs.

    The only state is ``params``: one flat parameter vector, initialised ``U(-1e-4, 1e-4)`` like tcnn, so
    state-dict keys end in ``.params`` and match a tcnn checkpoint element for element.

    Args:
        n_input_dims: input dimension ``D``.
        n_levels: number of levels ``L``.
        n_features_per_level: features per level ``F``.
        log2_hashmap_size: log2 of the per-level entry cap.
        base_resolution: resolution parameter of level 0.
        per_level_scale: growth factor between levels.
        grid_type: ``"Hash"`` (default), ``"Dense"`` or ``"Tiled"``.
        implementation: ``"auto"`` (for CUDA inputs: tcnn when importable, else the Triton kernels when Triton
            imports, else torch), ``"torch"``, ``"tcnn"`` or ``"triton"``.
    """

    def __init__(
        self,
        n_input_dims: int,
        n_levels: int = 16,
        n_features_per_level: int = 2,
        log2_hashmap_size: int = 19,
        base_resolution: int = 16,
        per_level_scale: float = 2.0,
        grid_type: str = "Hash",
        implementation: str = "auto",
    ) -> None:
        super().__init__()
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {list(IMPLEMENTATIONS)}, got {implementation!r}")
        if implementation == "tcnn" and tcnn_module() is None:
            raise RuntimeError(
                "implementation='tcnn' was requested but tinycudann cannot be imported; install tiny-cuda-nn's "
                "torch bindings or use implementation='auto'/'torch'."
            )
        self.layout = grid_layout(
            n_input_dims, n_levels, n_features_per_level, log2_hashmap_size, base_resolution, per_level_scale, grid_type
        )
        self.n_input_dims = n_input_dims
        self.n_output_dims = self.layout.n_output_dims
        self.implementation = implementation
        self.tcnn_config = {
            "otype": "Grid",
            "type": grid_type,
            "n_levels": n_levels,
            "n_features_per_level": n_features_per_level,
            "log2_hashmap_size": log2_hashmap_size,
            "base_resolution": base_resolution,
            "per_level_scale": per_level_scale,
            "interpolation": "Linear",
        }
        self.params = nn.Parameter(torch.empty(self.layout.n_params).uniform_(-1e-4, 1e-4))
        # The tcnn module is kept out of the module tree (no duplicate `params` in the state dict, not moved by
        # .to()); it is built lazily, on the device of the first CUDA input.
        self.__dict__["_tcnn_encoding"] = None

    def extra_repr(self) -> str:
        return (
            f"n_input_dims={self.n_input_dims}, n_levels={len(self.layout.levels)}, "
            f"n_features_per_level={self.layout.n_features_per_level}, n_params={self.layout.n_params}, "
            f"implementation={self.implementation!r}"
        )

    def uses_tcnn(self, x: Tensor) -> bool:
        """Whether :meth:`forward` would route ``x`` through tiny-cuda-nn."""
        if self.implementation in ("torch", "triton"):
            return False
        if self.implementation == "tcnn":
            if not x.is_cuda:
                raise RuntimeError(f"implementation='tcnn' needs CUDA inputs, got a tensor on {x.device}")
            return True
        return x.is_cuda and tcnn_module() is not None

    def _tcnn_forward(self, x: Tensor) -> Tensor:
        enc = self.__dict__["_tcnn_encoding"]
        if enc is None or enc.params.device != x.device:
            tcnn = tcnn_module()
            with torch.cuda.device(x.device):
                enc = tcnn.Encoding(self.n_input_dims, self.tcnn_config, dtype=torch.float32)
            if enc.n_output_dims != self.n_output_dims or enc.params.numel() != self.layout.n_params:
                raise RuntimeError(
                    f"tinycudann's grid layout ({enc.params.numel()} params, {enc.n_output_dims} outputs) differs "
                    f"from the torch layout ({self.layout.n_params}, {self.n_output_dims}); use implementation='torch'."
                )
            enc.params.data = torch.empty(0, device=x.device)  # our `params` is swapped in at call time
            self.__dict__["_tcnn_encoding"] = enc
        params = self.params if self.params.dtype == torch.float32 else self.params.float()
        out = torch.func.functional_call(enc, {"params": params}, (x.float(),))
        return out.float()

    def uses_triton(self, x: Tensor) -> bool:
        """Whether :meth:`forward` would route ``x`` through the Triton kernels."""
        from fourdfy.field_components import hash_grid_triton

        if self.implementation == "triton":
            if not hash_grid_triton.triton_available() or not hash_grid_triton.supports(self.layout):
                raise RuntimeError(
                    "implementation='triton' needs the triton package and a grid with 2-4 input dims and 1/2/4/8 "
                    "features per level; use implementation='auto' or 'torch'"
                )
            return True
        return (
            self.implementation == "auto" and x.is_cuda and hash_grid_triton.triton_available()
            and hash_grid_triton.supports(self.layout)
        )  # fmt: skip

    def can_attach_gradient(self, x: Tensor) -> bool:
        """Whether :meth:`attach_gradient` works for points like ``x`` (the torch and Triton paths; not tcnn, whose
        backward needs its own forward's context)."""
        return not self.uses_tcnn(x)

    def attach_gradient(self, x: Float[Tensor, "N D"], values: Float[Tensor, "N C"]) -> Float[Tensor, "N C"]:
        """``values``, computed without gradient as ``self(x)`` (or as a sum of it with other terms), given the
        gradient path of ``self(x)`` to ``params``: the backward adds the table gradient at ``x`` and passes the
        values' gradient on. Both backwards need only the points, so a renderer that encoded its samples for the
        alpha culling shades them without encoding them again. Returns ``values`` itself when no gradient is
        wanted (``params`` frozen or grad disabled). ``x`` must not require a gradient (no position gradient is
        produced)."""
        if not (torch.is_grad_enabled() and self.params.requires_grad):
            return values
        if x.requires_grad:
            raise ValueError("HashGrid.attach_gradient: x requires a gradient, which this path does not produce")
        if values.shape != (x.shape[0], self.n_output_dims):
            raise ValueError(
                f"HashGrid.attach_gradient: values of shape {tuple(values.shape)} for {x.shape[0]} points; "
                f"expected [{x.shape[0]}, {self.n_output_dims}]"
            )
        return _AttachGridGradient.apply(values, x, self.params, self)

    def backward_at(self, x: Tensor, params: Tensor, grad_out: Tensor) -> Tensor:
        """The table gradient of the encoding of ``x`` for ``grad_out``, through this grid's implementation."""
        if self.uses_triton(x):
            from fourdfy.field_components.hash_grid_triton import hash_grid_backward_triton

            grad = hash_grid_backward_triton(x, params, self.layout, grad_out, need_x=False, need_params=True)[1]
            return grad.to(params.dtype)
        return hash_grid_backward(x, params, self.layout, grad_out, need_x=False, need_params=True)[1]

    def forward(self, x: Float[Tensor, "N D"]) -> Float[Tensor, "N C"]:
        """Encode ``x`` (``[N, D]``, normally in ``[0, 1]^D``) into ``[N, L * F]`` level-major features."""
        if x.shape[1] != self.n_input_dims:
            raise ValueError(f"HashGrid expects {self.n_input_dims} coordinates per point, got x of shape {tuple(x.shape)}")
        if x.shape[0] == 0:
            return torch.zeros(0, self.n_output_dims, dtype=self.params.dtype, device=x.device)
        if self.uses_tcnn(x):
            return self._tcnn_forward(x)
        if self.uses_triton(x):
            from fourdfy.field_components.hash_grid_triton import hash_grid_encode_triton

            return hash_grid_encode_triton(x, self.params, self.layout)
        return hash_grid_encode(x, self.params, self.layout)
