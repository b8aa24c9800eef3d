"""User-facing errors: printed by the command line as one ``fourdfy: error: ...`` message, without a traceback
(``--verbose`` shows it)."""

from fourdfy.config import ConfigError


class MissingWeightsError(FileNotFoundError):
    """Pretrained weights are not available: the message names the checkpoint, where to get it and the config key
    that takes a local path."""


class StageWeightsError(RuntimeError):
    """A previous stage's checkpoint (``system.weights``) does not fit this system."""


class CheckpointError(RuntimeError):
    """The checkpoint given as ``resume=`` cannot be read or does not belong to this configuration."""


class DivergenceError(RuntimeError):
    """Training produced non-finite values (loss, gradients, parameters) or an emptied occupancy grid; the run was
    stopped before the bad state was saved."""


class TrialFolderError(OSError):
    """The trial folder (or another folder the run writes to) cannot be created or written."""


USER_ERRORS = (ConfigError, MissingWeightsError, StageWeightsError, CheckpointError, DivergenceError, TrialFolderError)
"""Errors that end a run with one message."""
