"""``stable-diffusion-vsd-guidance``: variational score distillation (ProlificDreamer, Wang et al.,
arXiv:2305.16213) with Stable Diffusion 2.1, 4D-fy's guidance for single-view image steps.

Two diffusion models take part:

- the pretrained score (``pretrained_model_name_or_path``, SD 2.1-base, eps-prediction), frozen;
- the particle score (``pretrained_model_name_or_path_lora``, SD 2.1 768-v, v-prediction): a frozen UNet plus
  rank-4 LoRA on every attention projection (:mod:`fourdfy.guidance.lora`) plus a camera MLP
  (``TimestepEmbedding(16, time_embed_dim)``) whose output is added to the time embedding. Only the LoRA and the
  camera MLP train, through ``loss_lora``, so that this model follows the distribution of the renders.

Per call, for ``B`` renders (``T`` = 1000 training timesteps, ``ᾱ`` each model's DDPM table):

1. ``z = s_vae * sample(VAE.encode(2 * resize(rgb, 8 * sample_size) - 1))`` (gradients flow through the encoder;
   512² for SD 2.1-base);
2. ``t ~ U{min_step..max_step}`` per render, ``z_t = q_sample(z, t, eps)``;
3. ``eps_pre = eps_u + s (eps_c - eps_u)`` from the pretrained UNet with view-dependent ``[cond; uncond]`` text
   (``s = guidance_scale``, 7.5);
4. ``eps_lora``: the LoRA UNet on ``[z_t; z_t]`` with view-independent ``[cond; uncond]`` text and camera labels
   ``[camera; 0]``, converted to noise (``v_to_eps`` with the LoRA model's ᾱ for a v-prediction model), then the
   same CFG with ``guidance_scale_lora`` (1.0);
5. ``g = nan_to_num((1 - ᾱ_t)(eps_pre - eps_lora))`` and ``loss_vsd = 0.5 * sum((z - sg(z - g))^2) / B``
   (gradient ``g / B`` on the latents);
6. ``loss_lora``: ``sg(z)`` repeated ``lora_n_timestamp_samples`` times, ``t' ~ U{0..T-1}``, fresh noise,
   ``noisy = q_sample(sg z, t', eps')`` (LoRA model's ᾱ), target ``v = velocity(sg z, eps', t')`` (``eps'`` for
   an eps model), conditional view-independent text only, camera zeroed with probability 0.1 per sample
   (``lora_cfg_training``); ``loss_lora = mean((lora_unet(noisy) - target)^2)``.

Camera embedding init: **default** diffusers ``TimestepEmbedding`` init (PyTorch's ``nn.Linear`` init, random and
non-zero), as in 4D-fy, so the particle model starts with a random camera-dependent offset of its time embedding
(parity with 4D-fy's training dynamics was preferred over a zero init that would start it exactly at SD 2.1).

Max-step anneal, as 4D-fy ran it (``max_step_latch: true``, the default): once :meth:`update_step` sees a step
past ``anneal_start_step`` the max step is ``max_step_percent_annealed`` for good. 4D-fy's ``system.weights``
calls ``update_step`` with the *previous* stage's step (10000 after stage 1), so its stage 2 samples
t ∈ [20, 500] from the first step although the config says ``max_step_percent: 0.98`` (reference §1.5, §15.3);
the published results come from that. ``max_step_latch: false`` runs the configured schedule instead: the range
is recomputed from the live step on every call, so stage 2 samples [20, 980] until its own step 5000.

Precision (:mod:`fourdfy.guidance.precision`): both UNets and the VAE run in ``weights_dtype`` on CUDA
(``auto``: the measured default of the ``sd`` family; 4D-fy ran them in fp16), fp32 on CPU; the LoRA and the
camera MLP keep fp32 parameters. The 768-v UNet keeps its config's ``upcast_attention`` (attention scores in fp32,
which fp16 needs at that model's activation scale).

Differences from 4D-fy, on purpose:

- the camera is dropped per LoRA-loss sample; 4D-fy (threestudio) draws once per call, which is the same thing
  with its single-view batches of B = 1;
- ``enable_sequential_cpu_offload`` is rejected (see :class:`StableDiffusionVSDGuidance.Config`).

CUDA graphs (``cuda_graph``, on by default): the two no-grad UNet calls of :meth:`StableDiffusionVSDGuidance.vsd_gradient`
(the pretrained UNet on ``[cond; uncond]`` and the LoRA UNet's ``eps_phi``) are replayed from CUDA graphs
(:class:`fourdfy.guidance.cuda_graph.GraphedForward`, one graph per input shape), as in the MVDream and ZeroScope
guidances. A graph reads its parameters from the addresses they had at capture; the LoRA adapters and the camera MLP
are trained by a ``torch.optim`` optimizer, whose steps update them in place (same storage), so every replay sees the
current values. Moving or casting the module (``.to``, which may allocate new parameter storage) drops the graphs;
they are captured again on the next call. The LoRA loss's forward and backward (``cuda_graph_lora_loss``, on by
default) are replayed from a pair of CUDA graphs too (:class:`fourdfy.guidance.cuda_graph.GraphedTrainForward`): the
particle UNet with gradients to its adapters and camera MLP is the same computation every step, and eagerly its
launches, not its arithmetic, set the time of a single-view step. Off CUDA everything runs eagerly.

The official SD 2.1 hub repositories were removed in Nov 2025; local diffusers folders (``unet/``,
``scheduler/``, ``vae/``) are the first-class way to point at weights. The reserved names ``tiny-random-sd-eps``
and ``tiny-random-sd-v`` build seeded tiny random models for CPU runs and tests (:mod:`fourdfy.stand_ins`).
Loading lives in :mod:`fourdfy.guidance.sd_loading`.
"""

