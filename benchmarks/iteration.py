"""Per-iteration time, its breakdown and peak memory of a training stage at its real settings, with full-size
random-weight networks (no downloads: the benchmark machines have no network).

    python benchmarks/iteration.py --config configs/fourdfy_stage_3.yaml            # any stage config
    python benchmarks/iteration.py --stage 1 --phase early                          # 8 views at 64^2 (steps < 5000)
    python benchmarks/iteration.py --stage 2 --fast-paths off                       # every fast path switched off
    python benchmarks/iteration.py --config configs/fourdfy_stage_3_vc.yaml --field both   # random, then fitted
    python benchmarks/iteration.py --estimate benchmarks/results/iteration_*_fast_nvidia-h200.json  # whole prompt
    python benchmarks/iteration.py --stage 3 --tiny --device cpu --steps 2 --field both   # CPU smoke (CI runs it)

What it does, in order:

1. Builds the stage (``fourdfy-system``, data module, renderer, guidances, AdamW) from the config with the
   pretrained networks replaced by reserved random-weight names of the same size (``fourdfy/stand_ins``), plus any
   ``key=value`` overrides. ``--fast-paths off`` adds the overrides of :data:`FAST_PATH_SWITCHES` that apply to the
   config, so "off" and "on" differ only in those switches.
2. Runs the real Lightning training loop, with what ``launch.py`` adds to it (the divergence guard; TensorBoard and
   CSV loggers writing every ``trainer.log_every_n_steps``, unless ``--no-loggers``): ``--warmup`` untimed
   iterations (more until every drawn branch has run once, since a branch's first step captures its CUDA graphs),
   ``--steps`` timed ones (not synchronised, as in a training run, where the host may run ahead of the GPU: on
   CUDA an iteration's time is the GPU's, between events recorded at the ends of consecutive iterations; the
   host's clock between the same points is kept as ``host_seconds``; an iteration runs from the end of the
   previous one, so drawing and copying the batch and the other callbacks' hooks count: "between ms" in the
   table), then
   ``--breakdown-steps`` iterations in which every phase is synchronised and timed: occupancy update, render
   forward, guidance (VAE encode separately), backward, optimizer, and the rest ("host": data, Lightning, loss
   assembly, logging). Per branch and overall; samples per ray. On CUDA, one more iteration of each branch counts
   the synchronising CUDA calls (host syncs) it makes, by source line, from its start to the next one's (the
   end-of-step hooks, the loggers and the next batch included).
3. ``--field fitted`` (or ``both``, after the random-field measurement) first fits the field photometrically to a
   synthetic object (two spheres, the smaller one moving with time) for ``--fit-steps`` steps and rebuilds the
   occupancy grid from the fitted field, so that samples per ray are those of a scene, not of the random blob.
4. Prints a table and writes ``benchmarks/results/iteration_<config>_<phase>_<fast|off>[_tiny]_<card>.json`` with
   the card, versions, medians, means, the branch-weighted mean (branch probabilities x per-branch medians) and the
   estimated hours of the stage at its configured ``trainer.max_steps``.

The whole-prompt estimate sums stages: ``--estimate`` takes JSON files (one per stage config, optionally an early
and a late phase of one config) and prints each stage's share and the total. Timings depend on the field's
occupancy, which is why both fields are reported.
"""

import argparse
import cProfile
import dataclasses
import gc
import json
import os
import pstats
import statistics
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RANDOM_OVERRIDES = [
    "system.prompt_processor.pretrained_model_name_or_path=random-init-sd-2-1-text",
    "system.prompt_processor_multi_view.pretrained_model_name_or_path=random-init-sd-2-1-text",
    "system.prompt_processor.spawn=false",
    "system.prompt_processor_multi_view.spawn=false",
    "system.guidance_multi_view.model_name=random-init-sd-v2.1-base-4view",
    "system.guidance.pretrained_model_name_or_path=random-init-sd-2-1-base",
    "system.guidance.pretrained_model_name_or_path_lora=random-init-sd-2-1",
]
VIDEO_OVERRIDES = {
    "zeroscope-guidance": [
        "system.guidance_video.pretrained_model_name_or_path=random-init-zeroscope-v2-576w",
        "system.prompt_processor_video.pretrained_model_name_or_path=random-init-zeroscope-v2-576w",
        "system.prompt_processor_video.spawn=false",
    ],
    "videocrafter-guidance": [
        "system.guidance_video.pretrained_model_name_or_path=random-init-videocrafter2",
        "system.prompt_processor_video.pretrained_model_name_or_path=random-init-videocrafter2",
        "system.prompt_processor_video.spawn=false",
    ],
}
"""Random full-size video networks, by the stage's ``system.guidance_type_video``."""


@dataclasses.dataclass(frozen=True)
class FastPathSwitch:
    """One fast path and the override that turns it off."""

    key: str
    """Dotted config key."""
    off: str
    """Its value with the fast path off."""
    what: str
    applies: Callable[[dict], bool]
    """Whether the key exists in this (raw) config tree."""


