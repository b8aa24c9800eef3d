"""VideoCrafter2's 3D UNet (LVDM ``openaimodel3d.UNetModel``): the SD-2.1 UNet plus temporal layers and fps input.

Own implementation of the network of AILab-CVC/VideoCrafter @ 11bcd76 (``lvdm/modules/networks/openaimodel3d.py``,
``lvdm/modules/attention.py``), written from ``shared/reference/guidance-models.md`` §2.2. Module attribute names
reproduce the original *parameter names*, so ``model.diffusion_model.*`` of ``model.ckpt`` (prefix stripped) loads
with ``load_state_dict(strict=True)``:

    time_embed.{0,2}  fps_embedding.{0,2}  init_attn.0 (TemporalTransformer)
    input_blocks.0.0 (conv) | input_blocks.N.{0 ResBlock, 1 SpatialTransformer, 2 TemporalTransformer} | .N.0.op
    middle_block.{0 ResBlock, 1 SpatialTransformer, 2 TemporalTransformer, 3 ResBlock}
    output_blocks.N.{0 ResBlock, 1 SpatialTransformer, 2 TemporalTransformer, last: Upsample(.conv)}
    ResBlock: the LDM one + temopral_conv.{conv1.{0 norm, 2 conv}, conv{2,3,4}.{0 norm, 3 conv}}   (sic: "temopral")
    Spatial/TemporalTransformer: norm  proj_in  transformer_blocks.D.{attn1,ff,attn2,norm1..3}  proj_out
    out.{0 norm, 2 conv}

Architecture (all spatial layers run per frame on [(B·T), C, h, w]; frame f of sample b is row b·T + f):

* embedding: ``emb = time_embed(sin(t)) + fps_embedding(sin(fps))`` per sample (the same 320-wide cos|sin
  sinusoid for both), then repeated for the T frames; the text context is repeated likewise.
* ``init_attn``: a TemporalTransformer on the output of ``input_blocks.0`` with 8 heads of ``num_head_channels``
  (inner width 512 at full size) and **Conv1d** (k=1) projections; the first skip is taken *after* it.
* ResBlocks add a ``TemporalConvBlock`` after their residual sum: four [GroupNorm, SiLU, (Dropout 0.1),
  Conv3d (3,1,1)] stages on [B, C, T, h, w], then ``x + conv4(conv3(conv2(conv1(x))))``.
* every SpatialTransformer is followed by a TemporalTransformer with the same heads: GroupNorm (eps 1e-6) over
  (C/32, T, h, w) per sample, i.e. *across frames*; then each pixel's T tokens go through a transformer block whose
  ``attn1`` and ``attn2`` are both self-attention over time (``temporal_selfatt_only``); residual around it all.
* no relative positions and no causal mask (VideoCrafter2's config), so ``temporal_length`` is unused and any frame
  count T works.

Numerics: every GroupNorm normalises in fp32 and casts back (bit-for-bit the original in fp32; the original's
temporal-conv and transformer GroupNorms are plain ``nn.GroupNorm``, which autocast also runs in fp32). 1x1
Conv1d/Conv2d projections are applied as the equivalent ``F.linear`` on channel-last tokens. Attention is SDPA.
Dropout (0.1 in the temporal convs) only acts in training mode: use ``.eval()``. The forward has no host syncs
or data-dependent control flow, so it can be captured in a CUDA graph or ``torch.compile``-d.
"""

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from extern.ldm.unet_blocks import NUM_GROUPS, Downsample, GroupNorm32, Upsample, timestep_embedding
from extern.videocrafter.blocks import SpatialTransformer, TemporalTransformer, UNetBlock, VideoResBlock

# Full-size configuration of VideoCrafter2 (configs/inference_t2v_512_v2.0.yaml, model.params.unet_config.params).
# use_checkpoint is true there; it only trades compute for memory while autograd records, so it is off here.
VIDEOCRAFTER2_UNET_CONFIGS: dict[str, dict[str, Any]] = {
    "t2v_512_v2": {
        "in_channels": 4,
        "out_channels": 4,
        "model_channels": 320,
        "attention_resolutions": [4, 2, 1],
        "num_res_blocks": 2,
        "channel_mult": [1, 2, 4, 4],
        "num_head_channels": 64,
        "transformer_depth": 1,
        "context_dim": 1024,
        "use_linear": True,
        "use_checkpoint": False,
        "temporal_conv": True,
        "temporal_attention": True,
        "temporal_selfatt_only": True,
        "use_relative_position": False,
        "use_causal_attention": False,
        "temporal_length": 16,
        "addition_attention": True,
        "fps_cond": True,
    }
}
# fps the original forward uses when the argument is omitted.
DEFAULT_FPS = 16


