"""``zeroscope-prompt-processor``: CLIP text embeddings from the ZeroScope repository's text encoder.

Checked against 4D-fy's processor (reference §9.5): ``CLIPTokenizer`` (padded to 77) + ``CLIPTextModel`` (the repo's
OpenCLIP ViT-H/14 text tower, 23 layers, width 1024) ``last_hidden_state`` in fp32, cached under
``md5("{pretrained_model_name_or_path}-{prompt}")``; the negative prompt is empty unless configured and the view
thresholds are the defaults 45/45/60 degrees (4D-fy's configs set neither). That is the Stable Diffusion processor's
computation, which this class reuses. Differences, as for that processor: prompts longer than 77 tokens are truncated
(4D-fy's text encoder failed on them), and 4D-fy's cold-cache crash does not exist here.

Own to this processor: the missing-weights message points at ``cerspense/zeroscope_v2_576w`` (not at the removed
SD 2.1 repositories), and the ZeroScope stand-in names ``tiny-random-zeroscope`` / ``random-init-zeroscope-v2-576w``
(:mod:`fourdfy.stand_ins`) give the tiny / full-size random CLIP text encoders, so one name can serve both the video
guidance and this processor.
"""

from torch import Tensor

from fourdfy.prompt_processors.stable_diffusion_prompt_processor import (
    StableDiffusionPromptProcessor,
    encode_clip_prompts,
)
from fourdfy.registry import register

ZEROSCOPE_TEXT_HELP = (
    "Download the diffusers repository cerspense/zeroscope_v2_576w from the Hugging Face Hub (for example "
    "`hf download cerspense/zeroscope_v2_576w --local-dir zeroscope_v2_576w`; only tokenizer/ and text_encoder/ are "
    "read here) and pass the local folder as {key}=/path/to/folder; a local diffusers folder works as well as the "
    "hub id. Embeddings already in the cache (.threestudio_cache/text_embeddings) are used without loading the model."
)


@register("zeroscope-prompt-processor")
class ZeroscopePromptProcessor(StableDiffusionPromptProcessor):
    """Prompt embeddings for the ZeroScope video guidance (see the module docstring)."""

    @staticmethod
    def encode_prompts(model: str, path: str, prompts: list[str]) -> list[Tensor]:
        return encode_clip_prompts(model, path, prompts, ZEROSCOPE_TEXT_HELP)