def _get(tree: dict, dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _guidance_is(slot: str, *types: str) -> Callable[[dict], bool]:
    return lambda tree: _get(tree, f"system.{slot}") in types


FAST_PATH_SWITCHES: tuple[FastPathSwitch, ...] = (
    FastPathSwitch("system.geometry.pos_encoding_config.implementation", "torch",
                   "hash grid: Triton kernels (auto on CUDA) -> pure PyTorch", lambda tree: True),
    FastPathSwitch("data.rays_on_device", "false", "camera rays built on the training device -> on the CPU, copied",
                   lambda tree: tree.get("data_type") == "single-multiview-combined-camera-datamodule"),
    FastPathSwitch("freeze_gc", "false", "the training loop's objects only in the garbage collector's reach -> all",
                   lambda tree: True),
    FastPathSwitch("system.geometry.mlp_network_config.precision", "fp32",
                   "field MLPs under the ambient fp16 autocast -> always fp32", lambda tree: True),
    FastPathSwitch("system.defer_step_reads", "false",
                   "logged values and the divergence guard's flags read a step late -> each step's end waits for the GPU",
                   lambda tree: True),
    FastPathSwitch("system.optimizer.fused", "false", "fused optimizer step on CUDA -> torch's default (foreach)",
                   lambda tree: True),
    FastPathSwitch("system.renderer.checkpoint_samples", "0",
                   "chunked, activation-checkpointed rendering of large renders -> one pass holding every sample",
                   lambda tree: _get(tree, "system.renderer_type") == "nerf-volume-renderer"),
    FastPathSwitch("system.renderer.base_renderer.train_no_grad_chunk_size", "160000",
                   "no-grad shading beyond the patch renderer's gradient budget in chunks of 10^6 samples -> 4D-fy's "
                   "160,000",
                   lambda tree: _get(tree, "system.renderer.base_renderer_type") == "mask-nerf-volume-renderer"),
    FastPathSwitch("system.renderer.reuse_culling_encoding", "false",
                   "shading reuses the alpha culling's hash-grid encodings -> every kept sample encoded twice",
                   lambda tree: _get(tree, "system.renderer_type") in ("nerf-volume-renderer", "mask-nerf-volume-renderer")),
    FastPathSwitch("system.renderer.base_renderer.reuse_culling_encoding", "false",
                   "the patch renderer's base renderer reuses the culling's encodings -> encodes twice",
                   lambda tree: _get(tree, "system.renderer.base_renderer_type") == "mask-nerf-volume-renderer"),
    FastPathSwitch("system.guidance_multi_view.cuda_graph", "false", "MVDream UNet forward replayed from a CUDA graph",
                   _guidance_is("guidance_type_multi_view", "multiview-diffusion-guidance")),
    FastPathSwitch("system.guidance.cuda_graph", "false", "VSD UNet forwards (SD, LoRA no-grad) from CUDA graphs",
                   _guidance_is("guidance_type", "stable-diffusion-vsd-guidance")),
    FastPathSwitch("system.guidance.cuda_graph_lora_loss", "false",
                   "VSD LoRA loss: particle-UNet forward and backward replayed from CUDA graphs",
                   _guidance_is("guidance_type", "stable-diffusion-vsd-guidance")),
    FastPathSwitch("system.guidance_video.cuda_graph", "false", "video UNet forward replayed from a CUDA graph",
                   _guidance_is("guidance_type_video", "zeroscope-guidance", "videocrafter-guidance")),
    FastPathSwitch("system.guidance_video.compile_vae_encoder", "false", "video VAE encoder through torch.compile -> eager",
                   _guidance_is("guidance_type_video", "zeroscope-guidance", "videocrafter-guidance")),
    FastPathSwitch("system.guidance_video.compile_unet", "false", "video UNet forward through torch.compile -> eager",
                   _guidance_is("guidance_type_video", "zeroscope-guidance", "videocrafter-guidance")),
    FastPathSwitch("system.guidance_video.vae_checkpoint", "false",
                   "VAE encoder checkpointed frame by frame -> all gradient frames in one call",
                   _guidance_is("guidance_type_video", "zeroscope-guidance", "videocrafter-guidance")),
)
"""Every fast path of a training iteration with its off switch (``--fast-paths off`` applies those that exist in
the config). ``tests/benchmarks/test_iteration_benchmark.py`` checks that each parses on every stage config."""


def fast_path_off_overrides(tree: dict) -> list[str]:
    """The overrides that switch off every fast path present in a raw config tree."""
    return [f"{s.key}={s.off}" for s in FAST_PATH_SWITCHES if s.applies(tree)]


# ----------------------------------------------------------------------------------------------------------------
# The synthetic object of the fitted-field mode
# ----------------------------------------------------------------------------------------------------------------


def synthetic_object(rays_o, rays_d, times):
    """Colour and coverage of two spheres seen along rays: a body (radius 0.45 at the origin) and a head (radius
    0.22) circling above it once per unit time, so a dynamic field has something to move. Colour = 0.5 + 0.5 *
    normal of the nearest hit.

    Args:
        rays_o, rays_d: ``[R, 3]`` rays (unit directions).
        times: ``[R, 1]`` time of each ray in [0, 1].

    Returns:
        ``(rgb [R, 3], mask [R, 1])`` with ``rgb`` zero where the ray misses.
    """
    import torch

    angle = 2 * torch.pi * times[:, 0]
    head = torch.stack([0.25 * angle.cos(), 0.25 * angle.sin(), torch.full_like(angle, 0.5)], dim=-1)
    spheres = [(torch.zeros_like(rays_o), 0.45), (head, 0.22)]
    best = torch.full_like(rays_o[:, 0], float("inf"))
    normal = torch.zeros_like(rays_o)
    for centre, radius in spheres:
        oc = rays_o - centre
        b = (oc * rays_d).sum(-1)
        disc = b * b - ((oc * oc).sum(-1) - radius**2)
        t = -b - disc.clamp_min(0).sqrt()
        hit = (disc > 0) & (t > 0) & (t < best)
        best = torch.where(hit, t, best)
        n = (oc + t[:, None] * rays_d) / radius
        normal = torch.where(hit[:, None], n, normal)
    mask = torch.isfinite(best)[:, None].to(rays_o.dtype)
    return (0.5 + 0.5 * normal) * mask, mask


def orbit_batch(n: int, size: int, distance: float, fovy: float, dynamic: bool, device, generator):
    """``n`` random cameras around the origin (elevation 0-30 degrees) at ``size``^2, each at one random time."""
    import torch

    from fourdfy.data import cameras
    from fourdfy.data.batch import BatchKind, CameraBatch

    def u(lo: float, hi: float):
        return lo + (hi - lo) * torch.rand(n, device=device, generator=generator)

    elevation, azimuth = u(0.0, 30.0), u(-180.0, 180.0)
    dist = torch.full((n,), distance, device=device)
    fov = torch.full((n,), fovy, device=device)
    pos = cameras.spherical_to_position(elevation, azimuth, dist)
    up = torch.tensor([0.0, 0.0, 1.0], device=device).expand(n, 3)
    c2w = cameras.look_at_c2w(pos, torch.zeros_like(pos), up)
    dirs = cameras.camera_ray_directions(size, size, cameras.focal_from_fovy(fov, size))
    rays_o, rays_d = cameras.rays_from_c2w(dirs, c2w)
    times = torch.rand(n, 1, device=device, generator=generator) if dynamic else torch.zeros(n, 1, device=device)
    return CameraBatch(
        rays_o=rays_o, rays_d=rays_d, mvp_mtx=cameras.mvp_matrix(c2w, cameras.projection_matrix(fov, 1.0)), c2w=c2w,
        camera_positions=pos, light_positions=pos, elevation=elevation, azimuth=azimuth, camera_distances=dist,
        fovy=fov, times=times, height=size, width=size, kind=BatchKind.MULTI_VIEW,
    )  # fmt: skip


def fit_field(system, steps: int, size: int, views: int, distance: float, fovy: float, device) -> dict[str, float]:
    """Fit geometry and material to :func:`synthetic_object` (MSE on foreground colour and opacity, Adam 1e-2),
    then rebuild the occupancy grid from the fitted field (its EMA would otherwise remember the random blob for
    thousands of steps). Returns the first and last losses and the seconds spent."""
    import torch

    from fourdfy.renderers.occupancy_grid import OccupancyGrid
    from fourdfy.renderers.nerf_volume_renderer import flat_rays

    generator = torch.Generator(device=device).manual_seed(7)
    params = [p for m in (system.geometry, system.material) for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=1e-2)
    renderer = system.renderer
    renderer.train()
    dynamic = not system.geometry.is_static
    t0 = time.perf_counter()
    losses = []
    for step in range(steps):
        batch = orbit_batch(views, size, distance, fovy, dynamic, device, generator)
        renderer.update_step(0, step)
        out = renderer(batch)
        rays_o, rays_d, ray_times = flat_rays(batch)
        rgb, mask = synthetic_object(rays_o, rays_d, ray_times)
        loss = torch.nn.functional.mse_loss(out.comp_rgb_fg.reshape(-1, 3), rgb) + torch.nn.functional.mse_loss(
            out.opacity.reshape(-1, 1), mask
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    grids = [m for m in renderer.modules() if isinstance(m, OccupancyGrid)]
    for grid in grids:
        grid.occs.zero_()
    for step in range(0, 8 * 16, 16):  # eight full refreshes (warm-up rule: every cell), each at a random time
        renderer.update_step(0, step)
    if device.type == "cuda":
        torch.cuda.synchronize()
    occupied = [float(g.binaries.float().mean()) for g in grids]
    return {"loss_first": losses[0] if losses else float("nan"), "loss_last": losses[-1] if losses else float("nan"),
            "seconds": time.perf_counter() - t0, "steps": steps, "occupied_fraction": occupied}  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------------------------

PHASES = ("occupancy", "render", "guidance", "vae_encode", "backward", "optimizer", "host")
"""Breakdown columns. ``guidance`` excludes ``vae_encode``; ``host`` is the iteration's wall time outside the others
(data, Lightning's loop, loss assembly, logging)."""

UNSYNCED_MODES = ("warmup", "timed")
"""Iterations the benchmark does not synchronise: they run as in a training run, the host ahead of the GPU."""

ENCODE_METHODS = ("encode_video", "encode_frames", "encode_images")
"""The guidance method that runs the VAE encoder, first one present."""


class PhaseClock:
    """Synchronised wall-clock timers around methods, active only while ``on`` is set; while ``labels`` is set
    (profiled steps) the same methods run inside ``torch.profiler.record_function("phase:<name>")`` ranges, so the
    profiler table attributes GPU time to the phases."""

    def __init__(self, cuda: bool) -> None:
        import torch

        self.cuda = cuda
        self.on = False
        self.labels = False
        self.totals: dict[str, float] = {}
        self.samples = 0  # samples rendered in the current iteration
        self._sync = torch.cuda.synchronize if cuda else (lambda: None)

    def wrap(self, owner: Any, name: str, phase: str) -> None:
        import torch

        inner = getattr(owner, name)

        def timed(*args, **kwargs):
            if self.labels:
                with torch.profiler.record_function(f"phase:{phase}"):
                    return inner(*args, **kwargs)
            if not self.on:
                return inner(*args, **kwargs)
            self._sync()
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self._sync()
                self.add(phase, time.perf_counter() - start)

        setattr(owner, name, timed)

    def add(self, phase: str, seconds: float) -> None:
        self.totals[phase] = self.totals.get(phase, 0.0) + seconds

    def mark(self) -> float:
        self._sync()
        return time.perf_counter()


class GcClock:
    """Seconds the cyclic garbage collector ran (``gc.callbacks``), and its full (generation 2) collections; while
    installed (a context manager)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.full = 0
        self._start: Optional[float] = None

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        elif self._start is not None:
            self.seconds += time.perf_counter() - self._start
            self._start = None
            self.full += info.get("generation") == 2

    def __enter__(self) -> "GcClock":
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        gc.callbacks.remove(self)


def install_clock(system, cuda: bool) -> PhaseClock:
    """A :class:`PhaseClock` wrapped around the system's renderer (forward, occupancy update) and guidances (the
    whole call, and the first of :data:`ENCODE_METHODS` each has)."""
    clock = PhaseClock(cuda)
    clock.wrap(system.renderer, "forward", "render")
    render = system.renderer.forward

    def counted(*args, **kwargs):  # the step's samples, a host number (the logged one arrives a step late)
        out = render(*args, **kwargs)
        clock.samples += int(out.num_samples)
        return out

    system.renderer.forward = counted
    clock.wrap(system.renderer, "update_step", "occupancy")
    for guidance in system.guidances().values():
        clock.wrap(guidance, "guide", "guidance")
        name = next((n for n in ENCODE_METHODS if hasattr(guidance, n)), None)
        if name is not None:
            clock.wrap(guidance, name, "vae_encode")
    return clock


def measure(system, dm, cfg, args, label: str, trainer_cfg: dict, cuda: bool, clock: PhaseClock) -> dict[str, Any]:
    """Warm-up, timed and breakdown iterations of one Lightning ``fit``; returns the measurement."""
    import pytorch_lightning as pl
    import torch

    weights = branch_weights(system, cfg)
    cap_timed = 4 * args.steps
    cap_warmup = 20 * max(len(weights), 1)  # extra warm-up iterations at most, waiting for a rare branch
    cap_breakdown = 4 * args.breakdown_steps * max(len(weights), 1)

    class Timer(pl.Callback):
        """Decides at each batch start, from the batch's branch, whether the iteration is warm-up, timed (until
        ``--steps`` and at least ``--min-per-branch`` of each drawn branch), breakdown (until ``--breakdown-steps``
        of each branch) or profiled; then stops the fit."""

        def __init__(self) -> None:
            self.rows: list[dict] = []
            self.breakdown: list[dict] = []
            self.profiled = 0
            self.py_profiled = 0
            self.syncs: dict[str, int] = {}
            self.sync_sites: dict[str, dict[str, int]] = {}
            self.mode = "warmup"
            self.warming = True  # until the first iteration that is not warm-up
            self.warmed: set[str] = set()  # branches run in warm-up
            self.prev_end: Optional[float] = None  # when the previous iteration ended (None after a profiled one)
            self.prev_event: Any = None  # a CUDA event recorded there (timed iterations are measured between them)
            self.counting: Optional[str] = None  # the branch whose host syncs are being counted
            self.prev_gc = (0.0, 0)  # the garbage collector's clock there

        def _record_sync(self, message, category, filename, lineno, file=None, line=None) -> None:
            """``warnings.showwarning`` while counting: tally a synchronising call by its call site (the
            innermost frame outside torch, so that a sync is charged to the line of ours or Lightning's that made
            it); other warnings are dropped."""
            if "synchroniz" in str(message):
                site = sync_site(traceback.extract_stack()[:-1])
                self._sites[site] = self._sites.get(site, 0) + 1

        def _count(self, rows: list[dict], kind: str) -> int:
            return sum(r["kind"] == kind for r in rows)

        def _next_mode(self, batch_idx: int, kind: str) -> str:
            # warm-up lasts --warmup iterations and until every drawn branch has run once: a branch's first step
            # captures its CUDA graphs (a second each), which must not land among the timed ones
            unwarmed = any(k not in self.warmed for k in weights) and batch_idx < args.warmup + cap_warmup
            if self.warming and (batch_idx < args.warmup or unwarmed):
                return "warmup"
            timed_done = len(self.rows) >= cap_timed or (
                len(self.rows) >= args.steps and all(self._count(self.rows, k) >= args.min_per_branch for k in weights))
            if not timed_done:
                return "timed"
            if len(self.breakdown) < cap_breakdown and any(
                    self._count(self.breakdown, k) < args.breakdown_steps for k in weights):
                # only branches that still need breakdown rows are synchronised; the others run as "skip"
                return "breakdown" if self._count(self.breakdown, kind) < args.breakdown_steps else "skip"
            if cuda and args.count_syncs and any(k not in self.syncs for k in weights):
                return "syncs" if kind not in self.syncs else "skip"
            if self.profiled < args.profile:
                return "profile"
            if self.py_profiled < args.py_profile:
                return "pyprofile"
            return "done"

        def _now(self) -> float:
            """The host's clock; synchronised first, unless this iteration runs unsynchronised."""
            return time.perf_counter() if self.mode in UNSYNCED_MODES else clock.mark()

        def _stop_counting(self) -> None:
            """End the sync count (it runs from a step's start to the next one's: the end-of-step hooks, the
            loggers and the next batch count)."""
            if self.counting is None:
                return
            torch.cuda.set_sync_debug_mode(0)
            self._caught.__exit__(None, None, None)
            self.syncs[self.counting] = sum(self._sites.values())
            self.sync_sites[self.counting] = dict(sorted(self._sites.items(), key=lambda kv: -kv[1]))
            self.counting = None

        def on_train_end(self, trainer, module) -> None:
            self._stop_counting()

        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            self._stop_counting()
            self.kind = batch.kind.value
            self.mode = self._next_mode(batch_idx, self.kind)
            if self.mode == "warmup":
                self.warmed.add(self.kind)
            elif self.warming:
                self.warming = False
                if cuda:  # the peak of the measured iterations, not of the graph captures
                    torch.cuda.reset_peak_memory_stats()
            clock.on = self.mode == "breakdown"
            clock.totals = {}
            clock.labels = self.mode == "profile"
            if self.mode == "profile" and self.profiled == 0:
                activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
                self.profiler = torch.profiler.profile(activities=activities)
                self.profiler.__enter__()
            if self.mode == "pyprofile":
                if self.py_profiled > 0:  # the code between two profiled steps (batch, logging, callbacks)
                    self.py_between.disable()
                self.py_profiler = self.py_profiler if self.py_profiled else cProfile.Profile()
                self.py_profiler.enable()
            self.rays = batch.batch_size * batch.num_times * batch.height * batch.width
            clock.samples = 0
            if self.mode not in UNSYNCED_MODES and self.prev_event is not None:
                self.prev_end = None  # the previous iteration's end on the host was not its end on the GPU
            now = self._now()
            # the iteration starts where the previous one ended: drawing the batch and copying it to the device
            # (Lightning's loop, before this hook) are part of what a training run pays per iteration
            self.data_seconds = now - self.prev_end if self.prev_end is not None else float("nan")
            self.start = self.prev_end if self.prev_end is not None else now
            if self.prev_end is None:
                self.prev_gc = (gc_clock.seconds, gc_clock.full)
            if self.mode == "syncs":  # every synchronising CUDA call of this iteration warns (torch's debug mode)
                self._caught = warnings.catch_warnings()
                self._caught.__enter__()
                warnings.simplefilter("always")
                self._sites: dict[str, int] = {}
                warnings.showwarning = self._record_sync  # restored by catch_warnings on exit
                torch.cuda.set_sync_debug_mode(1)
                self.counting = self.kind

        def on_before_backward(self, trainer, module, loss) -> None:
            if clock.on:
                self.backward_start = clock.mark()

        def on_after_backward(self, trainer, module) -> None:
            if clock.on:
                clock.add("backward", clock.mark() - self.backward_start)

        def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
            if clock.on:
                self.optimizer_start = clock.mark()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            # warm-up and timed iterations run as in training, without a sync: a CUDA event marks where each ends
            # on the GPU's timeline (the seconds between two of them are filled in after the fit)
            end = self._now()
            event = None
            if cuda:
                event = torch.cuda.Event(enable_timing=True)
                event.record()
            seconds = end - self.start
            samples = float(clock.samples)
            row = {"step": trainer.global_step, "kind": self.kind, "seconds": seconds, "num_samples": samples,
                   "rays": self.rays, "samples_per_ray": samples / max(self.rays, 1),
                   "data_seconds": self.data_seconds, "gc_seconds": gc_clock.seconds - self.prev_gc[0],
                   "gc_full_collections": gc_clock.full - self.prev_gc[1]}  # fmt: skip
            if self.mode == "timed":
                # the host's own clock (it runs ahead of the GPU by up to a step); "seconds" becomes the GPU's
                row["host_seconds"] = seconds
                row["events"] = (self.prev_event, event) if self.prev_event is not None else None
                self.rows.append(row)
            elif self.mode == "breakdown":
                if hasattr(self, "optimizer_start"):
                    clock.add("optimizer", end - self.optimizer_start)
                    del self.optimizer_start
                phases = {p: clock.totals.get(p, 0.0) for p in PHASES if p != "host"}
                phases["guidance"] -= phases["vae_encode"]
                phases["host"] = seconds - sum(phases.values())
                self.breakdown.append({**row, "phases": phases})
            elif self.mode == "profile":
                self.profiled += 1
                if self.profiled == args.profile:
                    self.profiler.__exit__(None, None, None)
                    key = "self_cuda_time_total" if cuda and args.profile_sort == "cuda" else "self_cpu_time_total"
                    averages = self.profiler.key_averages()
                    print(averages.table(sort_by=key, row_limit=45, max_name_column_width=70))
                    # host time vs device time per phase: a phase whose CPU time exceeds its GPU time is launch-bound
                    print(f"per profiled step ({args.profile} steps): CPU time inside each phase range vs its GPU "
                          "time; backward is not a range")  # fmt: skip
                    for event in sorted((e for e in averages if e.key.startswith("phase:")), key=lambda e: e.key):
                        gpu = getattr(event, "device_time_total", 0.0) or getattr(event, "cuda_time_total", 0.0)
                        print(f"  {event.key:<20} cpu {event.cpu_time_total / 1000 / args.profile:8.1f} ms  "
                              f"gpu {gpu / 1000 / args.profile:8.1f} ms  calls {event.count}")
                    ops = sum(e.count for e in averages if e.key.startswith("aten::"))
                    print(f"  aten calls per step (nested calls counted): {ops / args.profile:.0f}")
            elif self.mode == "pyprofile":
                self.py_profiler.disable()
                self.py_profiled += 1
                if self.py_profiled == args.py_profile:
                    print_python_profile(self.py_profiler, args.py_profile, "inside the steps")
                    if args.py_profile > 1:
                        print_python_profile(self.py_between, args.py_profile - 1, "between the steps (from one "
                                             "step's end to the next one's start: logging, callbacks, next batch)")
                else:
                    self.py_between = self.py_between if self.py_profiled > 1 else cProfile.Profile()
                    self.py_between.enable()
            clock.on = clock.labels = False
            # a profiled iteration prints its table after ``end``: the next one cannot start at ``end``
            self.prev_end = None if self.mode in ("profile", "pyprofile") else self._now()
            self.prev_event = event if self.mode in UNSYNCED_MODES else None
            self.prev_gc = (gc_clock.seconds, gc_clock.full)
            if self._next_mode(batch_idx + 1, "") == "done":
                trainer.should_stop = True

    timer = Timer()
    callbacks, loggers, log_dir = run_callbacks_and_loggers(args.loggers, cfg.freeze_gc)
    trainer = pl.Trainer(
        accelerator="gpu" if cuda else "cpu", devices=args.devices, strategy=strategy(args, cuda), logger=loggers,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[timer, *callbacks], inference_mode=False, limit_val_batches=0, use_distributed_sampler=False,
        max_steps=args.warmup + cap_warmup + cap_timed + cap_breakdown + 4 * len(weights) + args.profile
        + args.py_profile + 1, **trainer_cfg,
    )  # fmt: skip
    try:
        with GcClock() as gc_clock:  # noqa: F841 (read by the Timer's hooks)
            trainer.fit(system, datamodule=dm)
    finally:
        if log_dir is not None:
            log_dir.cleanup()
    if cuda:
        torch.cuda.synchronize()
    for row in timer.rows:  # GPU timeline: from the previous iteration's end event to this one's
        events = row.pop("events", None)
        if events is not None:
            row["seconds"] = events[0].elapsed_time(events[1]) / 1000.0
    summary = summarise(system, cfg, timer.rows, timer.breakdown, label, cuda)
    return summary | {"step_clock": "cuda_events" if cuda else "host",
                      "host_syncs_by_kind": timer.syncs, "host_sync_sites_by_kind": timer.sync_sites,
                      "warmup_branches": sorted(timer.warmed), "rank": trainer.global_rank}  # fmt: skip


