"""CLIP image and text embeddings for the CLIP score (transformers' ``CLIPModel``, default ViT-B/32).

Preprocessing is CLIP's own: resize the shorter side to the model's input size with bicubic (antialiased)
interpolation, centre crop, normalise with CLIP's mean and standard deviation. Embeddings are the projected
pooled outputs (``visual_projection(vision_model(x).pooler_output)``, likewise for text), L2-normalised.
"""

import os
from collections.abc import Callable
from typing import Any, Optional

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from fourdfy.errors import MissingWeightsError

DEFAULT_CLIP = "openai/clip-vit-base-patch32"
"""CLIP ViT-B/32, the model of the 4D-fy / TC4D CLIP score."""
CLIP_ENV = "FOURDFY_CLIP"
"""Environment variable naming the CLIP model (hub id or local folder) when ``--clip`` is not given."""
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def preprocess(frames: Float[Tensor, "N H W 3"], size: int) -> Float[Tensor, "N 3 S S"]:
    """RGB frames in [0, 1] to CLIP's input: shorter side to ``size`` (bicubic, antialiased), centre crop,
    normalise. Frames already ``size x size`` are only normalised."""
    x = frames.permute(0, 3, 1, 2).float()
    h, w = x.shape[-2:]
    if (h, w) != (size, size):
        scale = size / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True)
        top, left = (nh - size) // 2, (nw - size) // 2
        x = x[..., top : top + size, left : left + size]
    mean = torch.tensor(CLIP_MEAN, dtype=x.dtype, device=x.device)[None, :, None, None]
    std = torch.tensor(CLIP_STD, dtype=x.dtype, device=x.device)[None, :, None, None]
    return (x - mean) / std


class ClipEncoder:
    """Normalised CLIP embeddings of frames and prompts.

    Args:
        model: a ``transformers.CLIPModel`` (eval mode is set here).
        tokenize: maps a list of prompts to ``input_ids`` (a tensor) or to a dict with ``input_ids`` and
            ``attention_mask`` (a Hugging Face tokenizer called with ``return_tensors="pt"``).
        name: recorded in the evaluation JSON.
    """

    def __init__(self, model: Any, tokenize: Callable[[list[str]], Any], name: str = "") -> None:
        self.model = model.eval()
        self.tokenize = tokenize
        self.name = name
        self.image_size = int(model.config.vision_config.image_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def image_embeds(self, frames: Float[Tensor, "N H W 3"], batch_size: int = 32) -> Float[Tensor, "N D"]:
        """Unit-norm image embeddings of RGB frames in [0, 1]."""
        out = []
        for start in range(0, frames.shape[0], batch_size):
            x = preprocess(frames[start : start + batch_size], self.image_size).to(self.device)
            pooled = self.model.vision_model(pixel_values=x).pooler_output
            out.append(F.normalize(self.model.visual_projection(pooled).float(), dim=-1).cpu())
        return torch.cat(out)

    @torch.no_grad()
    def text_embeds(self, prompts: list[str]) -> Float[Tensor, "P D"]:
        """Unit-norm text embeddings."""
        tokens = self.tokenize(prompts)
        if isinstance(tokens, Tensor):
            kwargs = {"input_ids": tokens}
        else:
            kwargs = {k: tokens[k] for k in ("input_ids", "attention_mask") if k in tokens}
        kwargs = {k: v.to(self.device) for k, v in kwargs.items()}
        pooled = self.model.text_model(**kwargs).pooler_output
        return F.normalize(self.model.text_projection(pooled).float(), dim=-1).cpu()

    @classmethod
    def from_pretrained(cls, name_or_path: Optional[str] = None, device: str | torch.device = "cpu") -> "ClipEncoder":
        """Load ``CLIPModel`` and ``CLIPTokenizer`` from a hub id or a local folder (``--clip``, else the
        ``FOURDFY_CLIP`` environment variable, else ``openai/clip-vit-base-patch32``).

        Raises:
            MissingWeightsError: the model cannot be loaded (offline without a cached copy, wrong path), with
                the flag and variable that take a local folder.
        """
        from transformers import CLIPModel, CLIPTokenizer

        name = name_or_path or os.environ.get(CLIP_ENV) or DEFAULT_CLIP
        try:
            tokenizer = CLIPTokenizer.from_pretrained(name)
            model = CLIPModel.from_pretrained(name)
        except (OSError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise MissingWeightsError(
                f"--clip: cannot load the CLIP model {name!r} ({first}). The CLIP score uses CLIP ViT-B/32 "
                f"(hub id {DEFAULT_CLIP}, about 600 MB). Download it once (e.g. `hf download "
                f"{DEFAULT_CLIP}`) or copy a folder holding its config.json, weights, vocab.json and merges.txt, "
                f"then pass --clip /path/to/folder or set {CLIP_ENV}=/path/to/folder."
            ) from None

        def tokenize(prompts: list[str]) -> Any:
            return tokenizer(prompts, padding=True, truncation=True, max_length=77, return_tensors="pt")

        return cls(model.to(device), tokenize, name=name)
