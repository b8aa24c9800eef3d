"""``videocrafter-guidance`` (stage 3, video SDS with VideoCrafter2): configuration schema only.

Like ``zeroscope-guidance``: stage 3 is not implemented yet; the schema lets every 4D-fy type string and key be
recognised and validated. Building it raises ``NotImplementedError``.
"""

import dataclasses

from fourdfy.guidance.base import BaseGuidance
from fourdfy.guidance.zeroscope_guidance import ZeroscopeGuidance
from fourdfy.registry import register


@register("videocrafter-guidance")
class VideoCrafterGuidance(BaseGuidance):
    """Video SDS with VideoCrafter2 (4D-fy §9.4) -- not implemented yet (see the module docstring)."""

    loss_names = ("sds_video",)

    @dataclasses.dataclass
    class Config(ZeroscopeGuidance.Config):
        """ZeroScope's keys (4D-fy's VideoCrafter guidance extends them) plus the VideoCrafter2 ones."""

        config: str = ""
        """LVDM model config file (4D-fy's vendored yaml path)."""
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
