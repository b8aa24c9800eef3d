"""Building blocks of the LDM "openaimodel" UNet family (SD 2.x, MVDream, VideoCrafter/LVDM), in our own code.

Each block reproduces the *parameter names* of the original LDM modules, so UNets assembled from them load the
official checkpoints with ``strict=True``:

    ResBlock:   in_layers.{0 norm, 2 conv}  emb_layers.1  out_layers.{0 norm, 3 conv}  skip_connection
    Downsample: op              Upsample: conv
    Attention:  to_q  to_k  to_v (no bias)  to_out.0
    FeedForward: net.0.proj (GEGLU)  net.2
    BasicTransformerBlock: attn1  ff  attn2  norm1  norm2  norm3

Numerics: ``GroupNorm32`` normalises in fp32 and casts back (LDM's ``GroupNorm32``); attention is
``torch.nn.functional.scaled_dot_product_attention`` with the default 1/sqrt(dim_head) scale (the originals'
einsum-softmax agrees to ~1e-6 in fp32). Nothing here has data-dependent control flow or host syncs, so UNets built
from these blocks can be ``torch.compile``-d or captured in CUDA graphs.
"""

import math
from typing import Optional, Union

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

# GroupNorm group count used everywhere in the LDM UNet.
NUM_GROUPS = 32


def timestep_embedding(timesteps: Union[Int[Tensor, "n"], Float[Tensor, "n"]], dim: int,
                       max_period: float = 10000.0) -> Float[Tensor, "n {dim}"]:
    """Sinusoidal timestep embedding of the LDM/ADM UNets (cosine half first).

    ``emb[:, i] = cos(t * f_i)`` and ``emb[:, half + i] = sin(t * f_i)`` with
    ``f_i = exp(-ln(max_period) * i / half)``, ``half = dim // 2``; an odd ``dim`` gets a zero last column.
    Always computed in fp32 (bf16 would destroy the phase of t*f for t ~ 1000).

    Args:
        timesteps: integer or float timesteps, one per sample.
        dim: embedding width.
        max_period: controls the lowest frequency.

    Returns:
        fp32 embedding of shape [n, dim].
    """
    half = dim // 2
    exponent = torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    freqs = torch.exp(-math.log(max_period) * exponent)
    args = timesteps.to(torch.float32)[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2 == 1:
        emb = F.pad(emb, (0, 1))
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm that normalises in fp32 and casts the result back to the input dtype."""

    def forward(self, x: Float[Tensor, "n c *spatial"]) -> Float[Tensor, "n c *spatial"]:
        """Normalise ``x`` in fp32 (weights upcast too, so bf16 weights work) and return ``x.dtype``."""
        return F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps).to(x.dtype)


class ResBlock(nn.Module):
    """LDM residual block: norm-SiLU-conv, add the projected embedding as a bias, norm-SiLU-dropout-conv, skip."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int, dropout: float) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(
            GroupNorm32(NUM_GROUPS, channels),
            nn.SiLU(),
            nn.Conv2d(channels, out_channels, 3, padding=1),
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            GroupNorm32(NUM_GROUPS, out_channels),
            nn.SiLU(),
            nn.Dropout(dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        # A 1x1 conv only where the channel count changes (matches the checkpoint's skip_connection keys).
        self.skip_connection = nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: Float[Tensor, "n c h w"], emb: Float[Tensor, "n e"]) -> Float[Tensor, "n c2 h w"]:
        """Apply the block; ``emb`` is the (time + camera) embedding of each sample."""
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        h = self.out_layers(h)
        return self.skip_connection(x) + h


class Downsample(nn.Module):
    """Stride-2 3x3 convolution (key ``op``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Float[Tensor, "n c h w"]) -> Float[Tensor, "n c h2 w2"]:
        """Halve the spatial size."""
        return self.op(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 upsampling followed by a 3x3 convolution (key ``conv``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Float[Tensor, "n c h w"]) -> Float[Tensor, "n c h2 w2"]:
        """Double the spatial size."""
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Attention(nn.Module):
    """Multi-head (cross-)attention with bias-free q/k/v projections and a biased output projection."""

    def __init__(self, query_dim: int, context_dim: int, heads: int, dim_head: int, dropout: float) -> None:
        super().__init__()
        inner_dim = heads * dim_head
        self.heads = heads
        self.dim_head = dim_head
        self.to_q = nn.Linear(query_dim, inner_dim, bias=False)
        self.to_k = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_v = nn.Linear(context_dim, inner_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, query_dim), nn.Dropout(dropout))

    def forward(self, x: Float[Tensor, "n l c"], context: Float[Tensor, "n m d"]) -> Float[Tensor, "n l c"]:
        """Attend from the tokens of ``x`` to those of ``context`` (pass ``x`` itself for self-attention)."""
        n, l, _ = x.shape
        m = context.shape[1]
        # [n, tokens, heads*dim_head] -> [n, heads, tokens, dim_head]
        q = self.to_q(x).view(n, l, self.heads, self.dim_head).transpose(1, 2)
        k = self.to_k(context).view(n, m, self.heads, self.dim_head).transpose(1, 2)
        v = self.to_v(context).view(n, m, self.heads, self.dim_head).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)  # default scale 1/sqrt(dim_head), as the original
        out = out.transpose(1, 2).reshape(n, l, self.heads * self.dim_head)
        return self.to_out(out)


class GEGLU(nn.Module):
    """Gated GELU projection: ``a * gelu(b)`` with ``[a | b] = proj(x)`` (key ``proj``)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, 2 * dim_out)

    def forward(self, x: Float[Tensor, "n l c"]) -> Float[Tensor, "n l c2"]:
        """Project to twice the width and gate one half by the exact GELU of the other."""
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """Transformer MLP: GEGLU to 4x width, dropout, linear back (keys ``net.0.proj``, ``net.2``)."""

    def __init__(self, dim: int, dropout: float, mult: int = 4) -> None:
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, mult * dim), nn.Dropout(dropout), nn.Linear(mult * dim, dim))

    def forward(self, x: Float[Tensor, "n l c"]) -> Float[Tensor, "n l c"]:
        """Apply the MLP token-wise."""
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """SD's transformer block: self-attention, cross-attention, GEGLU MLP, each pre-LayerNorm with a residual.

    Keys ``attn1``, ``ff``, ``attn2``, ``norm1``, ``norm2``, ``norm3`` (registered in the original's order). With
    ``context_dim=None`` the second attention is a second *self*-attention (``to_k``/``to_v`` are [dim, dim]) and
    ``forward`` must be called without a context, as LDM's blocks do when no context is given.
    """

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: Optional[int], dropout: float) -> None:
        super().__init__()
        self.attn1 = Attention(dim, dim, heads, dim_head, dropout)
        self.ff = FeedForward(dim, dropout)
        self.attn2 = Attention(dim, dim if context_dim is None else context_dim, heads, dim_head, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: Float[Tensor, "n l c"], context: Optional[Float[Tensor, "n m d"]] = None
                ) -> Float[Tensor, "n l c"]:
        """Run the block on the tokens of ``x``; ``context=None`` makes ``attn2`` attend to ``x`` itself."""
        h = self.norm1(x)
        x = self.attn1(h, h) + x
        h = self.norm2(x)
        x = self.attn2(h, h if context is None else context) + x
        return self.ff(self.norm3(x)) + x
