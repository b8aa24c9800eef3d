"""Input encodings: spherical harmonics, plain grids, 4D-fy's space-time grids, and the ``get_encoding`` factory.

Module trees mirror 4D-fy so that state-dict keys match its checkpoints once the caller wraps the result of
:func:`get_encoding` in :class:`CompositeEncoding` (as the implicit-volume geometry and the background do):

* ``HashGridSpatialTime``: ``encoding.encoding.params`` (3-D grid), ``encoding.encoding_time.params`` (4-D grid).
* ``HashGridSpatialTimeDeform``: ``encoding.encoding.params``, ``encoding.encoding_time.encoding.encoding.params``
  (the 4-D grid sits inside ``CompositeEncoding(GridEncoding(HashGrid))``, the two levels threestudio's
  ``get_encoding`` adds) and ``encoding.time_network.layers.{0,2,4}.weight``.

Time is always an explicit ``times`` argument; no module stores a "current frame".
"""

import math
from collections.abc import Iterator, Mapping
from fractions import Fraction
from typing import Any, Optional, Union

import torch
from jaxtyping import Float
from torch import Tensor, nn

from fourdfy.field_components.encoding_configs import (
    EncodingConfig,
    GridEncodingConfig,
    HashGridParams,
    HashGridSpatialTimeConfig,
    HashGridSpatialTimeDeformConfig,
    SphericalHarmonicsConfig,
    parse_encoding_config,
)
from fourdfy.field_components.hash_grid import HashGrid
from fourdfy.field_components.networks import VanillaMLP

# --------------------------------------------------------------------------------------------------------------
# Spherical harmonics
# --------------------------------------------------------------------------------------------------------------


