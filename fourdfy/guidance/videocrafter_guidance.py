"""``videocrafter-guidance``: video score distillation with VideoCrafter2 (4D-fy's ``_vc`` stage-3 configs; reference
§9.4; the network is ``extern.videocrafter``).

Per call, for ``B`` clips of ``T`` frames, ``rgb [B, T, H, W, 3]`` in [0, 1] (B = 1 in 4D-fy):

1. every frame is bilinearly resized to ``frame_size`` (320 x 512, VideoCrafter2's training size) and mapped to
   [-1, 1]: ``[B, 3, T, 320, 512]``;
2. per-frame VAE encoding, posterior *sample* times 0.18215: ``z [B, 4, T, 40, 64]``. With ``low_ram_vae = k > 0``
   only k frames drawn at random are encoded with autograd; the others are constants (no gradient). With
   ``vae_checkpoint`` (default) the frames with autograd are encoded ``vae_checkpoint_frames`` per call under
   activation checkpointing (encoder activations of that many frames at a time, recomputed in backward), the
   posterior noise drawn once outside;
3. text: ``[cond; uncond]`` from ``videocrafter-prompt-processor``, view-dependent by the clip's camera
   (``view_dependent_prompting``); 4D-fy's negative prompt is "low motion, static statue, not moving, no motion";
4. ``t ~ U{min_step..max_step}`` per clip, with ``[min_step, max_step] = int(1000 C(pct))`` recomputed before every
   batch (``_vc`` configs: [20, 980] at step 0, max falling to 500 by step 5000);
5. ``z_t = sqrt(ᾱ_t) z + sqrt(1 - ᾱ_t) eps`` (4D-fy's plain noising; ``scale_arr_noising`` switches to
   VideoCrafter2's own ``sqrt(ᾱ_t) scale_arr[t] z + ...``);
6. one UNet call on ``[z_t; z_t]`` with ``[t; t]``, ``[cond; uncond]`` and ``fps`` (8 in the configs), over the
   clip's **T** frames; on CUDA replayed from a CUDA graph (``cuda_graph``; one graph per input shape and autocast
   state, with a private memory pool as large as the forward's peak activations);
7. ``eps_hat = eps_c + s (eps_c - eps_u)`` (s = ``guidance_scale``, 100);
8. ``score = eps_hat - eps``, motion amplification ``score = mean_T(score) + m (score - mean_T(score))``
   (m = ``motion_amp_scale``, 30);
9. ``g = w(t) score`` with ``w = 1 - ᾱ_t`` (``weighting_strategy: sds``), clamped to ``[-c, c]`` when ``grad_clip`` is
   set, NaNs zeroed;
10. ``loss_sds_video = 0.5 * sum((z - sg(z - g))^2) / B``, whose gradient on ``z`` is exactly ``g / B``.

The math of steps 1-2 and 5-9 is in :mod:`fourdfy.guidance.video_sds_videocrafter` (pure functions).

**Precision** (reference §15.1), chosen in :meth:`VideoCrafterGuidance.call_precision` only: the frozen UNet and VAE are
fp32 as in 4D-fy's configs (``half_precision_weights: false``; with ``true``, ``weights_dtype`` as the project's policy,
where 4D-fy would use fp16); the UNet call runs inside whatever autocast the trainer set up, so under
``trainer.precision: 16-mixed`` it runs in fp16 autocast on fp32 weights exactly as 4D-fy's did; the VAE encoding
always runs with autocast off, as 4D-fy's ``encode_images``.

**Deviations from 4D-fy**, on purpose:

- the UNet is called with the clip's own frame count; 4D-fy passed ``temporal_length=16`` whatever the clip
  (reference §11.12), so ``data.single_view.num_frames=8`` (a README tweak) was untested there. VideoCrafter2 has no
  relative positions or causal mask, so the frame count only sets the temporal attention's sequence length;
- ``scale_arr_noising`` (default off, which is 4D-fy) exposes the noising VideoCrafter2 was trained with; the
  gradient stays ``w(t)(eps_hat - eps)`` (the factor ``sqrt(ᾱ_t) scale_arr[t]`` of ``dz_t/dz`` is absorbed in the
  weight, as SDS does with ``sqrt(ᾱ_t)``);
- the model is built by our own code from our own architecture table (``extern.videocrafter``), so ``config`` (the
  LVDM yaml 4D-fy built it from) only has to name VideoCrafter2's yaml
  (:func:`~fourdfy.prompt_processors.videocrafter_prompt_processor.check_lvdm_config`);
- new keys: ``frame_size`` (4D-fy hard-coded 320 x 512; smaller sizes make CPU smoke runs possible),
  ``scale_arr_noising`` and ``device`` (model placement, as the other guidances);
- ``max_step_percent_annealed`` / ``anneal_start_step`` (inherited from 4D-fy's ZeroScope keys, unused by its configs)
  are recomputed from the live step, never latched;
- 4D-fy keys without an implementation here (SJC, token merging, HiFA -- broken in 4D-fy --, CPU offload, attention
  slicing, channels-last) are accepted only at 4D-fy's defaults (``fourdfy/compat.py``);
  ``enable_memory_efficient_attention`` is accepted either way: the UNet already uses PyTorch's SDPA kernels;
- ``width_vid`` / ``height_vid`` are accepted and unused, as in 4D-fy (the renders' size is ``data.single_view``'s).
- 4D-fy's guidance was not a module; here it is one, with the frozen UNet and VAE listed in ``frozen_modules`` so
  they are never written into checkpoints (the same effect).

Weights: ``pretrained_model_name_or_path`` is a local ``model.ckpt`` or the hub id ``VideoCrafter/VideoCrafter2``
(or empty/null) to download it (4D-fy's convention); the reserved names ``tiny-random-videocrafter`` and
``random-init-videocrafter2`` build random stand-ins (:mod:`fourdfy.stand_ins`).
"""

