"""``videocrafter-guidance`` (stage 3, video SDS with VideoCrafter2): configuration schema only.

Like ``zeroscope-guidance``: stage 3 is not implemented yet; the schema lets every 4D-fy type string and key be
recognised and validated. Building it raises ``NotImplementedError``.
"""

import dataclasses
from typing import Optional

from fourdfy.config import Scheduled, choice
from fourdfy.guidance.base import BaseGuidance
from fourdfy.registry import register


@register("videocrafter-guidance")
class VideoCrafterGuidance(BaseGuidance):
    """Video SDS with VideoCrafter2 (4D-fy §9.4) -- not implemented yet (see the module docstring)."""

    loss_names = ("sds_video",)

    @dataclasses.dataclass
    class Config:
        pretrained_model_name_or_path: Optional[str] = None
        config: str = ""
        """LVDM model config file (4D-fy's vendored yaml path)."""
        enable_memory_efficient_attention: bool = False
        enable_sequential_cpu_offload: bool = False
        enable_attention_slicing: bool = False
        enable_channels_last_format: bool = False
        guidance_scale: float = 100.0
        grad_clip: Optional[Scheduled] = None
        half_precision_weights: bool = True
        min_step_percent: Scheduled = 0.02
        max_step_percent: Scheduled = 0.98
        max_step_percent_annealed: float = 0.5
        anneal_start_step: Optional[int] = None
        use_sjc: bool = False
        var_red: bool = True
        weighting_strategy: str = choice("sds", ("sds", "uniform", "fantasia3d"), "Timestep weighting.")
        token_merging: bool = False
        token_merging_params: Optional[dict] = dataclasses.field(default_factory=dict)
        view_dependent_prompting: bool = True
        low_ram_vae: int = -1
        use_hifa: bool = False
        width_vid: int = 128
        height_vid: int = 80
        motion_amp_scale: float = 1.0
        fps: int = 28

    def configure(self) -> None:
        raise NotImplementedError(
            "videocrafter-guidance: stage 3 (video score distillation) is not implemented in fourdfy yet; "
            "stages 1 and 2 run without it"
        )