def print_python_profile(profiler: "cProfile.Profile", steps: int, what: str, rows: int = 40) -> None:
    """The functions of ``steps`` iterations (or of the gaps between them: ``what`` says) run under cProfile, by
    their own host time and by time inside them (ms per step). On a GPU the host only launches work, so a torch
    operator's own time is its launch cost and a Python function's is interpreter time: this shows which code keeps
    the host from launching."""
    stats = pstats.Stats(profiler)
    table = stats.stats  # type: ignore[attr-defined]  # {(file, line, name): (cc, nc, tottime, cumtime, callers)}

    def short(key: tuple) -> str:
        path, line, name = key
        path = path.replace(os.sep, "/").split("site-packages/")[-1]
        root = str(ROOT).replace(os.sep, "/") + "/"
        return f"{path[len(root):] if path.startswith(root) else path}:{line} {name}"

    for title, column in (("own time", 2), ("time inside (cumulative)", 3)):
        print(f"\nPython profile {what}, {steps} steps, by {title} (ms per step, calls per step):")
        for key, value in sorted(table.items(), key=lambda kv: -kv[1][column])[:rows]:
            print(f"  {1000 * value[column] / steps:9.2f} ms {value[1] / steps:9.0f}  {short(key)[:110]}")


def sync_site(stack: list) -> str:
    """``path:line function`` of the innermost frame of ``stack`` (``traceback.extract_stack()``) that is not in
    torch or the warnings machinery; the path is cut after ``site-packages/`` or the repository root."""
    for frame in reversed(stack):
        path = frame.filename.replace(os.sep, "/")
        short = path.split("site-packages/")[-1]
        # torch's own frames, not any path with a "torch" folder in it (a virtual environment may be named so)
        if short.startswith("torch/") or path.endswith("/warnings.py"):
            continue
        root = str(ROOT).replace(os.sep, "/") + "/"
        return f"{short[len(root):] if short.startswith(root) else short}:{frame.lineno} {frame.name}"
    return "?"


