"""The layers VideoCrafter2's UNet adds to the LDM blocks of ``extern.ldm.unet_blocks`` (names as in LVDM).

* ``TemporalConvBlock`` (``temopral_conv``, sic): four [GroupNorm, SiLU, (Dropout 0.1), Conv3d (3,1,1)] stages
  along time on [B, C, T, h, w], plus the identity. Keys ``conv1.{0,2}``, ``conv{2,3,4}.{0,3}``.
* ``VideoResBlock``: the LDM ResBlock with that temporal conv after its residual sum.
* ``SpatialTransformer``: SD's per-frame transformer (self-attention, cross-attention to the text, GEGLU MLP).
* ``TemporalTransformer``: GroupNorm over (C/32, T, h, w) per sample, i.e. across frames, then per-pixel
  self-attention over the T frames in both ``attn1`` and ``attn2``; Linear or kernel-1 Conv1d projections.
* ``UNetBlock``: a sequence that hands each child the inputs it needs.

Activations travel as [(B·T), C, h, w] with the T frames of a sample in consecutive rows; temporal layers view
them as [B, C, T, h, w]. Every GroupNorm normalises in fp32 and casts back (the original's temporal-conv and
transformer GroupNorms are plain ``nn.GroupNorm``: identical in fp32, and autocast runs them in fp32 too).
Kernel-1 convolutions are applied as the equivalent ``F.linear`` on channel-last tokens.
"""

import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from extern.ldm.unet_blocks import NUM_GROUPS, BasicTransformerBlock, GroupNorm32, ResBlock


def _pointwise(layer: nn.Module, tokens: Float[Tensor, "n l c"]) -> Float[Tensor, "n l c2"]:
    """Apply a Linear, or a kernel-1 Conv1d/Conv2d (same function), to channel-last tokens."""
    if isinstance(layer, nn.Linear):
        return layer(tokens)
    return F.linear(tokens, layer.weight.flatten(1), layer.bias)


class TemporalConvBlock(nn.Module):
    """Four [GroupNorm, SiLU, (Dropout), Conv3d (3,1,1)] stages along time, plus the identity (ModelScope style)."""

    def __init__(self, channels: int, dropout: float = 0.1) -> None:
        super().__init__()

        def conv() -> nn.Conv3d:
            return nn.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0))

        self.conv1 = nn.Sequential(GroupNorm32(NUM_GROUPS, channels), nn.SiLU(), conv())
        self.conv2 = nn.Sequential(GroupNorm32(NUM_GROUPS, channels), nn.SiLU(), nn.Dropout(dropout), conv())
        self.conv3 = nn.Sequential(GroupNorm32(NUM_GROUPS, channels), nn.SiLU(), nn.Dropout(dropout), conv())
        self.conv4 = nn.Sequential(GroupNorm32(NUM_GROUPS, channels), nn.SiLU(), nn.Dropout(dropout), conv())

    def forward(self, x: Float[Tensor, "b c t h w"]) -> Float[Tensor, "b c t h w"]:
        """``x + conv4(conv3(conv2(conv1(x))))``; GroupNorm statistics span all frames of a sample."""
        return x + self.conv4(self.conv3(self.conv2(self.conv1(x))))


