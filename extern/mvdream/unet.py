"""MVDream's multi-view UNet: the SD-2.1 LDM UNet plus a camera embedding and multi-view self-attention.

Own implementation of the network of bytedance/MVDream @ 618f844 (``MultiViewUNetModel``), written from the
architecture description in ``shared/reference/guidance-models.md`` §1.2. Module attribute names reproduce the
original *parameter names* exactly, so ``model.diffusion_model.*`` of ``sd-v2.1-base-4view.pt`` (prefix stripped)
loads with ``load_state_dict(strict=True)``:

    time_embed.{0,2}  camera_embed.{0,2}
    input_blocks.N.0 (conv) | input_blocks.N.{0: ResBlock, 1: SpatialTransformer3D} | input_blocks.N.0.op (down)
    middle_block.{0: ResBlock, 1: SpatialTransformer3D, 2: ResBlock}
    output_blocks.N.{0: ResBlock, 1: SpatialTransformer3D, last: Upsample(.conv)}
    ResBlock:   in_layers.{0 norm, 2 conv}  emb_layers.1  out_layers.{0 norm, 3 conv}  skip_connection
    SpatialTransformer3D: norm  proj_in  proj_out  transformer_blocks.D.{attn1,attn2}.{to_q,to_k,to_v,to_out.0}
                          transformer_blocks.D.ff.net.{0.proj,2}  transformer_blocks.D.norm{1,2,3}
    out.{0 norm, 2 conv}

The two MVDream changes to SD 2.1:

* camera: ``emb = time_embed(sinusoid(t)) + camera_embed(camera)`` (camera is the 16-value flattened, normalised
  c2w of ``extern.mvdream.camera``);
* multi-view self-attention: the ``num_frames`` views of one object (contiguous in the batch) are folded into the
  token axis for ``attn1`` only; cross-attention, GroupNorm and the projections stay per view.

Numerics: ResBlock / output GroupNorms compute in fp32 and cast back (LDM's ``GroupNorm32``). The transformer's
GroupNorm (eps 1e-6) is a plain ``nn.GroupNorm`` in the original; here it is upcast to fp32 too, which is
bit-for-bit the same in fp32 and more accurate in bf16/fp16. Attention uses
``torch.nn.functional.scaled_dot_product_attention`` (agrees with the original einsum-softmax to ~1e-6 in fp32).
The forward has no data-dependent Python control flow and no host syncs, so it can be ``torch.compile``-d or
captured in a CUDA graph. The generic LDM blocks (ResBlock, attention, GEGLU MLP, up/down-sampling, timestep
embedding) live in ``extern.ldm.unet_blocks``, shared with VideoCrafter.
"""

from collections.abc import Sequence
from typing import Any, Optional, Union

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from extern.ldm.unet_blocks import (
    NUM_GROUPS as _NUM_GROUPS,
    Attention,
    Downsample,
    FeedForward,
    GroupNorm32,
    ResBlock,
    Upsample,
    timestep_embedding,
)

# Full-size configuration of the official checkpoint (mvdream/configs/sd-v2-base.yaml, unet_config.params).
MVDREAM_UNET_CONFIGS: dict[str, dict[str, Any]] = {
    "sd-v2.1-base-4view": {
        "image_size": 32,
        "in_channels": 4,
        "out_channels": 4,
        "model_channels": 320,
        "attention_resolutions": [4, 2, 1],
        "num_res_blocks": 2,
        "channel_mult": [1, 2, 4, 4],
        "num_head_channels": 64,
        "use_spatial_transformer": True,
        "use_linear_in_transformer": True,
        "transformer_depth": 1,
        "context_dim": 1024,
        "use_checkpoint": False,
        "legacy": False,
        "camera_dim": 16,
    }
}