import contextlib
import dataclasses
import logging
from contextlib import AbstractContextManager
from typing import Optional

import torch
from jaxtyping import Float, Int
from torch import Tensor

from fourdfy import stand_ins
from fourdfy.config import ConfigError, Scheduled, choice
from fourdfy.data.batch import CameraBatch
from fourdfy.errors import MissingWeightsError
from fourdfy.guidance import precision, sds, video_sds
from fourdfy.guidance.base import AnnealedStepGuidance, GuidanceOutput
from fourdfy.guidance.cuda_graph import GraphedForward
from fourdfy.guidance.sds import WEIGHTING_STRATEGIES
from fourdfy.guidance.video_sds_videocrafter import latent_scale, videocrafter_q_sample, videocrafter_sds_gradient
from fourdfy.prompt_processors.base import PromptEmbeddings
from fourdfy.prompt_processors.videocrafter_prompt_processor import check_lvdm_config
from fourdfy.registry import register

logger = logging.getLogger(__name__)

VIDEOCRAFTER2_FRAME_SIZE = (320, 512)
"""(height, width) of VideoCrafter2's training videos; 4D-fy resizes every frame to it."""


@dataclasses.dataclass
class VideoSDSDraws:
    """The random draws of one call after the VAE posterior samples: a timestep and a noise video per clip."""

    t: Int[Tensor, "B"]
    noise: Float[Tensor, "B C T h w"]