import dataclasses
import logging
from collections.abc import Callable
from typing import Optional

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from fourdfy.config import ConfigError, Scheduled, choice
from fourdfy.data.batch import CameraBatch
from fourdfy.guidance import precision, sds
from fourdfy.guidance.base import BaseGuidance, GuidanceOutput
from fourdfy.guidance.cuda_graph import GraphedForward, GraphedTrainForward
from fourdfy.guidance.lora import inject_lora
from fourdfy.guidance.sd_loading import SDComponents, load_sd_components
from fourdfy.prompt_processors.base import PromptEmbeddings
from fourdfy.registry import register

logger = logging.getLogger(__name__)

LORA_RANK = 4
LORA_SCALE = 1.0
"""LoRA strength in every call of the particle model (4D-fy's ``cross_attention_kwargs={"scale": 1.0}``)."""
CAMERA_DIM = 16
"""Flattened 4x4 camera matrix fed to the camera MLP."""
CAMERA_DROPOUT = 0.1
"""Probability of zeroing a sample's camera in the LoRA loss (classifier-free training of the camera input)."""


@dataclasses.dataclass
class VSDNoise:
    """Every random draw of one guidance call besides the VAE posterior sample, in the order they are drawn.

    ``N = B * lora_n_timestamp_samples``; the LoRA-loss samples tile the batch (sample ``i`` is render
    ``i mod B``).
    """

    t: Int[Tensor, "B"]
    noise: Float[Tensor, "B C h w"]
    t_lora: Int[Tensor, "N"]
    noise_lora: Float[Tensor, "N C h w"]
    camera_keep: Bool[Tensor, "N"]
    """False where the camera condition is zeroed in the LoRA loss."""


