"""The level table of tcnn's multiresolution grids, as pure functions of the hyper-parameters.

Shared by the pure-PyTorch hash grid (:mod:`fourdfy.field_components.hash_grid`) and its Triton kernels
(:mod:`fourdfy.field_components.hash_grid_triton`), which import this module and not each other.
"""

import dataclasses
import math

import numpy as np

HASH_PRIMES: tuple[int, ...] = (1, 2654435761, 805459861, 3674653429, 2097192037, 1434869437, 2165219737)
"""tcnn's coherent prime hash factors, one per input dimension (hence at most 7 dimensions)."""

GRID_TYPES: tuple[str, ...] = ("Hash", "Dense", "Tiled")

UINT32_MASK = 0xFFFFFFFF
_MAX_DENSE_PARAMS = 0xFFFFFFFF // 2  # tcnn caps a level's dense size at uint32 max / 2 before the hash cap.


@dataclasses.dataclass(frozen=True)
class LevelSpec:
    """One level of a grid.

    Attributes:
        scale: float32 scale applied to inputs in ``[0, 1]`` (``pos = x * scale + 0.5``).
        resolution: vertices per axis of the virtual dense grid, ``ceil(scale) + 1``.
        size: number of table entries of this level.
        offset: index of this level's first entry in the whole table.
        hashed: whether indices come from the prime hash (otherwise from the dense strides).
        strides: dense strides of the leading dimensions that tcnn folds into the dense index; when the
            stride loop stops early (only possible for hashed or tiled levels) later dimensions are absent.
    """

    scale: float
    resolution: int
    size: int
    offset: int
    hashed: bool
    strides: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class GridLayout:
    """The level table of a grid: ``levels`` plus the total entry count (``n_params = n_entries * F``)."""

    n_input_dims: int
    n_features_per_level: int
    levels: tuple[LevelSpec, ...]

    @property
    def n_entries(self) -> int:
        """Total number of table entries over all levels."""
        return sum(level.size for level in self.levels)

    @property
    def n_params(self) -> int:
        """Length of the flat parameter vector."""
        return self.n_entries * self.n_features_per_level

    @property
    def n_output_dims(self) -> int:
        """Encoding width: levels x features per level."""
        return len(self.levels) * self.n_features_per_level


def level_scale(level: int, per_level_scale: float, base_resolution: int) -> float:
    """Scale of one level, ``exp2(level * log2(per_level_scale)) * base_resolution - 1``, in float32 like tcnn.

    Args:
        level: level index (0 is the coarsest).
        per_level_scale: growth factor between consecutive levels.
        base_resolution: resolution parameter of level 0.

    Returns:
        The float32 value as a Python float.
    """
    f32 = np.float32
    # log2f / exp2f are emulated by rounding the float64 result to float32 (glibc's float versions are
    # correctly rounded here; numpy's float32 exp2 is not, and is off by one ulp on some levels).
    log2_scale = f32(math.log2(float(f32(per_level_scale))))
    power = f32(2.0 ** float(f32(level) * log2_scale))
    return float(power * f32(base_resolution) - f32(1.0))


def _next_multiple(value: int, multiple: int) -> int:
    return (value + multiple - 1) // multiple * multiple


def grid_layout(
    n_input_dims: int,
    n_levels: int,
    n_features_per_level: int,
    log2_hashmap_size: int,
    base_resolution: int,
    per_level_scale: float,
    grid_type: str = "Hash",
) -> GridLayout:
    """Compute tcnn's level table for a multiresolution grid.

    Args:
        n_input_dims: input dimension ``D`` (1 to 7; the prime hash has 7 factors).
        n_levels: number of levels ``L``.
        n_features_per_level: features per entry ``F``.
        log2_hashmap_size: ``log2(T)``, the per-level entry cap of hash grids.
        base_resolution: resolution parameter of level 0.
        per_level_scale: growth factor between levels.
        grid_type: ``"Hash"``, ``"Dense"`` or ``"Tiled"``.

    Returns:
        The :class:`GridLayout`.
    """
    if not 1 <= n_input_dims <= len(HASH_PRIMES):
        raise ValueError(f"n_input_dims must be in [1, {len(HASH_PRIMES)}] (one hash prime per dim), got {n_input_dims}")
    if n_levels < 1 or n_features_per_level < 1 or base_resolution < 1 or log2_hashmap_size < 1:
        raise ValueError(
            "n_levels, n_features_per_level, base_resolution and log2_hashmap_size must be positive, got "
            f"{n_levels}, {n_features_per_level}, {base_resolution}, {log2_hashmap_size}"
        )
    if grid_type not in GRID_TYPES:
        raise ValueError(f"grid_type must be one of {list(GRID_TYPES)}, got {grid_type!r}")
    levels = []
    offset = 0
    for lvl in range(n_levels):
        scale = level_scale(lvl, per_level_scale, base_resolution)
        resolution = int(math.ceil(scale)) + 1
        if float(np.float32(resolution) ** n_input_dims) > float(_MAX_DENSE_PARAMS):
            size = _MAX_DENSE_PARAMS
        else:
            size = resolution**n_input_dims
        size = _next_multiple(size, 8)  # tcnn aligns every level to 8 entries
        if grid_type == "Hash":
            size = min(size, 1 << log2_hashmap_size)
        elif grid_type == "Tiled":
            size = min(size, base_resolution**n_input_dims)
        # tcnn's stride loop: fold dimensions into a dense index while the stride still fits in the level.
        strides = []
        stride = 1
        for _ in range(n_input_dims):
            if stride > size:
                break
            strides.append(stride)
            stride = (stride * resolution) & UINT32_MASK
        hashed = grid_type == "Hash" and size < stride
        levels.append(LevelSpec(scale, resolution, size, offset, hashed, tuple(strides)))
        offset += size
    return GridLayout(n_input_dims, n_features_per_level, tuple(levels))
