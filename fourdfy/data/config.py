"""The data module's configuration (``data.*``), apart from the Lightning data module, so that checking a config
does not import Lightning."""

import dataclasses

from fourdfy.config import ConfigError
from fourdfy.data.random_camera import RandomCameraConfig
from fourdfy.data.random_multiview import RandomMultiviewCameraConfig


@dataclasses.dataclass
class CombinedCameraDataConfig:
    """``data.*`` of ``single-multiview-combined-camera-datamodule``."""

    prob_multi_view: float = 0.5
    """Probability that a training batch is multi-view (MVDream)."""
    single_view: RandomCameraConfig = dataclasses.field(default_factory=RandomCameraConfig)
    """Single-view / video cameras; also defines the evaluation cameras."""
    multi_view: RandomMultiviewCameraConfig = dataclasses.field(default_factory=RandomMultiviewCameraConfig)
    """Multi-view cameras."""
    rays_on_device: bool = True
    """Build the training batches' rays (``rays_o``, ``rays_d``: ``B x H x W x 3`` each) on the device that trains,
    from the few camera numbers drawn on the CPU, instead of building them on the CPU and copying them there (false).
    Same values up to the devices' rounding; evaluation cameras are built on the CPU either way."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.prob_multi_view <= 1.0:
            raise ConfigError("prob_multi_view: must be in [0, 1]")
