"""``nerf-volume-renderer`` and the low-VRAM ``mask-nerf-volume-renderer``.

Both march rays through an occupancy grid (:class:`~fourdfy.renderers.occupancy_grid.OccupancyGrid`, nerfacc
semantics, pure PyTorch), shade the surviving samples with the geometry and material, composite them front to
back and put the background behind: ``comp_rgb = fg + bg * (1 - opacity)``.

Time is a tensor all the way: a batch of ``B`` cameras at ``T`` times each is one packed set of ``B*T*H*W`` rays,
each carrying its time, so a 16-frame clip is one occupancy sampling and one field evaluation (4D-fy rendered it
as 16 calls with the time set on the encoder). Every sample is evaluated at its ray's time.

The mask renderer additionally caps how many samples carry gradients: beyond ``grad_budget`` a random subset
is evaluated with autograd and the rest under ``no_grad`` (4D-fy's ``train_max_nums`` memory knob).
"""

import dataclasses
import math
from typing import Optional

import torch
from jaxtyping import Float, Int
from torch import Tensor

from fourdfy.config import ConfigError, child_slot, choice, ranged
from fourdfy.data.batch import CameraBatch
from fourdfy.registry import register
from fourdfy.renderers.base import RenderOutput, Renderer
from fourdfy.utils.tensor_fields import cat_tensors, scatter_tensors
from fourdfy.renderers.occupancy_grid import OccupancyGrid
from fourdfy.renderers.volume_rendering import accumulate_along_rays, render_weight_from_density


@dataclasses.dataclass
class Shading:
    """Per-sample field values."""

    density: Float[Tensor, "S"]
    rgb: Float[Tensor, "S 3"]
    deformation: Optional[Float[Tensor, "S 3"]] = None
    """Deformation offset of the sample (deformation geometry only)."""


def composite(
    shading: Shading,
    t_starts: Float[Tensor, "S"],
    t_ends: Float[Tensor, "S"],
    ray_indices: Int[Tensor, "S"],
    bg: Float[Tensor, "R 3"],
) -> dict[str, Optional[Tensor]]:
    """Front-to-back compositing of packed samples. Returns per-ray ``comp_rgb``, ``comp_rgb_fg``, ``opacity``,
    ``depth`` (not divided by opacity), ``z_variance`` and ``deformation`` (``None`` without one)."""
    n_rays = bg.shape[0]
    weights, _, _ = render_weight_from_density(t_starts, t_ends, shading.density, ray_indices, n_rays)
    t_mid = (t_starts + t_ends)[:, None] * 0.5
    opacity = accumulate_along_rays(weights, None, ray_indices, n_rays)
    depth = accumulate_along_rays(weights, t_mid, ray_indices, n_rays)
    fg = accumulate_along_rays(weights, shading.rgb, ray_indices, n_rays)
    z_var = accumulate_along_rays(weights, (t_mid - depth[ray_indices]) ** 2, ray_indices, n_rays)
    deformation = None
    if shading.deformation is not None:
        deformation = accumulate_along_rays(weights, shading.deformation, ray_indices, n_rays)
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
        occ_grid_res: int = ranged(32, ge=1)
        """Occupancy grid resolution."""


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

    def sample(self, rays_o: Tensor, rays_d: Tensor, ray_times: Float[Tensor, "R 1"]) -> tuple[Tensor, Tensor, Tensor]:
        """Occupied, visible intervals along the rays (no gradients); densities are culled at each ray's time."""

        def sigma_fn(t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor) -> Tensor:
            pos = rays_o[ray_indices] + rays_d[ray_indices] * ((t_starts + t_ends) * 0.5)[:, None]
            return self.geometry.forward_density(pos, ray_times[ray_indices])[:, 0]

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

    def shade(self, positions: Float[Tensor, "S 3"], viewdirs: Float[Tensor, "S 3"], times: Float[Tensor, "S 1"]) -> Shading:
        """Field and material at sample positions and times."""
        geo = self.geometry(positions, times)
        rgb = self.material(geo.features, viewdirs)
        return Shading(density=geo.density[:, 0], rgb=rgb, deformation=geo.deformation)

    def shade_samples(
        self, ray_indices: Tensor, t_starts: Tensor, t_ends: Tensor, rays_o: Tensor, rays_d: Tensor,
        ray_times: Tensor, grad_budget: Optional[int],
    ) -> Shading:  # fmt: skip
        """Shade packed samples (the mask renderer overrides this to cap the gradient-carrying ones)."""
        dirs = rays_d[ray_indices]
        positions = rays_o[ray_indices] + dirs * ((t_starts + t_ends) * 0.5)[:, None]
        return self.shade(positions, dirs, ray_times[ray_indices])

    def render_rays(
        self, rays_o: Float[Tensor, "R 3"], rays_d: Float[Tensor, "R 3"], ray_times: Float[Tensor, "R 1"],
        grad_budget: Optional[int] = None,
    ) -> tuple[dict, int]:  # fmt: skip
        """Render flat rays, each at its own time; returns per-ray outputs and the number of samples."""
        ray_indices, t_starts, t_ends = self.sample(rays_o, rays_d, ray_times)
        shading = self.shade_samples(ray_indices, t_starts, t_ends, rays_o, rays_d, ray_times, grad_budget)
        bg = self.background(rays_d)
        return composite(shading, t_starts, t_ends, ray_indices, bg), int(ray_indices.shape[0])

    def forward(self, batch: CameraBatch, grad_budget: Optional[int] = None) -> RenderOutput:
        rays_o, rays_d, ray_times = flat_rays(batch)
        if self.training:
            out, n = self.render_rays(rays_o, rays_d, ray_times, grad_budget)
        else:
            chunk = self.cfg.eval_chunk_size
            parts, n = [], 0
            for i in range(0, rays_o.shape[0], chunk):
                o, k = self.render_rays(rays_o[i : i + chunk], rays_d[i : i + chunk], ray_times[i : i + chunk])
                parts.append(o)
                n += k
            out = {key: (None if parts[0][key] is None else torch.cat([p[key] for p in parts])) for key in parts[0]}
        b, t, h, w = batch.batch_size, batch.num_times, batch.height, batch.width
        shaped = {k: (None if v is None else v.reshape(b, t, h, w, -1)) for k, v in out.items()}
        return RenderOutput(**shaped, num_samples=n)


