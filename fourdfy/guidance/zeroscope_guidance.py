"""``zeroscope-guidance`` (stage 3, video SDS with ZeroScope v2): configuration schema only.

Stage 3 is not implemented yet. The schema exists because 4D-fy's stage-1 and stage-2 configs carry the (unused)
video-guidance section, and every key of a config is validated before anything is built: a typo there must fail
like anywhere else. Building this guidance raises ``NotImplementedError`` with that explanation; static stages
never build it.
"""

import dataclasses
from typing import Optional

from fourdfy.config import Scheduled, choice
from fourdfy.guidance.base import BaseGuidance
from fourdfy.registry import register


@register("zeroscope-guidance")
class ZeroscopeGuidance(BaseGuidance):
    """Video SDS with ZeroScope (4D-fy §9.3) -- not implemented yet (see the module docstring)."""

    loss_names = ("sds_video",)

    @dataclasses.dataclass
    class Config:
        pretrained_model_name_or_path: Optional[str] = None
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

    def configure(self) -> None:
        raise NotImplementedError(
            "zeroscope-guidance: stage 3 (video score distillation) is not implemented in fourdfy yet; "
            "stages 1 and 2 run without it"
        )
