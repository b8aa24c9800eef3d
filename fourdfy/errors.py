"""User-facing errors: printed by ``launch.py`` as one message, without a traceback."""

from fourdfy.config import ConfigError


class MissingWeightsError(FileNotFoundError):
    """Pretrained weights are not available: the message names the checkpoint, where to get it and the config key
    that takes a local path."""


class StageWeightsError(RuntimeError):
    """A previous stage's checkpoint (``system.weights``) does not fit this system."""


USER_ERRORS = (ConfigError, MissingWeightsError, StageWeightsError)