@register("videocrafter-guidance")
class VideoCrafterGuidance(AnnealedStepGuidance):
    """Video SDS with VideoCrafter2 and motion amplification (4D-fy's ``_vc`` video guidance)."""

    loss_names = ("sds_video",)
    frozen_modules = ("unet", "vae")
    precision_network = "videocrafter"
    """``weights_dtype: auto`` takes this family's measured default (:mod:`fourdfy.guidance.precision`)."""

    @dataclasses.dataclass
    class Config(video_sds.VaeEncoderConfig, video_sds.VideoUnetConfig):
        pretrained_model_name_or_path: Optional[str] = None
        """``model.ckpt``: local path; the hub id ``VideoCrafter/VideoCrafter2``, ``""`` or null download it; or a
        stand-in name. 4D-fy's configs interpolate ``system.prompt_processor_video.pretrained_model_name_or_path``."""
        config: str = ""
        """4D-fy's LVDM model yaml: ``""`` or a path ending in ``inference_t2v_512_v2.0.yaml`` (not read)."""
        enable_memory_efficient_attention: bool = False
        """Accepted; already in effect (PyTorch SDPA picks the flash / memory-efficient kernels on CUDA)."""
        guidance_scale: float = 100.0
        """``s`` in ``eps_c + s (eps_c - eps_u)``."""
        grad_clip: Optional[Scheduled] = None
        """Clamp the latent gradient elementwise to ``[-c, c]`` (null: no clamp)."""
        half_precision_weights: bool = True
        """4D-fy's key: ``false`` (every 4D-fy ``_vc`` config) runs the frozen networks in fp32; ``true``:
        ``weights_dtype`` decides. fp32 on CPU."""
        weights_dtype: str = choice("auto", precision.WEIGHTS_DTYPES, precision.WEIGHTS_DTYPE_DOC)
        min_step_percent: Scheduled = 0.02
        max_step_percent: Scheduled = 0.98
        max_step_percent_annealed: float = 0.5
        """``max_step_percent`` once ``global_step > anneal_start_step``."""
        anneal_start_step: Optional[int] = None
        """Null (4D-fy's value): no anneal."""
        weighting_strategy: str = choice("sds", WEIGHTING_STRATEGIES, "Timestep weighting w(t).")
        view_dependent_prompting: bool = True
        """Text by the clip camera's direction (", front view", ...)."""
        low_ram_vae: int = -1
        """> 0: only this many random frames carry gradients through the VAE; <= 0: all frames."""
        width_vid: int = 128
        """Unused (4D-fy: informational copy of ``data.single_view.width_vid``)."""
        height_vid: int = 80
        """Unused (4D-fy: informational copy of ``data.single_view.height_vid``)."""
        motion_amp_scale: float = 1.0
        """Factor on each frame's deviation from the frame mean of the score (1: none; 4D-fy's configs: 30)."""
        fps: int = 28
        """Frame-rate conditioning of the UNet (4D-fy's configs: 8)."""
        frame_size: tuple[int, int] = VIDEOCRAFTER2_FRAME_SIZE
        """(height, width) frames are resized to before the VAE (4D-fy: fixed 320 x 512). Multiples of 8; the latent
        size must suit the UNet (VideoCrafter2: multiples of 64 in pixels)."""
        scale_arr_noising: bool = False
        """Noise as VideoCrafter2 was trained (``sqrt(ᾱ_t) scale_arr[t] z + sqrt(1 - ᾱ_t) eps``, LVDM ``use_scale``)
        instead of 4D-fy's plain ``sqrt(ᾱ_t) z + ...`` (false, the default)."""
        cuda_graph: bool = True
        """On CUDA, replay the UNet forward from a CUDA graph (one per input shape and autocast state): the same
        computation with fewer kernel launches, at the cost of a private memory pool of the forward's peak
        activations."""
        compile_unet: bool = False
        """As for ZeroScope (``video_sds.VideoUnetConfig``), but off by default here: VideoCrafter2's UNet through
        ``torch.compile`` has not been timed in the training loop yet, and under the test suite's runtime shape
        checks (jaxtyping + beartype on ``extern``) Dynamo's fake tensors fail them, so it is tested with those
        checks off."""
        device: Optional[str] = None
        """Run this guidance on its own device (e.g. ``cuda:1``); null: the system's device."""

        def __post_init__(self) -> None:
            precision.check_config(self)
            check_lvdm_config(self.config, "config")
            if any(s <= 0 or s % 8 for s in self.frame_size):
                raise ConfigError(f"frame_size: {list(self.frame_size)} must be positive multiples of 8 (VAE factor)")
            if self.fps <= 0:
                raise ConfigError(f"fps: must be positive, got {self.fps}")
            if not 0.0 < self.max_step_percent_annealed <= 1.0:
                raise ConfigError("max_step_percent_annealed: must be in (0, 1]")
            if self.anneal_start_step is not None and self.anneal_start_step < 0:
                raise ConfigError("anneal_start_step: must be >= 0 (or null to disable the anneal)")

    def __init__(self, cfg=None, path: str = "system.guidance_video") -> None:
        self.path = path
        super().__init__(cfg, path)

    # ----------------------------------------------------------------------------------------------------------
    # building
    # ----------------------------------------------------------------------------------------------------------

    def configure(self) -> None:
        from extern.videocrafter import scale_arr

        c = self.cfg
        builder = stand_ins.lookup("videocrafter", c.pretrained_model_name_or_path or "")
        unet, vae, table = builder() if builder is not None else self._load_pretrained()
        self.unet = self.freeze(unet)
        self.vae = video_sds.in_layout(self.freeze(vae), self.cfg)
        self._vae_moments = video_sds.VaeMoments(self.vae, self.cfg.compile_vae_encoder)
        self.register_buffer("alphas_cumprod", table.float().clone(), persistent=False)
        self.register_buffer("scale_arr", scale_arr(num_timesteps=table.shape[0]), persistent=False)
        self.num_train_timesteps = int(table.shape[0])
        if c.enable_memory_efficient_attention:
            logger.info("%s.enable_memory_efficient_attention: already in effect (PyTorch SDPA attention)", self.path)
        self._unet_forward = video_sds.CompiledCall(self._unet_call, c.compile_unet)
        self._graphed_unet = GraphedForward(self._unet_forward)
        self.min_step, self.max_step = self.step_range(0, 0)

    def _load_pretrained(self) -> tuple[torch.nn.Module, torch.nn.Module, Tensor]:
        from extern.videocrafter import VideoCrafter2CheckpointError, load_videocrafter2

        key = f"{self.path}.pretrained_model_name_or_path"
        try:
            models = load_videocrafter2(self.cfg.pretrained_model_name_or_path or None, load_text_encoder=False,
                                        config_key=key)  # fmt: skip
        except VideoCrafter2CheckpointError as e:
            raise MissingWeightsError(" ".join(str(e).split())) from None  # one line, the key first
        return models.unet, models.vae, models.alphas_cumprod

    def call_precision(self, part: str) -> tuple[torch.dtype, AbstractContextManager]:
        """The precision policy, in one place: ``(dtype of the frozen weights, autocast context)`` for the ``"unet"``
        or ``"vae"`` call. Weights: :attr:`weights_dtype` (fp32 unless ``half_precision_weights`` on CUDA). The UNet
        call keeps the trainer's autocast (fp16 under ``16-mixed``, as 4D-fy); the VAE runs with autocast off (as
        4D-fy's ``encode_images``)."""
        if part not in ("unet", "vae"):
            raise ValueError(f"precision: unknown part {part!r}")
        if part == "vae":
            return self.weights_dtype, torch.autocast(device_type=self.device.type, enabled=False)
        return self.weights_dtype, contextlib.nullcontext()

    # ----------------------------------------------------------------------------------------------------------
    # the call
    # ----------------------------------------------------------------------------------------------------------

    def encode_frames(
        self, rgb: Float[Tensor, "B T H W 3"], generator: Optional[torch.Generator] = None
    ) -> Float[Tensor, "B C T h w"]:
        """Latents of clips in [0, 1] (steps 1-2): frames resized to ``frame_size``, posterior samples times the VAE
        factor, fp32; only the ``low_ram_vae`` frames (all when <= 0) carry gradients."""
        b, t = rgb.shape[:2]
        k = self.cfg.low_ram_vae if self.cfg.low_ram_vae > 0 else -1
        dtype, autocast = self.call_precision("vae")
        factor = self.vae.config.scaling_factor

        def moments(x: Tensor) -> Tensor:  # deterministic: recomputed in backward under vae_checkpoint
            return self._vae_moments(x.to(dtype))

        def sample(m: Tensor) -> Tensor:
            return video_sds.vae_posterior_sample(m, factor, generator)

        with autocast:
            images = video_sds.frames_to_bchw(rgb.float(), tuple(self.cfg.frame_size)) * 2.0 - 1.0
            images = video_sds.in_layout(images, self.cfg)
            with_grad = video_sds.frame_grad_flags(b, t, k, rgb.device, generator)
            frames = video_sds.checkpoint_frames_for(
                self.cfg, video_sds.grad_frame_count(b, t, k), *images.shape[-2:], dtype.itemsize, rgb.device
            )
            z = video_sds.encode_frames(moments, images, with_grad, sample, checkpoint_frames=frames)
            return video_sds.frames_to_video(z, b)

    def sample_draws(
        self, latents: Float[Tensor, "B C T h w"], generator: Optional[torch.Generator] = None
    ) -> VideoSDSDraws:
        """A timestep per clip in ``[min_step, max_step]``, then the noise (step 4)."""
        b, device = latents.shape[0], latents.device
        t = sds.sample_timesteps(b, self.min_step, self.max_step, device, generator)
        noise = torch.randn(latents.shape, generator=generator, device=device, dtype=torch.float32)
        return VideoSDSDraws(t=t, noise=noise)

    def forward(
        self,
        rgb: Float[Tensor, "B T H W 3"],
        prompts: PromptEmbeddings,
        batch: CameraBatch,
        generator: Optional[torch.Generator] = None,
    ) -> GuidanceOutput:
        """``loss_sds_video`` of clips ``rgb`` (renders in [0, 1]) seen from ``batch``'s cameras (one per clip).

        Args:
            rgb: clips ``[B, T, H, W, 3]``.
            prompts: the video prompt processor's embeddings.
            batch: the clips' cameras (elevation / azimuth choose the view-dependent text).
            generator: optional RNG for every draw (frame choice, VAE samples, t, noise); the global RNG otherwise.
        """
        latents = self.encode_frames(rgb, generator)
        return self.loss_from_latents(latents, prompts, batch, self.sample_draws(latents, generator))

    def loss_from_latents(
        self, latents: Float[Tensor, "B C T h w"], prompts: PromptEmbeddings, batch: CameraBatch, draws: VideoSDSDraws
    ) -> GuidanceOutput:
        """Steps 3 and 5-10 for given latents and draws (the deterministic part of :meth:`forward`)."""
        cond, uncond = prompts.get_text_embeddings(batch.elevation, batch.azimuth, self.cfg.view_dependent_prompting)
        grad = self.latent_gradient(latents.detach(), draws.t, draws.noise, cond, uncond)
        loss = sds.sds_loss(latents, grad)
        return GuidanceOutput(
            losses={"sds_video": loss},
            stats={
                "grad_norm": grad.norm().detach(),
                "min_step": float(self.min_step),
                "max_step": float(self.max_step),
            },
        )

    @torch.no_grad()
    def latent_gradient(
        self,
        latents: Float[Tensor, "B C T h w"],
        t: Int[Tensor, "B"],
        noise: Float[Tensor, "B C T h w"],
        cond: Float[Tensor, "B L D"],
        uncond: Float[Tensor, "B L D"],
    ) -> Float[Tensor, "B C T h w"]:
        """The score-distillation gradient ``g`` on the latents (steps 5-9; the loss divides it by B)."""
        c = self.cfg
        a_t = self.alphas_cumprod[t]
        z_t = self.noisy_latents(latents, t, noise)
        eps_cond, eps_uncond = self.predict_noise(z_t, t, cond, uncond)
        grad = videocrafter_sds_gradient(
            eps_cond, eps_uncond, noise, a_t, c.guidance_scale, c.motion_amp_scale, c.weighting_strategy
        )
        if c.grad_clip is not None:
            clip = self._scheduled(c.grad_clip)
            grad = grad.clamp(-clip, clip)
        return torch.nan_to_num(grad)

    def noisy_latents(
        self, latents: Float[Tensor, "B C T h w"], t: Int[Tensor, "B"], noise: Float[Tensor, "B C T h w"]
    ) -> Float[Tensor, "B C T h w"]:
        """``z_t`` (step 5): plain ᾱ noising, or with ``scale_arr[t]`` when ``scale_arr_noising``."""
        scale_t = latent_scale(self.scale_arr, t) if self.cfg.scale_arr_noising else None
        return videocrafter_q_sample(latents, self.alphas_cumprod[t], noise, scale_t)

    def predict_noise(
        self,
        z_t: Float[Tensor, "B C T h w"],
        t: Int[Tensor, "B"],
        cond: Float[Tensor, "B L D"],
        uncond: Float[Tensor, "B L D"],
    ) -> tuple[Float[Tensor, "B C T h w"], Float[Tensor, "B C T h w"]]:
        """Conditional and unconditional noise predictions, one UNet call on ``[z_t; z_t]`` (step 6), fp32."""
        dtype, autocast = self.call_precision("unet")
        fps = torch.full((2 * z_t.shape[0],), self.cfg.fps, device=z_t.device)
        args = (torch.cat([z_t, z_t]).to(dtype), torch.cat([t, t]), torch.cat([cond, uncond]).to(dtype), fps)
        with autocast:
            eps = (self._graphed_unet if self.cfg.cuda_graph else self._unet_forward)(*args)
        eps_cond, eps_uncond = eps.float().chunk(2)
        return eps_cond, eps_uncond

    def _unet_call(self, z: Tensor, t: Tensor, text: Tensor, fps: Tensor) -> Tensor:
        return self.unet(z, t, text, fps=fps)

    def _scheduled(self, value: Scheduled) -> float:
        from fourdfy.schedule import scheduled_value

        epoch, step = getattr(self, "_position", (0, 0))
        return scheduled_value(value, epoch, step)
