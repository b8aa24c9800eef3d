"""Evaluation figures as pure functions of embeddings and frames.

- **CLIP score** (4D-fy / TC4D protocol): ``100 * cos(image embedding, text embedding)`` of every frame of the
  orbit, averaged over frames (and, in a suite, over prompts). TC4D reports 4D-fy at 31.90 this way with CLIP
  ViT-B/32. No clamping at 0 (torchmetrics' ``CLIPScore`` clamps each frame at 0; the two agree whenever the
  cosines are positive, as they are for real CLIP on rendered objects).
- **Temporal consistency**: mean cosine of the CLIP image embeddings of consecutive frames (1 = identical
  content), and pixel **flicker**: the mean absolute second difference in time ``|I(k+1) - 2 I(k) + I(k-1)|``
  from a fixed camera (0 for still or uniformly moving content, large for frames that jump back and forth).
- **Motion amount**: from a fixed camera, the mean absolute difference of consecutive frames in time
  (``motion_amount``) and the largest mean absolute difference from the first frame (``motion_range``), pixel
  values in [0, 1]. A frozen scene scores exactly 0 on both.

Worked example: two frames with unit embeddings ``e1 = (1, 0)``, ``e2 = (0.6, 0.8)`` and text ``(0.8, 0.6)``
give per-frame scores ``100 * 0.8 = 80`` and ``100 * 0.96 = 96``, CLIP score 88, consistency ``cos(e1, e2) = 0.6``.
"""

import math

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor


def clip_scores(image_embeds: Float[Tensor, "N D"], text_embed: Float[Tensor, "D"]) -> Float[Tensor, "N"]:
    """Per-frame ``100 * cos(image, text)`` (embeddings need not be normalised)."""
    return 100.0 * F.cosine_similarity(image_embeds.float(), text_embed.float()[None], dim=-1)


def clip_score(image_embeds: Float[Tensor, "N D"], text_embed: Float[Tensor, "D"]) -> float:
    """The CLIP score of a video: the mean over its frames of :func:`clip_scores`."""
    return float(clip_scores(image_embeds, text_embed).mean())


def consecutive_cosine(embeds: Float[Tensor, "N D"]) -> float:
    """Mean cosine between consecutive rows (frames k and k+1); NaN for fewer than two frames."""
    if embeds.shape[0] < 2:
        return math.nan
    return float(F.cosine_similarity(embeds[1:].float(), embeds[:-1].float(), dim=-1).mean())


def motion_amount(frames: Float[Tensor, "V T H W C"]) -> float:
    """Mean over views, consecutive time pairs and pixels of ``|I(t_{k+1}) - I(t_k)|`` (fixed cameras)."""
    if frames.shape[1] < 2:
        return 0.0
    return float((frames[:, 1:] - frames[:, :-1]).abs().mean())


def motion_range(frames: Float[Tensor, "V T H W C"]) -> float:
    """Mean over views of ``max_k mean |I(t_k) - I(t_0)|`` (how far the scene gets from its first frame)."""
    if frames.shape[1] < 2:
        return 0.0
    per_time = (frames - frames[:, :1]).abs().flatten(2).mean(-1)  # [V, T]
    return float(per_time.max(dim=1).values.mean())


def flicker(frames: Float[Tensor, "V T H W C"]) -> float:
    """Mean ``|I(k+1) - 2 I(k) + I(k-1)|`` over views, times and pixels; 0 for fewer than three times."""
    if frames.shape[1] < 3:
        return 0.0
    return float((frames[:, 2:] - 2.0 * frames[:, 1:-1] + frames[:, :-2]).abs().mean())