def run_callbacks_and_loggers(with_loggers: bool, freeze_gc: bool = True) -> tuple[list, Any, Any]:
    """What a training run of ``launch.py`` adds to the loop, so that its cost is in the measurement: the divergence
    guard (every run), the garbage-collector freeze (``freeze_gc``) and, ``with_loggers``, TensorBoard and CSV
    loggers (in a temporary folder, returned to be removed) with the learning-rate monitor; they write every
    ``trainer.log_every_n_steps`` as in a run. Not included: checkpoint writing (every
    ``checkpoint.every_n_train_steps``) and the progress bar."""
    import tempfile

    from fourdfy.garbage_collection import FreezeSetupObjects
    from fourdfy.guards import DivergenceGuard

    always = [DivergenceGuard()] + ([FreezeSetupObjects()] if freeze_gc else [])
    if not with_loggers:
        return always, False, None

    from fourdfy.loggers import StepLearningRates, trial_loggers

    log_dir = tempfile.TemporaryDirectory(prefix="fourdfy-bench-logs-")
    return [*always, StepLearningRates()], trial_loggers(Path(log_dir.name)), log_dir


def strategy(args, cuda: bool) -> Any:
    if args.devices <= 1:
        return "auto"
    from pytorch_lightning.strategies import DDPStrategy

    return DDPStrategy(find_unused_parameters=True, process_group_backend="nccl" if cuda else "gloo")


