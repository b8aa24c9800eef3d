"""The configuration of the systems (``system.*``), apart from the Lightning modules that use it.

Checking a config imports this module, not Lightning, diffusers or transformers, so a typo is reported in about
the time it takes to import torch.
"""

import dataclasses
from typing import Any, Optional

from fourdfy.config import ConfigError, Scheduled, child_slot, did_you_mean
from fourdfy.systems.optim import OptimizerConfig


PART_NAMES = (
    "geometry", "material", "background", "renderer", "guidance", "guidance_single_view", "guidance_multi_view",
    "guidance_video",
)  # fmt: skip
"""Attributes of the system that optimizer groups may name. ``guidance`` is 4D-fy's alias of the multi-view guidance
(else the video, else the single-view one): see ``FourDFYSystem.optimizer_alias``."""


@dataclasses.dataclass
class WandbConfig:
    enable: bool = False
    """Log to Weights & Biases (needs the ``wandb`` package)."""
    project: str = "threestudio"
    name: str = ""


@dataclasses.dataclass
class LoggersConfig:
    wandb: WandbConfig = dataclasses.field(default_factory=WandbConfig)


@dataclasses.dataclass
class BaseSystemConfig:
    """What every system reads (``system.*``)."""

    loggers: LoggersConfig = dataclasses.field(default_factory=LoggersConfig)
    """Extra loggers."""
    loss: Any = None
    """Loss weights (a typed dataclass per system)."""
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    """Optimizer and its parameter groups."""
    weights: Optional[str] = None
    """Start from the trainable weights of another stage's checkpoint (see ``fourdfy.systems.weights``)."""
    weights_ignore_modules: Optional[list[str]] = None
    """Module prefixes not to take from ``weights`` (e.g. ``[renderer]`` to start a fresh occupancy grid)."""
    cleanup_after_validation_step: bool = False
    """Empty the CUDA cache after every validation step."""
    cleanup_after_test_step: bool = False
    """Empty the CUDA cache after every test step."""
    defer_step_reads: bool = True
    """Hand a training step's logged values to Lightning and the loggers, and read the divergence guard's flags,
    at the end of the *next* step (copied to pinned host memory as the step ends), so that the host never waits
    for the GPU between steps and prepares the next step while the GPU finishes this one. The loggers get the
    same values at the same steps; the progress bar and ``trainer.callback_metrics`` show the previous step's.
    The learning rates are then logged from the host too (``fourdfy.loggers.StepLearningRates``). False: every
    step's end waits for the GPU (4D-fy's behaviour). See ``fourdfy/systems/step_logs.py``."""



@dataclasses.dataclass
class LossConfig:
    """Loss weights (``system.loss``); each may be scheduled (``[start_step, start, end, end_step]``)."""

    lambda_sds: Scheduled = 1.0
    """Multi-view (MVDream) SDS."""
    lambda_sds_video: Scheduled = 1.0
    """Video-model SDS."""
    lambda_vsd: Scheduled = 1.0
    """Variational score distillation (single view)."""
    lambda_lora: Scheduled = 1.0
    """Training loss of the VSD LoRA model."""
    lambda_sparsity: Scheduled = 0.0
    """``mean(sqrt(opacity^2 + 0.01))``."""
    lambda_opaque: Scheduled = 0.0
    """Binary entropy of the opacity."""
    lambda_z_variance: Scheduled = 0.0
    """Depth variance along rays of opaque pixels."""
    lambda_deformation: Scheduled = 0.0
    """Total variation of the rendered deformation (deformation geometry with the mask renderer)."""



@dataclasses.dataclass
class FourDFYSystemConfig(BaseSystemConfig):
    """``system.*`` of ``fourdfy-system``."""

    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    geometry_type: str = ""
    geometry: dict = child_slot("geometry", "geometry_type")
    material_type: str = ""
    material: dict = child_slot("material", "material_type")
    background_type: str = ""
    background: dict = child_slot("background", "background_type")
    renderer_type: str = ""
    renderer: dict = child_slot("renderer", "renderer_type")
    guidance_type: str = ""
    """Single-view image guidance (VSD in 4D-fy)."""
    guidance: dict = child_slot("guidance", "guidance_type", optional=True)
    prompt_processor_type: str = ""
    prompt_processor: dict = child_slot("prompt_processor", "prompt_processor_type")
    """Its ``prompt`` is *the* prompt, copied to the other processors when theirs is ``???``."""
    guidance_type_multi_view: str = ""
    guidance_multi_view: dict = child_slot("guidance", "guidance_type_multi_view", optional=True)
    prompt_processor_type_multi_view: str = ""
    prompt_processor_multi_view: dict = child_slot(
        "prompt_processor", "prompt_processor_type_multi_view", optional=True
    )
    guidance_type_video: str = ""
    guidance_video: dict = child_slot("guidance", "guidance_type_video", optional=True)
    prompt_processor_type_video: str = ""
    prompt_processor_video: dict = child_slot("prompt_processor", "prompt_processor_type_video", optional=True)
    exporter_type: str = "mesh-exporter"
    """What ``--export`` writes (``fourdfy/exporters``): meshes of the density field, animated for dynamic scenes."""
    exporter: dict = child_slot("exporter", "exporter_type")
    """The exporter's settings (``system.exporter.*``)."""
    simultan: bool = False
    """Dynamic stages: single-view batches may be video clips (must equal ``data.single_view.simultan``)."""
    prob_multi_view: Optional[float] = None
    """Probability of a multi-view batch (must equal ``data.prob_multi_view``); decides what is built."""
    prob_single_view_video: Optional[float] = None
    """Probability that a single-view batch is a video (``data.single_view.prob_single_view_video``)."""
    eval_depth_range_perc: tuple[float, float] = (10.0, 99.0)
    """Percentiles of the non-zero test depths mapped to the ends of the colour map."""
    freeze_static_modules: bool = False
    """Dynamic stages: train only the temporal parameters."""

    def __post_init__(self) -> None:
        for path in self.optimizer.params:
            head = path.split(".")[0]
            if head not in PART_NAMES:
                where = f"optimizer.params[{path}]" if "." in path else f"optimizer.params.{path}"
                raise ConfigError(
                    f"{where}: {head!r} is not a part of the system.{did_you_mean(head, PART_NAMES)} "
                    f"Parts: {', '.join(PART_NAMES)}."
                )
        # the multi-view and video processors take the main prompt (4D-fy leaves theirs as ???)
        prompt = self.prompt_processor.get("prompt")
        for slot in ("prompt_processor_multi_view", "prompt_processor_video"):
            sub = getattr(self, slot)
            if sub and sub.get("prompt", "???") == "???" and prompt is not None:
                setattr(self, slot, {**sub, "prompt": prompt})
