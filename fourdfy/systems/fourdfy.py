"""``fourdfy-system``: 4D-fy's hybrid score distillation (Bahmani et al., CVPR 2024, arXiv:2311.17984).

Per training batch the data module has already chosen the branch (``batch.kind``): multi-view (MVDream SDS),
single view (VSD with Stable Diffusion) or video (video-model SDS). The system renders the batch at each of its
times, asks that branch's guidance for its losses, weights them by ``system.loss.lambda_<name>`` and adds the
regularisers. Parts are built only when a branch can use them (4D-fy also built unused guidances, e.g. VSD in
stage 1; we do not).
"""

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from fourdfy.config import ConfigError, Scheduled, child_slot, choice, did_you_mean
from fourdfy.data.batch import BatchKind, CameraBatch
from fourdfy.guidance.base import BaseGuidance, GuidanceOutput
from fourdfy.prompt_processors.base import PromptEmbeddings
from fourdfy.registry import build, register
from fourdfy.renderers.base import RenderOutput
from fourdfy.systems import losses
from fourdfy.systems.base import BaseSystem
from fourdfy.utils import saving

logger = logging.getLogger(__name__)


PART_NAMES = (
    "geometry", "material", "background", "renderer", "guidance", "guidance_single_view", "guidance_multi_view",
    "guidance_video",
)  # fmt: skip
"""Attributes of the system that optimizer groups may name (``guidance`` is 4D-fy's alias)."""


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
    lambda_orient: Scheduled = 0.0
    """Orientation loss: needs normals, which no 4D-fy material provides; must stay 0."""
    lambda_sparsity: Scheduled = 0.0
    """``mean(sqrt(opacity^2 + 0.01))``."""
    lambda_opaque: Scheduled = 0.0
    """Binary entropy of the opacity."""
    lambda_z_variance: Scheduled = 0.0
    """Depth variance along rays of opaque pixels."""
    lambda_tv: Scheduled = 0.0
    """Present in 4D-fy's configs but read by no code there; must stay 0 (use ``lambda_deformation``)."""
    lambda_deformation: Scheduled = 0.0
    """Total variation of the rendered deformation (deformation geometry with the mask renderer)."""

    def __post_init__(self) -> None:
        if self.lambda_orient != 0.0:
            raise ConfigError("lambda_orient: needs normals, which no-material does not compute; set it to 0")
        if self.lambda_tv != 0.0:
            raise ConfigError("lambda_tv: unused in 4D-fy; the temporal smoothness term is lambda_deformation")