def branch_weights(system, cfg) -> dict[str, float]:
    """How often each built branch is drawn (the system's own rule)."""
    from fourdfy.systems.branches import branch_probabilities

    c = system.cfg
    probs = branch_probabilities(c.prob_multi_view or 0.0, system.static, c.simultan, c.prob_single_view_video)
    return {k.value: p for k, p in probs.items() if p > 0}


def weighted_step_time(by_kind: dict[str, dict], weights: dict[str, float], statistic: str) -> float:
    """Branch probabilities times each branch's ``statistic`` (``median`` or ``mean``) step time. A branch drawn
    but not met in the timed steps makes it unknown (NaN) rather than wrong."""
    if not all(k in by_kind for k in weights):
        return float("nan")
    return sum(weights[k] * by_kind[k][statistic] for k in weights)


def summarise(system, cfg, timed: list[dict], breakdown: list[dict], label: str, cuda: bool) -> dict[str, Any]:
    """Medians, means, per-branch numbers, the branch-weighted mean and the breakdown of one measurement."""
    import torch

    per_kind: dict[str, list[dict]] = {}
    for r in timed:
        per_kind.setdefault(r["kind"], []).append(r)
    weights = branch_weights(system, cfg)
    by_kind = {
        k: {"median": statistics.median(r["seconds"] for r in v), "mean": statistics.mean(r["seconds"] for r in v),
            "n": len(v), "samples_per_ray_median": statistics.median(r["samples_per_ray"] for r in v),
            "probability": weights.get(k, 0.0),
            # between the previous iteration's end and this one's training_step: batch, copy, hooks of the others
            "data_seconds_median": statistics.median(r.get("data_seconds", float("nan")) for r in v),
            # the host's clock between the same two points (it runs ahead of the GPU, so its steps may differ)
            "host_seconds_median": statistics.median(r.get("host_seconds", float("nan")) for r in v),
            # the collector runs now and then: its mean share of an iteration, and its full collections
            "gc_seconds_mean": statistics.mean(r.get("gc_seconds", float("nan")) for r in v),
            "gc_full_collections": sum(r.get("gc_full_collections", 0) for r in v)}
        for k, v in per_kind.items()
    }  # fmt: skip
    weighted = weighted_step_time(by_kind, weights, "median")
    weighted_mean = weighted_step_time(by_kind, weights, "mean")
    phases_by_kind: dict[str, dict[str, float]] = {}
    for k in {r["kind"] for r in breakdown}:
        rows = [r["phases"] for r in breakdown if r["kind"] == k]
        phases_by_kind[k] = {p: statistics.median(r[p] for r in rows) for p in PHASES}
    return {
        "field": label,
        "steps": len(timed),
        "seconds_per_iter_median": statistics.median(r["seconds"] for r in timed),
        "seconds_per_iter_mean": statistics.mean(r["seconds"] for r in timed),
        "seconds_per_iter_weighted": weighted,
        # the expectation of a step: a step's time grows with its samples per ray, which the random cameras spread
        # widely (4 to 62 in ten fitted stage-1 steps), so the mean of a long run sits above the median
        "seconds_per_iter_weighted_mean": weighted_mean,
        "seconds_per_iter_by_kind": by_kind,
        "samples_per_iter_median": statistics.median(r["num_samples"] for r in timed),
        "samples_per_ray_median": statistics.median(r["samples_per_ray"] for r in timed),
        "breakdown_by_kind": phases_by_kind,
        "breakdown_steps": len(breakdown),
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        # what the caching allocator held at its peak (allocated + cached blocks): what the card must really have
        "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if cuda else None,
        "peak_memory_gib_per_device": (
            [torch.cuda.max_memory_allocated(i) / 2**30 for i in range(torch.cuda.device_count())] if cuda else None
        ),
        "rows": timed,
        "breakdown_rows": breakdown,
    }