def unet_config_from_json(source: Union[str, Path, Mapping[str, Any]]) -> dict[str, Any]:
    """Constructor kwargs of ``VideoCrafterUNetModel`` from a fixture json (``{"kwargs": {...}, ...}``) or its dict.

    The golden fixtures (``shared/guidance-parity/vc2_unet_small.json``) store the original class's keyword
    arguments, which this class accepts unchanged.
    """
    meta = source if isinstance(source, Mapping) else json.loads(Path(source).read_text(encoding="utf-8"))
    if not isinstance(meta.get("kwargs"), Mapping):
        raise ValueError(f"unet_config_from_json: no 'kwargs' object in {source!r}")
    return dict(meta["kwargs"])


def _reject(name: str, value: Any, supported: str) -> ValueError:
    return ValueError(
        f"VideoCrafterUNetModel: {name}={value!r} is not supported (supported: {supported}); "
        "VideoCrafter2's checkpoint needs none of these options."
    )


class VideoCrafterUNetModel(nn.Module):
    """VideoCrafter2's text-to-video eps-prediction UNet (LVDM ``openaimodel3d.UNetModel``, LDM parameter names).

    The constructor takes the original keyword arguments. Options VideoCrafter2 does not use (relative positions,
    causal or cross temporal attention, image cross-attention, scale-shift norm, ...) raise a ``ValueError`` that
    names the argument rather than being silently ignored.

    Args:
        in_channels, out_channels: latent channels in and out (4).
        model_channels: base width (320).
        num_res_blocks: ResBlocks per level (int).
        attention_resolutions: downsampling factors (1, 2, 4, ...) that get spatial + temporal transformers.
        dropout: dropout of ResBlocks and transformers (0; the temporal convs always have 0.1, as the original).
        channel_mult: width multiplier per level.
        conv_resample, dims: must be True and 2.
        context_dim: cross-attention context width (1024, OpenCLIP ViT-H).
        use_scale_shift_norm, resblock_updown: must be False.
        num_heads, num_head_channels: heads per transformer, or channels per head (exactly one > 0). ``init_attn``
            has 8 heads of ``num_head_channels``, so it needs ``num_head_channels``.
        transformer_depth: blocks per SpatialTransformer (and in ``init_attn``).
        use_linear: Linear (True) or 1x1-conv projections in the spatial and block temporal transformers.
        use_checkpoint: gradient checkpointing of each UNet block while autograd records.
        temporal_conv: temporal convs in the ResBlocks.
        tempspatial_aware: must be False ((3,1,1) temporal kernels).
        temporal_attention: a TemporalTransformer after every SpatialTransformer.
        temporal_selfatt_only: must be True (temporal ``attn2`` is self-attention).
        use_relative_position, use_causal_attention: must be False.
        temporal_length: training clip length (16); unused without relative positions / causal mask, kept for
            config compatibility. Any frame count works.
        use_fp16: must be False; cast the module with ``.to(dtype)`` instead.
        addition_attention: the ``init_attn`` temporal transformer after ``input_blocks.0``.
        use_image_attention: must be False.
        temporal_transformer_depth: blocks per TemporalTransformer after the spatial ones.
        fps_cond: add ``fps_embedding(sin(fps))`` to the timestep embedding.
    """

    def __init__(
        self,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        num_res_blocks: int,
        attention_resolutions: Sequence[int],
        dropout: float = 0.0,
        channel_mult: Sequence[int] = (1, 2, 4, 8),
        conv_resample: bool = True,
        dims: int = 2,
        context_dim: Optional[int] = None,
        use_scale_shift_norm: bool = False,
        resblock_updown: bool = False,
        num_heads: int = -1,
        num_head_channels: int = -1,
        transformer_depth: int = 1,
        use_linear: bool = False,
        use_checkpoint: bool = False,
        temporal_conv: bool = False,
        tempspatial_aware: bool = False,
        temporal_attention: bool = True,
        temporal_selfatt_only: bool = True,
        use_relative_position: bool = True,
        use_causal_attention: bool = False,
        temporal_length: Optional[int] = None,
        use_fp16: bool = False,
        addition_attention: bool = False,
        use_image_attention: bool = False,
        temporal_transformer_depth: int = 1,
        fps_cond: bool = False,
    ) -> None:
        super().__init__()
        for name, value, ok in (
            ("conv_resample", conv_resample, True),
            ("dims", dims, 2),
            ("use_scale_shift_norm", use_scale_shift_norm, False),
            ("resblock_updown", resblock_updown, False),
            ("tempspatial_aware", tempspatial_aware, False),
            ("temporal_selfatt_only", temporal_selfatt_only, True),
            ("use_relative_position", use_relative_position, False),
            ("use_causal_attention", use_causal_attention, False),
            ("use_fp16", use_fp16, False),
            ("use_image_attention", use_image_attention, False),
        ):
            if value != ok:
                raise _reject(name, value, repr(ok))
        if not isinstance(context_dim, int) or context_dim <= 0:
            raise _reject("context_dim", context_dim, "a positive int")
        for name, value in (("num_res_blocks", num_res_blocks), ("transformer_depth", transformer_depth),
                            ("temporal_transformer_depth", temporal_transformer_depth)):
            if not isinstance(value, int) or value < 1:
                raise _reject(name, value, "an int >= 1")
        if (num_heads > 0) == (num_head_channels > 0):
            raise ValueError(f"VideoCrafterUNetModel: set exactly one of num_heads ({num_heads}) and "
                             f"num_head_channels ({num_head_channels}) to a positive value.")
        if addition_attention and num_head_channels <= 0:
            raise _reject("addition_attention", addition_attention, "False unless num_head_channels > 0 "
                          "(init_attn has 8 heads of num_head_channels)")
        channel_mult = list(channel_mult)
        for mult in channel_mult:
            if (model_channels * mult) % NUM_GROUPS != 0:
                raise ValueError(f"VideoCrafterUNetModel: model_channels*channel_mult = {model_channels * mult} "
                                 f"is not divisible by the {NUM_GROUPS} GroupNorm groups.")

        def head_layout(ch: int) -> tuple[int, int]:
            # (heads, dim_head); with a fixed head width the head count follows the level width.
            per_head = num_head_channels if num_head_channels > 0 else ch // num_heads
            if ch % per_head != 0 or (num_heads > 0 and ch % num_heads != 0):
                raise ValueError(f"VideoCrafterUNetModel: width {ch} does not split into heads "
                                 f"(num_heads={num_heads}, num_head_channels={num_head_channels}).")
            return ch // per_head, per_head

        def attention_layers(ch: int) -> list[nn.Module]:
            heads, dim_head = head_layout(ch)
            layers: list[nn.Module] = [
                SpatialTransformer(ch, heads, dim_head, transformer_depth, context_dim, use_linear, dropout)
            ]
            if temporal_attention:
                layers.append(TemporalTransformer(ch, heads, dim_head, temporal_transformer_depth, use_linear,
                                                  dropout))
            return layers

        def res_block(ch_in: int, ch_out: int) -> VideoResBlock:
            return VideoResBlock(ch_in, emb_dim, ch_out, dropout, temporal_conv)

        self.model_channels = model_channels
        self.temporal_length = temporal_length
        self.use_checkpoint = use_checkpoint
        emb_dim = 4 * model_channels
        attention_resolutions = set(attention_resolutions)

        # --- embeddings (registration order as in the checkpoint) ----------------------------------------------
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.fps_embedding: Optional[nn.Sequential] = None
        if fps_cond:
            self.fps_embedding = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(),
                                               nn.Linear(emb_dim, emb_dim))

        # --- encoder --------------------------------------------------------------------------------------------
        self.input_blocks = nn.ModuleList([UNetBlock(nn.Conv2d(in_channels, model_channels, 3, padding=1))])
        self.init_attn: Optional[UNetBlock] = None
        if addition_attention:
            self.init_attn = UNetBlock(TemporalTransformer(model_channels, 8, num_head_channels, transformer_depth,
                                                           use_linear=False, dropout=dropout))
        skip_channels = [model_channels]
        ch = model_channels
        ds = 1  # current downsampling factor
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [res_block(ch, mult * model_channels)]
                ch = mult * model_channels
                if ds in attention_resolutions:
                    layers.extend(attention_layers(ch))
                self.input_blocks.append(UNetBlock(*layers))
                skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(UNetBlock(Downsample(ch)))
                skip_channels.append(ch)
                ds *= 2

        # --- middle: ResBlock, spatial (+ temporal) transformer, ResBlock ---------------------------------------
        self.middle_block = UNetBlock(res_block(ch, ch), *attention_layers(ch), res_block(ch, ch))

        # --- decoder: each block eats one skip (concatenated on channels) ---------------------------------------
        self.output_blocks = nn.ModuleList([])
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [res_block(ch + skip_channels.pop(), model_channels * mult)]
                ch = model_channels * mult
                if ds in attention_resolutions:
                    layers.extend(attention_layers(ch))
                if level > 0 and i == num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(UNetBlock(*layers))

        self.out = nn.Sequential(
            GroupNorm32(NUM_GROUPS, ch),
            nn.SiLU(),
            nn.Conv2d(model_channels, out_channels, 3, padding=1),
        )

    def _run(self, block: UNetBlock, h: Tensor, emb: Tensor, context: Tensor, num_frames: int) -> Tensor:
        # Gradient checkpointing only pays off while autograd records; under no_grad it would just add overhead.
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(block, h, emb, context, num_frames, use_reentrant=False)
        return block(h, emb, context, num_frames)

    def _fps_tensor(self, fps: Union[int, float, Tensor], timesteps: Tensor) -> Tensor:
        batch = timesteps.shape[0]
        if not isinstance(fps, Tensor):
            return torch.full((batch,), float(fps), device=timesteps.device)
        if fps.ndim > 1 or (fps.ndim == 1 and fps.shape[0] not in (1, batch)):
            raise ValueError(f"VideoCrafterUNetModel: fps of shape {tuple(fps.shape)} does not match the batch "
                             f"size {batch} (pass a number, a 0-d tensor or one value per sample).")
        return fps.to(timesteps.device).reshape(-1).expand(batch)

    def forward(
        self,
        x: Float[Tensor, "b c t h w"],
        timesteps: Union[Int[Tensor, "b"], Float[Tensor, "b"]],
        context: Float[Tensor, "b m d"],
        fps: Union[int, float, Tensor] = DEFAULT_FPS,
    ) -> Float[Tensor, "b c_out t h w"]:
        """Predict the noise of a batch of videos.

        Args:
            x: noisy latents [B, C, T, h, w]; h and w divisible by 2**(levels-1). Any T >= 1.
            timesteps: one timestep per video (int or float).
            context: text embeddings per video [B, L, context_dim] (shared by its frames).
            fps: frame rate conditioning: a number for all videos or a tensor with one value per video (ignored
                when the model has no fps embedding). The original's default is 16; 4D-fy passes 8.

        Returns:
            eps prediction [B, out_channels, T, h, w] in the dtype of ``x``.
        """
        b, c, t, height, width = x.shape
        dtype = self.time_embed[0].weight.dtype
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(dtype))
        if self.fps_embedding is not None:
            fps_emb = timestep_embedding(self._fps_tensor(fps, timesteps), self.model_channels)
            emb = emb + self.fps_embedding(fps_emb.to(dtype))
        # every frame of a video gets its embedding and text context; frames are consecutive rows
        emb = emb.repeat_interleave(t, dim=0)
        context = context.to(dtype).repeat_interleave(t, dim=0)

        h = x.to(dtype).transpose(1, 2).reshape(b * t, c, height, width)
        skips = []
        for index, block in enumerate(self.input_blocks):
            h = self._run(block, h, emb, context, t)
            if index == 0 and self.init_attn is not None:
                h = self._run(self.init_attn, h, emb, context, t)  # the first skip is taken after init_attn
            skips.append(h)
        h = self._run(self.middle_block, h, emb, context, t)
        for block in self.output_blocks:
            h = torch.cat([h, skips.pop()], dim=1)
            h = self._run(block, h, emb, context, t)
        out = self.out(h)
        return out.view(b, t, -1, height, width).transpose(1, 2).contiguous().to(x.dtype)
