"""``nerf-volume-renderer`` and the low-VRAM ``mask-nerf-volume-renderer``.

Both march rays through an occupancy grid (:class:`~fourdfy.renderers.occupancy_grid.OccupancyGrid`, nerfacc
semantics, pure PyTorch), shade the surviving samples with the geometry and material, composite them front to
back and put the background behind: ``comp_rgb = fg + bg * (1 - opacity)``.

Time is a tensor all the way: a batch of ``B`` cameras at ``T`` times each is one packed set of ``B*T*H*W`` rays,
each carrying its time, so a 16-frame clip is one occupancy sampling and one field evaluation (4D-fy rendered it
as 16 calls with the time set on the encoder). Every sample is evaluated at its ray's time.

The mask renderer additionally caps how many samples carry gradients: beyond ``grad_budget`` a random subset
is evaluated with autograd and the rest under ``no_grad`` (4D-fy's ``train_max_nums`` memory knob). The full
renderer keeps every sample differentiable but, above ``checkpoint_samples`` samples in training, shades them in
activation-checkpointed ray groups, so the per-sample activations of only one group are held at a time.
"""

import dataclasses
import math
from typing import Optional

import torch
import torch.utils.checkpoint
from jaxtyping import Float, Int
from torch import Tensor

from fourdfy.config import ConfigError, child_slot, choice, ranged
from fourdfy.data.batch import CameraBatch
from fourdfy.registry import register
from fourdfy.renderers.base import RenderOutput, Renderer
from fourdfy.utils.device_memory import fits_in_available_memory
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


def composite_foreground(
    shading: Shading,
    t_starts: Float[Tensor, "S"],
    t_ends: Float[Tensor, "S"],
    ray_indices: Int[Tensor, "S"],
    n_rays: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Optional[Tensor]]:
    """Front-to-back compositing of packed samples without the background: per-ray ``(fg [R, 3], opacity [R, 1],
    depth [R, 1], z_variance [R, 1], deformation [R, 3] or None)``.

    ``w_i = T_i (1 - exp(-sigma_i dt_i))`` along each ray; ``fg = sum w_i rgb_i``, ``opacity = sum w_i``,
    ``depth = sum w_i t_i`` (not divided by opacity), ``z_variance = sum w_i (t_i - depth)^2``, ``deformation =
    sum w_i d_i``, with ``t_i`` the interval midpoints. Rays without samples get zeros. Each ray only uses its own
    samples, so rays may be composited in separate groups and concatenated.
    """
    weights, _, _ = render_weight_from_density(t_starts, t_ends, shading.density, ray_indices, n_rays)
    t_mid = (t_starts + t_ends)[:, None] * 0.5
    opacity = accumulate_along_rays(weights, None, ray_indices, n_rays)
    depth = accumulate_along_rays(weights, t_mid, ray_indices, n_rays)
    fg = accumulate_along_rays(weights, shading.rgb, ray_indices, n_rays)
    z_var = accumulate_along_rays(weights, (t_mid - depth[ray_indices]) ** 2, ray_indices, n_rays)
    deformation = None
    if shading.deformation is not None:
        deformation = accumulate_along_rays(weights, shading.deformation, ray_indices, n_rays)
    return fg, opacity, depth, z_var, deformation


def with_background(
    fg: Float[Tensor, "R 3"],
    opacity: Float[Tensor, "R 1"],
    depth: Float[Tensor, "R 1"],
    z_var: Float[Tensor, "R 1"],
    deformation: Optional[Float[Tensor, "R 3"]],
    bg: Float[Tensor, "R 3"],
) -> dict[str, Optional[Tensor]]:
    """Per-ray outputs from the foreground parts of :func:`composite_foreground`: ``comp_rgb = fg + bg * (1 -
    opacity)``, ``comp_rgb_fg``, ``comp_rgb_bg``, ``opacity``, ``depth`` (not divided by opacity), ``z_variance`` and
    ``deformation`` (``None`` without one)."""
    return {
        "comp_rgb": fg + bg * (1.0 - opacity),
        "comp_rgb_fg": fg,
        "comp_rgb_bg": bg,
        "opacity": opacity,
        "depth": depth,
        "z_variance": z_var,
        "deformation": deformation,
    }


