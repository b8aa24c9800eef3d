"""``zeroscope-guidance``: video score distillation with ZeroScope v2 576w (a ModelScope text-to-video fine-tune,
diffusers ``UNet3DConditionModel``), 4D-fy's stage-3 motion guidance (reference §9.3).

Per call, for ``B`` clips of ``T`` frames rendered at ``H x W`` (4D-fy: ``B = 1``, ``T = 16``, 160x288):

1. the frames (``rgb [B, T, H, W, 3]``, clip-major) are bilinearly resized to 320x576 (``align_corners=False``)
   and mapped to [-1, 1];
2. each frame is encoded by the SD VAE: ``z = 0.18215 * sample(posterior)``, laid out as ``[B, 4, T, 40, 72]``.
   With ``low_ram_vae = k > 0``, ``k`` random frames per clip are encoded with gradient and the others under
   ``no_grad`` (one frame per call), so only those ``k`` frames of the renders receive gradient; ``-1``: all.
   With ``vae_checkpoint`` (default) the frames with gradient are encoded ``vae_checkpoint_frames`` per call
   under activation checkpointing (encoder activations of that many frames at a time, recomputed in backward);
   the posterior noise is drawn once for them all, outside the checkpoints;
3. one ``t ~ U{min_step..max_step}`` per clip, ``min/max_step = int(1000 * pct)`` (4D-fy: [20, 980], never
   annealed), and ``z_t = sqrt(ᾱ_t) z + sqrt(1 - ᾱ_t) eps`` with ZeroScope's DDIM ᾱ table;
4. the UNet3D on ``[z_t; z_t]`` with ``[cond; uncond]`` text (view-dependent, from the clip's camera; the ZeroScope
   prompt processor's negative prompt is empty);
5. CFG in 4D-fy's video form ``eps_hat = eps_c + s (eps_c - eps_u)``, ``s = guidance_scale`` (100, i.e. 101 in
   the usual ``eps_u + s (eps_c - eps_u)`` convention);
6. ``g = nan_to_num(w(t) (eps_hat - eps))`` with ``w = 1 - ᾱ_t`` (``weighting_strategy: sds``), clamped to
   ``[-grad_clip, grad_clip]`` when set;
7. ``loss_sds_video = 0.5 * sum((z - sg(z - g))^2) / B``, so ``d loss / d z = g / B`` exactly.

Precision, as 4D-fy ran it: ``half_precision_weights: true`` puts the UNet and the VAE in **fp16** on CUDA (fp32 on
CPU). The VAE encoding and the UNet call run in the weights' dtype with autocast disabled (as 4D-fy's
``encode_images`` / ``forward_unet``), so a ``16-mixed`` trainer does not change them; latents, noise, CFG and the
gradient are fp32, and the renders' gradient comes back fp32 through the casts. Attention is diffusers' default
processor, torch's ``scaled_dot_product_attention`` (4D-fy on torch 2 too). On CUDA the UNet forward is replayed
from a CUDA graph (``cuda_graph``; one graph per input shape, and the graph keeps a private memory pool as large as
the forward's peak activations).

Differences from 4D-fy, on purpose:

- the networks are loaded one by one (``unet/``, ``vae/``, ``scheduler/``) instead of through a
  ``StableDiffusionPipeline`` (a hack that happened to load the UNet3D); the text encoder is not loaded here (4D-fy
  loaded it and never used it; the prompt processor encodes the text);
- ``pretrained_model_name_or_path`` defaults to ``cerspense/zeroscope_v2_576w`` (4D-fy: null, which failed);
- ``low_ram_vae`` picks ``k`` frames per clip (4D-fy: ``k`` among all ``B*T`` frames; the same with 4D-fy's
  ``B = 1``); ``k >= T`` means every frame (4D-fy crashed); ``0`` is rejected (4D-fy treated it as -1);
  the frames with gradient are encoded a few per checkpointed call (``vae_checkpoint``) or in one call (4D-fy: one
  call per frame, activations kept; the same computation);
- the timestep reaches the UNet as int64 (4D-fy cast it to fp16, which is exact for integers up to 2048);
- ``min_step_percent`` / ``max_step_percent`` may be scheduled values and are re-evaluated every step, and the
  optional max-step anneal (``anneal_start_step``, null in every 4D-fy config) is a function of the live step
  rather than a one-way latch;
- keys 4D-fy declared but that change nothing here, or that it could not run, are accepted only at their 4D-fy
  defaults: ``use_sjc`` (score-Jacobian chaining, no config uses it) and ``var_red`` (SJC only), ``token_merging``
  and ``token_merging_params`` (``tomesd`` is not a dependency), ``enable_sequential_cpu_offload`` (Lightning
  places the networks), ``enable_channels_last_format`` (the UNet3D's Conv3d weights have no channels-last
  layout: 4D-fy raised there too).

The reserved names ``tiny-random-zeroscope`` and ``random-init-zeroscope-v2-576w`` build random-weight stand-ins
(:mod:`fourdfy.stand_ins.video`).
"""