def flat_rays(batch: CameraBatch) -> tuple[Float[Tensor, "R 3"], Float[Tensor, "R 3"], Float[Tensor, "R 1"]]:
    """Rays of every camera-time pair, ``R = B*T*H*W`` in ``[B, T, H, W]`` order, and each ray's time."""
    b, h, w = batch.rays_o.shape[:3]
    t = batch.num_times
    rays_o = batch.rays_o[:, None].expand(b, t, h, w, 3).reshape(-1, 3)
    rays_d = batch.rays_d[:, None].expand(b, t, h, w, 3).reshape(-1, 3)
    ray_times = batch.times[:, :, None, None].expand(b, t, h, w).reshape(-1, 1).to(rays_o.dtype)
    return rays_o, rays_d, ray_times


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
        grid_prune: bool = True
        """Skip empty space with the occupancy grid (false: every cell stays occupied, never updated)."""
        prune_alpha_threshold: bool = True
        train_max_nums: int = 6000000
        """Per-iteration budget of gradient-carrying samples for video batches (divided over sub-renders)."""
        train_max_nums_static: int = 2000000
        """The same budget for image batches."""

        def __post_init__(self) -> None:
            if self.train_max_nums < 1 or self.train_max_nums_static < 1:
                raise ConfigError("train_max_nums/train_max_nums_static: must be >= 1")

    def configure(self) -> None:
        super().configure()
        if not self.cfg.grid_prune:
            self.estimator.binaries.fill_(True)

    def grid_resolution(self) -> int:
        return 32  # hard-coded in 4D-fy's mask renderer

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        if self.cfg.grid_prune:
            super().update_step(epoch, global_step, on_load_weights)

    def planes(self) -> tuple[float, float]:
        return self.cfg.near_plane, self.cfg.far_plane

    def gradient_budget(self, video: bool) -> Optional[int]:
        return self.cfg.train_max_nums if video else self.cfg.train_max_nums_static

    def shade_samples(
        self, ray_indices: Tensor, t_starts: Tensor, t_ends: Tensor, rays_o: Tensor, rays_d: Tensor,
        ray_times: Tensor, grad_budget: Optional[int],
    ) -> Shading:  # fmt: skip
        n = ray_indices.shape[0]
        if not self.training or grad_budget is None or n <= grad_budget or not torch.is_grad_enabled():
            return super().shade_samples(ray_indices, t_starts, t_ends, rays_o, rays_d, ray_times, None)
        dirs = rays_d[ray_indices]
        positions = rays_o[ray_indices] + dirs * ((t_starts + t_ends) * 0.5)[:, None]
        times = ray_times[ray_indices]
        perm = torch.randperm(n, device=positions.device)
        with_grad, without = perm[:grad_budget], perm[grad_budget:]
        graded = self.shade(positions[with_grad], dirs[with_grad], times[with_grad])
        chunk = self.cfg.eval_chunk_size
        with torch.no_grad():
            rest = cat_tensors([
                self.shade(positions[idx], dirs[idx], times[idx])
                for idx in without.split(chunk)
            ])  # fmt: skip
        return scatter_tensors([(with_grad, graded), (without, rest)], like=graded, shape_of=lambda x: (n, *x.shape[1:]))


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

    def gradient_budget(self, video: bool) -> Optional[int]:
        return self.base_renderer.gradient_budget(video)

    def forward(self, batch: CameraBatch, grad_budget: Optional[int] = None) -> RenderOutput:
        """In training: the sub-images one by one, each with ``T * grad_budget // (rows * cols * B)`` samples
        carrying gradients (4D-fy rendered each of the T frames separately with ``grad_budget // (rows * cols
        * B)``). In evaluation: the whole image at once."""
        if not self.training:
            return self.base_renderer(batch)
        rows, cols = self.cfg.block_nums
        b, h, w = batch.rays_o.shape[:3]
        budget = None
        if grad_budget is not None:
            budget = max(grad_budget // (rows * cols * b), 1) * batch.num_times
        pieces = []
        for i in range(rows):
            for j in range(cols):
                sub = dataclasses.replace(
                    batch,
                    rays_o=batch.rays_o[:, i::rows, j::cols],
                    rays_d=batch.rays_d[:, i::rows, j::cols],
                    height=math.ceil((h - i) / rows),
                    width=math.ceil((w - j) / cols),
                )
                index = (slice(None), slice(None), slice(i, None, rows), slice(j, None, cols))
                pieces.append((index, self.base_renderer(sub, budget)))
        first = pieces[0][1]
        out = scatter_tensors(pieces, like=first, shape_of=lambda x: (*x.shape[:2], h, w, x.shape[-1]))
        return dataclasses.replace(out, num_samples=sum(p.num_samples for _, p in pieces))