class _CameraEmbeddingRef:
    """Stands in ``unet.class_embedding`` for the guidance-owned camera MLP.

    diffusers adds ``class_embedding(class_labels)`` to the time embedding whenever ``class_embedding`` is set and
    ``class_embed_type`` is None (checked in 0.42.1). A plain callable, unlike an ``nn.Module``, is not registered
    as a child of the frozen UNet, so the camera MLP is neither frozen with it nor filtered out of checkpoints with
    its weights; it runs in its own dtype (fp32) and diffusers casts the result to the UNet's.
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self, labels: Tensor) -> Tensor:
        return self.module(labels.to(self.module.linear_1.weight.dtype))


@register("stable-diffusion-vsd-guidance")
class StableDiffusionVSDGuidance(BaseGuidance):
    """ProlificDreamer VSD with Stable Diffusion 2.1 (4D-fy's single-view image guidance)."""

    loss_names = ("vsd", "lora")
    frozen_modules = ("unet", "unet_lora", "vae")
    precision_network = "sd"

    @dataclasses.dataclass
    class Config:
        pretrained_model_name_or_path: str = "stabilityai/stable-diffusion-2-1-base"
        """Pretrained (eps) model: local diffusers folder, hub id, or ``tiny-random-sd-eps``. Its VAE is shared."""
        pretrained_model_name_or_path_lora: str = "stabilityai/stable-diffusion-2-1"
        """Base of the LoRA (particle) model, v-prediction in 4D-fy: local folder, hub id, or ``tiny-random-sd-v``."""
        enable_memory_efficient_attention: bool = False
        """Accepted; already in effect: diffusers' default attention runs torch's scaled_dot_product_attention,
        which uses the flash / memory-efficient kernels on CUDA (xformers, 4D-fy's route, is not a dependency).
        ``enable_attention_slicing`` replaces it with sliced attention."""
        enable_attention_slicing: bool = False
        """Sliced attention (slice size 1, as 4D-fy) in both UNets: less memory, slower."""
        enable_channels_last_format: bool = False
        """Both UNets in channels-last memory format."""
        guidance_scale: float = 7.5
        """CFG scale of the pretrained model."""
        guidance_scale_lora: float = 1.0
        """CFG scale of the LoRA model."""
        half_precision_weights: bool = True
        """4D-fy's key (4D-fy: fp16 networks). ``false``: the frozen UNets and VAE run in fp32
        (``weights_dtype: auto`` resolves to fp32); ``true``: ``weights_dtype`` decides. LoRA/camera stay fp32."""
        weights_dtype: str = choice("auto", precision.WEIGHTS_DTYPES, precision.WEIGHTS_DTYPE_DOC)
        """Precision of the frozen UNets and VAE on CUDA: ``auto`` (the measured default of the ``sd`` family,
        :data:`fourdfy.guidance.precision.NETWORK_DEFAULTS`), ``fp32``, ``tf32``, ``fp16`` or ``bf16``. CPU: fp32."""
        lora_cfg_training: bool = True
        """Zero the camera of a LoRA-loss sample with probability 0.1."""
        lora_n_timestamp_samples: int = 1
        """LoRA-loss samples (timesteps) per render."""
        min_step_percent: Scheduled = 0.02
        max_step_percent: Scheduled = 0.98
        max_step_percent_annealed: float = 0.5
        """``max_step_percent`` once ``global_step > anneal_start_step``."""
        anneal_start_step: Optional[int] = 5000
        """Null disables the anneal."""
        max_step_latch: bool = True
        """4D-fy's one-way anneal (default): once a step past ``anneal_start_step`` is seen -- including the previous
        stage's step, replayed when ``system.weights`` loads a checkpoint -- the max step stays annealed. So a
        stage 2 chained after stage 1 samples t in [20, 500] from its first step, as 4D-fy's did. ``false``: the
        configured schedule, recomputed from the live step (stage 2: [20, 980] until its own step 5000)."""
        view_dependent_prompting: bool = True
        """View-dependent text for the pretrained model (the LoRA model always gets view-independent text)."""
        camera_condition_type: str = choice("extrinsics", ("extrinsics", "mvp"), "Camera fed to the camera MLP.")
        """``extrinsics``: camera-to-world matrix; ``mvp``: projection @ world-to-camera."""
        cuda_graph: bool = True
        """On CUDA, replay the two no-grad UNet forwards of the VSD gradient (pretrained eps and the LoRA model's
        eps_phi) from CUDA graphs (one per input shape): the same computation with fewer kernel launches. Replays
        read the LoRA/camera parameters in place, so optimizer steps are seen. ``false``: always eager. Each graph
        keeps a private memory pool as large as one forward's activations."""
        cuda_graph_lora_loss: bool = True
        """On CUDA, replay the LoRA loss's particle-UNet forward and its backward (gradients to the adapters and
        the camera MLP) from CUDA graphs, one pair per input shape: the same computation without the host launching
        each kernel. The graphs keep the forward's saved activations in their own memory pool. ``false``: eager."""
        device: Optional[str] = None
        """Run this guidance (networks, LoRA and camera embedding) on its own device, e.g. ``cuda:1`` (model
        placement for small cards); null: the system's device. Not combinable with data-parallel ``--gpu 0,1``."""

        def __post_init__(self) -> None:
            if self.lora_n_timestamp_samples < 1:
                raise ConfigError("lora_n_timestamp_samples: must be >= 1")
            if not 0.0 < self.max_step_percent_annealed <= 1.0:
                raise ConfigError("max_step_percent_annealed: must be in (0, 1]")
            if self.anneal_start_step is not None and self.anneal_start_step < 0:
                raise ConfigError("anneal_start_step: must be >= 0 (or null to disable the anneal)")
            precision.check_config(self)

    def __init__(self, cfg=None, path: str = "system.guidance") -> None:
        self.path = path
        super().__init__(cfg, path)

    def configure(self) -> None:
        c = self.cfg
        key, key_lora = f"{self.path}.pretrained_model_name_or_path", f"{self.path}.pretrained_model_name_or_path_lora"
        pre = load_sd_components(c.pretrained_model_name_or_path, key, with_vae=True)
        lora = load_sd_components(c.pretrained_model_name_or_path_lora, key_lora, with_vae=False)
        self._check_models(pre, lora, key, key_lora)
        self.unet = self.freeze(pre.unet)
        self.vae = self.freeze(pre.vae)
        self.unet_lora = self.freeze(lora.unet)
        self.prediction_type = str(pre.scheduler.config.prediction_type)
        self.prediction_type_lora = str(lora.scheduler.config.prediction_type)
        self.num_train_timesteps = int(pre.scheduler.config.num_train_timesteps)
        self.register_buffer("alphas_cumprod", pre.scheduler.alphas_cumprod.float().clone(), persistent=False)
        self.register_buffer("alphas_cumprod_lora", lora.scheduler.alphas_cumprod.float().clone(), persistent=False)

        # trainable parts: held by the guidance, only referenced by the frozen LoRA UNet (see lora.py)
        self.lora_layers = inject_lora(self.unet_lora, rank=LORA_RANK)
        from diffusers.models.embeddings import TimestepEmbedding

        time_embed_dim = self.unet_lora.time_embedding.linear_2.out_features
        self.camera_embedding = TimestepEmbedding(CAMERA_DIM, time_embed_dim)
        self.unet_lora.class_embedding = _CameraEmbeddingRef(self.camera_embedding)

        if c.enable_memory_efficient_attention:
            logger.info(
                "%s.enable_memory_efficient_attention: %s", self.path,
                "attention slicing replaces the SDPA attention processors" if c.enable_attention_slicing
                else "torch SDPA attention (flash / memory-efficient kernels on CUDA) is already in use",
            )  # fmt: skip
        for unet in (self.unet, self.unet_lora):
            if c.enable_attention_slicing:
                unet.set_attention_slice(1)
            if c.enable_channels_last_format:
                unet.to(memory_format=torch.channels_last)
        self._graphed_unet = GraphedForward(self._unet_call)
        self._graphed_unet_lora = GraphedForward(self._unet_lora_call)
        # the module list is the graph's parameter set only: not an attribute, so not registered (or saved) twice
        self._graphed_lora_train = GraphedTrainForward(
            self._unet_lora_call, nn.ModuleList([self.lora_layers, self.camera_embedding])
        )
        self.annealed = False
        """Whether the one-way anneal has fired (``max_step_latch``)."""
        self.min_step, self.max_step = self.step_range(0, 0)

    def _unet_call(self, z_t: Tensor, t: Tensor, text: Tensor) -> Tensor:
        """The pretrained UNet's raw output (a function of tensors only, for :class:`GraphedForward`)."""
        return self.unet(z_t, t, encoder_hidden_states=text).sample

    def _unet_lora_call(self, z_t: Tensor, t: Tensor, text: Tensor, labels: Tensor) -> Tensor:
        """The particle model's raw output at ``LORA_SCALE`` (the scale is part of the function, hence of a graph)."""
        with self.lora_layers.scaled(LORA_SCALE):
            return self.unet_lora(z_t, t, encoder_hidden_states=text, class_labels=labels).sample

    def _check_models(self, pre: SDComponents, lora: SDComponents, key: str, key_lora: str) -> None:
        """Fail early, naming the config key, on models that cannot work together."""
        for k, comp in ((key, pre), (key_lora, lora)):
            if comp.scheduler.config.prediction_type not in sds.PREDICTION_TYPES:
                raise ConfigError(f"{k}: prediction type {comp.scheduler.config.prediction_type!r} is not one of "
                                  f"{sds.PREDICTION_TYPES}")  # fmt: skip
            if comp.unet.config.class_embed_type is not None or comp.unet.class_embedding is not None:
                raise ConfigError(f"{k}: the UNet already has a class embedding; a plain text-to-image UNet is needed")
        if pre.unet.config.cross_attention_dim != lora.unet.config.cross_attention_dim:
            raise ConfigError(
                f"{key_lora}: text width {lora.unet.config.cross_attention_dim} differs from {key}'s "
                f"{pre.unet.config.cross_attention_dim}; both models take the same prompt embeddings"
            )
        if pre.scheduler.config.num_train_timesteps != lora.scheduler.config.num_train_timesteps:
            raise ConfigError(f"{key_lora}: its schedule has a different number of training timesteps than {key}'s")
        if lora.scheduler.config.prediction_type == "v_prediction" and not lora.unet.config.upcast_attention:
            logger.warning(
                "%s: this v-prediction UNet does not upcast attention (SD 2.1 768-v's config does); in fp16 its "
                "attention may overflow. Consider weights_dtype: bf16 or fp32.", key_lora,
            )  # fmt: skip
        latent = pre.vae.config.latent_channels
        if pre.unet.config.in_channels != latent or lora.unet.config.in_channels != latent:
            raise ConfigError(f"{key_lora}: UNet input channels do not match the VAE's {latent} latent channels")

    @property
    def image_size(self) -> int:
        """Side of the square images given to the VAE: the pretrained UNet's latent size times the VAE factor."""
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return int(self.unet.config.sample_size) * factor

    def step_range(self, epoch: int, global_step: int, annealed: bool = False) -> tuple[int, int]:
        """``(min_step, max_step)`` at a training position; after ``anneal_start_step`` (or when ``annealed``) the
        max is ``int(T * max_step_percent_annealed)``. A pure function of its arguments."""
        return sds.annealed_step_range(self.cfg, epoch, global_step, self.num_train_timesteps, annealed)

    def update_step(self, epoch: int, global_step: int, on_load_weights: bool = False) -> None:
        c = self.cfg
        if c.max_step_latch:
            # 4D-fy: one-way, and also fired by the previous stage's step when system.weights is loaded
            past = c.anneal_start_step is not None and global_step > c.anneal_start_step
            self.annealed = self.annealed or past
            self.min_step, self.max_step = self.step_range(epoch, global_step, self.annealed)
        elif not on_load_weights:
            # the configured schedule: a pure function of the live step; the loaded stage's step is ignored
            self.min_step, self.max_step = self.step_range(epoch, global_step)

    # ----------------------------------------------------------------------------------------------------------
    # the call
    # ----------------------------------------------------------------------------------------------------------

    def encode_images(
        self, rgb: Float[Tensor, "B H W 3"], generator: Optional[torch.Generator] = None
    ) -> Float[Tensor, "B C h w"]:
        """Latents of renders in [0, 1]: a posterior *sample* (as 4D-fy), scaled by the VAE's factor, fp32."""
        size = self.image_size
        x = self.images_to_bchw(rgb, (size, size)) * 2.0 - 1.0
        scale, dtype = self.vae.config.scaling_factor, self.weights_dtype

        def encode(v: Tensor) -> Tensor:
            return (self.vae.encode(v.to(dtype)).latent_dist.sample(generator=generator) * scale).float()

        return self.call_frozen(encode, x)

    def sample_noise(
        self, latents: Float[Tensor, "B C h w"], generator: Optional[torch.Generator] = None
    ) -> VSDNoise:
        """Draw the timesteps, noises and camera-dropout mask of one call (in :class:`VSDNoise`'s field order)."""
        c = self.cfg
        b, dev = latents.shape[0], latents.device
        n = b * c.lora_n_timestamp_samples
        t = sds.sample_timesteps(b, self.min_step, self.max_step, dev, generator)
        noise = torch.randn(latents.shape, generator=generator, device=dev, dtype=torch.float32)
        t_lora = sds.sample_timesteps(n, 0, self.num_train_timesteps - 1, dev, generator)
        noise_lora = torch.randn((n, *latents.shape[1:]), generator=generator, device=dev, dtype=torch.float32)
        if c.lora_cfg_training:
            keep = torch.rand(n, generator=generator, device=dev) >= CAMERA_DROPOUT
        else:
            keep = torch.ones(n, dtype=torch.bool, device=dev)
        return VSDNoise(t=t, noise=noise, t_lora=t_lora, noise_lora=noise_lora, camera_keep=keep)

    def forward(
        self,
        rgb: Float[Tensor, "B H W 3"],
        prompts: PromptEmbeddings,
        batch: CameraBatch,
        generator: Optional[torch.Generator] = None,
    ) -> GuidanceOutput:
        """``loss_vsd`` (gradient to the renders) and ``loss_lora`` (gradient to the LoRA and camera MLP).

        Args:
            rgb: renders in [0, 1].
            prompts: the prompt's embeddings.
            batch: the cameras of the renders.
            generator: optional RNG (on the renders' device) for every random draw (VAE sample, then
                :meth:`sample_noise`), for reproducible calls; the global RNG otherwise.
        """
        latents = self.encode_images(rgb, generator)
        draws = self.sample_noise(latents, generator)
        return self.losses_from_latents(latents, prompts, batch, draws)

    def losses_from_latents(
        self, latents: Float[Tensor, "B C h w"], prompts: PromptEmbeddings, batch: CameraBatch, draws: VSDNoise
    ) -> GuidanceOutput:
        """Both losses for given latents and random draws (the deterministic part of :meth:`forward`)."""
        c = self.cfg
        camera = self.camera_condition(batch)
        cond_vd, uncond_vd = prompts.get_text_embeddings(batch.elevation, batch.azimuth, c.view_dependent_prompting)
        cond, uncond = prompts.get_text_embeddings(batch.elevation, batch.azimuth, False)
        grad = torch.nan_to_num(
            self.vsd_gradient(latents.detach(), draws.t, draws.noise, cond_vd, uncond_vd, cond, uncond, camera)
        )
        loss_vsd = sds.sds_loss(latents, grad)
        camera_lora = camera.repeat(c.lora_n_timestamp_samples, 1)
        camera_lora = torch.where(draws.camera_keep[:, None], camera_lora, torch.zeros_like(camera_lora))
        loss_lora = self.lora_loss(latents, draws.t_lora, draws.noise_lora, cond, camera_lora)
        return GuidanceOutput(
            losses={"vsd": loss_vsd, "lora": loss_lora},
            stats={"grad_norm": grad.norm().detach(), "min_step": float(self.min_step), "max_step": float(self.max_step)},
        )

    def camera_condition(self, batch: CameraBatch) -> Float[Tensor, "B 16"]:
        """The 16 values fed to the camera MLP: the row-major flattened c2w (``extrinsics``) or MVP matrix."""
        m = batch.c2w if self.cfg.camera_condition_type == "extrinsics" else batch.mvp_mtx
        return m.reshape(m.shape[0], CAMERA_DIM).float()

    @torch.no_grad()
    def vsd_gradient(
        self,
        latents: Float[Tensor, "B C h w"],
        t: Int[Tensor, "B"],
        noise: Float[Tensor, "B C h w"],
        cond_vd: Float[Tensor, "B L D"],
        uncond_vd: Float[Tensor, "B L D"],
        cond: Float[Tensor, "B L D"],
        uncond: Float[Tensor, "B L D"],
        camera: Float[Tensor, "B 16"],
    ) -> Float[Tensor, "B C h w"]:
        """``(1 - ᾱ_t)(eps_pre - eps_lora)``: pretrained vs particle score at ``z_t = q_sample(z, t, noise)``."""
        c = self.cfg
        a_t = self.alphas_cumprod[t]
        z_t = sds.q_sample(latents, a_t, noise)
        z_in, t_in = torch.cat([z_t, z_t]), torch.cat([t, t])  # one call for [cond; uncond]
        graphs = self.cfg.cuda_graph
        pre = self._graphed_unet if graphs else self._unet_call
        pre_c, pre_u = self.predict_with(pre, z_in, t_in, torch.cat([cond_vd, uncond_vd])).chunk(2)
        eps_pre = sds.cfg_uncond_anchor(
            sds.model_output_to_eps(pre_c, z_t, a_t, self.prediction_type),
            sds.model_output_to_eps(pre_u, z_t, a_t, self.prediction_type),
            c.guidance_scale,
        )
        labels = torch.cat([camera, torch.zeros_like(camera)])
        lora = self._graphed_unet_lora if graphs else self._unet_lora_call
        est_c, est_u = self.predict_with(lora, z_in, t_in, torch.cat([cond, uncond]), labels).chunk(2)
        a_lora = self.alphas_cumprod_lora[t]
        eps_lora = sds.cfg_uncond_anchor(
            sds.model_output_to_eps(est_c, z_t, a_lora, self.prediction_type_lora),
            sds.model_output_to_eps(est_u, z_t, a_lora, self.prediction_type_lora),
            c.guidance_scale_lora,
        )
        return sds.sds_weight(a_t).reshape(-1, 1, 1, 1) * (eps_pre - eps_lora)

    def lora_loss(
        self,
        latents: Float[Tensor, "B C h w"],
        t: Int[Tensor, "N"],
        noise: Float[Tensor, "N C h w"],
        cond: Float[Tensor, "B L D"],
        camera: Float[Tensor, "N 16"],
    ) -> Float[Tensor, ""]:
        """Denoising loss of the particle model on the (detached) latents: MSE to v (or eps), mean.

        The ``N = B * k`` samples tile the batch ``k`` times; ``camera`` is already per sample (dropout applied).
        """
        reps = t.shape[0] // latents.shape[0]
        z0 = latents.detach().float().repeat(reps, 1, 1, 1)
        a_t = self.alphas_cumprod_lora[t]
        noisy = sds.q_sample(z0, a_t, noise)
        target = noise if self.prediction_type_lora == "epsilon" else sds.velocity(z0, noise, a_t)
        call = self._graphed_lora_train if self.cfg.cuda_graph_lora_loss else self._unet_lora_call
        out = self.predict_with(call, noisy, t, cond.repeat(reps, 1, 1), camera)
        return F.mse_loss(out, target.float(), reduction="mean")

    def predict_with(
        self,
        call: Callable[..., Tensor],
        z_t: Float[Tensor, "M C h w"],
        t: Int[Tensor, "M"],
        text: Float[Tensor, "M L D"],
        class_labels: Optional[Float[Tensor, "M 16"]] = None,
    ) -> Float[Tensor, "M C h w"]:
        """One UNet call ``call(z_t, t, text[, class_labels])`` (:meth:`_unet_call`, :meth:`_unet_lora_call` or
        their graphed twins) in the frozen networks' dtype (the camera MLP casts its own input); fp32 output."""
        dtype = self.weights_dtype
        args = (z_t.to(dtype), t, text.to(dtype)) + (() if class_labels is None else (class_labels,))
        with self.network_math():
            out = call(*args)
        return out.float()
