"""Occupancy grid: nerfacc-compatible state, marching rule, culling, EMA update and chunking invariance."""

import math

import pytest
import torch

from fourdfy.renderers.occupancy_grid import OccupancyGrid
from fourdfy.renderers.volume_rendering import ray_aabb_intersect

STEP = 1.732 * 2 / 512  # 4D-fy's render_step_size for radius 1 and 512 samples per ray


def _rays_at_box(n: int, seed: int, radius: float = 3.0, spread: float = 0.9):
    """Rays from a sphere of ``radius`` aimed at random points inside the box (all hit it)."""
    g = torch.Generator().manual_seed(seed)
    origins = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1) * radius
    targets = (torch.rand(n, 3, generator=g) * 2 - 1) * spread
    return origins, torch.nn.functional.normalize(targets - origins, dim=-1)


def _midpoints(rays_o, rays_d, ray_indices, t_starts, t_ends):
    return rays_o[ray_indices] + rays_d[ray_indices] * ((t_starts + t_ends) / 2)[:, None]


def _cell_of(points: torch.Tensor, res: int) -> torch.Tensor:
    """Integer cell of points in [-1, 1]^3 (independent of the module's helper)."""
    return ((points + 1) / 2 * res).floor().long().clamp(0, res - 1)


def test_state_dict_matches_nerfacc_buffers():
    grid = OccupancyGrid()
    sd = grid.state_dict()
    assert list(sd.keys()) == ["resolution", "aabbs", "occs", "binaries"]
    assert sd["resolution"].dtype == torch.int32 and sd["resolution"].tolist() == [32, 32, 32]
    assert sd["aabbs"].dtype == torch.float32 and sd["aabbs"].tolist() == [[-1.0, -1.0, -1.0, 1.0, 1.0, 1.0]]
    assert sd["occs"].shape == (32**3,) and sd["occs"].dtype == torch.float32 and sd["occs"].abs().sum() == 0
    # nerfacc initialises binaries to all False: nothing is sampled before the first update.
    assert sd["binaries"].shape == (1, 32, 32, 32) and sd["binaries"].dtype == torch.bool
    assert not sd["binaries"].any()

    two = OccupancyGrid(roi_aabb=[0.0, 0.0, 0.0, 2.0, 2.0, 2.0], resolution=[4, 5, 6], levels=2)
    assert two.aabbs.tolist() == [[0.0, 0.0, 0.0, 2.0, 2.0, 2.0], [-1.0, -1.0, -1.0, 3.0, 3.0, 3.0]]
    assert two.binaries.shape == (2, 4, 5, 6) and two.occs.shape == (2 * 120,)

    # A checkpoint of an updated grid loads strictly into a fresh one (4D-fy keys `estimator.*`).
    grid.train()
    grid.update_every_n_steps(0, lambda x: (x.norm(dim=-1) < 0.5).float())
    fresh = OccupancyGrid()
    fresh.load_state_dict({f"{k}": v for k, v in grid.state_dict().items()}, strict=True)
    assert torch.equal(fresh.binaries, grid.binaries) and torch.equal(fresh.occs, grid.occs)


