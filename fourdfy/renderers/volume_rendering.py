"""Volume-rendering math on packed samples, in pure PyTorch (nerfacc 0.5.x semantics).

Packed layout: all samples of all rays live in one flat list of length ``S``. ``ray_indices[i]`` is the ray of
sample ``i``; the list is sorted by ray index (the samples of one ray are contiguous and ordered front to back),
and ``n_rays`` is the number of rays (a ray may have no samples). This is the layout that
``OccupancyGrid.sampling`` returns and that nerfacc's packed functions take.

Every function here works on CPU and CUDA tensors and never calls nerfacc: its CUDA scans were once a fast path
here, but they were never compared with this file's code on the machines that would run them (and nerfacc 0.5.3's
grid sampling disagreed with ours on an H200), so they were removed (issue 12).

Worked example used in the docstrings below (and reused by the tests). Three rays, the third has no samples::

    ray_indices = [0,   0,   0,   1,   1  ]       n_rays = 3
    t_starts    = [0.0, 0.5, 1.0, 0.2, 0.7]
    t_ends      = [0.5, 1.0, 1.5, 0.7, 1.2]       (every delta = 0.5)
    sigmas      = [2.0, 1.0, 4.0, 0.0, 6.0]
    sigma*delta = [1.0, 0.5, 2.0, 0.0, 3.0]
    exclusive per-ray sum of sigma*delta = [0.0, 1.0, 1.5, 0.0, 0.0]
    trans   = exp(-that)          = [1.0000, 0.3679, 0.2231, 1.0000, 1.0000]
    alphas  = 1 - exp(-sigma*dt)  = [0.6321, 0.3935, 0.8647, 0.0000, 0.9502]
    weights = trans * alphas      = [0.6321, 0.1447, 0.1929, 0.0000, 0.9502]
    opacity per ray (accumulate weights) = [0.9698, 0.9502, 0.0000]   (ray 0: 1 - exp(-3.5))
"""

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor


def ray_aabb_intersect(
    rays_o: Float[Tensor, "R 3"],
    rays_d: Float[Tensor, "R 3"],
    aabb: Float[Tensor, "6"],
    near_plane: float | Float[Tensor, "R"] = 0.0,
    far_plane: float | Float[Tensor, "R"] = 1e10,
) -> tuple[Float[Tensor, "R"], Float[Tensor, "R"], Bool[Tensor, "R"]]:
    """Slab test of rays against one axis-aligned box, clipped to ``[near_plane, far_plane]``.

    For each axis ``a`` the ray ``o + t d`` is between the two planes for ``t`` in
    ``[min(t1_a, t2_a), max(t1_a, t2_a)]`` with ``t1_a = (min_a - o_a) / d_a`` and ``t2_a = (max_a - o_a) / d_a``.
    The box is entered at ``t_entry = max_a(...)`` and left at ``t_exit = min_a(...)``. The returned segment is
    ``t_near = max(t_entry, near)``, ``t_far = min(t_exit, far)`` and the ray hits when ``t_near < t_far``.
    A zero direction component keeps the ray inside that slab for all ``t`` when the origin is strictly between the
    planes and never otherwise. An origin inside the box gives ``t_entry < 0``, so ``t_near = near``.

    Example (box ``[-1, 1]^3``, near 0, far 1e10)::

        o = (-3, 0, 0), d = (1, 0, 0)  ->  t_near = 2, t_far = 4, hit
        o = (0, 0, 0),  d = (0, 0, 1)  ->  t_near = 0, t_far = 1, hit  (origin inside)
        o = (-3, 2, 0), d = (1, 0, 0)  ->  miss (y = 2 is outside the y slab)
        o = (3, 0, 0),  d = (1, 0, 0)  ->  miss (box is behind: t_exit = -2 < near)

    Args:
        rays_o: Ray origins.
        rays_d: Ray directions (need not be unit length; ``t`` is in units of ``rays_d``).
        aabb: Box as ``[xmin, ymin, zmin, xmax, ymax, zmax]``.
        near_plane: Near distance, a float or one per ray.
        far_plane: Far distance, a float or one per ray.

    Returns:
        ``(t_near, t_far, hit)``. Where ``hit`` is False both distances are ``+inf`` (nerfacc's miss value).
    """
    aabb = aabb.to(rays_o)
    lo, hi = aabb[:3], aabb[3:]
    # 1/0 = +-inf makes (plane - o) * inv = +-inf, which encodes "inside this slab for every t" (or never) for free.
    # The only NaN is 0 * inf (origin exactly on a plane of a slab parallel to the ray); fmin/fmax drop it.
    inv_d = 1.0 / rays_d
    t1 = (lo - rays_o) * inv_d
    t2 = (hi - rays_o) * inv_d
    t_entry = torch.fmin(t1, t2).amax(dim=-1)
    t_exit = torch.fmax(t1, t2).amin(dim=-1)
    t_near = torch.fmax(t_entry, near_plane) if isinstance(near_plane, Tensor) else t_entry.clamp(min=near_plane)
    t_far = torch.fmin(t_exit, far_plane) if isinstance(far_plane, Tensor) else t_exit.clamp(max=far_plane)
    hit = t_near < t_far
    inf = torch.full_like(t_near, float("inf"))
    return torch.where(hit, t_near, inf), torch.where(hit, t_far, inf), hit


