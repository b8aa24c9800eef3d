"""How far each precision takes the SDS gradient from fp32, for every frozen network of 4D-fy (random weights).

For each network at full size with random weights (the real architectures; no checkpoint needed):

* MVDream's multi-view UNet, x0-reconstruction SDS at CFG 50 with the std rescale, latents [8,4,32,32]
  (stage 1, steps < 5000: 2 objects x 4 views);
* SD 2.1-base (eps) at CFG 7.5, SDS ``(1 - ᾱ)(eps_hat - eps)``, [1,4,64,64];
* SD 2.1 768-v (v-prediction, upcast attention) as VSD's particle model: eps from v at CFG 1, [1,4,64,64], and
  the VSD gradient ``(1 - ᾱ)(eps_pre - eps_lora)`` of the two together; also the v model alone at its native
  [1,4,96,96] with CFG 7.5 (overflow check at 9216 attention tokens);
* ZeroScope's UNet3D (``fourdfy.stand_ins.lookup("zeroscope", ...)``), ``eps_c + 100 (eps_c - eps_u)``,
  [1,4,16,40,72]; VideoCrafter2's UNet (``extern.videocrafter``), the same CFG, fps 8, motion amplification 30,
  [1,4,16,40,64]. Each is skipped, with the reason in the report, when it cannot be imported or built;
* the VAE encoder's backward: the gradient reaching the input image through ``encode`` (posterior mean + std x
  fixed noise, x 0.18215, against a fixed upstream gradient), at MVDream's [8,3,256,256], VSD's [1,3,512,512]
  and the video models' frame sizes.

and for each mode -- ``fp32`` (strict IEEE matmuls and convolutions: the reference), ``tf32``, ``fp16``
(weights), ``fp16-autocast`` (fp32 weights under ``torch.autocast``, what 4D-fy's 16-mixed stage-3 configs did
for MVDream and VideoCrafter) and ``bf16`` (weights) -- it reports, at t in {20, 200, 500, 800, 980}:

* the cosine similarity and the relative norm error ``|g - g_fp32| / |g_fp32|`` of the gradient on the latents;
* twice: with independent random cond/uncond text contexts, and with an uncond context that is a small
  perturbation of the cond one, scaled so that ``|eps_c - eps_u|`` is ``--near-ratio`` (3 %) of ``|eps_c|`` in
  fp32 at t = 500 -- random weights put eps_c and eps_u far apart, a trained model does not, and CFG multiplies
  the rounding error of their difference by the scale;
* whether any network output or gradient holds inf/NaN (fp16 overflow);
* the time of one network call (the [cond; uncond] batch) and of one VAE forward+backward, and peak memory.

Then, per network family, the fastest of fp32/tf32/fp16/bf16 whose worst relative error stays within 1.25x of
fp16's and that never overflowed (fp32 is always eligible): the candidate for ``weights_dtype: auto``
(``fourdfy/guidance/precision.py``).

Usage (GPU):         python benchmarks/precision.py          (one command; stops starting new work after
                     --max-seconds, 480 by default, and writes the JSON after every network)
Smoke (CPU, <1 min): python benchmarks/precision.py --device cpu --tiny

Writes ``benchmarks/results/precision_<card-slug>.json`` (``_tiny`` appended with ``--tiny``; ``--out`` to
choose) with the card, versions and every number; prints the table.
"""

import argparse
import contextlib
import copy
import dataclasses
import gc
import json
import re
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks.machine import card_name, slug, versions  # noqa: E402
from benchmarks.timing import time_calls  # noqa: E402
from fourdfy.guidance import precision as policy  # noqa: E402
from fourdfy.guidance import sds  # noqa: E402

T_VALUES = (20, 200, 500, 800, 980)
CONTEXTS = ("random", "near")
POLICY_MODES = ("fp32", "tf32", "fp16", "bf16")
"""Modes a ``weights_dtype`` can select (autocast is measured for reference only)."""
NETWORK_CHOICES = ("mvdream", "sd", "zeroscope", "videocrafter")


@dataclasses.dataclass(frozen=True)
class Mode:
    """One way of running a frozen network."""

    name: str
    weights: torch.dtype
    """dtype of the weights and of the inputs given to them."""
    autocast: Optional[torch.dtype] = None
    """``torch.autocast`` dtype around the call (weights stay fp32)."""
    math: str = "fp32"
    """fp32 matmul/conv mode (policy precision name): ``fp32`` strict IEEE, ``tf32``."""


