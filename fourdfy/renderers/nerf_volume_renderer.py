"""``nerf-volume-renderer`` and the low-VRAM ``mask-nerf-volume-renderer``.

Both march rays through an occupancy grid (:class:`~fourdfy.renderers.occupancy_grid.OccupancyGrid`, nerfacc
semantics, pure PyTorch), shade the surviving samples with the geometry and material at the given time, composite
them front to back and put the background behind: ``comp_rgb = fg + bg * (1 - opacity)``.

The mask renderer additionally caps how many samples carry gradients: beyond ``max_grad_samples`` a random subset
is evaluated with autograd and the rest under ``no_grad`` (4D-fy's ``train_max_nums`` memory knob).
"""

import dataclasses
import math
from typing import Optional

import torch
from jaxtyping import Float, Int
from torch import Tensor

from fourdfy.config import ConfigError, child_slot, choice, ranged
from fourdfy.data.batch import BatchKind, CameraBatch
from fourdfy.registry import register
from fourdfy.renderers.base import RenderOutput, Renderer
from fourdfy.renderers.occupancy_grid import OccupancyGrid
from fourdfy.renderers.volume_rendering import accumulate_along_rays, render_weight_from_density


@dataclasses.dataclass
class Shading:
    """Per-sample field values."""

    density: Float[Tensor, "S"]
    rgb: Float[Tensor, "S 3"]
    dx: Optional[Float[Tensor, "S 3"]] = None


def composite(
    shading: Shading,
    t_starts: Float[Tensor, "S"],
    t_ends: Float[Tensor, "S"],
    ray_indices: Int[Tensor, "S"],
    bg: Float[Tensor, "R 3"],
) -> dict[str, Optional[Tensor]]:
    """Front-to-back compositing of packed samples. Returns per-ray ``comp_rgb``, ``comp_rgb_fg``, ``opacity``,
    ``depth`` (not divided by opacity), ``z_variance`` and ``deformation`` (``None`` without ``dx``)."""
    n_rays = bg.shape[0]
    weights, _, _ = render_weight_from_density(t_starts, t_ends, shading.density, ray_indices, n_rays)
    t_mid = (t_starts + t_ends)[:, None] * 0.5
    opacity = accumulate_along_rays(weights, None, ray_indices, n_rays)
    depth = accumulate_along_rays(weights, t_mid, ray_indices, n_rays)
    fg = accumulate_along_rays(weights, shading.rgb, ray_indices, n_rays)
    z_var = accumulate_along_rays(weights, (t_mid - depth[ray_indices]) ** 2, ray_indices, n_rays)
    deformation = None
    if shading.dx is not None:
        deformation = accumulate_along_rays(weights, shading.dx, ray_indices, n_rays)
    return {
        "comp_rgb": fg + bg * (1.0 - opacity),
        "comp_rgb_fg": fg,
        "comp_rgb_bg": bg,
        "opacity": opacity,
        "depth": depth,
        "z_variance": z_var,
        "deformation": deformation,
    }