class VideoResBlock(ResBlock):
    """LDM ResBlock followed (optionally) by a ``TemporalConvBlock`` named ``temopral_conv`` as in the checkpoint."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int, dropout: float,
                 temporal_conv: bool) -> None:
        super().__init__(channels, emb_channels, out_channels, dropout)
        self.temopral_conv = TemporalConvBlock(out_channels) if temporal_conv else None

    def forward(self, x: Float[Tensor, "bt c h w"], emb: Float[Tensor, "bt e"],
                num_frames: int) -> Float[Tensor, "bt c2 h w"]:
        """Per-frame ResBlock, then the temporal conv over the ``num_frames`` consecutive rows of each sample."""
        h = super().forward(x, emb)
        if self.temopral_conv is None:
            return h
        bt, c, height, width = h.shape
        video = h.view(bt // num_frames, num_frames, c, height, width).transpose(1, 2).contiguous()
        return self.temopral_conv(video).transpose(1, 2).reshape(bt, c, height, width)


class SpatialTransformer(nn.Module):
    """Per-frame SD transformer: GroupNorm, proj_in, self/cross-attention blocks, proj_out, residual."""

    def __init__(self, channels: int, heads: int, dim_head: int, depth: int, context_dim: int, use_linear: bool,
                 dropout: float) -> None:
        super().__init__()
        inner = heads * dim_head
        self.norm = GroupNorm32(NUM_GROUPS, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner) if use_linear else nn.Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(inner, heads, dim_head, context_dim, dropout) for _ in range(depth)]
        )
        self.proj_out = nn.Linear(inner, channels) if use_linear else nn.Conv2d(inner, channels, 1)

    def forward(self, x: Float[Tensor, "bt c h w"], context: Float[Tensor, "bt m d"]) -> Float[Tensor, "bt c h w"]:
        """Attend over the h*w tokens of each frame, and from them to that frame's (repeated) text context."""
        bt, c, height, width = x.shape
        tokens = _pointwise(self.proj_in, self.norm(x).permute(0, 2, 3, 1).reshape(bt, height * width, c))
        for block in self.transformer_blocks:
            tokens = block(tokens, context)
        tokens = _pointwise(self.proj_out, tokens)
        return tokens.reshape(bt, height, width, c).permute(0, 3, 1, 2).contiguous() + x


class TemporalTransformer(nn.Module):
    """Self-attention along time at every pixel; GroupNorm over all frames of a sample; residual.

    ``use_linear`` selects Linear projections (blocks) or kernel-1 Conv1d ones (``init_attn``), as the checkpoint has.
    """

    def __init__(self, channels: int, heads: int, dim_head: int, depth: int, use_linear: bool,
                 dropout: float) -> None:
        super().__init__()
        inner = heads * dim_head
        self.norm = GroupNorm32(NUM_GROUPS, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner) if use_linear else nn.Conv1d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            [BasicTransformerBlock(inner, heads, dim_head, None, dropout) for _ in range(depth)]
        )
        self.proj_out = nn.Linear(inner, channels) if use_linear else nn.Conv1d(inner, channels, 1)

    def forward(self, x: Float[Tensor, "bt c h w"], num_frames: int) -> Float[Tensor, "bt c h w"]:
        """Rows of ``x`` are frames, ``num_frames`` consecutive rows per sample; attention runs over those rows."""
        bt, c, height, width = x.shape
        b = bt // num_frames
        video = x.view(b, num_frames, c, height, width).transpose(1, 2)  # [b, c, t, h, w]: norm spans frames
        normed = self.norm(video)
        tokens = normed.permute(0, 3, 4, 2, 1).reshape(b * height * width, num_frames, c)  # (b h w) t c
        tokens = _pointwise(self.proj_in, tokens)
        for block in self.transformer_blocks:
            tokens = block(tokens)
        tokens = _pointwise(self.proj_out, tokens)
        out = tokens.view(b, height, width, num_frames, c).permute(0, 3, 4, 1, 2).reshape(bt, c, height, width)
        return out + x


class UNetBlock(nn.Sequential):
    """One ``input_blocks``/``middle_block``/``output_blocks``/``init_attn`` entry: children get what they need."""

    def forward(self, h: Float[Tensor, "bt c h w"], emb: Float[Tensor, "bt e"], context: Float[Tensor, "bt m d"],
                num_frames: int) -> Float[Tensor, "bt c2 h2 w2"]:
        """Run the children in order (dispatch on module type only: static under compile)."""
        for layer in self:
            if isinstance(layer, VideoResBlock):
                h = layer(h, emb, num_frames)
            elif isinstance(layer, SpatialTransformer):
                h = layer(h, context)
            elif isinstance(layer, TemporalTransformer):
                h = layer(h, num_frames)
            else:
                h = layer(h)
        return h