@register("fourdfy-system")
class FourDFYSystem(BaseSystem):
    """Text-to-4D with hybrid SDS: MVDream multi-view SDS + VSD + video SDS, on a static+dynamic NeRF."""

    @dataclasses.dataclass
    class Config(BaseSystem.Config):
        loss: LossConfig = dataclasses.field(default_factory=LossConfig)
        geometry_type: str = ""
        geometry: dict = child_slot("geometry", "geometry_type")
        geometry_convert_from: Optional[str] = None
        """Not supported (unused by 4D-fy); must stay null."""
        geometry_convert_inherit_texture: bool = False
        """Not supported (unused by 4D-fy); must stay false."""
        geometry_convert_override: dict = dataclasses.field(default_factory=dict)
        """Not supported (unused by 4D-fy); must stay empty."""
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
        guidance_type_image: str = ""
        """Unused by 4D-fy; must stay empty."""
        guidance_image: dict = child_slot("guidance", "guidance_type_image", optional=True)
        prompt_processor_type_image: str = ""
        """Unused by 4D-fy; must stay empty."""
        prompt_processor_image: dict = child_slot("prompt_processor", "prompt_processor_type_image", optional=True)
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
        """Mesh export is not implemented (4D-fy's needs tetrahedra files it does not ship)."""
        exporter: dict = dataclasses.field(default_factory=dict)
        """Must stay empty (see ``exporter_type``)."""
        simultan: bool = False
        """Dynamic stages: single-view batches may be video clips (must equal ``data.single_view.simultan``)."""
        stage: str = choice("coarse", ("coarse",), "4D-fy's only stage kind.")
        visualize_samples: bool = False
        """Not supported; must stay false."""
        prob_multi_view: Optional[float] = None
        """Probability of a multi-view batch (must equal ``data.prob_multi_view``); decides what is built."""
        prob_single_view_video: Optional[float] = None
        """Probability that a single-view batch is a video (``data.single_view.prob_single_view_video``)."""
        eval_depth_range_perc: tuple[float, float] = (10.0, 99.0)
        """Percentiles of the non-zero test depths mapped to the ends of the colour map."""
        freeze_static_modules: bool = False
        """Dynamic stages: train only the temporal parameters."""

        def __post_init__(self) -> None:
            super().__post_init__()
            for key in ("geometry_convert_from",):
                if getattr(self, key) is not None:
                    raise ConfigError(f"{key}: not supported (unused by 4D-fy); remove it")
            if self.geometry_convert_inherit_texture or self.geometry_convert_override:
                raise ConfigError("geometry_convert_*: not supported (unused by 4D-fy); remove them")
            if self.guidance_type_image or self.prompt_processor_type_image:
                raise ConfigError("guidance_type_image/prompt_processor_type_image: unused by 4D-fy; leave empty")
            if self.exporter:
                raise ConfigError("exporter: mesh export is not implemented; leave it empty")
            if self.visualize_samples:
                raise ConfigError("visualize_samples: not supported; set false")
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

    # -- building -------------------------------------------------------------------------------------------------

    def configure(self) -> None:
        c = self.cfg
        self.geometry = build("geometry", c.geometry_type, c.geometry, "system.geometry")
        self.material = build("material", c.material_type, c.material, "system.material")
        self.background = build("background", c.background_type, c.background, "system.background")
        self.renderer = build(
            "renderer", c.renderer_type, c.renderer, "system.renderer", self.geometry, self.material, self.background
        )
        self.static = bool(self.geometry.is_static)
        p_mv = c.prob_multi_view if c.prob_multi_view is not None else 0.0
        p_video = 0.0 if self.static or not c.simultan else (c.prob_single_view_video or 0.0)
        self.use_multi_view = p_mv > 0.0
        self.use_video = not self.static and p_mv < 1.0 and p_video > 0.0
        self.use_single_view = p_mv < 1.0 and p_video < 1.0

        self.guidance_multi_view: Optional[BaseGuidance] = None
        self.guidance_single_view: Optional[BaseGuidance] = None
        self.guidance_video: Optional[BaseGuidance] = None
        self.prompt_utils: dict[BatchKind, PromptEmbeddings] = {}
        if self.use_multi_view:
            self.guidance_multi_view = self._build_branch(
                BatchKind.MULTI_VIEW, c.guidance_type_multi_view, "guidance_multi_view",
                c.prompt_processor_type_multi_view, "prompt_processor_multi_view",
            )  # fmt: skip
        if self.use_video:
            self.guidance_video = self._build_branch(
                BatchKind.VIDEO, c.guidance_type_video, "guidance_video",
                c.prompt_processor_type_video, "prompt_processor_video",
            )  # fmt: skip
        if self.use_single_view:
            self.guidance_single_view = self._build_branch(
                BatchKind.SINGLE_VIEW, c.guidance_type, "guidance", c.prompt_processor_type, "prompt_processor"
            )

    def _build_branch(self, kind: BatchKind, gtype: str, gslot: str, ptype: str, pslot: str) -> BaseGuidance:
        if not gtype or not ptype:
            raise ConfigError(
                f"system.{gslot}: the {kind.value} branch is used (see prob_multi_view/prob_single_view_video) but "
                f"no guidance or prompt processor type is set"
            )
        guidance = build("guidance", gtype, getattr(self.cfg, gslot), f"system.{gslot}")
        for name in guidance.loss_names:
            if not hasattr(self.cfg.loss, f"lambda_{name}"):
                raise ConfigError(f"system.loss: {gtype} returns loss_{name} but there is no lambda_{name} weight")
        processor = build("prompt_processor", ptype, getattr(self.cfg, pslot), f"system.{pslot}")
        self.prompt_utils[kind] = processor()
        return guidance

    @property
    def guidance(self) -> Optional[BaseGuidance]:
        """4D-fy's alias: the multi-view guidance if built, else the video one, else the single-view one.
        A property, so the networks are not registered (and saved) twice."""
        return self.guidance_multi_view or self.guidance_video or self.guidance_single_view

    def guidances(self) -> dict[str, BaseGuidance]:
        return {
            name: g
            for name in ("guidance_multi_view", "guidance_single_view", "guidance_video")
            if (g := getattr(self, name)) is not None
        }

    def parts(self) -> list[Any]:
        return [self.geometry, self.material, self.background, self.renderer, *self.guidances().values()]

    def frozen_state_keys(self) -> set[str]:
        keys: set[str] = set()
        for name, g in self.guidances().items():
            keys.update(g.frozen_state_keys(prefix=f"{name}."))
        return keys

    # -- rendering ------------------------------------------------------------------------------------------------

    def render(self, batch: CameraBatch) -> RenderOutput:
        """Render every camera of the batch at each of its times; outputs are frame-major ``[T*B, ...]``."""
        times = batch.times.detach().cpu().tolist()
        return RenderOutput.cat([self.renderer(batch, float(t)) for t in times])

    def forward(self, batch: CameraBatch) -> RenderOutput:
        return self.render(batch)

    # -- training -------------------------------------------------------------------------------------------------

    def on_fit_start(self) -> None:
        if self.cfg.freeze_static_modules:
            for p in self.parameters():
                p.requires_grad_(False)

    def _set_temporal_grad(self, kind: BatchKind) -> None:
        if self.static:
            return
        flag = self.cfg.freeze_static_modules or kind == BatchKind.VIDEO
        for p in self.geometry.temporal_parameters():
            p.requires_grad_(flag)

    def training_step(self, batch: CameraBatch, batch_idx: int) -> torch.Tensor:
        guidance = {
            BatchKind.MULTI_VIEW: self.guidance_multi_view,
            BatchKind.SINGLE_VIEW: self.guidance_single_view,
            BatchKind.VIDEO: self.guidance_video,
        }[batch.kind]
        if guidance is None:
            raise RuntimeError(f"a {batch.kind.value} batch arrived but that branch was not built (prob mismatch?)")
        self._set_temporal_grad(batch.kind)
        out = self.render(batch)
        g_out: GuidanceOutput = guidance.guide(out.comp_rgb, self.prompt_utils[batch.kind], batch)
        loss = out.comp_rgb.new_zeros(())
        for name, value in g_out.losses.items():
            weight = self.C(getattr(self.cfg.loss, f"lambda_{name}"))
            self.log(f"train/loss_{name}", value, batch_size=batch.batch_size)
            loss = loss + value * weight
        for name, value in g_out.stats.items():
            self.log(f"train/{name}", value, batch_size=batch.batch_size)
        regularisers = {
            "sparsity": lambda: losses.sparsity_loss(out.opacity),
            "opaque": lambda: losses.opaque_loss(out.opacity),
            "z_variance": lambda: losses.z_variance_loss(out.z_variance, out.opacity),
            "deformation": lambda: (
                losses.tv_loss(out.deformation.permute(3, 0, 1, 2)) if out.deformation is not None else None
            ),
        }
        for name, fn in regularisers.items():
            weight = self.C(getattr(self.cfg.loss, f"lambda_{name}"))
            if weight > 0:
                value = fn()
                if value is not None:
                    self.log(f"train/loss_{name}", value, batch_size=batch.batch_size)
                    loss = loss + weight * value
        for f in dataclasses.fields(self.cfg.loss):
            self.log(f"train_params/{f.name}", self.C(getattr(self.cfg.loss, f.name)), batch_size=batch.batch_size)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch.batch_size)
        self.log("train/num_samples", float(out.num_samples), batch_size=batch.batch_size)
        return loss

    # -- evaluation -----------------------------------------------------------------------------------------------

    def set_save_dir(self, save_dir: str) -> None:
        """Folder for validation/test images and videos (``{trial_dir}/save``)."""
        self.save_dir = save_dir

    def _save_path(self, name: str) -> Path:
        return Path(getattr(self, "save_dir", "save")) / name

    def _writes(self) -> bool:
        return self._trainer is None or self.trainer.is_global_zero

    def validation_step(self, batch: CameraBatch, batch_idx: int) -> None:
        out = self.render(batch)
        step = self.true_global_step
        index = int(batch.index[0]) if batch.index is not None else batch_idx
        if self._writes():
            saving.save_rgb_opacity_grid(self._save_path(f"it{step}-{index}.png"), out.comp_rgb, out.opacity)
        if not self.static and batch.times_video is not None:
            video = RenderOutput.cat([self.renderer(batch, float(t)) for t in batch.times_video.cpu().tolist()])
            if self._writes():
                saving.save_video_strip(
                    self._save_path(f"it{step}-{index}_video.png"), video.comp_rgb, video.opacity
                )
                saving.save_frames_video(self._save_path(f"it{step}-{index}_video.mp4"), video.comp_rgb, fps=16)

    def on_test_epoch_start(self) -> None:
        self._test_depths: list[np.ndarray] = []

    def test_step(self, batch: CameraBatch, batch_idx: int) -> None:
        out = self.render(batch)
        step = self.true_global_step
        index = int(batch.index[0]) if batch.index is not None else batch_idx
        if self._writes():
            saving.save_rgb(self._save_path(f"it{step}-test/{index}.png"), out.comp_rgb[0])
            self._test_depths.append(out.depth[0, ..., 0].detach().float().cpu().numpy())
        if not self.static:
            static = self.renderer(batch, 0.0)
            if self._writes():
                saving.save_rgb(self._save_path(f"it{step}-test_static/{index}.png"), static.comp_rgb[0])

    def on_test_epoch_end(self) -> None:
        if not self._writes():
            return
        step = self.true_global_step
        saving.images_to_video(self._save_path(f"it{step}-test"), self._save_path(f"it{step}-test.mp4"), fps=15)
        if not self.static:
            saving.images_to_video(
                self._save_path(f"it{step}-test_static"), self._save_path(f"it{step}-test_static.mp4"), fps=15
            )
        if self._test_depths:
            lo, hi = self.cfg.eval_depth_range_perc
            folder = self._save_path(f"it{step}-test-depth-jet")
            for i, img in enumerate(saving.depth_to_jet(self._test_depths, lo, hi)):
                saving.save_rgb_array(folder / f"{i}.png", img)
            saving.images_to_video(folder, self._save_path(f"it{step}-test-depth-jet.mp4"), fps=15)
        self._test_depths = []

    def predict_step(self, batch: CameraBatch, batch_idx: int) -> None:
        raise NotImplementedError("--export (mesh export) is not implemented in fourdfy")