import dataclasses
import functools
import logging
from typing import NamedTuple, Optional

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from fourdfy import stand_ins
from fourdfy.config import ConfigError, Scheduled, choice
from fourdfy.data.batch import CameraBatch
from fourdfy.guidance import precision, sds, video_sds
from fourdfy.guidance.base import AnnealedStepGuidance, GuidanceOutput
from fourdfy.guidance.cuda_graph import GraphedForward
from fourdfy.guidance.sd_loading import hub_offline, load_diffusers_parts
from fourdfy.prompt_processors.base import PromptEmbeddings
from fourdfy.registry import register
from fourdfy.schedule import scheduled_value

logger = logging.getLogger(__name__)

ZEROSCOPE_HUB_ID = "cerspense/zeroscope_v2_576w"
VIDEO_SIZE = (320, 576)
"""(height, width) of the frames given to ZeroScope's VAE: its 576x320 training resolution (latents 40x72)."""


class ZeroscopeComponents(NamedTuple):
    """The parts of ZeroScope the guidance uses."""

    unet: nn.Module
    vae: nn.Module
    scheduler: object


def missing_weights_message(key: str, name: str, error: str) -> str:
    """The one-line message for ZeroScope weights that cannot be loaded from ``name`` (config key ``key``)."""
    first = error.strip().splitlines()[0] if error.strip() else "unknown error"
    return (
        f"{key}: cannot load ZeroScope weights from {name!r} ({first}). Get the diffusers repository "
        f"{ZEROSCOPE_HUB_ID} from the Hugging Face Hub (for example `hf download {ZEROSCOPE_HUB_ID} --local-dir "
        f"zeroscope_v2_576w`; its unet/, vae/ and scheduler/ folders are read) and set {key} to that local folder: a "
        "local diffusers folder works as well as the hub id"
        + (" (HF_HUB_OFFLINE is set, so only local folders and the hub cache are used)." if hub_offline() else ".")
    )


def load_zeroscope_components(name: str, key: str) -> ZeroscopeComponents:
    """Load ZeroScope's UNet3D, VAE (fp32) and DDIM schedule from a local diffusers folder or a hub id.

    Args:
        name: a local diffusers folder, a hub repository id, or a reserved stand-in name (family ``zeroscope``).
        key: the dotted config key holding ``name`` (named in errors).

    Raises:
        MissingWeightsError: the folder / repository or one of its parts is missing (one line, naming ``key``).
    """
    builder = stand_ins.lookup("zeroscope", name)
    if builder is not None:
        return ZeroscopeComponents(*builder())
    from diffusers import AutoencoderKL, DDIMScheduler, UNet3DConditionModel

    parts = {"unet": UNet3DConditionModel, "vae": AutoencoderKL, "scheduler": DDIMScheduler}
    loaded = load_diffusers_parts(name, key, parts, missing_weights_message, "a single file, not a diffusers folder")
    return ZeroscopeComponents(loaded["unet"], loaded["vae"], loaded["scheduler"])