def phase_fraction(cfg, phase: str, max_steps: int) -> float:
    """Share of the stage's iterations spent in ``phase``: the multi-view resolution switches at its first
    milestone; a stage whose multi-view resolution never changes spends all of them in either phase."""
    mv = cfg.data.get("multi_view") or {}
    widths, milestones = mv.get("width"), mv.get("resolution_milestones") or []
    if not isinstance(widths, (list, tuple)) or len(set(widths)) <= 1 or not milestones:
        return 1.0
    early = min(int(milestones[0]), max_steps) / max_steps
    return early if phase == "early" else 1.0 - early


# ----------------------------------------------------------------------------------------------------------------
# Whole-prompt estimate
# ----------------------------------------------------------------------------------------------------------------


def branch_weighted(m: dict[str, Any], statistic: str = "median") -> float:
    """A measurement's s/it: branch probabilities times each branch's ``median`` (the default; robust to a rare
    slow step) or ``mean`` (the expectation of a long run) step time. JSONs written before the mean was stored
    get it from their per-branch numbers."""
    if statistic == "median":
        return m["seconds_per_iter_weighted"]
    if "seconds_per_iter_weighted_mean" in m:
        return m["seconds_per_iter_weighted_mean"]
    kinds = m["seconds_per_iter_by_kind"]
    return weighted_step_time(kinds, {k: v["probability"] for k, v in kinds.items()}, "mean")


def estimate(paths: list[str], field: str = "random", statistic: str = "median") -> dict[str, Any]:
    """Hours of a whole prompt from per-stage JSONs: for each config, the sum over its measured phases of
    ``max_steps x phase fraction x branch-weighted s/it`` (:func:`branch_weighted` with ``statistic``); a config
    measured in one phase only is assumed to run every iteration at that phase's rate (flagged). Field ``fitted``
    is used where measured and asked for."""
    configs: dict[str, list[dict]] = {}
    for p in paths:
        data = json.loads(Path(p).read_text())
        configs.setdefault(data["config"], []).append(data)
    rows, total = [], 0.0
    for config, runs in configs.items():
        phases = {r["phase"] for r in runs}
        for r in runs:
            m = r["fields"].get(field) or r["fields"]["random"]
            fraction = r["phase_fraction"] if len(phases) > 1 else 1.0
            s_it = branch_weighted(m, statistic)
            hours = r["max_steps"] * fraction * s_it / 3600
            total += hours
            rows.append({"config": config, "phase": r["phase"], "iterations": round(r["max_steps"] * fraction),
                         "s_per_it": s_it, "hours": hours, "field": m["field"], "card": r["card"],
                         "fast_paths": r["fast_paths"], "one_phase_only": len(phases) == 1 and r["phase_fraction"] < 1})  # fmt: skip
    return {"rows": rows, "hours": total}


