"""``zeroscope-prompt-processor``: CLIP text embeddings from the ZeroScope repository's text encoder.

The same computation as the Stable Diffusion processor (``CLIPTokenizer`` + ``CLIPTextModel`` last hidden state)
on ``cerspense/zeroscope_v2_576w``; 4D-fy's video prompts use its default thresholds (45/45/60 degrees).
"""

from fourdfy.prompt_processors.stable_diffusion_prompt_processor import StableDiffusionPromptProcessor
from fourdfy.registry import register


@register("zeroscope-prompt-processor")
class ZeroscopePromptProcessor(StableDiffusionPromptProcessor):
    """Prompt embeddings for the ZeroScope video guidance."""