def segment_start_indices(ray_indices: Int[Tensor, "S"], n_rays: int | None = None) -> Int[Tensor, "S"]:
    """For every packed sample, the flat index of the first sample of the same ray.

    With ``n_rays``: find each ray's first position by binary search in the sorted indices (``searchsorted`` of
    ``0 .. n_rays-1``) and gather it per sample -- work proportional to the samples plus ``log S`` per ray.
    (``bincount`` plus an exclusive sum gives the same, but CUDA's ``bincount`` reads the largest index back to the
    host: a sync.) Without ``n_rays``: a running maximum of the positions where the ray index changes (a scan over
    all samples, several times slower on a GPU for millions of samples). Neither needs a host sync.

    Example: ``ray_indices = [0, 0, 0, 1, 1]`` gives ``[0, 0, 0, 3, 3]``.

    Args:
        ray_indices: Ray index per sample, sorted.
        n_rays: Number of rays (every index must be below it), if known.

    Returns:
        Start index per sample (int64).
    """
    if n_rays is not None:
        rays = torch.arange(n_rays, dtype=ray_indices.dtype, device=ray_indices.device)
        first = torch.searchsorted(ray_indices, rays)
        return first[ray_indices]
    n = ray_indices.shape[0]
    positions = torch.arange(n, device=ray_indices.device)
    is_first = torch.ones(n, dtype=torch.bool, device=ray_indices.device)
    is_first[1:] = ray_indices[1:] != ray_indices[:-1]
    return torch.where(is_first, positions, 0).cummax(dim=0).values


def exclusive_sum_packed(
    x: Float[Tensor, "S"],
    ray_indices: Int[Tensor, "S"],
    n_rays: int,
) -> Float[Tensor, "S"]:
    """Per-ray exclusive prefix sum of packed values: ``out_i = sum_{j < i, ray(j) = ray(i)} x_j``.

    It takes one global cumulative sum and subtracts, for each sample, the global sum at its ray's first
    sample. The global sum grows with the number of samples (millions per batch), so it is accumulated in float64:
    in float32 the subtraction would cancel catastrophically far into the list. The result has ``x``'s dtype and is
    differentiable with respect to ``x`` (``d out_i / d x_j = 1`` for earlier samples ``j`` of the same ray).

    Example: ``x = [1.0, 0.5, 2.0, 0.0, 3.0]`` with ``ray_indices = [0, 0, 0, 1, 1]`` gives
    ``[0.0, 1.0, 1.5, 0.0, 0.0]``.

    Args:
        x: Values per sample.
        ray_indices: Ray index per sample, sorted.
        n_rays: Number of rays (every index must be below it).

    Returns:
        The exclusive per-ray sums.
    """
    if x.shape[0] == 0:
        return x * 0.0
    acc = x.to(torch.float64)
    inclusive = torch.cumsum(acc, dim=0)
    exclusive = torch.cat([inclusive.new_zeros(1), inclusive[:-1]])
    start = segment_start_indices(ray_indices, n_rays)
    return (exclusive - exclusive[start]).to(x.dtype)