class MultiViewTransformerBlock(nn.Module):
    """MVDream's ``BasicTransformerBlock3D``: multi-view self-attention, per-view cross-attention, GEGLU MLP."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int, dropout: float) -> None:
        super().__init__()
        self.attn1 = Attention(dim, dim, heads, dim_head, dropout)
        self.ff = FeedForward(dim, dropout)
        self.attn2 = Attention(dim, context_dim, heads, dim_head, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: Float[Tensor, "bf l c"], context: Float[Tensor, "bf m d"],
                num_frames: int) -> Float[Tensor, "bf l c"]:
        """Run the block; rows of ``x`` are views, ``num_frames`` consecutive rows belong to one object."""
        bf, l, c = x.shape
        # (b f) l c -> b (f l) c: self-attention sees all tokens of all views of one object.
        x = x.reshape(bf // num_frames, num_frames * l, c)
        x_norm = self.norm1(x)
        x = self.attn1(x_norm, x_norm) + x
        x = x.reshape(bf, l, c)
        x = self.attn2(self.norm2(x), context) + x
        x = self.ff(self.norm3(x)) + x
        return x


class SpatialTransformer3D(nn.Module):
    """GroupNorm, linear proj_in, ``depth`` multi-view transformer blocks, linear proj_out, residual."""

    def __init__(self, channels: int, heads: int, dim_head: int, depth: int, context_dim: int,
                 dropout: float) -> None:
        super().__init__()
        inner_dim = heads * dim_head
        self.norm = GroupNorm32(_NUM_GROUPS, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner_dim)
        self.transformer_blocks = nn.ModuleList(
            [MultiViewTransformerBlock(inner_dim, heads, dim_head, context_dim, dropout) for _ in range(depth)]
        )
        self.proj_out = nn.Linear(inner_dim, channels)

    def forward(self, x: Float[Tensor, "bf c h w"], context: Float[Tensor, "bf m d"],
                num_frames: int) -> Float[Tensor, "bf c h w"]:
        """Apply the transformer to the h*w tokens of each view (self-attention across the views of an object)."""
        bf, c, h, w = x.shape
        tokens = self.norm(x).permute(0, 2, 3, 1).reshape(bf, h * w, c)
        tokens = self.proj_in(tokens)
        for block in self.transformer_blocks:
            tokens = block(tokens, context, num_frames)
        tokens = self.proj_out(tokens)
        return tokens.reshape(bf, h, w, c).permute(0, 3, 1, 2).contiguous() + x


class UNetBlock(nn.Sequential):
    """One ``input_blocks``/``middle_block``/``output_blocks`` entry: a sequence whose children get the extra inputs
    they need (the embedding for ResBlocks; context and ``num_frames`` for transformers)."""

    def forward(self, h: Float[Tensor, "bf c h w"], emb: Float[Tensor, "bf e"], context: Float[Tensor, "bf m d"],
                num_frames: int) -> Float[Tensor, "bf c2 h2 w2"]:
        """Run the children in order (dispatch is on module type only, so it is static under compile)."""
        for layer in self:
            if isinstance(layer, ResBlock):
                h = layer(h, emb)
            elif isinstance(layer, SpatialTransformer3D):
                h = layer(h, context, num_frames)
            else:
                h = layer(h)
        return h


def _reject(name: str, value: Any, supported: str) -> ValueError:
    return ValueError(
        f"MultiViewUNetModel: {name}={value!r} is not supported (supported: {supported}); "
        "the official MVDream SD-2.1 checkpoint needs none of these options."
    )


class MultiViewUNetModel(nn.Module):
    """MVDream multi-view UNet (LDM layout, SD-2.1 family) with optional camera conditioning.

    The constructor accepts the keyword arguments of the original class. Options the official checkpoint does not
    use are rejected with a ``ValueError`` naming the argument, rather than silently ignored.

    Args:
        image_size: unused (kept for config compatibility).
        in_channels: latent channels in.
        model_channels: base width (320 for SD 2.1).
        out_channels: channels out (eps prediction: same as in).
        num_res_blocks: ResBlocks per level (int or one int per level).
        attention_resolutions: downsampling factors (1, 2, 4, ...) that get a transformer.
        dropout: dropout probability (0 in MVDream; identity in eval mode anyway).
        channel_mult: width multiplier per level.
        conv_resample: must be True (learned up/down-sampling convs).
        dims: must be 2.
        num_classes: must be None.
        use_checkpoint: gradient checkpointing of each UNet block while autograd is recording.
        use_fp16, use_bf16: must be False; cast the module with ``.to(dtype)`` instead.
        num_heads: heads per transformer (exclusive with ``num_head_channels``).
        num_head_channels: channels per head (64 for SD 2.1).
        num_heads_upsample: must be -1.
        use_scale_shift_norm, resblock_updown, use_new_attention_order: must be False.
        use_spatial_transformer: must be True.
        transformer_depth: transformer blocks per SpatialTransformer3D (int).
        context_dim: cross-attention context width (1024 for OpenCLIP ViT-H).
        n_embed: must be None.
        legacy: accepted either way; with spatial transformers it does not change the head layout.
        disable_self_attentions, num_attention_blocks, adm_in_channels: must be None.
        disable_middle_self_attn: must be False.
        use_linear_in_transformer: must be True (linear proj_in/proj_out).
        camera_dim: width of the camera input (16), or None for no camera MLP.
    """

    def __init__(
        self,
        image_size: Any,
        in_channels: int,
        model_channels: int,
        out_channels: int,
        num_res_blocks: Union[int, Sequence[int]],
        attention_resolutions: Sequence[int],
        dropout: float = 0.0,
        channel_mult: Sequence[int] = (1, 2, 4, 8),
        conv_resample: bool = True,
        dims: int = 2,
        num_classes: Optional[Any] = None,
        use_checkpoint: bool = False,
        use_fp16: bool = False,
        use_bf16: bool = False,
        num_heads: int = -1,
        num_head_channels: int = -1,
        num_heads_upsample: int = -1,
        use_scale_shift_norm: bool = False,
        resblock_updown: bool = False,
        use_new_attention_order: bool = False,
        use_spatial_transformer: bool = False,
        transformer_depth: int = 1,
        context_dim: Optional[int] = None,
        n_embed: Optional[int] = None,
        legacy: bool = True,
        disable_self_attentions: Optional[Sequence[bool]] = None,
        num_attention_blocks: Optional[Sequence[int]] = None,
        disable_middle_self_attn: bool = False,
        use_linear_in_transformer: bool = False,
        adm_in_channels: Optional[int] = None,
        camera_dim: Optional[int] = None,
    ) -> None:
        super().__init__()
        del image_size, legacy  # image_size is unused; legacy only matters for non-transformer attention
        # --- validate: every unsupported option is named ---------------------------------------------------------
        for name, value, ok in (
            ("conv_resample", conv_resample, True),
            ("dims", dims, 2),
            ("num_classes", num_classes, None),
            ("use_fp16", use_fp16, False),
            ("use_bf16", use_bf16, False),
            ("num_heads_upsample", num_heads_upsample, -1),
            ("use_scale_shift_norm", use_scale_shift_norm, False),
            ("resblock_updown", resblock_updown, False),
            ("use_new_attention_order", use_new_attention_order, False),
            ("use_spatial_transformer", use_spatial_transformer, True),
            ("n_embed", n_embed, None),
            ("disable_self_attentions", disable_self_attentions, None),
            ("num_attention_blocks", num_attention_blocks, None),
            ("disable_middle_self_attn", disable_middle_self_attn, False),
            ("use_linear_in_transformer", use_linear_in_transformer, True),
            ("adm_in_channels", adm_in_channels, None),
        ):
            if value != ok:
                raise _reject(name, value, repr(ok))
        if not isinstance(context_dim, int) or context_dim <= 0:
            raise _reject("context_dim", context_dim, "a positive int")
        if not isinstance(transformer_depth, int) or transformer_depth < 1:
            raise _reject("transformer_depth", transformer_depth, "an int >= 1")
        if (num_heads > 0) == (num_head_channels > 0):
            raise ValueError(
                f"MultiViewUNetModel: set exactly one of num_heads ({num_heads}) and num_head_channels "
                f"({num_head_channels}) to a positive value."
            )
        if camera_dim is not None and camera_dim <= 0:
            raise _reject("camera_dim", camera_dim, "None or a positive int")
        if dropout < 0.0:
            raise _reject("dropout", dropout, "a float >= 0")
        channel_mult = list(channel_mult)
        res_blocks = [num_res_blocks] * len(channel_mult) if isinstance(num_res_blocks, int) else list(num_res_blocks)
        if len(res_blocks) != len(channel_mult):
            raise ValueError(
                f"MultiViewUNetModel: num_res_blocks={num_res_blocks!r} needs one entry per channel_mult level "
                f"({len(channel_mult)})."
            )
        for mult in channel_mult:
            if (model_channels * mult) % _NUM_GROUPS != 0:
                raise ValueError(
                    f"MultiViewUNetModel: model_channels*channel_mult = {model_channels * mult} is not divisible by "
                    f"the {_NUM_GROUPS} GroupNorm groups."
                )

        def head_layout(ch: int) -> tuple[int, int]:
            # (heads, dim_head); with a fixed head width the head count follows the level width.
            if num_head_channels > 0:
                if ch % num_head_channels != 0:
                    raise ValueError(
                        f"MultiViewUNetModel: width {ch} is not divisible by num_head_channels={num_head_channels}."
                    )
                return ch // num_head_channels, num_head_channels
            if ch % num_heads != 0:
                raise ValueError(f"MultiViewUNetModel: width {ch} is not divisible by num_heads={num_heads}.")
            return num_heads, ch // num_heads

        def transformer(ch: int) -> SpatialTransformer3D:
            heads, dim_head = head_layout(ch)
            return SpatialTransformer3D(ch, heads, dim_head, transformer_depth, context_dim, dropout)

        self.model_channels = model_channels
        self.use_checkpoint = use_checkpoint
        emb_dim = 4 * model_channels
        attention_resolutions = set(attention_resolutions)

        # --- embeddings -----------------------------------------------------------------------------------------
        self.time_embed = nn.Sequential(nn.Linear(model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.camera_embed: Optional[nn.Sequential] = None
        if camera_dim is not None:
            self.camera_embed = nn.Sequential(nn.Linear(camera_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        # --- encoder --------------------------------------------------------------------------------------------
        self.input_blocks = nn.ModuleList([UNetBlock(nn.Conv2d(in_channels, model_channels, 3, padding=1))])
        skip_channels = [model_channels]
        ch = model_channels
        ds = 1  # current downsampling factor
        for level, mult in enumerate(channel_mult):
            for _ in range(res_blocks[level]):
                layers: list[nn.Module] = [ResBlock(ch, emb_dim, mult * model_channels, dropout)]
                ch = mult * model_channels
                if ds in attention_resolutions:
                    layers.append(transformer(ch))
                self.input_blocks.append(UNetBlock(*layers))
                skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(UNetBlock(Downsample(ch)))
                skip_channels.append(ch)
                ds *= 2

        # --- middle ---------------------------------------------------------------------------------------------
        self.middle_block = UNetBlock(
            ResBlock(ch, emb_dim, ch, dropout),
            transformer(ch),
            ResBlock(ch, emb_dim, ch, dropout),
        )

        # --- decoder: each block eats one skip (concatenated on channels) ---------------------------------------
        self.output_blocks = nn.ModuleList([])
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(res_blocks[level] + 1):
                skip_ch = skip_channels.pop()
                layers = [ResBlock(ch + skip_ch, emb_dim, model_channels * mult, dropout)]
                ch = model_channels * mult
                if ds in attention_resolutions:
                    layers.append(transformer(ch))
                if level > 0 and i == res_blocks[level]:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(UNetBlock(*layers))

        self.out = nn.Sequential(
            GroupNorm32(_NUM_GROUPS, ch),
            nn.SiLU(),
            nn.Conv2d(model_channels, out_channels, 3, padding=1),
        )

    def _run(self, block: UNetBlock, h: Tensor, emb: Tensor, context: Tensor, num_frames: int) -> Tensor:
        # Gradient checkpointing only pays off while autograd records; under no_grad it would just add overhead.
        if self.use_checkpoint and torch.is_grad_enabled():
            return checkpoint(block, h, emb, context, num_frames, use_reentrant=False)
        return block(h, emb, context, num_frames)

    def forward(
        self,
        x: Float[Tensor, "bf c h w"],
        timesteps: Union[Int[Tensor, "bf"], Float[Tensor, "bf"]],
        context: Float[Tensor, "bf m d"],
        camera: Optional[Float[Tensor, "bf cam"]] = None,
        num_frames: int = 1,
    ) -> Float[Tensor, "bf c_out h w"]:
        """Predict the noise for a batch of views.

        Args:
            x: noisy latents [(B*F), C, h, w]; the F views of one object are consecutive rows. h and w must be
                divisible by 2**(levels-1).
            timesteps: one timestep per row (int or float).
            context: text embeddings per row [(B*F), L, context_dim].
            camera: flattened normalised camera per row [(B*F), camera_dim], or None to skip the camera MLP.
            num_frames: views per object F; the batch size must be a multiple of it. 1 gives plain per-image
                SD-2.1 attention.

        Returns:
            eps prediction, same shape as ``x`` (channel count ``out_channels``) and dtype of ``x``.
        """
        if num_frames < 1 or x.shape[0] % num_frames != 0:
            raise ValueError(
                f"MultiViewUNetModel: batch size {x.shape[0]} is not a multiple of num_frames={num_frames}."
            )
        if camera is not None and self.camera_embed is None:
            raise ValueError("MultiViewUNetModel: a camera was passed but the model was built with camera_dim=None.")
        dtype = self.time_embed[0].weight.dtype
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels).to(dtype))
        if camera is not None:
            emb = emb + self.camera_embed(camera.to(dtype))
        context = context.to(dtype)

        h = x.to(dtype)
        skips = []
        for block in self.input_blocks:
            h = self._run(block, h, emb, context, num_frames)
            skips.append(h)
        h = self._run(self.middle_block, h, emb, context, num_frames)
        for block in self.output_blocks:
            h = torch.cat([h, skips.pop()], dim=1)
            h = self._run(block, h, emb, context, num_frames)
        return self.out(h).to(x.dtype)