def _legendre_derivative(l: int, m: int) -> dict[int, Fraction]:
    """Coefficients ``{power: c}`` of ``d^m/dz^m P_l(z)`` (Legendre polynomial, exact rationals)."""
    poly: dict[int, Fraction] = {}
    for k in range(l // 2 + 1):  # P_l(z) = 2^-l * sum_k (-1)^k C(l,k) C(2l-2k, l) z^(l-2k)
        poly[l - 2 * k] = Fraction((-1) ** k * math.comb(l, k) * math.comb(2 * l - 2 * k, l), 2**l)
    for _ in range(m):
        poly = {p - 1: c * p for p, c in poly.items() if p > 0}
    return poly


def sh_coefficients(degree: int) -> list[tuple[int, int, float, dict[int, float]]]:
    """Per output ``l*l + l + m``: ``(l, m, normalisation, {z power: coefficient})``.

    The real SH are ``Y_lm = norm * (d^|m| P_l / dz^|m|)(z) * A_m(x, y)`` with ``A_m = Re((x + iy)^m)`` for
    ``m > 0``, ``Im((x + iy)^|m|)`` for ``m < 0`` and 1 for ``m = 0``; ``norm = K_l^|m|`` for ``m = 0`` and
    ``(-1)^m sqrt(2) K_l^|m|`` otherwise (Condon-Shortley phase), ``K_l^m = sqrt((2l+1)/(4 pi) (l-m)!/(l+m)!)``.
    This is tiny-cuda-nn's convention (e.g. ``Y_1,-1 = -0.4886 y``, ``Y_1,1 = -0.4886 x``); being polynomials in
    x, y, z without using ``x^2 + y^2 + z^2 = 1``, they also agree with tcnn off the unit sphere.
    """
    out = []
    for l in range(degree):
        for m in range(-l, l + 1):
            am = abs(m)
            k = math.sqrt((2 * l + 1) / (4 * math.pi) * math.factorial(l - am) / math.factorial(l + am))
            norm = k if m == 0 else (-1) ** am * math.sqrt(2.0) * k
            poly = {p: float(c) for p, c in _legendre_derivative(l, am).items()}
            out.append((l, m, norm, poly))
    return out


def spherical_harmonics(dirs_unit: Float[Tensor, "N 3"], degree: int) -> Float[Tensor, "N K"]:
    """Real spherical harmonics of bands ``0 .. degree-1`` of direction vectors (tcnn order and signs).

    Args:
        dirs_unit: directions in ``[-1, 1]^3`` (normally unit vectors; not renormalised, like tcnn).
        degree: number of bands (``degree^2`` outputs).

    Returns:
        ``[N, degree^2]``, output ``l*l + l + m`` for band ``l`` and order ``m``.
    """
    x, y, z = dirs_unit.unbind(-1)
    z_pow = [torch.ones_like(z)]
    for _ in range(1, degree):
        z_pow.append(z_pow[-1] * z)
    # Re/Im of (x + iy)^m by the complex recurrence.
    re, im = [torch.ones_like(x)], [torch.zeros_like(x)]
    for _ in range(1, degree):
        re_prev, im_prev = re[-1], im[-1]
        re.append(x * re_prev - y * im_prev)
        im.append(x * im_prev + y * re_prev)
    cols = []
    for _, m, norm, poly in sh_coefficients(degree):
        zpart = sum(c * z_pow[p] for p, c in poly.items())
        azim = re[m] if m > 0 else (im[-m] if m < 0 else 1.0)
        cols.append(norm * zpart * azim)
    return torch.stack(cols, dim=-1)


class SphericalHarmonics(nn.Module):
    """tcnn ``SphericalHarmonics``: inputs in ``[0, 1]^3`` (the caller maps directions ``d -> (d + 1) / 2``).

    Internally ``2x - 1`` recovers the direction; the output has ``degree^2`` features. Parameter-free.
    """

    def __init__(self, degree: int, n_input_dims: int = 3) -> None:
        super().__init__()
        if n_input_dims != 3:
            raise ValueError(f"SphericalHarmonics encodes 3-D directions, got n_input_dims={n_input_dims}")
        if not 1 <= degree <= 8:
            raise ValueError(f"degree must be in [1, 8], got {degree}")
        self.degree = degree
        self.n_input_dims = 3
        self.n_output_dims = degree * degree

    def extra_repr(self) -> str:
        return f"degree={self.degree}"

    def forward(self, x: Float[Tensor, "N 3"]) -> Float[Tensor, "N K"]:
        """Encode ``[N, 3]`` directions given in ``[0, 1]^3``."""
        dtype = torch.promote_types(x.dtype, torch.float32)
        return spherical_harmonics(x.to(dtype) * 2.0 - 1.0, self.degree)


# --------------------------------------------------------------------------------------------------------------
# Wrappers
# --------------------------------------------------------------------------------------------------------------


class CompositeEncoding(nn.Module):
    """threestudio's ``CompositeEncoding``: the wrapped encoding, optionally preceded by ``x * scale + offset``.

    Extra positional arguments (``times``) are passed to the wrapped encoding. If it returns a tuple
    ``(enc, dx)``, the xyz prefix is added to ``enc`` and ``dx`` is passed through.
    """

    def __init__(self, encoding: nn.Module, include_xyz: bool = False, xyz_scale: float = 2.0, xyz_offset: float = -1.0) -> None:
        super().__init__()
        self.encoding = encoding
        self.include_xyz = include_xyz
        self.xyz_scale = xyz_scale
        self.xyz_offset = xyz_offset
        self.n_input_dims = encoding.n_input_dims
        self.n_output_dims = encoding.n_output_dims + (self.n_input_dims if include_xyz else 0)

    def _prefix(self, x: Tensor, enc: Tensor) -> Tensor:
        if not self.include_xyz:
            return enc
        return torch.cat([x * self.xyz_scale + self.xyz_offset, enc], dim=-1)

    def forward(
        self, x: Float[Tensor, "N D"], *args: Any
    ) -> Union[Float[Tensor, "N C"], tuple[Float[Tensor, "N C"], Optional[Float[Tensor, "N E"]]]]:
        """Encode ``x`` (and pass ``*args``, e.g. ``times``, to the wrapped encoding)."""
        out = self.encoding(x, *args)
        if isinstance(out, tuple):
            return (self._prefix(x, out[0]), *out[1:])
        return self._prefix(x, out)

    def can_attach_gradient(self, x: Tensor) -> bool:
        """Whether :meth:`attach_gradient` works here: no xyz prefix, and the wrapped encoding supports it."""
        inner = getattr(self.encoding, "can_attach_gradient", None)
        return not self.include_xyz and inner is not None and inner(x)

    def attach_gradient(
        self, x: Float[Tensor, "N D"], times: Optional[Tensor], values: Float[Tensor, "N C"]
    ) -> Float[Tensor, "N C"]:
        """``values``, computed without gradient as ``self(x, times)[0]``, with the gradient path of that encoding
        to the grids' tables (:meth:`HashGrid.attach_gradient`)."""
        if not self.can_attach_gradient(x):
            raise ValueError(f"{type(self.encoding).__name__} cannot take the gradient of values computed elsewhere")
        return self.encoding.attach_gradient(x, times, values)


def make_hash_grid(n_input_dims: int, params: HashGridParams, grid_type: str = "Hash") -> HashGrid:
    """A :class:`HashGrid` with the hyper-parameters of a parsed grid config."""
    return HashGrid(
        n_input_dims,
        n_levels=params.n_levels,
        n_features_per_level=params.n_features_per_level,
        log2_hashmap_size=params.log2_hashmap_size,
        base_resolution=params.base_resolution,
        per_level_scale=params.per_level_scale,
        grid_type=grid_type,
        implementation=params.implementation,
    )


class GridEncoding(nn.Module):
    """A plain grid encoding (``otype: Grid``/``HashGrid``); ``.encoding`` is the :class:`HashGrid`.

    This level exists so that key paths match threestudio, whose ``TCNNEncoding`` wraps the tcnn module the same
    way (``...encoding.encoding.params``).
    """

    def __init__(self, n_input_dims: int, cfg: GridEncodingConfig) -> None:
        super().__init__()
        self.encoding = make_hash_grid(n_input_dims, cfg, grid_type=cfg.type)
        self.n_input_dims = n_input_dims
        self.n_output_dims = self.encoding.n_output_dims

    def forward(self, x: Float[Tensor, "N D"]) -> Float[Tensor, "N C"]:
        """Encode ``[N, D]`` points in ``[0, 1]^D``."""
        return self.encoding(x)


# --------------------------------------------------------------------------------------------------------------
# 4D-fy space-time encodings
# --------------------------------------------------------------------------------------------------------------


def _time_column(times: Optional[Tensor], x: Tensor, static: bool, owner: str) -> Tensor:
    """``[N, 1]`` times for ``x``: zeros when static, else ``times`` broadcast over the points."""
    if static:
        return torch.zeros(x.shape[0], 1, dtype=x.dtype, device=x.device)
    if times is None:
        raise ValueError(f"{owner} is dynamic (static=false): pass `times` ([N, 1] or [1, 1], values in [0, 1])")
    return times.to(x.dtype).expand(x.shape[0], 1)


class HashGridSpatialTime(nn.Module):
    """4D-fy's static + dynamic decomposition: ``enc = grid3(x) + grid4([x, t])``.

    Both grids use the config's hyper-parameters; ``t`` is appended raw (in ``[0, 1]``, not rescaled). With
    ``static`` the 4-D grid is frozen at construction and evaluated at ``t = 0`` (its small random init still
    adds in, as in 4D-fy, and it stays in the checkpoint).

    Args:
        n_input_dims: spatial dimension (3).
        config: ``otype: HashGridSpatialTime`` dict or parsed :class:`HashGridSpatialTimeConfig`.
        path: dotted config location for error messages.
    """

    def __init__(self, n_input_dims: int, config: Union[Mapping[str, Any], HashGridSpatialTimeConfig], path: str = "pos_encoding_config") -> None:
        super().__init__()
        cfg = parse_encoding_config(config, path)
        if not isinstance(cfg, HashGridSpatialTimeConfig):
            raise TypeError(f"{path}: expected a HashGridSpatialTime config, got {type(cfg).__name__}")
        self.cfg = cfg
        self.static = cfg.static
        self.n_input_dims = n_input_dims
        self.encoding = make_hash_grid(n_input_dims, cfg)
        self.encoding_time = make_hash_grid(n_input_dims + 1, cfg)
        self.n_output_dims = self.encoding.n_output_dims
        if self.static:
            self.set_temporal_requires_grad(False)

    def temporal_parameters(self) -> Iterator[nn.Parameter]:
        """The 4-D grid's parameters."""
        yield from self.encoding_time.parameters()

    def set_temporal_requires_grad(self, flag: bool) -> None:
        """Enable/disable gradients of the temporal part (4D-fy's ``set_temp_param_grad``)."""
        self.encoding_time.requires_grad_(flag)

    def forward(
        self, x: Float[Tensor, "N D"], times: Optional[Float[Tensor, "#N 1"]] = None
    ) -> tuple[Float[Tensor, "N C"], None]:
        """Encode points ``x`` in ``[0, 1]^D`` at ``times``; returns ``(enc, None)`` (no deformation).

        ``times`` is ignored (``t = 0``) when static and required otherwise.
        """
        t = _time_column(times, x, self.static, "HashGridSpatialTime")
        enc = self.encoding(x) + self.encoding_time(torch.cat([x, t], dim=-1))
        return enc, None

    def can_attach_gradient(self, x: Tensor) -> bool:
        """Whether :meth:`attach_gradient` works for points like ``x`` (both grids on the torch or Triton path)."""
        return self.encoding.can_attach_gradient(x) and self.encoding_time.can_attach_gradient(x)

    def attach_gradient(
        self, x: Float[Tensor, "N D"], times: Optional[Float[Tensor, "#N 1"]], values: Float[Tensor, "N C"]
    ) -> Float[Tensor, "N C"]:
        """``values = grid3(x) + grid4([x, t])``, computed without gradient, given the gradient path of both terms
        to their tables (a frozen grid adds none); no grid is evaluated again."""
        out = self.encoding.attach_gradient(x, values)
        if any(p.requires_grad for p in self.encoding_time.parameters()):
            t = _time_column(times, x, self.static, "HashGridSpatialTime")
            out = self.encoding_time.attach_gradient(torch.cat([x, t], dim=-1), out)
        return out


class HashGridSpatialTimeDeform(nn.Module):
    """4D-fy's deformation variant: ``enc = grid3(x + dx)``, ``dx = MLP(grid4_small([x, t]))``.

    ``encoding`` is the canonical 3-D grid, ``encoding_time`` is ``CompositeEncoding(GridEncoding(HashGrid))``
    built from ``time_encoding_config`` (so its table is ``encoding_time.encoding.encoding.params``), and
    ``time_network`` maps its features to a 3-D offset in normalised ``[0, 1]`` units (unclamped). With
    ``static`` the temporal part is frozen and skipped: ``(grid3(x), None)``.

    Args:
        n_input_dims: spatial dimension (3).
        config: ``otype: HashGridSpatialTimeDeform`` dict or parsed :class:`HashGridSpatialTimeDeformConfig`.
        path: dotted config location for error messages.
    """

    def __init__(
        self, n_input_dims: int, config: Union[Mapping[str, Any], HashGridSpatialTimeDeformConfig], path: str = "pos_encoding_config"
    ) -> None:
        super().__init__()
        cfg = parse_encoding_config(config, path)
        if not isinstance(cfg, HashGridSpatialTimeDeformConfig):
            raise TypeError(f"{path}: expected a HashGridSpatialTimeDeform config, got {type(cfg).__name__}")
        self.cfg = cfg
        self.static = cfg.static
        self.n_input_dims = n_input_dims
        self.encoding = make_hash_grid(n_input_dims, cfg)
        self.encoding_time = CompositeEncoding(GridEncoding(n_input_dims + 1, cfg.time_encoding_config))
        net = cfg.time_network_config
        self.time_network = VanillaMLP(
            self.encoding_time.n_output_dims,
            n_input_dims,
            n_neurons=net.n_neurons,
            n_hidden_layers=net.n_hidden_layers,
            activation=net.activation,
            output_activation=net.output_activation,
            bias=net.bias,
            precision=net.precision,
        )
        self.n_output_dims = self.encoding.n_output_dims
        if self.static:
            self.set_temporal_requires_grad(False)

    def temporal_parameters(self) -> Iterator[nn.Parameter]:
        """The 4-D grid's and the time MLP's parameters."""
        yield from self.encoding_time.parameters()
        yield from self.time_network.parameters()

    def set_temporal_requires_grad(self, flag: bool) -> None:
        """4D-fy's ``set_temp_param_grad``: temporal parts get ``flag``; the canonical grid trains only if static."""
        self.encoding_time.requires_grad_(flag)
        self.time_network.requires_grad_(flag)
        self.encoding.requires_grad_(self.static)

    def forward(
        self, x: Float[Tensor, "N D"], times: Optional[Float[Tensor, "#N 1"]] = None
    ) -> tuple[Float[Tensor, "N C"], Optional[Float[Tensor, "N D"]]]:
        """Encode points ``x`` in ``[0, 1]^D`` at ``times``; returns ``(enc, dx)`` (``dx`` is None when static)."""
        if self.static:
            return self.encoding(x), None
        t = _time_column(times, x, self.static, "HashGridSpatialTimeDeform")
        dx = self.time_network(self.encoding_time(torch.cat([x, t], dim=-1))).to(x.dtype)
        return self.encoding(x + dx), dx


# --------------------------------------------------------------------------------------------------------------
# Factory
# --------------------------------------------------------------------------------------------------------------


def get_encoding(n_input_dims: int, config: Union[Mapping[str, Any], EncodingConfig], path: str) -> nn.Module:
    """Build an encoding from a tcnn-style dict, choosing the class by ``otype``.

    The result is *not* wrapped in :class:`CompositeEncoding`; callers wrap it (as 4D-fy's ``get_encoding``
    does internally) to reproduce 4D-fy's key paths.

    Args:
        n_input_dims: input dimension (3 for positions and directions).
        config: raw dict (plain or OmegaConf) or a parsed config.
        path: dotted config location, e.g. ``"system.geometry.pos_encoding_config"``.

    Returns:
        :class:`GridEncoding`, :class:`HashGridSpatialTime`, :class:`HashGridSpatialTimeDeform` or
        :class:`SphericalHarmonics`; each has ``n_input_dims`` and ``n_output_dims``.

    Raises:
        ConfigError: unknown ``otype`` or key, wrong type or invalid value (naming the dotted key).
    """
    cfg = parse_encoding_config(config, path)
    if isinstance(cfg, GridEncodingConfig):
        return GridEncoding(n_input_dims, cfg)
    if isinstance(cfg, HashGridSpatialTimeConfig):
        return HashGridSpatialTime(n_input_dims, cfg, path)
    if isinstance(cfg, HashGridSpatialTimeDeformConfig):
        return HashGridSpatialTimeDeform(n_input_dims, cfg, path)
    if isinstance(cfg, SphericalHarmonicsConfig):
        return SphericalHarmonics(cfg.degree, n_input_dims)
    raise TypeError(f"{path}: no encoding class for {type(cfg).__name__}")