MODES = {
    "fp32": Mode("fp32", torch.float32),
    "tf32": Mode("tf32", torch.float32, math="tf32"),
    "fp16": Mode("fp16", torch.float16),
    "fp16-autocast": Mode("fp16-autocast", torch.float32, autocast=torch.float16),
    "bf16": Mode("bf16", torch.bfloat16),
}


@contextlib.contextmanager
def run_mode(mode: Mode, device: torch.device):
    """The numeric context of a mode: strict-fp32 or TF32 matmuls/convolutions (CUDA), and autocast if any."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(policy.fp32_math(policy.Precision(mode.math, torch.float32), device))
        if mode.autocast is not None:
            stack.enter_context(torch.autocast(device.type, dtype=mode.autocast))
        yield


# ----------------------------------------------------------------------------------------------------------------
# networks
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Net:
    """A frozen denoiser: its fp32 module and how to call it on a [cond; uncond] batch."""

    module: torch.nn.Module
    call: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    """``call(module, z_in, t_in, ctx_in)`` -> model output (any dtype)."""
    prediction_type: str = "epsilon"


@dataclasses.dataclass
class Entry:
    """One row of the gradient table: a gradient built from the outputs of one or more networks."""

    name: str
    family: str
    nets: tuple[str, ...]
    gradient: Callable[[dict[str, tuple[torch.Tensor, torch.Tensor]], dict[str, torch.Tensor]], torch.Tensor]
    """``gradient({net: (eps_c, eps_u)}, inputs)`` -> gradient on the latents (fp32)."""
    cfg: str
    contexts: tuple[str, ...] = CONTEXTS


@dataclasses.dataclass
class Group:
    """Entries evaluated on the same latents, timesteps, noise and text contexts."""

    name: str
    latent_shape: tuple[int, ...]
    entries: list[Entry]
    calibrate_on: str
    """The network whose ``|eps_c - eps_u| / |eps_c|`` sets the near-context perturbation."""
    batch_extra: Callable[[int, torch.device], dict[str, torch.Tensor]] = lambda b, d: {}


@dataclasses.dataclass
class VAECase:
    name: str
    family: str
    module: torch.nn.Module
    image_shape: tuple[int, ...]


@dataclasses.dataclass
class Family:
    """What one network family builds: denoisers, gradient groups and VAE cases."""

    name: str
    nets: dict[str, Net]
    groups: list[Group]
    vaes: list[VAECase]


def context_dim(module: torch.nn.Module) -> int:
    """Width of the cross-attention context of a UNet (diffusers config, else the first ``attn2.to_k``)."""
    config = getattr(module, "config", None)
    if config is not None and getattr(config, "cross_attention_dim", None):
        dim = config.cross_attention_dim
        return int(dim[0] if isinstance(dim, (list, tuple)) else dim)
    for name, sub in module.named_modules():
        if name.endswith("attn2.to_k") and isinstance(sub, torch.nn.Linear):
            return int(sub.in_features)
    raise ValueError("cannot find the cross-attention context width")


def w_of(a_t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return sds.sds_weight(a_t).reshape(-1, *([1] * (like.dim() - 1)))


def build_mvdream(tiny: bool, device: torch.device) -> Family:
    from extern.mvdream import c2w_to_mvdream_camera
    from fourdfy import stand_ins
    from fourdfy.data import cameras as cam

    name = "tiny-random-4view" if tiny else "random-init-sd-v2.1-base-4view"
    unet, vae, _ = stand_ins.lookup("mvdream", name)()
    unet, vae = unet.to(device).eval().requires_grad_(False), vae.to(device).eval().requires_grad_(False)
    n_view = 4
    objects = 1 if tiny else 2
    side = 8 if tiny else 32

    def cameras(b: int, dev: torch.device) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(7)
        azimuth = (torch.rand(b // n_view, 1, generator=g) + torch.arange(n_view)[None]) / n_view * 360 - 180
        elevation = torch.rand(b // n_view, generator=g).repeat_interleave(n_view) * 30
        distance = torch.full((b,), 2.75)
        c2w = cam.look_at_c2w(cam.spherical_to_position(elevation, azimuth.reshape(-1), distance),
                              torch.zeros(b, 3), torch.tensor([0.0, 0.0, 1.0]).expand(b, 3))  # fmt: skip
        return {"camera": c2w_to_mvdream_camera(c2w).to(dev)}

    def call(m, z, t, ctx, camera=None):
        return m(z, t, context=ctx, camera=camera.repeat(2, 1).to(z.dtype), num_frames=n_view)

    def gradient(eps, x):
        e_c, e_u = eps["mvdream"]
        eps_hat = sds.cfg_uncond_anchor(e_c, e_u, 50.0)
        x0 = sds.predict_start_from_noise(x["z_t"], x["a_t"], eps_hat)
        x0_c = sds.predict_start_from_noise(x["z_t"], x["a_t"], e_c)
        return x["z"] - sds.rescale_x0_std(x0, x0_c, n_view, 0.5)

    entry = Entry("mvdream", "mvdream", ("mvdream",), gradient, "x0 recon, CFG 50 (uncond anchor), std rescale 0.5")
    group = Group("mvdream", (objects * n_view, 4, side, side), [entry], "mvdream", cameras)
    image = 64 if tiny else 256
    return Family("mvdream", {"mvdream": Net(unet, call)}, [group],
                  [VAECase("mvdream-vae", "mvdream", vae, (objects * n_view, 3, image, image))])  # fmt: skip


def build_sd(tiny: bool, device: torch.device) -> Family:
    from fourdfy import stand_ins

    base_name, v_name = ("tiny-random-sd-eps", "tiny-random-sd-v") if tiny else ("random-init-sd-2-1-base", "random-init-sd-2-1")
    base, _, vae = stand_ins.lookup("sd", base_name)(with_vae=True)
    v_unet, _, _ = stand_ins.lookup("sd", v_name)(with_vae=False)
    for m in (base, vae, v_unet):
        m.to(device).eval().requires_grad_(False)
    if not v_unet.config.upcast_attention:
        raise RuntimeError("the SD 2.1-v stand-in must upcast attention, as the real model's config does")

    def call(m, z, t, ctx):
        return m(z, t, encoder_hidden_states=ctx).sample

    def sds_base(eps, x):
        e_c, e_u = eps["sd-2.1-base"]
        return w_of(x["a_t"], e_c) * (sds.cfg_uncond_anchor(e_c, e_u, 7.5) - x["noise"])

    def particle(eps, x):  # VSD's LoRA model: CFG 1.0, i.e. the conditional prediction
        e_c, e_u = eps["sd-2.1-v"]
        return w_of(x["a_t"], e_c) * (sds.cfg_uncond_anchor(e_c, e_u, 1.0) - x["noise"])

    def vsd(eps, x):
        pre = sds.cfg_uncond_anchor(*eps["sd-2.1-base"], 7.5)
        lora = sds.cfg_uncond_anchor(*eps["sd-2.1-v"], 1.0)
        return w_of(x["a_t"], pre) * (pre - lora)

    def v_native(eps, x):
        e_c, e_u = eps["sd-2.1-v"]
        return w_of(x["a_t"], e_c) * (sds.cfg_uncond_anchor(e_c, e_u, 7.5) - x["noise"])

    side, native = (8, 12) if tiny else (64, 96)
    nets = {"sd-2.1-base": Net(base, call), "sd-2.1-v": Net(v_unet, call, "v_prediction")}
    groups = [
        Group("vsd", (1, 4, side, side), [
            Entry("sd-2.1-base", "sd", ("sd-2.1-base",), sds_base, "SDS, CFG 7.5 (uncond anchor)"),
            Entry("sd-2.1-v", "sd", ("sd-2.1-v",), particle, "eps from v, CFG 1 (VSD particle model)", ("random",)),
            Entry("vsd", "sd", ("sd-2.1-base", "sd-2.1-v"), vsd, "(1-a)(eps_pre(CFG 7.5) - eps_lora(CFG 1))"),
        ], "sd-2.1-base"),
        Group("sd-2.1-v-native", (1, 4, native, native), [
            Entry("sd-2.1-v-native", "sd", ("sd-2.1-v",), v_native, "eps from v, CFG 7.5, native latent size"),
        ], "sd-2.1-v"),
    ]  # fmt: skip
    image = 64 if tiny else 512
    return Family("sd", nets, groups, [VAECase("sd-vae", "sd", vae, (1, 3, image, image))])


def build_zeroscope(tiny: bool, device: torch.device) -> Family:
    from fourdfy import stand_ins

    name = "tiny-random-zeroscope" if tiny else "random-init-zeroscope-v2-576w"
    builder = stand_ins.lookup("zeroscope", name)
    if builder is None:
        raise LookupError(f"fourdfy.stand_ins has no zeroscope stand-in {name!r} yet")
    unet, vae, _ = builder()
    unet, vae = unet.to(device).eval().requires_grad_(False), vae.to(device).eval().requires_grad_(False)

    def call(m, z, t, ctx):
        return m(z, t, encoder_hidden_states=ctx).sample

    def gradient(eps, x):
        e_c, e_u = eps["zeroscope"]
        return w_of(x["a_t"], e_c) * (sds.cfg_cond_anchor(e_c, e_u, 100.0) - x["noise"])

    shape, image = ((1, 4, 4, 8, 8), (2, 3, 64, 64)) if tiny else ((1, 4, 16, 40, 72), (2, 3, 320, 576))
    entry = Entry("zeroscope", "zeroscope", ("zeroscope",), gradient, "SDS, eps_c + 100 (eps_c - eps_u)")
    return Family("zeroscope", {"zeroscope": Net(unet, call)}, [Group("zeroscope", shape, [entry], "zeroscope")],
                  [VAECase("zeroscope-vae", "zeroscope", vae, image)])  # fmt: skip


def build_videocrafter(tiny: bool, device: torch.device) -> Family:
    from extern.videocrafter.unet import VIDEOCRAFTER2_UNET_CONFIGS, VideoCrafterUNetModel
    from fourdfy.stand_ins.full_size import build_on_device, random_init_

    config = dict(VIDEOCRAFTER2_UNET_CONFIGS["t2v_512_v2"])
    if tiny:
        config.update(model_channels=32, channel_mult=[1, 2], attention_resolutions=[1], num_res_blocks=1,
                      num_head_channels=16, context_dim=32)  # fmt: skip
        with torch.device(device):
            unet = random_init_(VideoCrafterUNetModel(**config), 21)
    else:
        unet = build_on_device(lambda: VideoCrafterUNetModel(**config), 21).to(device)
    unet.eval().requires_grad_(False)
    vae = _ldm_vae(tiny, device)
    fps = 8

    def call(m, z, t, ctx):
        return m(z, t, ctx, fps=fps)

    def gradient(eps, x):
        e_c, e_u = eps["videocrafter2"]
        score = sds.cfg_cond_anchor(e_c, e_u, 100.0) - x["noise"]
        mean = score.mean(dim=2, keepdim=True)  # over frames
        return w_of(x["a_t"], score) * (mean + 30.0 * (score - mean))

    shape, image = ((1, 4, 4, 8, 8), (2, 3, 64, 64)) if tiny else ((1, 4, 16, 40, 64), (2, 3, 320, 512))
    entry = Entry("videocrafter2", "videocrafter", ("videocrafter2",), gradient,
                  "eps_c + 100 (eps_c - eps_u), motion amp 30, fps 8")  # fmt: skip
    return Family("videocrafter", {"videocrafter2": Net(unet, call)},
                  [Group("videocrafter2", shape, [entry], "videocrafter2")],
                  [VAECase("videocrafter2-vae", "videocrafter", vae, image)])  # fmt: skip


def _ldm_vae(tiny: bool, device: torch.device) -> torch.nn.Module:
    """The SD / LDM KL-f8 VAE with random weights (VideoCrafter2's first stage has this architecture)."""
    from fourdfy.stand_ins.full_size import random_sd_vae
    from fourdfy.stand_ins.tiny import tiny_vae

    vae = tiny_vae() if tiny else random_sd_vae()
    return vae.to(device).eval().requires_grad_(False)


BUILDERS = {"mvdream": build_mvdream, "sd": build_sd, "zeroscope": build_zeroscope, "videocrafter": build_videocrafter}


# ----------------------------------------------------------------------------------------------------------------
# measurement
# ----------------------------------------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int) -> dict[str, float]:
    """:func:`benchmarks.timing.time_calls` under this report's key names (``ms_median``, ``ms_p10``, ``ms_p90``)."""
    t = time_calls(fn, device, repeats, warmup)
    return {"ms_median": t["median_ms"], "ms_p10": t["p10_ms"], "ms_p90": t["p90_ms"]}


def compare(g: torch.Tensor, ref: torch.Tensor) -> dict[str, float]:
    """Cosine similarity and relative norm error of ``g`` against ``ref`` (float64)."""
    g, ref = g.double().flatten(), ref.double().flatten()
    if not torch.isfinite(g).all():
        return {"cos": float("nan"), "rel_err": float("inf")}
    denom = float(ref.norm())
    cos = float(torch.dot(g, ref) / (g.norm() * ref.norm()).clamp_min(1e-300))
    return {"cos": cos, "rel_err": float((g - ref).norm()) / max(denom, 1e-300)}


def cast_copy(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    return module if dtype == torch.float32 else copy.deepcopy(module).to(dtype)


def finite(x: torch.Tensor) -> bool:
    return bool(torch.isfinite(x).all())


def free(device: torch.device, collect: bool = False) -> None:
    """Return cached device memory (and run the garbage collector, which is slow with many objects alive)."""
    if collect:
        gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> Optional[float]:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


class Runner:
    def __init__(self, args: argparse.Namespace, device: torch.device, report: dict[str, Any]) -> None:
        self.args, self.device, self.report = args, device, report
        self.started = time.perf_counter()
        from extern.ldm import alphas_cumprod

        self.alphas = alphas_cumprod().float().to(device)

    def log(self, msg: str) -> None:
        print(msg, flush=True)

    def out_of_time(self, what: str) -> bool:
        """Past ``--max-seconds``: record ``what`` as skipped and say so."""
        if time.perf_counter() - self.started <= self.args.max_seconds:
            return False
        self.report["skipped"].append({"network": what, "reason": f"time budget of {self.args.max_seconds:.0f} s spent"})
        self.log(f"skipped {what}: time budget spent")
        return True

    # -- inputs ---------------------------------------------------------------------------------------------------

    def inputs(self, group: Group, t: int, ctx_dim: int, delta: float, seed: int) -> dict[str, torch.Tensor]:
        """Latents, noise, z_t and cond/uncond contexts for one (group, t); CPU-seeded so every mode sees the same."""
        g = torch.Generator().manual_seed(seed)
        b = group.latent_shape[0]
        z = torch.randn(group.latent_shape, generator=g)
        noise = torch.randn(group.latent_shape, generator=g)
        cond = torch.randn(b, 77, ctx_dim, generator=g)
        other = torch.randn(b, 77, ctx_dim, generator=g)
        dev = self.device
        tt = torch.full((b,), t, dtype=torch.long, device=dev)
        a_t = self.alphas[tt]
        z, noise = z.to(dev), noise.to(dev)
        out = {"z": z, "noise": noise, "t": tt, "a_t": a_t, "z_t": sds.q_sample(z, a_t, noise), "cond": cond.to(dev)}
        out["uncond_random"] = other.to(dev)
        out["uncond_near"] = (cond + delta * other).to(dev)
        out.update(group.batch_extra(b, dev))
        return out

    def predict(self, net: Net, module: torch.nn.Module, mode: Mode, x: dict[str, torch.Tensor], context: str):
        """(eps_c, eps_u) in fp32 and whether the raw output was finite."""
        dtype = mode.weights
        z_in = torch.cat([x["z_t"], x["z_t"]]).to(dtype)
        t_in = torch.cat([x["t"], x["t"]])
        ctx = torch.cat([x["cond"], x[f"uncond_{context}"]]).to(dtype)
        extra = {k: v for k, v in x.items() if k == "camera"}
        with torch.no_grad(), run_mode(mode, self.device):
            out = net.call(module, z_in, t_in, ctx, **extra)
        ok = finite(out)
        out = out.float()
        a2 = torch.cat([x["a_t"], x["a_t"]])
        eps = sds.model_output_to_eps(out, torch.cat([x["z_t"], x["z_t"]]), a2, net.prediction_type)
        e_c, e_u = eps.chunk(2)
        return (e_c, e_u), ok

    # -- one family -----------------------------------------------------------------------------------------------

    def run_family(self, fam: Family) -> None:
        for group in fam.groups:
            self.run_group(fam, group)
        for case in fam.vaes:
            self.run_vae(case)

    def calibrate(self, fam: Family, group: Group, ctx_dim: int) -> float:
        """Perturbation size of the near uncond context: |eps_c - eps_u| / |eps_c| ~ near_ratio at t = 500."""
        net = fam.nets[group.calibrate_on]
        probe = 0.05
        x = self.inputs(group, 500, ctx_dim, probe, seed=12345)
        (e_c, e_u), _ = self.predict(net, net.module, MODES["fp32"], x, "near")
        ratio = float((e_c - e_u).norm() / e_c.norm().clamp_min(1e-12))
        delta = probe * self.args.near_ratio / max(ratio, 1e-12)
        return float(min(max(delta, 1e-4), 10.0))

    def run_group(self, fam: Family, group: Group) -> None:
        dev, args = self.device, self.args
        ctx_dim = context_dim(fam.nets[group.calibrate_on].module)
        delta = self.calibrate(fam, group, ctx_dim)
        self.report["near_context"][group.name] = {"delta": delta, "target_ratio": args.near_ratio}
        self.log(f"[{group.name}] latents {list(group.latent_shape)}, near-context delta {delta:.4g}")
        references: dict[tuple, torch.Tensor] = {}
        for mode_name in args.modes:
            mode = MODES[mode_name]
            if mode_name != "fp32" and self.out_of_time(f"{group.name}/{mode_name}"):
                continue
            t_start = time.perf_counter()
            try:
                modules = {n: cast_copy(fam.nets[n].module, mode.weights) for n in self._nets_of(group)}
                for context in CONTEXTS:
                    for t in T_VALUES:
                        x = self.inputs(group, t, ctx_dim, delta, seed=1000 * T_VALUES.index(t) + 17)
                        eps, oks = {}, {}
                        for n in self._nets_of(group):
                            eps[n], oks[n] = self.predict(fam.nets[n], modules[n], mode, x, context)
                        if mode_name == "fp32":
                            for n, (e_c, e_u) in eps.items():
                                self.report["eps_ratio"].append({
                                    "group": group.name, "network": n, "context": context, "t": t,
                                    "eps_diff_over_eps": float((e_c - e_u).norm() / e_c.norm().clamp_min(1e-12)),
                                })  # fmt: skip
                        for entry in group.entries:
                            if context not in entry.contexts:
                                continue
                            g = entry.gradient({n: eps[n] for n in entry.nets}, x).float()
                            key = (entry.name, context, t)
                            if mode_name == "fp32":
                                references[key] = g
                            ref = references.get(key)
                            row = {"network": entry.name, "family": entry.family, "mode": mode_name,
                                   "context": context, "t": t, "shape": list(group.latent_shape), "cfg": entry.cfg,
                                   "finite": all(oks[n] for n in entry.nets) and finite(g)}  # fmt: skip
                            row.update(compare(g, ref) if ref is not None else {"cos": None, "rel_err": None})
                            self.report["gradients"].append(row)
                # timing of each network's [cond; uncond] call at t = 500, random contexts
                x = self.inputs(group, 500, ctx_dim, delta, seed=99)
                for n in self._nets_of(group):
                    peak_reset(dev)
                    timing = timed(lambda: self.predict(fam.nets[n], modules[n], mode, x, "random"), dev,
                                   args.repeats, args.warmup)  # fmt: skip
                    self.report["timing"].append({"network": n, "family": fam.name, "group": group.name,
                                                  "mode": mode_name,
                                                  "shape": list(group.latent_shape), "peak_gib": peak_gib(dev),
                                                  **timing})  # fmt: skip
                del modules
            except Exception as e:  # an unsupported dtype on this device, out of memory...
                self.error(fam.name, group.name, mode_name, e)
            free(dev)
            self.log(f"  {mode_name:<14} done in {time.perf_counter() - t_start:.1f} s")

    @staticmethod
    def _nets_of(group: Group) -> list[str]:
        names: list[str] = []
        for e in group.entries:
            names += [n for n in e.nets if n not in names]
        return names

    def run_vae(self, case: VAECase) -> None:
        dev, args = self.device, self.args
        g = torch.Generator().manual_seed(4242)
        b, c, h, w = case.image_shape
        image = F.interpolate(torch.rand(b, c, max(h // 16, 1), max(w // 16, 1), generator=g), size=(h, w),
                              mode="bilinear", align_corners=False) * 2 - 1  # smooth, like renders  # fmt: skip
        image = image.to(dev)
        lat = (b, 4, h // 8, w // 8)
        eps = torch.randn(lat, generator=g).to(dev)
        upstream = torch.randn(lat, generator=g).to(dev)
        scale = float(getattr(getattr(case.module, "config", None), "scaling_factor", 0.18215))
        self.log(f"[{case.name}] images {list(case.image_shape)}")
        ref = None
        for mode_name in args.modes:
            mode = MODES[mode_name]
            if self.out_of_time(f"{case.name}/{mode_name}"):
                continue
            try:
                module = cast_copy(case.module, mode.weights)

                def fwd_bwd():
                    x = image.clone().requires_grad_(True)
                    with run_mode(mode, dev):
                        dist = module.encode(x.to(mode.weights)).latent_dist
                        z = (dist.mean + dist.std * eps.to(dist.mean.dtype)) * scale
                        (grad,) = torch.autograd.grad((z.float() * upstream).sum(), x)
                    return z.float().detach(), grad

                z, grad = fwd_bwd()
                if mode_name == "fp32":
                    ref = (z, grad)
                row = {"network": case.name, "family": case.family, "mode": mode_name, "shape": list(case.image_shape),
                       "finite": finite(z) and finite(grad)}  # fmt: skip
                if ref is not None:
                    row.update(compare(grad, ref[1]))
                    row["latent_rel_err"] = compare(z, ref[0])["rel_err"]
                peak_reset(dev)
                row.update(timed(fwd_bwd, dev, args.repeats, args.warmup))
                row["peak_gib"] = peak_gib(dev)
                self.report["vae"].append(row)
                del module
            except Exception as e:
                self.error(case.family, case.name, mode_name, e)
            free(dev)

    def error(self, family: str, where: str, mode: str, e: BaseException) -> None:
        msg = f"{type(e).__name__}: {e}".splitlines()[0][:500]
        self.log(f"  {mode}: ERROR {msg}")
        self.report["errors"].append({"family": family, "where": where, "mode": mode, "error": msg,
                                      "traceback": traceback.format_exc()[-2000:]})  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# summary
# ----------------------------------------------------------------------------------------------------------------


def recommend(report: dict[str, Any]) -> dict[str, Any]:
    """Per family: the fastest policy mode whose worst relative error (gradients and VAE backward, every t and
    context) is within 1.25x of fp16's, with nothing non-finite and no error; fp32 is always eligible. Time is the
    sum of the family's denoiser calls and VAE forward+backward."""
    out: dict[str, Any] = {}
    families = dict.fromkeys(r["family"] for r in report["gradients"] + report["vae"])
    for fam in families:
        stats: dict[str, dict[str, Any]] = {}
        for mode in POLICY_MODES:
            rows = [r for r in report["gradients"] + report["vae"] if r["family"] == fam and r["mode"] == mode]
            if not rows:
                continue
            errs = [r["rel_err"] for r in rows if r.get("rel_err") is not None]
            ms = sum(r["ms_median"] for r in report["timing"] + report["vae"] if r["family"] == fam and r["mode"] == mode)
            stats[mode] = {
                "max_rel_err": max(errs) if errs else None,
                "finite": all(r["finite"] for r in rows),
                "failed": any(e["family"] == fam and e["mode"] == mode for e in report["errors"]),
                "ms": ms,
            }
        ok = {m: s for m, s in stats.items() if s["finite"] and not s["failed"] and s["max_rel_err"] is not None}
        bar = None
        for anchor in ("fp16", "tf32"):  # fp16's error sets the bar; tf32's if fp16 overflowed or failed
            if anchor in ok:
                bar = 1.25 * ok[anchor]["max_rel_err"]
                break
        eligible = [m for m, s in ok.items() if m == "fp32" or (bar is not None and s["max_rel_err"] <= bar)]
        choice = min(eligible, key=lambda m: stats[m]["ms"]) if eligible else "fp32"
        out[fam] = {"weights_dtype": choice, "error_bar": bar, "modes": stats}
    return out


def fmt(v: Optional[float], spec: str) -> str:
    """``format(v, spec)``, or a right-aligned dash of the same width for a missing value."""
    if v is None:
        width = int(re.match(r">?(\d*)", spec).group(1) or 0)
        return "-".rjust(width)
    return format(v, spec)


def print_tables(report: dict[str, Any]) -> None:
    print(f"\nSDS gradient vs fp32 on {report['card']} (torch {report['versions']['torch']}), worst over t in "
          f"{list(T_VALUES)}; near: |eps_c - eps_u| ~ {report['args']['near_ratio']:.0%} of |eps_c|")  # fmt: skip
    head = f"{'network':<18}{'mode':<15}{'rel.err rand':>13}{'rel.err near':>13}{'min cos':>11}{'finite':>8}{'ms/call':>9}"
    print(head)
    print("-" * len(head))
    rows = report["gradients"]
    for net in dict.fromkeys(r["network"] for r in rows):
        for mode in report["args"]["modes"]:
            rs = [r for r in rows if r["network"] == net and r["mode"] == mode]
            if not rs:
                continue
            err = {c: [r["rel_err"] for r in rs if r["context"] == c and r["rel_err"] is not None] for c in CONTEXTS}
            coss = [r["cos"] for r in rs if r["cos"] is not None]
            times = [r["ms_median"] for r in report["timing"] if r["mode"] == mode and r["network"] == net]
            print(f"{net:<18}{mode:<15}{fmt(max(err['random'], default=None), '>13.2e')}"
                  f"{fmt(max(err['near'], default=None), '>13.2e')}{fmt(min(coss, default=None), '>11.6f')}"
                  f"{'yes' if all(r['finite'] for r in rs) else 'NO':>8}{fmt(times[0] if times else None, '>9.1f')}")
    print("\nVAE encoder backward (gradient on the input image) vs fp32")
    head = f"{'vae':<20}{'mode':<15}{'rel.err grad':>13}{'cos':>11}{'rel.err z':>11}{'finite':>8}{'ms f+b':>9}"
    print(head)
    print("-" * len(head))
    for r in report["vae"]:
        print(f"{r['network']:<20}{r['mode']:<15}{fmt(r.get('rel_err'), '>13.2e')}{fmt(r.get('cos'), '>11.6f')}"
              f"{fmt(r.get('latent_rel_err'), '>11.2e')}{'yes' if r['finite'] else 'NO':>8}{r['ms_median']:>9.1f}")
    for s in report["skipped"]:
        print(f"skipped {s['network']}: {s['reason']}")
    for e in report["errors"]:
        print(f"error {e['where']} / {e['mode']}: {e['error']}")
    print("\nweights_dtype candidates (fastest within 1.25x of fp16's worst error, never non-finite):")
    for fam, rec in report["recommendation"].items():
        print(f"  {fam:<14} {rec['weights_dtype']}")


# ----------------------------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------------------------


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (default cuda)")
    p.add_argument("--tiny", action="store_true", help="tiny stand-in networks and shapes (CPU smoke run)")
    p.add_argument("--networks", nargs="+", choices=NETWORK_CHOICES, default=list(NETWORK_CHOICES))
    p.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES), help="fp32 always runs first")
    p.add_argument("--near-ratio", type=float, default=0.03, help="|eps_c - eps_u| / |eps_c| of the near contexts")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per mode (default 10; 1 with --tiny)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls first (default 3; 0 with --tiny)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--max-seconds", type=float, default=480.0,
                   help="stop starting new networks/modes after this many seconds (the JSON is written after every "
                        "network, so a killed run keeps what it measured; default 480)")  # fmt: skip
    p.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/precision_<card>.json)")
    p.add_argument("--out-dir", type=Path, default=None, help="folder for the default file name (instead of --out)")
    args = p.parse_args(argv)
    args.modes = ["fp32"] + [m for m in args.modes if m != "fp32"]
    args.repeats = args.repeats if args.repeats is not None else (1 if args.tiny else 10)
    args.warmup = args.warmup if args.warmup is not None else (0 if args.tiny else 3)
    return args


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("CUDA is not available; use --device cpu --tiny for a smoke run")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:  # the casts of copied diffusers models log a harmless line each
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.set_verbosity_error()
    except Exception:
        pass
    torch.manual_seed(0)
    started = time.perf_counter()
    report: dict[str, Any] = {
        "benchmark": "precision", "card": card_name(device), "device": str(device), "tiny": args.tiny,
        "versions": versions("diffusers", "transformers"),
        "args": {"networks": args.networks, "modes": args.modes, "t": list(T_VALUES), "contexts": list(CONTEXTS),
                 "near_ratio": args.near_ratio, "repeats": args.repeats, "warmup": args.warmup},
        "notes": [
            "random weights N(0, 1/fan_in); random N(0,1) latents, noise and text contexts",
            "fp32 = strict IEEE matmuls and convolutions (PyTorch's default lets convolutions use TF32)",
            "off CUDA tf32 is plain fp32",
            "random weights keep activations O(1): an fp16 overflow that trained weights can cause (SD 2.1-v "
            "attention without upcast, large VAE activations) need not show here",
        ],
        "near_context": {}, "eps_ratio": [], "gradients": [], "timing": [], "vae": [], "skipped": [], "errors": [],
    }  # fmt: skip
    runner = Runner(args, device, report)
    name = f"precision_{slug(report['card'])}{'_tiny' if args.tiny else ''}.json"
    out = args.out or (args.out_dir or REPO_ROOT / "benchmarks" / "results") / name
    out.parent.mkdir(parents=True, exist_ok=True)

    def write() -> None:
        report["recommendation"] = recommend(report)
        report["seconds"] = time.perf_counter() - started
        out.write_text(json.dumps(report, indent=1, allow_nan=True) + "\n")

    for name in args.networks:
        if runner.out_of_time(name):
            continue
        try:
            fam = BUILDERS[name](args.tiny, device)
        except Exception as e:  # not importable / not written yet / no stand-in
            reason = f"{type(e).__name__}: {e}".splitlines()[0][:300]
            report["skipped"].append({"network": name, "reason": reason})
            print(f"skipped {name}: {reason}", flush=True)
            free(device, collect=True)
            continue
        runner.run_family(fam)
        del fam
        free(device, collect=True)
        write()  # after every network: a run killed later keeps what it measured
    write()
    print_tables(report)
    print(f"wrote {out} ({report['seconds']:.0f} s)")
    return report


if __name__ == "__main__":
    main()