@register("nerf-volume-renderer")
class NeRFVolumeRenderer(Renderer):
    """Occupancy-grid NeRF rendering (4D-fy's full-memory renderer)."""

    @dataclasses.dataclass
    class Config(Renderer.Config):
        num_samples_per_ray: int = ranged(512, ge=1)
        """Sets the step size ``sqrt(3) * 2 * radius / num_samples_per_ray``."""
        randomized: bool = True
        """Stratified sampling during training."""
        eval_chunk_size: int = ranged(160000, ge=1)
        """Rays per chunk in evaluation."""
        prune_alpha_threshold: bool = True
        """Drop samples with opacity < 0.01 (or the grid's mean occupancy, if lower) before shading."""
        return_comp_normal: bool = False
        """Normals are not computed by any 4D-fy material; must stay false."""
        return_normal_perturb: bool = False
        """Must stay false (see ``return_comp_normal``)."""
        occ_grid_res: int = ranged(32, ge=1)
        """Occupancy grid resolution."""

        def __post_init__(self) -> None:
            if self.return_comp_normal or self.return_normal_perturb:
                raise ConfigError("return_comp_normal/return_normal_perturb: normals are not supported; set false")

    def configure(self) -> None:
        r = self.cfg.radius
        self.estimator = OccupancyGrid(roi_aabb=[-r, -r, -r, r, r, r], resolution=self.grid_resolution(), levels=1)
        self.render_step_size = 1.732 * 2 * r / self.cfg.num_samples_per_ray

    def grid_resolution(self) -> int:
        return self.cfg.occ_grid_res

    # -- occupancy ---------------------------------------------------------------------------------------------

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        """Refresh the occupancy grid (every 16th step, nerfacc's rule). Static scenes use time 0; dynamic ones a
        random time per refresh, so the grid tracks a decayed maximum over time (as in 4D-fy). The randomness
        comes from a generator seeded by the step, so every data-parallel rank computes the same grid."""
        if on_load_weights or not self.training:
            return
        generator = torch.Generator(device=self.estimator.occs.device).manual_seed(1_000_003 + global_step)
        t = 0.0 if self.geometry.is_static else float(torch.rand((), generator=generator, device=generator.device))

        def occ_eval_fn(x: Tensor) -> Tensor:
            times = torch.full((1, 1), t, dtype=x.dtype, device=x.device)
            return self.geometry.forward_density(x, times) * self.render_step_size

        self.estimator.update_every_n_steps(global_step, occ_eval_fn, occ_thre=0.01, generator=generator)

    # -- rendering ----------------------------------------------------------------------------------------------

    def sample(self, rays_o: Tensor, rays_d: Tensor, times: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Occupied, visible intervals along the rays (no gradients)."""

        def sigma_fn(t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor) -> Tensor:
            pos = rays_o[ray_indices] + rays_d[ray_indices] * ((t_starts + t_ends) * 0.5)[:, None]
            return self.geometry.forward_density(pos, times)[:, 0]

        near, far = self.planes()
        return self.estimator.sampling(
            rays_o, rays_d, sigma_fn, near_plane=near, far_plane=far,
            render_step_size=self.render_step_size,
            alpha_thre=0.01 if self.cfg.prune_alpha_threshold else 0.0,
            stratified=self.cfg.randomized and self.training,
        )  # fmt: skip

    def planes(self) -> tuple[float, float]:
        """Near and far distance of the samples (nerfacc's defaults here)."""
        return 0.0, 1e10

    def shade(self, positions: Float[Tensor, "S 3"], viewdirs: Float[Tensor, "S 3"], times: Tensor) -> Shading:
        """Field and material at sample positions."""
        geo = self.geometry(positions, times)
        rgb = self.material(geo.features, viewdirs)
        return Shading(density=geo.density[:, 0], rgb=rgb, dx=geo.dx)

    def shade_samples(
        self, ray_indices: Tensor, t_starts: Tensor, t_ends: Tensor, rays_o: Tensor, rays_d: Tensor, times: Tensor
    ) -> Shading:
        """Shade packed samples (overridden by the mask renderer to cap the gradient-carrying ones)."""
        dirs = rays_d[ray_indices]
        positions = rays_o[ray_indices] + dirs * ((t_starts + t_ends) * 0.5)[:, None]
        return self.shade(positions, dirs, times)

    def render_rays(self, rays_o: Float[Tensor, "R 3"], rays_d: Float[Tensor, "R 3"], time: float) -> tuple[dict, int]:
        """Render flat rays at one time; returns per-ray outputs and the number of samples."""
        times = torch.full((1, 1), time, dtype=rays_o.dtype, device=rays_o.device)
        ray_indices, t_starts, t_ends = self.sample(rays_o, rays_d, times)
        shading = self.shade_samples(ray_indices, t_starts, t_ends, rays_o, rays_d, times)
        bg = self.background(rays_d)
        return composite(shading, t_starts, t_ends, ray_indices, bg), int(ray_indices.shape[0])

    def forward(self, batch: CameraBatch, time: float) -> RenderOutput:
        b, h, w = batch.rays_o.shape[:3]
        rays_o = batch.rays_o.reshape(-1, 3)
        rays_d = batch.rays_d.reshape(-1, 3)
        if self.training:
            out, n = self.render_rays(rays_o, rays_d, time)
        else:
            chunk = self.cfg.eval_chunk_size
            parts, n = [], 0
            for i in range(0, rays_o.shape[0], chunk):
                o, k = self.render_rays(rays_o[i : i + chunk], rays_d[i : i + chunk], time)
                parts.append(o)
                n += k
            out = {key: (None if parts[0][key] is None else torch.cat([p[key] for p in parts])) for key in parts[0]}
        shaped = {k: (None if v is None else v.reshape(b, h, w, -1)) for k, v in out.items()}
        return RenderOutput(**shaped, num_samples=n)


@register("mask-nerf-volume-renderer")
class MaskNeRFVolumeRenderer(NeRFVolumeRenderer):
    """Occupancy-grid NeRF rendering with a cap on gradient-carrying samples (4D-fy's low-VRAM base renderer;
    4D-fy registered it from ``mask_nerf_renderer.py``)."""

    @dataclasses.dataclass
    class Config(Renderer.Config):
        num_samples_per_ray: int = ranged(512, ge=1)
        eval_chunk_size: int = ranged(160000, ge=1)
        randomized: bool = True
        near_plane: float = 0.0
        far_plane: float = 1e10
        return_comp_normal: bool = False
        """Must stay false (no normals)."""
        return_normal_perturb: bool = False
        """Must stay false (no normals)."""
        estimator: str = choice("occgrid", ("occgrid",), "Only the occupancy grid (4D-fy's only used estimator).")
        grid_prune: bool = True
        """Skip empty space with the occupancy grid (false: every cell stays occupied, never updated)."""
        prune_alpha_threshold: bool = True
        proposal_network_config: Optional[dict] = None
        """Proposal-network estimator settings: unsupported (estimator must be occgrid); must stay null."""
        prop_optimizer_config: Optional[dict] = None
        """Must stay null (see ``proposal_network_config``)."""
        prop_scheduler_config: Optional[dict] = None
        """Must stay null (see ``proposal_network_config``)."""
        num_samples_per_ray_proposal: int = 64
        """Only read by the proposal estimator (unsupported); accepted for 4D-fy configs."""
        num_samples_per_ray_importance: int = 64
        """Only read by the importance estimator (unsupported); accepted for 4D-fy configs."""
        train_max_nums: int = 6000000
        """Per-iteration budget of gradient-carrying samples for video batches (divided over sub-renders)."""
        train_max_nums_static: int = 2000000
        """The same budget for image batches."""

        def __post_init__(self) -> None:
            if self.return_comp_normal or self.return_normal_perturb:
                raise ConfigError("return_comp_normal/return_normal_perturb: normals are not supported; set false")
            if self.proposal_network_config or self.prop_optimizer_config or self.prop_scheduler_config:
                raise ConfigError("proposal_network_config/prop_*: only the occupancy-grid estimator is supported")
            if self.train_max_nums < 1 or self.train_max_nums_static < 1:
                raise ConfigError("train_max_nums/train_max_nums_static: must be >= 1")

    def configure(self) -> None:
        super().configure()
        self.max_grad_samples: Optional[int] = None
        if not self.cfg.grid_prune:
            self.estimator.binaries.fill_(True)

    def grid_resolution(self) -> int:
        return 32  # hard-coded in 4D-fy's mask renderer

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        if self.cfg.grid_prune:
            super().update_step(epoch, global_step, on_load_weights)

    def planes(self) -> tuple[float, float]:
        return self.cfg.near_plane, self.cfg.far_plane

    def shade_samples(
        self, ray_indices: Tensor, t_starts: Tensor, t_ends: Tensor, rays_o: Tensor, rays_d: Tensor, times: Tensor
    ) -> Shading:
        budget = self.max_grad_samples
        n = ray_indices.shape[0]
        if not self.training or budget is None or n <= budget or not torch.is_grad_enabled():
            return super().shade_samples(ray_indices, t_starts, t_ends, rays_o, rays_d, times)
        dirs = rays_d[ray_indices]
        positions = rays_o[ray_indices] + dirs * ((t_starts + t_ends) * 0.5)[:, None]
        perm = torch.randperm(n, device=positions.device)
        with_grad, without = perm[:budget], perm[budget:]
        graded = self.shade(positions[with_grad], dirs[with_grad], times)
        chunk = self.cfg.eval_chunk_size
        with torch.no_grad():
            rest = [self.shade(positions[without[i : i + chunk]], dirs[without[i : i + chunk]], times)
                    for i in range(0, without.shape[0], chunk)]  # fmt: skip

        def scatter(name: str) -> Optional[Tensor]:
            first = getattr(graded, name)
            if first is None:
                return None
            full = first.new_zeros((n, *first.shape[1:]))
            full = full.index_put((with_grad,), first)
            return full.index_put((without,), torch.cat([getattr(r, name) for r in rest]).to(first.dtype))

        return Shading(density=scatter("density"), rgb=scatter("rgb"), dx=scatter("dx"))

    def render_with_budget(self, batch: CameraBatch, time: float, max_grad_samples: Optional[int]) -> RenderOutput:
        """Render with a temporary gradient budget (restored even if rendering fails)."""
        previous = self.max_grad_samples
        self.max_grad_samples = max_grad_samples
        try:
            return self(batch, time)
        finally:
            self.max_grad_samples = previous


@register("stable-nerf-volume-renderer")
class StableNeRFVolumeRenderer(Renderer):
    """4D-fy's low-VRAM "patch" renderer: in training the image is split into ``block_nums`` interleaved
    sub-images (``rays[:, i::3, j::3]``), each rendered by the base (mask) renderer with a gradient budget of
    ``train_max_nums // (blocks * B)`` samples (``train_max_nums_static`` for image batches). In evaluation the base
    renderer renders the whole image."""

    @dataclasses.dataclass
    class Config:
        base_renderer_type: str = ""
        base_renderer: dict = child_slot("renderer", "base_renderer_type")
        mode: str = choice("interval", ("interval",), "Interleaved sub-images (the only mode).")
        block_nums: tuple[int, int] = (3, 3)
        """Sub-image grid (rows, columns)."""

    def configure(self) -> None:
        from fourdfy.registry import build

        if getattr(self.background.cfg, "random_aug", False):
            raise ConfigError(
                "system.background.random_aug: the stable (patch) renderer calls the background once per sub-image, "
                "so a random background would differ between patches; set it false (as 4D-fy's low-VRAM configs do)"
            )
        self.base_renderer = build(
            "renderer", self.cfg.base_renderer_type, self.cfg.base_renderer, f"{self.path}.base_renderer",
            self.geometry, self.material, self.background,
        )  # fmt: skip
        if not isinstance(self.base_renderer, MaskNeRFVolumeRenderer):
            raise ConfigError(f"{self.path}.base_renderer_type: must be mask-nerf-volume-renderer")

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        # once per step (4D-fy updated the occupancy EMA twice on update steps, reference §11.8)
        self.base_renderer.update_step(epoch, global_step, on_load_weights)

    def forward(self, batch: CameraBatch, time: float) -> RenderOutput:
        if not self.training:
            return self.base_renderer(batch, time)
        base = self.base_renderer.cfg
        rows, cols = self.cfg.block_nums
        total = base.train_max_nums if batch.kind == BatchKind.VIDEO else base.train_max_nums_static
        budget = max(total // (rows * cols * batch.batch_size), 1)
        b, h, w = batch.rays_o.shape[:3]
        pieces = {}
        n = 0
        for i in range(rows):
            for j in range(cols):
                sub = dataclasses.replace(
                    batch,
                    rays_o=batch.rays_o[:, i::rows, j::cols],
                    rays_d=batch.rays_d[:, i::rows, j::cols],
                    height=math.ceil((h - i) / rows),
                    width=math.ceil((w - j) / cols),
                )
                pieces[(i, j)] = self.base_renderer.render_with_budget(sub, time, budget)
                n += pieces[(i, j)].num_samples
        fields = {}
        first = pieces[(0, 0)]
        for f in dataclasses.fields(RenderOutput):
            if f.name == "num_samples":
                continue
            if getattr(first, f.name) is None:
                fields[f.name] = None
                continue
            full = getattr(first, f.name).new_zeros((b, h, w, getattr(first, f.name).shape[-1]))
            for (i, j), piece in pieces.items():
                full[:, i::rows, j::cols] = getattr(piece, f.name)
            fields[f.name] = full
        return RenderOutput(**fields, num_samples=n)