class ForwardOnly:
    """A value handed to a checkpointed function for its first call only: :meth:`take` returns it once, then
    ``None``. A plain object, not a tensor, so the checkpoint does not keep the value for the recompute: a group's
    culling encodings serve the forward and are freed with it, and the recompute in backward encodes again."""

    def __init__(self, value: Optional[Tensor]) -> None:
        self._value = value

    def take(self) -> Optional[Tensor]:
        value, self._value = self._value, None
        return value


def ray_groups(ray_indices: Int[Tensor, "S"], n_rays: int, group_samples: int) -> list[tuple[int, int, int, int]]:
    """Split packed samples (sorted by ray) into groups of whole, contiguous rays of about ``group_samples``
    samples each; returns ``(first_ray, end_ray, first_sample, end_sample)`` per group (ends exclusive).

    Rule: the samples are cut at positions ``k * group_samples`` (``k = 1 .. ceil(S / group_samples) - 1``) and each
    cut moves back to the first sample of the ray it falls in; a cut that would leave a group without samples is
    dropped. So a group has fewer than ``group_samples + L`` samples (``L``: the most samples of one ray), every
    group has at least one sample, the groups cover rays ``0 .. n_rays`` and samples ``0 .. S`` in order, and rays
    without samples belong to the group before them (the first group for leading ones). One host sync (the cut
    positions); a single group when ``S <= group_samples``.

    Example (``group_samples = 3``, ``L = 3``)::

        ray_indices = [0, 0, 1, 1, 1, 3, 4, 4]   n_rays = 6
        cuts at samples 3 and 6 -> in rays 1 and 4 -> moved back to samples 2 and 6
        groups: (0, 1, 0, 2), (1, 4, 2, 6), (4, 6, 6, 8)
    """
    if group_samples < 1:
        raise ValueError(f"group_samples must be >= 1, got {group_samples}")
    n = ray_indices.shape[0]
    if n <= group_samples:
        return [(0, n_rays, 0, n)]
    positions = torch.arange(group_samples, n, group_samples, device=ray_indices.device)
    cut_rays = ray_indices[positions]
    cut_samples = torch.searchsorted(ray_indices, cut_rays)
    rays, samples = torch.stack([cut_rays.long(), cut_samples.long()]).tolist()  # the one host sync
    bounds = [(0, 0)]
    for r, s in zip(rays, samples):
        if s > bounds[-1][1]:
            bounds.append((r, s))
    bounds.append((n_rays, n))
    return [(r0, r1, s0, s1) for (r0, s0), (r1, s1) in zip(bounds[:-1], bounds[1:])]


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
        reuse_culling_encoding: bool = True
        """Shade the samples that survive the alpha culling with the hash-grid encodings the culling's density
        pass computed for them, instead of encoding them a second time (4D-fy encoded twice). The grids' backward
        needs only the sample positions (:meth:`~fourdfy.field_components.hash_grid.HashGrid.attach_gradient`), so
        values and gradients are the same; the kept encodings (32 floats per sample at 4D-fy's grid) are held from
        the culling to the shading (under ``checkpoint_samples`` a group's serve its forward only: the recompute in
        backward encodes again, so checkpointing holds no more memory than without the reuse). Applies to
        space-time grids on the torch or Triton path; false: encode twice. Session 11 call A, same call:
        ``fourdfy_stage_1`` 0.160 / 0.157 against 0.171 / 0.173 s/it, ``fourdfy_stage_3`` 0.197 against 0.202,
        ``fourdfy_stage_3_vc`` 0.201 against 0.218."""
        occ_grid_res: int = ranged(32, ge=1)
        """Occupancy grid resolution."""
        checkpoint_samples: int = ranged(1_000_000, ge=0)
        """Gradient-carrying samples per checkpointed group in training. A render with more samples than this is
        split into groups of whole rays of about this many samples (:func:`ray_groups`), each shaded and composited
        under activation checkpointing: only per-ray outputs are kept after the forward, and backward recomputes
        the shading one group at a time (same values and gradients, one extra shading forward). 0 turns it off
        (the whole render's per-sample activations are kept). At 4D-fy's field sizes a sample keeps about 0.75 kB of
        saved activations (fp32 MLPs; measured with saved-tensor hooks) and some 3 kB at the peak of forward and
        backward (stage 1 at 256^2: 39 GiB for 12.4 M samples unchunked), so the default group peaks near 3 GB."""
        checkpoint_memory_fraction: float = ranged(0.5, ge=0.0, le=1.0)
        """``f > 0`` (default 0.5): on a CUDA device, render without checkpointing when its estimated peak (samples x
        ``checkpoint_bytes_per_sample``) is at most ``f`` of the memory PyTorch can still use there
        (:func:`~fourdfy.utils.device_memory.fits_in_available_memory`): a large card skips the extra shading forward of the recompute, a small one
        still checkpoints. 0: checkpoint every training render above ``checkpoint_samples``. Measured in one call on
        an H200 (random field, ``benchmarks/results/iteration_*_memfrac0.5_*``): stage 1 0.252 -> 0.208 s/it (peak
        7.2 -> 19.2 GiB), stage 3 0.331 -> 0.286; under a 22 GiB cap stage 3 checkpoints as before (14.4 GiB)."""
        checkpoint_bytes_per_sample: int = ranged(3500, ge=1)
        """Peak bytes per sample of a render without checkpointing, forward and backward, for
        ``checkpoint_memory_fraction`` (stage 1 at 256^2, fp32 MLPs: 39.3 GiB for 12.4 M samples, 3.4 kB)."""


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
        device = self.estimator.occs.device
        generator = torch.Generator(device=device).manual_seed(1_000_003 + global_step)
        # the time stays on the device: reading it back would synchronise the host on every step, updating or not
        t = (torch.zeros((1, 1), device=device) if self.geometry.is_static
             else torch.rand((1, 1), generator=generator, device=device))  # fmt: skip

        def occ_eval_fn(x: Tensor) -> Tensor:
            return self.geometry.forward_density(x, t.to(x.dtype)) * self.render_step_size

        self.estimator.update_every_n_steps(global_step, occ_eval_fn, occ_thre=0.01, generator=generator)

    # -- rendering ----------------------------------------------------------------------------------------------

    def sample(
        self, rays_o: Tensor, rays_d: Tensor, ray_times: Float[Tensor, "R 1"]
    ) -> tuple[Tensor, Tensor, Tensor, Optional[Tensor]]:
        """Occupied, visible intervals along the rays (no gradients); densities are culled at each ray's time.
        Returns ``(ray_indices, t_starts, t_ends, encoding)``: the kept samples' encodings from the culling pass
        when ``reuse_culling_encoding`` holds and the geometry offers them, else ``None``."""
        reuse = self.cfg.reuse_culling_encoding

        def sigma_fn(t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor) -> tuple[Tensor, Optional[Tensor]]:
            pos = rays_o[ray_indices] + rays_d[ray_indices] * ((t_starts + t_ends) * 0.5)[:, None]
            if reuse:
                density, encoding = self.geometry.density_and_encoding(pos, ray_times[ray_indices])
                return density[:, 0], encoding
            return self.geometry.forward_density(pos, ray_times[ray_indices])[:, 0], None

        near, far = self.planes()
        return self.estimator.sampling(
            rays_o, rays_d, sigma_fn, near_plane=near, far_plane=far,
            render_step_size=self.render_step_size,
            alpha_thre=0.01 if self.cfg.prune_alpha_threshold else 0.0,
            stratified=self.cfg.randomized and self.training, with_extras=True,
        )  # fmt: skip

    def planes(self) -> tuple[float, float]:
        """Near and far distance of the samples (nerfacc's defaults here)."""
        return 0.0, 1e10

    def shade(
        self, positions: Float[Tensor, "S 3"], viewdirs: Float[Tensor, "S 3"], times: Float[Tensor, "S 1"],
        encoding: Optional[Tensor] = None,
    ) -> Shading:  # fmt: skip
        """Field and material at sample positions and times (``encoding``: the samples' encodings from the
        culling pass, reused by the geometry)."""
        geo = self.geometry(positions, times, encoding=encoding)
        rgb = self.material(geo.features, viewdirs)
        return Shading(density=geo.density[:, 0], rgb=rgb, deformation=geo.deformation)

    def shade_samples(
        self, ray_indices: Tensor, t_starts: Tensor, t_ends: Tensor, rays_o: Tensor, rays_d: Tensor,
        ray_times: Tensor, grad_budget: Optional[int], encoding: Optional[Tensor] = None,
    ) -> Shading:  # fmt: skip
        """Shade packed samples (the mask renderer overrides this to cap the gradient-carrying ones)."""
        dirs = rays_d[ray_indices]
        positions = rays_o[ray_indices] + dirs * ((t_starts + t_ends) * 0.5)[:, None]
        return self.shade(positions, dirs, ray_times[ray_indices], encoding)

    def render_rays(
        self, rays_o: Float[Tensor, "R 3"], rays_d: Float[Tensor, "R 3"], ray_times: Float[Tensor, "R 1"],
        grad_budget: Optional[int] = None,
    ) -> tuple[dict, int]:  # fmt: skip
        """Render flat rays, each at its own time; returns per-ray outputs and the number of samples. In training
        with gradients and more samples than :meth:`checkpoint_group_samples`, the shading and compositing run in
        checkpointed ray groups (:meth:`shade_and_composite_checkpointed`)."""
        ray_indices, t_starts, t_ends, encoding = self.sample(rays_o, rays_d, ray_times)
        n = int(ray_indices.shape[0])
        group = self.checkpoint_group_samples(grad_budget)
        checkpoint = group > 0 and n > group and self.training and torch.is_grad_enabled()
        if checkpoint and not self.fits_unchunked(n, rays_o):
            parts = self.shade_and_composite_checkpointed(
                ray_indices, t_starts, t_ends, rays_o, rays_d, ray_times, group, encoding
            )
        else:
            shading = self.shade_samples(
                ray_indices, t_starts, t_ends, rays_o, rays_d, ray_times, grad_budget, encoding
            )
            parts = composite_foreground(shading, t_starts, t_ends, ray_indices, rays_o.shape[0])
        bg = self.background(rays_d)
        return with_background(*parts, bg), n

    def checkpoint_group_samples(self, grad_budget: Optional[int]) -> int:
        """Samples per checkpointed group (``checkpoint_samples``); 0 (no checkpointing) under a gradient budget."""
        return self.cfg.checkpoint_samples if grad_budget is None else 0

    def fits_unchunked(self, n_samples: int, like: Tensor) -> bool:
        """Whether a render of ``n_samples`` may skip checkpointing (``checkpoint_memory_fraction``) on the device
        of ``like``: its estimated peak, ``n_samples x checkpoint_bytes_per_sample``, fits there."""
        n_bytes = n_samples * self.cfg.checkpoint_bytes_per_sample
        return fits_in_available_memory(n_bytes, like.device, self.cfg.checkpoint_memory_fraction)

    def shade_and_composite_checkpointed(
        self, ray_indices: Tensor, t_starts: Tensor, t_ends: Tensor, rays_o: Tensor, rays_d: Tensor,
        ray_times: Tensor, group_samples: int, encoding: Optional[Tensor] = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Optional[Tensor]]:  # fmt: skip
        """:func:`composite_foreground` of all rays, computed in ray groups of about ``group_samples`` samples
        (:func:`ray_groups`), each under ``torch.utils.checkpoint`` (non-reentrant; the RNG state is replayed in the
        recompute): the samples' activations of a group are freed after its forward and rebuilt in backward. The
        culling's ``encoding`` of a group serves its forward only (:class:`ForwardOnly`): the recompute encodes the
        group again, so no encoding is held until the backward and checkpointing keeps the memory it had before
        the reuse."""
        outputs = []
        for r0, r1, s0, s1 in ray_groups(ray_indices, rays_o.shape[0], group_samples):
            outputs.append(torch.utils.checkpoint.checkpoint(
                self._shade_and_composite_group, ray_indices[s0:s1] - r0, t_starts[s0:s1], t_ends[s0:s1],
                rays_o[r0:r1], rays_d[r0:r1], ray_times[r0:r1],
                ForwardOnly(None if encoding is None else encoding[s0:s1]), use_reentrant=False,
            ))  # fmt: skip
        return tuple(None if out[0] is None else torch.cat(out) for out in zip(*outputs))

    def _shade_and_composite_group(
        self, ray_indices: Tensor, t_starts: Tensor, t_ends: Tensor, rays_o: Tensor, rays_d: Tensor, ray_times: Tensor,
        encoding: "ForwardOnly",
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Optional[Tensor]]:  # fmt: skip
        shading = self.shade_samples(ray_indices, t_starts, t_ends, rays_o, rays_d, ray_times, None, encoding.take())
        return composite_foreground(shading, t_starts, t_ends, ray_indices, rays_o.shape[0])

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
        reuse_culling_encoding: bool = True
        """Shade with the alpha culling's hash-grid encodings (see ``nerf-volume-renderer``'s key): the samples
        beyond the gradient budget then need no encoding at all."""
        train_max_nums: int = 6000000
        """Per-iteration budget of gradient-carrying samples for video batches (divided over sub-renders)."""
        train_max_nums_static: int = 2000000
        """The same budget for image batches."""
        train_no_grad_chunk_size: int = ranged(1_000_000, ge=1)
        """Samples per chunk when the samples beyond the budget are shaded under ``no_grad`` in training (this
        project's key; 4D-fy chunked them by 160,000, ``eval_chunk_size``). Chunks change no value: each sample is
        shaded alone. Larger chunks mean fewer launches: under the patch renderer an image batch makes 9 sub-renders,
        each of some 10^6 samples beyond its budget, so 160,000 made ~54 field calls per step; at 10^6,
        ``fourdfy_stage_3_vc`` ran 0.280 / 0.310 s/it against 0.366 / 0.339 (session 10 call C, same call, peak
        memory unchanged). A chunk holds its samples' field temporaries (estimated at some 0.5 kB per sample) while it is shaded."""

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

    def checkpoint_group_samples(self, grad_budget: Optional[int]) -> int:
        return 0  # this renderer caps the gradient-carrying samples instead (train_max_nums)

    def shade_samples(
        self, ray_indices: Tensor, t_starts: Tensor, t_ends: Tensor, rays_o: Tensor, rays_d: Tensor,
        ray_times: Tensor, grad_budget: Optional[int], encoding: Optional[Tensor] = None,
    ) -> Shading:  # fmt: skip
        n = ray_indices.shape[0]
        if not self.training or grad_budget is None or n <= grad_budget or not torch.is_grad_enabled():
            return super().shade_samples(ray_indices, t_starts, t_ends, rays_o, rays_d, ray_times, None, encoding)
        dirs = rays_d[ray_indices]
        positions = rays_o[ray_indices] + dirs * ((t_starts + t_ends) * 0.5)[:, None]
        times = ray_times[ray_indices]
        perm = torch.randperm(n, device=positions.device)
        with_grad, without = perm[:grad_budget], perm[grad_budget:]

        def part(idx: Tensor) -> Optional[Tensor]:
            return None if encoding is None else encoding[idx]

        graded = self.shade(positions[with_grad], dirs[with_grad], times[with_grad], part(with_grad))
        chunk = self.cfg.train_no_grad_chunk_size
        with torch.no_grad():
            rest = cat_tensors([
                self.shade(positions[idx], dirs[idx], times[idx], part(idx))
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