def render_transmittance_from_density(
    t_starts: Float[Tensor, "S"],
    t_ends: Float[Tensor, "S"],
    sigmas: Float[Tensor, "S"],
    ray_indices: Int[Tensor, "S"],
    n_rays: int,
) -> tuple[Float[Tensor, "S"], Float[Tensor, "S"]]:
    """Transmittance and opacity of packed samples from density.

    ``delta_i = t_end_i - t_start_i``, ``T_i = exp(-sum_{j < i} sigma_j delta_j)`` (same ray),
    ``alpha_i = 1 - exp(-sigma_i delta_i)``.

    Example (module docstring): ``trans = [1.0000, 0.3679, 0.2231, 1.0000, 1.0000]``,
    ``alphas = [0.6321, 0.3935, 0.8647, 0.0000, 0.9502]``.

    Args:
        t_starts: Interval starts.
        t_ends: Interval ends.
        sigmas: Densities (post-activation, non-negative).
        ray_indices: Ray index per sample, sorted.
        n_rays: Number of rays.

    Returns:
        ``(trans, alphas)``, both differentiable with respect to ``sigmas``.
    """
    sigmas_dt = sigmas * (t_ends - t_starts)
    # -expm1(-x) is 1 - exp(-x) without the cancellation for small x.
    alphas = -torch.expm1(-sigmas_dt)
    trans = torch.exp(-exclusive_sum_packed(sigmas_dt, ray_indices, n_rays))
    return trans, alphas


def render_weight_from_density(
    t_starts: Float[Tensor, "S"],
    t_ends: Float[Tensor, "S"],
    sigmas: Float[Tensor, "S"],
    ray_indices: Int[Tensor, "S"],
    n_rays: int,
) -> tuple[Float[Tensor, "S"], Float[Tensor, "S"], Float[Tensor, "S"]]:
    """Rendering weights ``w_i = T_i * alpha_i`` of packed samples (see :func:`render_transmittance_from_density`).

    Per ray the weights sum to ``1 - exp(-sum_i sigma_i delta_i) <= 1``.

    Example (module docstring): ``weights = [0.6321, 0.1447, 0.1929, 0.0000, 0.9502]``; ray 0 sums to
    ``1 - exp(-3.5) = 0.9698``.

    Args:
        t_starts: Interval starts.
        t_ends: Interval ends.
        sigmas: Densities.
        ray_indices: Ray index per sample, sorted.
        n_rays: Number of rays.

    Returns:
        ``(weights, trans, alphas)``, all differentiable with respect to ``sigmas``.
    """
    trans, alphas = render_transmittance_from_density(t_starts, t_ends, sigmas, ray_indices, n_rays)
    return trans * alphas, trans, alphas


@torch.no_grad()
def render_visibility_from_density(
    t_starts: Float[Tensor, "S"],
    t_ends: Float[Tensor, "S"],
    sigmas: Float[Tensor, "S"],
    ray_indices: Int[Tensor, "S"],
    n_rays: int,
    early_stop_eps: float = 1e-4,
    alpha_thre: float | Float[Tensor, ""] = 0.0,
) -> Bool[Tensor, "S"]:
    """Which samples matter: ``T_i >= early_stop_eps`` and (when ``alpha_thre > 0``) ``alpha_i >= alpha_thre``.

    This is nerfacc's visibility rule. The transmittance is computed over *all* given samples, so a sample behind an
    opaque one is dropped even when it is itself opaque. ``alpha_thre`` may be a 0-d tensor so that callers can pass
    a device-side threshold without a host sync; the alpha test is then skipped where the threshold is ``<= 0``.

    Example (module docstring) with ``early_stop_eps = 0.3`` and ``alpha_thre = 0.5``:
    ``[True, False, False, False, True]`` (sample 1: alpha 0.39 < 0.5; sample 2: T = 0.22 < 0.3; sample 3: alpha 0).

    Args:
        t_starts: Interval starts.
        t_ends: Interval ends.
        sigmas: Densities.
        ray_indices: Ray index per sample, sorted.
        n_rays: Number of rays.
        early_stop_eps: Transmittance below which samples are dropped.
        alpha_thre: Opacity below which samples are dropped (no test when ``<= 0``).

    Returns:
        Boolean keep-mask per sample.
    """
    trans, alphas = render_transmittance_from_density(t_starts, t_ends, sigmas, ray_indices, n_rays)
    visible = trans >= early_stop_eps
    if isinstance(alpha_thre, Tensor):
        visible = visible & ((alphas >= alpha_thre) | (alpha_thre <= 0))
    elif alpha_thre > 0:
        visible = visible & (alphas >= alpha_thre)
    return visible