class VideoSDSDraws(NamedTuple):
    """The random draws of one call besides the VAE posterior samples and the frame choice."""

    t: Int[Tensor, "B"]
    """One timestep per clip."""
    noise: Float[Tensor, "B C T h w"]


@register("zeroscope-guidance")
class ZeroscopeGuidance(AnnealedStepGuidance):
    """Video SDS with ZeroScope v2 576w (4D-fy's stage-3 video guidance); see the module docstring."""

    loss_names = ("sds_video",)
    frozen_modules = ("unet", "vae")
    precision_network = "zeroscope"
    """``weights_dtype: auto`` takes the measured default of this family (4D-fy ran ZeroScope in fp16)."""
    video_size: tuple[int, int] = VIDEO_SIZE
    """(height, width) the frames are resized to (an attribute, not a config key: ZeroScope's resolution; tests
    shrink it on an instance to run fast)."""

    @dataclasses.dataclass
    class Config(video_sds.VaeEncoderConfig, video_sds.VideoUnetConfig):
        pretrained_model_name_or_path: str = ZEROSCOPE_HUB_ID
        """Local diffusers folder (``unet/``, ``vae/``, ``scheduler/``), hub id, or a reserved stand-in name
        (``tiny-random-zeroscope``, ``random-init-zeroscope-v2-576w``)."""
        enable_memory_efficient_attention: bool = False
        """Accepted; already in effect: diffusers' default attention runs torch's scaled_dot_product_attention
        (flash / memory-efficient kernels on CUDA)."""
        enable_sequential_cpu_offload: bool = False
        """Must stay false (accelerate's offload hooks conflict with Lightning's placement)."""
        enable_attention_slicing: bool = False
        """Sliced attention (slice size 1, as 4D-fy) in the UNet: less memory, slower."""
        enable_channels_last_format: bool = False
        """Must stay false: the UNet3D's Conv3d weights have no channels-last layout (4D-fy failed there too)."""
        guidance_scale: float = 100.0
        """``s`` of ``eps_c + s (eps_c - eps_u)``."""
        grad_clip: Optional[Scheduled] = None
        """Clamp the latent gradient elementwise to ``[-c, c]`` (null: no clamp, as every 4D-fy config)."""
        half_precision_weights: bool = True
        """4D-fy's key: ``false`` runs the UNet and VAE in fp32 (``weights_dtype: auto`` resolves to fp32); ``true``:
        ``weights_dtype`` decides (fp16 in 4D-fy)."""
        weights_dtype: str = choice("auto", precision.WEIGHTS_DTYPES, precision.WEIGHTS_DTYPE_DOC)
        min_step_percent: Scheduled = 0.02
        max_step_percent: Scheduled = 0.98
        max_step_percent_annealed: float = 0.5
        """``max_step_percent`` once ``global_step > anneal_start_step``."""
        anneal_start_step: Optional[int] = None
        """Null (every 4D-fy config): no anneal, t stays in [20, 980]."""
        use_sjc: bool = False
        """Must stay false (score-Jacobian chaining is not implemented; no 4D-fy config uses it)."""
        var_red: bool = True
        """SJC's variance reduction; must stay true (it only acts with ``use_sjc``)."""
        weighting_strategy: str = choice("sds", sds.WEIGHTING_STRATEGIES, "Timestep weighting w(t).")
        """``sds``: 1 - ᾱ_t (4D-fy's configs); ``uniform``: 1; ``fantasia3d``: sqrt(ᾱ_t)(1 - ᾱ_t)."""
        token_merging: bool = False
        """Must stay false (``tomesd`` is not a dependency)."""
        token_merging_params: Optional[dict] = dataclasses.field(default_factory=dict)
        """Must stay empty (only read with ``token_merging``)."""
        view_dependent_prompting: bool = True
        """Text with ", front view" etc. from the clip's camera (as 4D-fy)."""
        low_ram_vae: int = -1
        """Frames per clip encoded with gradient (a random subset; the rest without); -1: all frames."""
        cuda_graph: bool = True
        """On CUDA, replay the UNet forward from a CUDA graph (one per input shape): the same computation with
        fewer kernel launches, at the cost of a private memory pool of the forward's peak activations."""
        device: Optional[str] = None
        """Run this guidance on its own device (e.g. ``cuda:1``, model placement for small cards); null: the
        system's device. Not combinable with data-parallel ``--gpu 0,1``."""

        def __post_init__(self) -> None:
            precision.check_config(self)
            inert = {
                "use_sjc": (False, "score-Jacobian chaining is not implemented (no 4D-fy config uses it)"),
                "var_red": (True, "it only acts with use_sjc, which is not implemented"),
                "token_merging": (False, "token merging (tomesd) is not supported"),
                "enable_sequential_cpu_offload": (False, "Lightning places the guidance's networks on the training "
                                                  "device, and accelerate's offload hooks would move them behind its "
                                                  "back; use half_precision_weights or low_ram_vae to save memory"),
                "enable_channels_last_format": (False, "the UNet3D's Conv3d weights have no channels-last layout "
                                                 "(4D-fy failed there too)"),
            }  # fmt: skip
            for key, (default, reason) in inert.items():
                if getattr(self, key) != default:
                    raise ConfigError(f"{key}: only {default} is supported: {reason}")
            if self.token_merging_params:
                raise ConfigError("token_merging_params: must be empty (token merging is not supported)")
            if self.low_ram_vae == 0 or self.low_ram_vae < -1:
                raise ConfigError(
                    f"low_ram_vae: {self.low_ram_vae} is not a frame count; use k >= 1 frames with gradient per "
                    "clip, or -1 for all frames"
                )
            if not 0.0 < self.max_step_percent_annealed <= 1.0:
                raise ConfigError("max_step_percent_annealed: must be in (0, 1]")
            if self.anneal_start_step is not None and self.anneal_start_step < 0:
                raise ConfigError("anneal_start_step: must be >= 0 (or null to disable the anneal)")

    def __init__(self, cfg=None, path: str = "system.guidance_video") -> None:
        self.path = path
        super().__init__(cfg, path)

    def configure(self) -> None:
        c = self.cfg
        key = f"{self.path}.pretrained_model_name_or_path"
        parts = load_zeroscope_components(c.pretrained_model_name_or_path, key)
        self.unet = self.freeze(parts.unet)
        self.vae = video_sds.in_layout(self.freeze(parts.vae), self.cfg)
        self._vae_moments = video_sds.VaeMoments(self.vae, self.cfg.compile_vae_encoder)
        config = parts.scheduler.config
        if config.prediction_type not in sds.PREDICTION_TYPES:
            raise ConfigError(f"{key}: prediction type {config.prediction_type!r} is not one of {sds.PREDICTION_TYPES}")
        if self.unet.config.in_channels != self.vae.config.latent_channels:
            raise ConfigError(f"{key}: the UNet's {self.unet.config.in_channels} input channels do not match the "
                              f"VAE's {self.vae.config.latent_channels} latent channels")  # fmt: skip
        self.prediction_type = str(config.prediction_type)
        self.num_train_timesteps = int(config.num_train_timesteps)
        self.register_buffer("alphas_cumprod", parts.scheduler.alphas_cumprod.float().clone(), persistent=False)
        if c.enable_memory_efficient_attention:
            logger.info(
                "%s.enable_memory_efficient_attention: %s", self.path,
                "attention slicing replaces the SDPA attention processors" if c.enable_attention_slicing
                else "torch SDPA attention (flash / memory-efficient kernels on CUDA) is already in use",
            )  # fmt: skip
        if c.enable_attention_slicing:
            self.unet.set_attention_slice(1)
        self._unet_forward = video_sds.CompiledCall(self._unet_call, c.compile_unet)
        self._graphed_unet = GraphedForward(self._unet_forward)
        self.min_step, self.max_step = self.step_range(0, 0)
        self._position = (0, 0)

    # ----------------------------------------------------------------------------------------------------------
    # the call
    # ----------------------------------------------------------------------------------------------------------

    def forward(
        self,
        rgb: Float[Tensor, "B T H W 3"],
        prompts: PromptEmbeddings,
        batch: CameraBatch,
        generator: Optional[torch.Generator] = None,
    ) -> GuidanceOutput:
        """``loss_sds_video`` of ``B`` rendered clips.

        Args:
            rgb: ``B`` clips of ``T`` frames in [0, 1], any ``H x W`` (resized to 320x576).
            prompts: the prompt's embeddings (ZeroScope prompt processor).
            batch: the clips' cameras; ``elevation`` and ``azimuth`` ``[B]`` (one static camera per clip) choose the
                view-dependent text.
            generator: optional RNG on the renders' device for every random draw (frame choice, VAE posterior
                samples, then :meth:`sample_draws`), for reproducible calls; the global RNG otherwise.

        Returns:
            ``losses = {"sds_video": scalar}`` (gradient ``g / B`` on the latents, see the module docstring) and
            ``stats`` ``grad_norm`` (of ``g``), ``timestep`` (mean ``t``), ``min_step``, ``max_step``.
        """
        if batch.elevation.shape[0] != rgb.shape[0]:
            raise ValueError(f"{self.path}: {rgb.shape[0]} clips but {batch.elevation.shape[0]} cameras")
        latents = self.encode_video(rgb, generator)
        draws = self.sample_draws(latents, generator)
        return self.losses_from_latents(latents, prompts, batch, draws)

    def encode_video(
        self, rgb: Float[Tensor, "B T H W 3"], generator: Optional[torch.Generator] = None
    ) -> Float[Tensor, "B C T h w"]:
        """Latents ``[B, 4, T, 40, 72]`` (fp32) of clips in [0, 1] resized to :attr:`video_size`: per-frame VAE
        posterior samples scaled by the VAE's factor; only ``low_ram_vae`` random frames per clip are differentiable
        (all with -1)."""
        b, t = rgb.shape[:2]
        with torch.autocast(device_type=rgb.device.type, enabled=False):
            images = video_sds.frames_to_bchw(rgb.float(), self.video_size) * 2.0 - 1.0
            images = video_sds.in_layout(images, self.cfg)
            with_grad = video_sds.frame_grad_flags(b, t, self.cfg.low_ram_vae, rgb.device, generator)
            sample = functools.partial(
                video_sds.vae_posterior_sample, scaling_factor=self.vae.config.scaling_factor, generator=generator
            )
            frames = video_sds.checkpoint_frames_for(
                self.cfg, video_sds.grad_frame_count(b, t, self.cfg.low_ram_vae), *images.shape[-2:],
                self.weights_dtype.itemsize, rgb.device,
            )  # fmt: skip
            z = video_sds.encode_frames(self._encode_moments, images, with_grad, sample, checkpoint_frames=frames)
        return video_sds.frames_to_video(z, b)

    def _encode_moments(self, images: Float[Tensor, "N 3 h w"]) -> Float[Tensor, "N C2 h2 w2"]:
        """The VAE posterior's parameters ``[mean; logvar]`` (deterministic), in the weights' dtype."""
        return self._vae_moments(images.to(self.weights_dtype))

    def sample_draws(
        self, latents: Float[Tensor, "B C T h w"], generator: Optional[torch.Generator] = None
    ) -> VideoSDSDraws:
        """One timestep per clip, uniform on ``[min_step, max_step]``, then the noise (in this order)."""
        b, dev = latents.shape[0], latents.device
        t = sds.sample_timesteps(b, self.min_step, self.max_step, dev, generator)
        noise = torch.randn(latents.shape, generator=generator, device=dev, dtype=torch.float32)
        return VideoSDSDraws(t=t, noise=noise)

    def losses_from_latents(
        self, latents: Float[Tensor, "B C T h w"], prompts: PromptEmbeddings, batch: CameraBatch, draws: VideoSDSDraws
    ) -> GuidanceOutput:
        """The loss for given latents and draws (the deterministic part of :meth:`forward`)."""
        c = self.cfg
        cond, uncond = prompts.get_text_embeddings(batch.elevation, batch.azimuth, c.view_dependent_prompting)
        width = int(self.unet.config.cross_attention_dim)
        if cond.shape[-1] != width:
            raise ConfigError(
                f"{self.path}.pretrained_model_name_or_path: the UNet takes text of width {width} but the video "
                f"prompt embeddings have width {cond.shape[-1]}; the video prompt processor must use the same model"
            )
        grad = self.latent_gradient(latents.detach().float(), draws.t, draws.noise, cond, uncond)
        loss = sds.sds_loss(latents, grad)
        return GuidanceOutput(
            losses={"sds_video": loss},
            stats={
                "grad_norm": grad.norm().detach(), "timestep": draws.t.float().mean(),
                "min_step": float(self.min_step), "max_step": float(self.max_step),
            },
        )  # fmt: skip

    @torch.no_grad()
    def latent_gradient(
        self,
        latents: Float[Tensor, "B C T h w"],
        t: Int[Tensor, "B"],
        noise: Float[Tensor, "B C T h w"],
        cond: Float[Tensor, "B L D"],
        uncond: Float[Tensor, "B L D"],
    ) -> Float[Tensor, "B C T h w"]:
        """``g = nan_to_num(w(t) (eps_c + s (eps_c - eps_u) - eps))`` at ``z_t = q_sample(z, t, eps)``, clamped by
        ``grad_clip`` when set (before the ``1/B`` of the loss)."""
        c = self.cfg
        a_t = self.alphas_cumprod[t]
        z_t = sds.q_sample(latents, a_t, noise)
        eps_cond, eps_uncond = self.predict_noise(z_t, t, cond, uncond)
        eps_hat = sds.cfg_cond_anchor(eps_cond, eps_uncond, c.guidance_scale)
        w = sds.timestep_weight(a_t, c.weighting_strategy).reshape(-1, 1, 1, 1, 1)
        grad = torch.nan_to_num(w * (eps_hat - noise))
        if c.grad_clip is not None:
            clip = scheduled_value(c.grad_clip, *self._position)
            grad = grad.clamp(-clip, clip)
        return grad

    def predict_noise(
        self,
        z_t: Float[Tensor, "B C T h w"],
        t: Int[Tensor, "B"],
        cond: Float[Tensor, "B L D"],
        uncond: Float[Tensor, "B L D"],
    ) -> tuple[Float[Tensor, "B C T h w"], Float[Tensor, "B C T h w"]]:
        """Conditional and unconditional noise predictions (fp32) from one UNet call on ``[cond; uncond]``, in the
        weights' dtype with autocast disabled."""
        dtype = self.weights_dtype
        args = (torch.cat([z_t, z_t]).to(dtype), torch.cat([t, t]), torch.cat([cond, uncond]).to(dtype))
        with torch.autocast(device_type=z_t.device.type, enabled=False):
            out = (self._graphed_unet if self.cfg.cuda_graph else self._unet_forward)(*args).float()
        out_cond, out_uncond = out.chunk(2)
        a_t = self.alphas_cumprod[t]
        return (
            sds.model_output_to_eps(out_cond, z_t, a_t, self.prediction_type),
            sds.model_output_to_eps(out_uncond, z_t, a_t, self.prediction_type),
        )

    def _unet_call(self, z: Tensor, t: Tensor, text: Tensor) -> Tensor:
        return self.unet(z, t, encoder_hidden_states=text).sample