def test_constructor_validation():
    with pytest.raises(ValueError, match="roi_aabb"):
        OccupancyGrid(roi_aabb=[1.0, 0.0, 0.0, 0.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="resolution"):
        OccupancyGrid(resolution=[4, 4])
    with pytest.raises(ValueError, match="levels"):
        OccupancyGrid(levels=0)
    with pytest.raises(TypeError, match="implementation"):  # the nerfacc fast path and its switch are gone
        OccupancyGrid(implementation="nerfacc")


def test_hand_example_lattice_is_anchored_at_near_plane():
    grid = OccupancyGrid()
    grid.binaries.fill_(True)
    rays_o = torch.tensor([[-3.0, 0.0, 0.0], [-3.2, 0.0, 0.0], [0.0, 0.0, 0.0]])
    rays_d = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    ray_indices, t_starts, t_ends = grid.sampling(rays_o, rays_d, render_step_size=0.5)
    # Ray 0: box [2, 4] -> midpoints 2.25 .. 3.75. Ray 1: box [2.2, 4.2]; the lattice stays at multiples of 0.5
    # from near = 0, so the first interval [2.0, 2.5] starts before the entry (its midpoint 2.25 >= 2.2) and the
    # interval [4.0, 4.5] is absent (midpoint 4.25 >= 4.2). Ray 2 starts inside: [0, 1] -> two intervals.
    assert ray_indices.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    assert t_starts.tolist() == [2.0, 2.5, 3.0, 3.5, 2.0, 2.5, 3.0, 3.5, 0.0, 0.5]
    assert t_ends.tolist() == [2.5, 3.0, 3.5, 4.0, 2.5, 3.0, 3.5, 4.0, 0.5, 1.0]
    assert ray_indices.dtype == torch.long

    # A near plane inside the box moves the lattice origin with it: midpoints 2.85, 3.35, 3.85 (< 4).
    ray_indices, t_starts, _ = grid.sampling(rays_o[:1], rays_d[:1], near_plane=2.6, render_step_size=0.5)
    assert ray_indices.tolist() == [0, 0, 0]
    torch.testing.assert_close(t_starts, torch.tensor([2.6, 3.1, 3.6]))
    # A far plane cuts the segment the same way (midpoints < far): [2, 3.1) keeps midpoints 2.25, 2.75.
    _, t_starts, _ = grid.sampling(rays_o[:1], rays_d[:1], far_plane=3.1, render_step_size=0.5)
    assert t_starts.tolist() == [2.0, 2.5]


def test_all_occupied_samples_inside_box_evenly_spaced_and_count_matches_chord():
    grid = OccupancyGrid()
    grid.binaries.fill_(True)
    rays_o, rays_d = _rays_at_box(300, seed=0)
    ray_indices, t_starts, t_ends = grid.sampling(rays_o, rays_d, render_step_size=STEP)
    mids = _midpoints(rays_o, rays_d, ray_indices, t_starts, t_ends)
    assert mids.abs().max() <= 1.0 + 1e-5
    torch.testing.assert_close(t_ends - t_starts, torch.full_like(t_starts, STEP), atol=1e-6, rtol=0)
    same_ray = ray_indices[1:] == ray_indices[:-1]
    assert (ray_indices[1:] >= ray_indices[:-1]).all()  # sorted by ray
    assert torch.equal(t_starts[1:][same_ray], t_ends[:-1][same_ray])  # contiguous, shared endpoints
    # The lattice is anchored at near = 0: every start is an integer number of steps.
    k = t_starts / STEP
    assert (k - k.round()).abs().max() < 1e-3
    t_near, t_far, hit = ray_aabb_intersect(rays_o, rays_d, grid.aabbs[0])
    assert hit.all()
    counts = torch.bincount(ray_indices, minlength=300)
    expected = (t_far - t_near) / STEP
    assert ((counts - expected).abs() <= 1.0 + 1e-4).all()


def test_partially_occupied_grid_only_samples_occupied_cells():
    res = 8
    grid = OccupancyGrid(resolution=res)
    g = torch.Generator().manual_seed(1)
    pattern = torch.rand(1, res, res, res, generator=g) < 0.4
    pattern[:, res // 2 :] = False  # and the whole x >= 0 half is empty
    grid.binaries.copy_(pattern)
    rays_o, rays_d = _rays_at_box(400, seed=2)
    step = 0.02
    ray_indices, t_starts, t_ends = grid.sampling(rays_o, rays_d, render_step_size=step)
    assert ray_indices.shape[0] > 100
    mids = _midpoints(rays_o, rays_d, ray_indices, t_starts, t_ends)
    assert (mids[:, 0] < 1e-6).all()
    cells = _cell_of(mids, res)
    assert pattern[0, cells[:, 0], cells[:, 1], cells[:, 2]].all()

    # Completeness against a dense brute-force march: per ray, every lattice midpoint in the box segment whose cell
    # is occupied must be returned (float ties on cell boundaries may flip a handful).
    t_near, t_far, _ = ray_aabb_intersect(rays_o, rays_d, grid.aabbs[0])
    k = torch.arange(int(6.0 / step) + 2, dtype=torch.float32)
    dense_mid = (k + 0.5) * step
    valid = (dense_mid[None] >= t_near[:, None]) & (dense_mid[None] < t_far[:, None])
    pts = rays_o[:, None] + rays_d[:, None] * dense_mid[None, :, None]
    c = _cell_of(pts, res)
    occupied = pattern[0, c[..., 0], c[..., 1], c[..., 2]] & valid
    expected = occupied.sum(dim=1)
    got = torch.bincount(ray_indices, minlength=400)
    assert (got - expected).abs().sum() <= 4


def test_empty_grid_gives_no_samples_and_never_calls_sigma_fn():
    grid = OccupancyGrid()
    rays_o, rays_d = _rays_at_box(50, seed=3)

    def sigma_fn(t0, t1, ri):
        raise AssertionError("sigma_fn must not be called without samples")

    ray_indices, t_starts, t_ends = grid.sampling(
        rays_o, rays_d, sigma_fn, render_step_size=STEP, alpha_thre=0.01, stratified=True
    )
    assert ray_indices.shape == t_starts.shape == t_ends.shape == (0,)
    assert ray_indices.dtype == torch.long and t_starts.dtype == torch.float32
    # Rays that all miss the box, and a degenerate zero direction from inside: also nothing.
    grid.binaries.fill_(True)
    out = grid.sampling(rays_o + 10.0, rays_d.abs(), render_step_size=STEP)
    assert out[0].shape == (0,)
    out = grid.sampling(torch.zeros(1, 3), torch.zeros(1, 3), render_step_size=STEP)
    assert out[0].shape == (0,)


def _wall_sigma_fn(rays_o, rays_d, sigma_wall: float, sigma_air: float = 0.0):
    """Density sigma_wall for x >= 0 (an opaque wall filling the x >= 0 half), sigma_air elsewhere."""

    def sigma_fn(t_starts, t_ends, ray_indices):
        x = _midpoints(rays_o, rays_d, ray_indices, t_starts, t_ends)[:, 0]
        return torch.where(x >= 0, sigma_wall, sigma_air)

    return sigma_fn


def test_transmittance_culling_removes_samples_behind_opaque_wall():
    grid = OccupancyGrid()
    grid.binaries.fill_(True)
    rays_o = torch.tensor([[-3.0, 0.1, 0.2], [-3.0, -0.3, 0.4]])
    rays_d = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    sigma_fn = _wall_sigma_fn(rays_o, rays_d, sigma_wall=1e4)
    all_ri, all_t0, all_t1 = grid.sampling(rays_o, rays_d, render_step_size=STEP)
    ri, t0, t1 = grid.sampling(rays_o, rays_d, sigma_fn, render_step_size=STEP, early_stop_eps=1e-4)
    x_all = _midpoints(rays_o, rays_d, all_ri, all_t0, all_t1)[:, 0]
    x = _midpoints(rays_o, rays_d, ri, t0, t1)[:, 0]
    for ray in (0, 1):
        # Everything in front of the wall survives (alpha test off: occs.mean() = 0 clamps alpha_thre to 0) ...
        assert (ri == ray).sum() == ((all_ri == ray) & (x_all < 0)).sum() + 1
        # ... plus exactly the first sample inside the wall; the rest of the wall is behind T < 1e-4.
        in_wall = x[(ri == ray) & (x >= 0)]
        assert in_wall.numel() == 1 and in_wall.item() == x_all[(all_ri == ray) & (x_all >= 0)].min().item()


def test_alpha_culling_and_clamp_to_mean_occupancy():
    grid = OccupancyGrid()
    grid.binaries.fill_(True)
    rays_o = torch.tensor([[-3.0, 0.1, 0.2]])
    rays_d = torch.tensor([[1.0, 0.0, 0.0]])
    # Faint "air" in front (alpha ~ 0.0068 per step) and a wall.
    sigma_air = 1.0
    alpha_air = 1 - math.exp(-sigma_air * STEP)
    sigma_fn = _wall_sigma_fn(rays_o, rays_d, sigma_wall=1e4, sigma_air=sigma_air)
    n_front = (grid.sampling(rays_o, rays_d, render_step_size=STEP)[1] < 3.0 - STEP / 2).sum().item()

    grid.occs.fill_(1.0)  # mean 1 -> alpha_thre stays 0.01 > alpha_air: the air is culled, only the wall remains
    ri, t0, t1 = grid.sampling(rays_o, rays_d, sigma_fn, render_step_size=STEP, alpha_thre=0.01)
    assert ri.numel() == 1 and t0.item() >= 3.0 - STEP

    grid.occs.fill_(0.001)  # mean 0.001 < alpha_air: nerfacc lowers alpha_thre to 0.001, so the air is kept
    ri, t0, t1 = grid.sampling(rays_o, rays_d, sigma_fn, render_step_size=STEP, alpha_thre=0.01)
    assert alpha_air > 0.001
    assert ri.numel() == n_front + 1


def test_stratified_offsets_in_unit_step_and_reproducible():
    grid = OccupancyGrid()
    grid.binaries.fill_(True)
    rays_o, rays_d = _rays_at_box(256, seed=4)
    gen = torch.Generator().manual_seed(123)
    ri, t0, t1 = grid.sampling(rays_o, rays_d, render_step_size=STEP, stratified=True, generator=gen)
    # Per ray, every start is near + offset + k * step, with one offset per ray in [0, step).
    frac = t0 / STEP - torch.floor(t0 / STEP)
    first = torch.ones_like(ri, dtype=torch.bool)
    first[1:] = ri[1:] != ri[:-1]
    per_ray = frac[first]
    assert per_ray.min() >= 0 and per_ray.max() < 1
    spread = (frac - per_ray[torch.cumsum(first.long(), 0) - 1]).abs()
    assert (torch.minimum(spread, 1 - spread) < 2e-3).all()  # same offset along the ray (mod float wrap-around)
    assert per_ray.min() < 0.1 and per_ray.max() > 0.9  # actually random, not a constant shift

    again = grid.sampling(
        rays_o, rays_d, render_step_size=STEP, stratified=True, generator=torch.Generator().manual_seed(123)
    )
    assert torch.equal(again[0], ri) and torch.equal(again[1], t0)
    torch.manual_seed(7)
    a = grid.sampling(rays_o, rays_d, render_step_size=STEP, stratified=True)
    torch.manual_seed(7)
    b = grid.sampling(rays_o, rays_d, render_step_size=STEP, stratified=True)
    assert torch.equal(a[1], b[1])


def _half_occupied_grid_and_wall():
    """An 8^3 grid with about half its cells occupied, 200 rays at it and a wall's ``sigma_fn`` (dense enough that
    the alpha culling drops samples): ``(grid, rays_o, rays_d, sigma_fn)``."""
    res = 8
    grid = OccupancyGrid(resolution=res)
    grid.binaries.copy_(torch.rand(1, res, res, res, generator=torch.Generator().manual_seed(5)) < 0.5)
    grid.occs.fill_(0.5)
    rays_o, rays_d = _rays_at_box(200, seed=6)
    return grid, rays_o, rays_d, _wall_sigma_fn(rays_o, rays_d, sigma_wall=20.0, sigma_air=0.5)


def test_chunking_gives_identical_results():
    grid, rays_o, rays_d, sigma_fn = _half_occupied_grid_and_wall()
    results = []
    for budget in (10**9, 1000, 37, 1):
        out = grid.sampling(
            rays_o,
            rays_d,
            sigma_fn,
            render_step_size=STEP,
            alpha_thre=0.01,
            stratified=True,
            generator=torch.Generator().manual_seed(9),
            max_candidates=budget,
        )
        results.append(out)
    assert results[0][0].numel() > 1000
    for out in results[1:]:
        for a, b in zip(results[0], out):
            assert torch.equal(a, b)


def test_sigma_fn_shape_is_checked():
    grid = OccupancyGrid()
    grid.binaries.fill_(True)
    rays_o, rays_d = _rays_at_box(4, seed=7)
    ok = grid.sampling(rays_o, rays_d, lambda a, b, r: torch.ones(a.shape[0], 1), render_step_size=STEP)
    assert ok[0].numel() > 0
    with pytest.raises(ValueError, match="sigma_fn"):
        grid.sampling(rays_o, rays_d, lambda a, b, r: torch.ones(a.shape[0], 2), render_step_size=STEP)


def test_torch_path_limits_are_explicit():
    rays_o, rays_d = _rays_at_box(4, seed=8)
    with pytest.raises(NotImplementedError, match="levels=1"):
        OccupancyGrid(levels=2).sampling(rays_o, rays_d, render_step_size=STEP)
    with pytest.raises(NotImplementedError, match="cone_angle"):
        OccupancyGrid().sampling(rays_o, rays_d, render_step_size=STEP, cone_angle=0.004)
    with pytest.raises(ValueError, match="render_step_size"):
        OccupancyGrid().sampling(rays_o, rays_d, render_step_size=0.0)


def _ball(radius: float = 0.5):
    return lambda x: (x.norm(dim=-1) < radius).float()


def test_update_ball_marks_inside_cells_only_through_and_after_warmup():
    res = 16
    grid = OccupancyGrid(resolution=res)
    grid.train()
    centres = grid.cell_coords(torch.arange(res**3))
    lo = -1 + centres * (2 / res)
    hi = lo + 2 / res
    farthest = torch.maximum(lo.abs(), hi.abs()).norm(dim=-1)
    nearest = torch.where((lo <= 0) & (hi >= 0), torch.zeros_like(lo), torch.minimum(lo.abs(), hi.abs())).norm(dim=-1)
    inside = (farthest < 0.5).view(1, res, res, res)
    outside = (nearest > 0.5).view(1, res, res, res)
    assert inside.sum() > 0 and outside.sum() > 0

    torch.manual_seed(0)
    for step in range(0, 256):
        grid.update_every_n_steps(step, _ball())
    assert grid.binaries[inside].all() and not grid.binaries[outside].any()
    for step in range(256, 256 + 8 * 16):
        grid.update_every_n_steps(step, _ball())
    assert grid.binaries[inside].all() and not grid.binaries[outside].any()


def test_update_rule_period_ema_threshold_and_eval_mode():
    res = 4
    grid = OccupancyGrid(resolution=res)
    grid.train()
    n_cells = res**3
    seen = []

    def const(value):
        def fn(x):
            seen.append(x)
            return torch.full((x.shape[0], 1), value)  # [N, 1] is accepted like nerfacc's squeeze(-1)

        return fn

    grid.update_every_n_steps(0, const(1.0))
    assert seen[-1].shape == (n_cells, 3)
    assert torch.equal(grid.occs, torch.ones(n_cells)) and grid.binaries.all()
    # Jittered points: one per cell, inside that cell.
    cells = _cell_of(seen[-1], res)
    flat = (cells[:, 0] * res + cells[:, 1]) * res + cells[:, 2]
    assert torch.equal(flat, torch.arange(n_cells))

    grid.update_every_n_steps(5, const(7.0))  # 5 % 16 != 0: nothing happens
    assert len(seen) == 1 and torch.equal(grid.occs, torch.ones(n_cells))

    grid.update_every_n_steps(16, const(0.0))  # EMA: max(1 * 0.95, 0)
    torch.testing.assert_close(grid.occs, torch.full((n_cells,), 0.95))
    grid.update_every_n_steps(32, const(0.5))  # max(0.9025, 0.5)
    torch.testing.assert_close(grid.occs, torch.full((n_cells,), 0.9025))
    grid.update_every_n_steps(48, const(0.95))  # new value wins when larger
    torch.testing.assert_close(grid.occs, torch.full((n_cells,), 0.95))

    # Threshold = min(mean(occs), occ_thre): a fixed 0.01 would mark nothing here, the mean marks half.
    fresh = OccupancyGrid(resolution=res)
    fresh.train()
    fresh.update_every_n_steps(0, lambda x: torch.where(x[:, 0] < 0, 0.005, 0.0))
    assert fresh.binaries[0, : res // 2].all() and not fresh.binaries[0, res // 2 :].any()

    grid.eval()
    with pytest.raises(RuntimeError, match="training"):
        grid.update_every_n_steps(0, const(1.0))
    grid.update(0, const(2.0))  # explicit update works in eval mode
    assert torch.equal(grid.occs, torch.full((n_cells,), 2.0))


def test_update_after_warmup_samples_quarter_plus_occupied_cells():
    res = 8
    n_cells = res**3
    quarter = n_cells // 4
    grid = OccupancyGrid(resolution=res)
    grid.train()
    sizes = []

    def record(x):
        sizes.append(x.shape[0])
        return (x[:, 0] < -0.5).float()  # 1/4 of the cells (x index 0, 1)

    grid.update_every_n_steps(0, record)
    n_occupied = int(grid.binaries.sum())
    assert n_occupied == n_cells // 4
    grid.update_every_n_steps(256, record)
    assert sizes[-1] == quarter + n_occupied  # all occupied cells fit in the quarter budget
    grid.binaries.fill_(True)  # more occupied cells than the budget: a quarter of them
    grid.update_every_n_steps(272, record)
    assert sizes[-1] == 2 * quarter
    # Cells not drawn this time only decay; drawn cells never drop below their fresh evaluation.
    assert (grid.occs <= 1.0).all()


def test_update_is_reproducible_with_global_seed_and_generator():
    def run(seed=None, gen=None):
        grid = OccupancyGrid(resolution=8)
        grid.train()
        if seed is not None:
            torch.manual_seed(seed)
        for step in (0, 256, 272):
            grid.update_every_n_steps(step, lambda x: torch.sin(5 * x).prod(dim=-1).abs(), generator=gen)
        return grid.occs.clone()

    assert torch.equal(run(seed=3), run(seed=3))
    assert torch.equal(run(gen=torch.Generator().manual_seed(4)), run(gen=torch.Generator().manual_seed(4)))
    assert not torch.equal(run(seed=3), run(seed=5))


def test_extras_follow_the_kept_samples_in_every_chunking():
    """``with_extras``: what ``sigma_fn`` returns beside the densities comes back for exactly the kept samples, in
    their order (here the midpoints themselves), whatever the candidate chunks; ``None`` extras give ``None``."""
    grid, rays_o, rays_d, wall = _half_occupied_grid_and_wall()

    def sigma_fn(t_starts, t_ends, ray_indices):
        return wall(t_starts, t_ends, ray_indices), _midpoints(rays_o, rays_d, ray_indices, t_starts, t_ends)

    plain = grid.sampling(rays_o, rays_d, wall, render_step_size=STEP, alpha_thre=0.01)
    for budget in (10**9, 37):
        ri, t0, t1, extras = grid.sampling(
            rays_o, rays_d, sigma_fn, render_step_size=STEP, alpha_thre=0.01, max_candidates=budget, with_extras=True
        )
        assert all(torch.equal(a, b) for a, b in zip((ri, t0, t1), plain))
        assert extras.shape == (ri.shape[0], 3) and ri.shape[0] > 1000
        assert torch.equal(extras, _midpoints(rays_o, rays_d, ri, t0, t1))
    out = grid.sampling(rays_o, rays_d, lambda a, b, r: (wall(a, b, r), None), render_step_size=STEP, with_extras=True)
    assert out[3] is None and out[0].shape[0] > 0
    assert grid.sampling(rays_o, rays_d, None, render_step_size=STEP, with_extras=True)[3] is None  # no culling
    with pytest.raises(ValueError, match="sigma_fn must return"):
        grid.sampling(rays_o, rays_d, wall, render_step_size=STEP, with_extras=True)
    with pytest.raises(ValueError, match="one row per sample"):
        grid.sampling(rays_o, rays_d, lambda a, b, r: (wall(a, b, r), torch.zeros(1, 3)), render_step_size=STEP,
                      with_extras=True)  # fmt: skip