def accumulate_along_rays(
    weights: Float[Tensor, "S"],
    values: Float[Tensor, "S C"] | None,
    ray_indices: Int[Tensor, "S"],
    n_rays: int,
) -> Float[Tensor, "n_rays C2"]:
    """Sum ``weights * values`` over the samples of each ray: ``out_r = sum_{i: ray(i) = r} w_i v_i``.

    With ``values=None`` the weights themselves are summed (the opacity, ``C = 1``). Rays without samples get zeros.
    Differentiable with respect to ``weights`` and ``values`` (out-of-place ``index_add``).

    Example (module docstring) with ``values = [[1,0,0], [0,1,0], [0,0,1], [1,1,1], [.5,.5,.5]]``:
    ``[[0.6321, 0.1447, 0.1929], [0.4751, 0.4751, 0.4751], [0, 0, 0]]``; with ``values=None``:
    ``[[0.9698], [0.9502], [0.0]]``.

    Args:
        weights: Weight per sample.
        values: Values per sample, or None.
        ray_indices: Ray index per sample (need not be sorted here).
        n_rays: Number of rays (rows of the output).

    Returns:
        Accumulated values, ``[n_rays, C]`` (``C = 1`` when ``values`` is None).
    """
    src = weights[:, None] if values is None else weights[:, None] * values
    out = torch.zeros(n_rays, src.shape[-1], dtype=src.dtype, device=src.device)
    return out.index_add(0, ray_indices, src)


def pack_mask(mask: Bool[Tensor, "R N"]) -> tuple[Int[Tensor, "S"], Int[Tensor, "S"]]:
    """Pack a dense ``[n_rays, n_samples]`` keep-mask into ``(ray_indices, sample_indices)``, sorted by ray.

    Needs one host sync (``nonzero`` must learn the output size). Row-major order keeps samples sorted by ray and,
    within a ray, by sample position.

    Example: ``mask = [[True, False, True], [False, False, False], [False, True, True]]`` gives
    ``ray_indices = [0, 0, 2, 2]`` and ``sample_indices = [0, 2, 1, 2]``.

    Args:
        mask: Which (ray, sample) pairs to keep.

    Returns:
        ``(ray_indices, sample_indices)`` (int64).
    """
    nz = torch.nonzero(mask)
    return nz[:, 0], nz[:, 1]


def packed_info(ray_indices: Int[Tensor, "S"], n_rays: int) -> Int[Tensor, "n_rays 2"]:
    """First sample index and sample count of every ray, as nerfacc's ``packed_info`` ``[n_rays, 2]``.

    Computed with ``index_add`` and ``cumsum`` on the device (no host sync). Rays without samples get count 0.

    Example: ``ray_indices = [0, 0, 0, 1, 1]``, ``n_rays = 3`` gives ``[[0, 3], [3, 2], [5, 0]]``.

    Args:
        ray_indices: Ray index per sample, sorted.
        n_rays: Number of rays.

    Returns:
        ``[start, count]`` per ray (int64).
    """
    counts = torch.zeros(n_rays, dtype=torch.long, device=ray_indices.device)
    counts.index_add_(0, ray_indices.long(), torch.ones_like(ray_indices, dtype=torch.long))
    starts = torch.cumsum(counts, dim=0) - counts
    return torch.stack([starts, counts], dim=-1)
