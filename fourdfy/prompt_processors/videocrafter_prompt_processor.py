"""``videocrafter-prompt-processor`` (stage 3): configuration schema only.

VideoCrafter2 encodes prompts with its checkpoint's own OpenCLIP text tower; that loader belongs to the (not yet
implemented) stage-3 VideoCrafter guidance. The type is registered so 4D-fy configs naming it validate; building it
raises ``NotImplementedError``.
"""

from fourdfy.prompt_processors.base import PromptProcessor
from fourdfy.registry import register


@register("videocrafter-prompt-processor")
class VideoCrafterPromptProcessor(PromptProcessor):
    """Prompt embeddings from VideoCrafter2's text encoder -- not implemented yet (see the module docstring)."""

    def configure(self) -> None:
        raise NotImplementedError(
            f"{self.path}: the VideoCrafter2 prompt processor (stage 3) is not implemented in fourdfy yet"
        )