def print_estimate(est: dict[str, Any]) -> None:
    print(f"\n{'config':>34} {'phase':>6} {'iterations':>10} {'s/it':>7} {'hours':>6}  field / fast paths / card")
    for r in est["rows"]:
        flag = "  (one phase measured: its rate for all)" if r["one_phase_only"] else ""
        print(f"{r['config'][-34:]:>34} {r['phase']:>6} {r['iterations']:>10} {r['s_per_it']:>7.4f} {r['hours']:>6.2f}"
              f"  {r['field']} / {r['fast_paths']} / {r['card']}{flag}")  # fmt: skip
    print(f"{'whole prompt':>34} {'':>6} {sum(r['iterations'] for r in est['rows']):>10} {'':>7} {est['hours']:>6.2f}")


# ----------------------------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------------------------


def print_measurement(m: dict[str, Any], label: str, max_steps: int, fraction: float) -> None:
    peak = f"{m['peak_memory_gib']:.2f}" if m["peak_memory_gib"] is not None else "-"
    hours = max_steps * fraction * m["seconds_per_iter_weighted"] / 3600
    print(f"\n[{label} field] s/it median {m['seconds_per_iter_median']:.4f}  mean {m['seconds_per_iter_mean']:.4f}  "
          f"branch-weighted {m['seconds_per_iter_weighted']:.4f} (of means {m['seconds_per_iter_weighted_mean']:.4f})  peak {peak} GiB  samples/ray {m['samples_per_ray_median']:.1f}"
          f"  -> {max_steps * fraction:.0f} iterations of this stage/phase ~ {hours:.2f} h")  # fmt: skip
    header = " ".join(f"{p:>10}" for p in PHASES)
    print(f"{'branch':>12} {'p':>5} {'n':>3} {'median s':>9} {'samples/ray':>11} {'between ms':>10} {'gc ms':>6} "
          f"{'full gc':>7} | breakdown (ms): "
          f"{header}")  # fmt: skip
    if m.get("host_syncs_by_kind"):
        print("host syncs per iteration (synchronising CUDA calls): "
              + ", ".join(f"{k} {v}" for k, v in m["host_syncs_by_kind"].items()))  # fmt: skip
        for kind, sites in m.get("host_sync_sites_by_kind", {}).items():
            print(f"  {kind}: " + "; ".join(f"{n}x {site}" for site, n in list(sites.items())[:12]))
    for k, v in m["seconds_per_iter_by_kind"].items():
        ph = m["breakdown_by_kind"].get(k)
        cells = " ".join(f"{1000 * ph[p]:>10.1f}" for p in PHASES) if ph else "(no breakdown step drew this branch)"
        between = 1000 * v.get("data_seconds_median", float("nan"))
        print(f"{k:>12} {v['probability']:>5.2f} {v['n']:>3} {v['median']:>9.4f} {v['samples_per_ray_median']:>11.1f} "
              f"{between:>10.1f} {1000 * v.get('gc_seconds_mean', float('nan')):>6.1f} "
              f"{v.get('gc_full_collections', 0):>7} | {'':>15} {cells}")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", type=int, choices=(1, 2, 3), default=1)
    parser.add_argument("--config", help="a stage config (overrides --stage / --low-vram)")
    parser.add_argument("--phase", choices=("early", "late"), default="late",
                        help="multi-view resolution phase: early = steps before the first milestone (stage 1-2: 64^2, "
                             "8 views in stage 1), late = after it (256^2)")  # fmt: skip
    parser.add_argument("--fast-paths", choices=("on", "off"), default="on",
                        help="off: apply every applicable switch of FAST_PATH_SWITCHES")
    parser.add_argument("--field", choices=("random", "fitted", "both"), default="random",
                        help="the random-weight field, a field fitted to a synthetic object first, or both in turn")
    parser.add_argument("--fit-steps", type=int, default=300, help="photometric fitting steps of the fitted field")
    parser.add_argument("--profile", type=int, default=0, help="profile this many steps after the others")
    parser.add_argument("--py-profile", type=int, default=0,
                        help="then run this many steps under cProfile and print the Python functions by host time")
    parser.add_argument("--profile-sort", choices=("cuda", "cpu"), default="cuda",
                        help="sort the profiler table by self GPU time or by self CPU time (launch overhead)")
    parser.add_argument("--count-syncs", action=argparse.BooleanOptionalAction, default=True,
                        help="on CUDA, one more iteration per branch counting synchronising CUDA calls "
                             "(torch.cuda.set_sync_debug_mode)")
    parser.add_argument("--loggers", action=argparse.BooleanOptionalAction, default=True,
                        help="TensorBoard + CSV loggers and the learning-rate monitor, as in a launch.py run (the "
                             "divergence guard is always in)")  # fmt: skip
    parser.add_argument("--low-vram", action="store_true", help="use the _low_vram config")
    parser.add_argument("--steps", type=int, default=30, help="timed iterations")
    parser.add_argument("--warmup", type=int, default=5,
                        help="untimed iterations first (and more until every drawn branch has run once)")
    parser.add_argument("--min-per-branch", type=int, default=4, help="timed iterations of each drawn branch, at least")
    parser.add_argument("--breakdown-steps", type=int, default=3,
                        help="synchronised per-phase iterations of each branch, after the timed ones")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--devices", type=int, default=1, help="data-parallel processes (DDP; gloo on CPU)")
    parser.add_argument("--tiny", action="store_true", help="the stage's tiny smoke config (configs/smoke/)")
    parser.add_argument("--memory-cap-gib", type=float, default=None,
                        help="emulate a smaller card: cap PyTorch's GPU memory at this many GiB (e.g. 22 for 24 GB)")
    parser.add_argument("--cpu-threads", type=int, default=None,
                        help="torch.set_num_threads for the run (the host's tensor work: batches, logging)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--tag", default="", help="suffix of the JSON file name")
    parser.add_argument("--estimate", nargs="+", metavar="JSON", help="only print the whole-prompt estimate")
    parser.add_argument("--estimate-field", choices=("random", "fitted"), default="random")
    parser.add_argument("--estimate-statistic", choices=("median", "mean"), default="median",
                        help="per-branch step time the estimate multiplies: median (default) or mean")
    parser.add_argument("overrides", nargs="*", help="extra key=value config overrides")
    args = parser.parse_args()
    if args.estimate:
        est = estimate(args.estimate, args.estimate_field, args.estimate_statistic)
        print_estimate(est)
        return 0

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from fourdfy.cli import CUDA_ALLOC_CONF_DEFAULT

    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", CUDA_ALLOC_CONF_DEFAULT)  # as launch.py: before CUDA starts
    import pytorch_lightning as pl
    import torch

    from benchmarks.machine import card_name, slug, versions
    from fourdfy.experiment import load_config, load_yaml_tree
    from fourdfy.registry import build

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but no CUDA device; use --device cpu")
    if args.cpu_threads is not None:
        if args.cpu_threads < 1:
            parser.error("--cpu-threads must be at least 1")
        torch.set_num_threads(args.cpu_threads)
    if args.memory_cap_gib is not None:
        if args.device != "cuda":
            parser.error("--memory-cap-gib needs --device cuda")
        # the caching allocator refuses to hold more than this: a run that would need more ends in an OOM error,
        # so a finished run shows the stage fits on a card of that size (less the CUDA context, ~0.5 GiB)
        total = torch.cuda.get_device_properties(0).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, args.memory_cap_gib * 2**30 / total), 0)
    variant = "_low_vram" if args.low_vram else ""
    if args.tiny and args.config:
        parser.error("--tiny picks configs/smoke/fourdfy_stage_<--stage>_tiny.yaml: give --stage N instead of --config")
    if args.tiny:
        config = ROOT / "configs" / "smoke" / f"fourdfy_stage_{args.stage}_tiny.yaml"
        overrides: list[str] = []
    else:
        config = Path(args.config).resolve() if args.config else ROOT / "configs" / f"fourdfy_stage_{args.stage}{variant}.yaml"
        overrides = list(RANDOM_OVERRIDES)
        video_type = (load_yaml_tree(config).get("system") or {}).get("guidance_type_video")
        overrides += VIDEO_OVERRIDES.get(video_type, [])
    tree = load_yaml_tree(config)
    switched = fast_path_off_overrides(tree) if args.fast_paths == "off" else []
    # pick the resolution phase directly: milestone at step 0 = the late phase from the first step
    phase_override = ("data.multi_view.resolution_milestones=[0]" if args.phase == "late"
                      else "data.multi_view.resolution_milestones=[1000000]")  # fmt: skip
    overrides += [phase_override, "system.prompt_processor.prompt=a panda dancing",
                  "trainer.val_check_interval=1000000", *switched, *args.overrides]  # fmt: skip
    cfg, _ = load_config([str(config)], overrides)
    real, _ = load_config([str(config)], [o for o in overrides if o != phase_override])
    max_steps = int(real.trainer["max_steps"])
    fraction = phase_fraction(real, args.phase, max_steps)

    # per-rank seeds, as launch.py does (LOCAL_RANK is set in the worker processes Lightning starts)
    pl.seed_everything(cfg.seed + int(os.environ.get("LOCAL_RANK", "0")), verbose=False)
    t0 = time.perf_counter()
    dm = build("datamodule", cfg.data_type, cfg.data, "data")
    system = build("system", cfg.system_type, cfg.system, "system")
    build_s = time.perf_counter() - t0
    cuda = args.device == "cuda"
    trainer_cfg = {k: v for k, v in cfg.trainer.items() if k not in ("val_check_interval", "enable_progress_bar", "max_steps")}

    clock = install_clock(system, cuda)  # breakdown timers around the phases (inactive outside breakdown steps)
    measurements: dict[str, dict] = {}
    fit_report = None
    fields = ["random", "fitted"] if args.field == "both" else [args.field]
    device = torch.device("cuda" if cuda else "cpu")
    for field in fields:
        if field == "fitted":
            system.to(device)
            mv = cfg.data.get("multi_view") or {}
            dist = mv.get("camera_distance_range", [2.5, 3.0])
            fovy = mv.get("fovy_range", [15, 60])
            fit_report = fit_field(system, args.fit_steps, 16 if args.tiny else 64, 4, sum(dist) / 2, sum(fovy) / 2, device)
            print(f"fitted the field: loss {fit_report['loss_first']:.4f} -> {fit_report['loss_last']:.4f} in "
                  f"{fit_report['seconds']:.1f} s; occupied cells {fit_report['occupied_fraction']}")  # fmt: skip
        m = measure(system, dm, cfg, args, field, trainer_cfg, cuda, clock)
        if m["rank"] != 0:
            return 0
        measurements[field] = m
        print_measurement(m, field, max_steps, fraction)

    main_m = measurements[fields[0]]
    result = {
        "benchmark": "iteration",
        "config": str(config.relative_to(ROOT)),
        "phase": args.phase,
        "phase_fraction": fraction,
        "max_steps": max_steps,
        "fast_paths": args.fast_paths,
        "switched_off": switched,
        "overrides": overrides,
        "tiny": args.tiny,
        "world_size": args.devices,
        "card": card_name(),
        "device": args.device,
        **versions("triton", "diffusers", "transformers", "pytorch_lightning"),
        "build_seconds": build_s,
        "warmup": args.warmup,
        "fit": fit_report,
        # the first field's headline numbers at the top level (scaling.py and older readers use these)
        "seconds_per_iter_median": main_m["seconds_per_iter_median"],
        "seconds_per_iter_weighted": main_m["seconds_per_iter_weighted"],
        "peak_memory_gib": main_m["peak_memory_gib"],
        "memory_cap_gib": args.memory_cap_gib,
        "cpu_threads": torch.get_num_threads(),
        "loggers": args.loggers,
        "tag": args.tag,
        "extra_overrides": list(args.overrides),
        "cuda_alloc_conf": os.environ.get("PYTORCH_CUDA_ALLOC_CONF", ""),
        "peak_memory_gib_per_device": main_m["peak_memory_gib_per_device"],
        "stage_hours_estimate": max_steps * fraction * main_m["seconds_per_iter_weighted"] / 3600,
        "fields": measurements,
    }
    name = (f"iteration_{config.stem.replace('fourdfy_', '')}_{args.phase}_{'fast' if args.fast_paths == 'on' else 'off'}"
            f"{'_' + args.tag if args.tag else ''}{'_tiny' if args.tiny else ''}"
            f"{f'_ws{args.devices}' if args.devices > 1 else ''}_{slug(result['card'])}.json")  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / name).write_text(json.dumps(result, indent=1))
    print(f"\n{config.name} ({args.phase} phase, fast paths {args.fast_paths}) on {result['card']}, torch "
          f"{result['torch']}; written {out / name}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
