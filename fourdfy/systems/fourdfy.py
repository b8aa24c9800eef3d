"""``fourdfy-system``: 4D-fy's hybrid score distillation (Bahmani et al., CVPR 2024, arXiv:2311.17984).

Per training batch the data module has already chosen the branch (``batch.kind``): multi-view (MVDream SDS),
single view (VSD with Stable Diffusion) or video (video-model SDS). The system looks the branch up in its table
(:mod:`fourdfy.systems.branches`), renders every camera of the batch at each of its times in one call, asks that
branch's guidance for its losses, weights them by ``system.loss.lambda_<name>`` and adds the regularisers.
Branches are built only when they can be drawn (4D-fy also built unused guidances, e.g. VSD in stage 1; we do not).
Validation and test outputs are written by :class:`~fourdfy.evaluation.writers.EvaluationWriter`.
"""

import dataclasses
import logging
from typing import Any, Optional

import torch

from fourdfy.config import ConfigError
from fourdfy.data.batch import BatchKind, CameraBatch
from fourdfy.evaluation.writers import EvaluationWriter
from fourdfy.guidance.base import BaseGuidance, GuidanceOutput
from fourdfy.registry import build, register
from fourdfy.renderers.base import RenderOutput
from fourdfy.systems import losses
from fourdfy.systems.base import BaseSystem
from fourdfy.systems.branches import BRANCH_SLOTS, Branch, BranchSlots, branch_probabilities
from fourdfy.systems.config import FourDFYSystemConfig, LossConfig

logger = logging.getLogger(__name__)

__all__ = ["FourDFYSystem", "LossConfig"]


@register("fourdfy-system")
class FourDFYSystem(BaseSystem):
    """Text-to-4D with hybrid SDS: MVDream multi-view SDS + VSD + video SDS, on a static+dynamic NeRF."""

    Config = FourDFYSystemConfig

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
        probabilities = branch_probabilities(
            c.prob_multi_view if c.prob_multi_view is not None else 0.0, self.static, c.simultan,
            c.prob_single_view_video,
        )  # fmt: skip
        self.guidance_multi_view: Optional[BaseGuidance] = None
        self.guidance_single_view: Optional[BaseGuidance] = None
        self.guidance_video: Optional[BaseGuidance] = None
        self.branches: dict[BatchKind, Branch] = {}
        for slots in BRANCH_SLOTS:
            if probabilities[slots.kind] > 0.0:
                self.branches[slots.kind] = self._build_branch(slots)

    def _build_branch(self, slots: BranchSlots) -> Branch:
        c = self.cfg
        gtype = getattr(c, f"{slots.guidance.replace('guidance', 'guidance_type', 1)}")
        ptype = getattr(c, f"{slots.prompt_processor.replace('prompt_processor', 'prompt_processor_type', 1)}")
        if not gtype or not ptype:
            raise ConfigError(
                f"system.{slots.guidance}: the {slots.kind.value} branch is drawn (see prob_multi_view / "
                f"prob_single_view_video) but no guidance or prompt processor type is set"
            )
        guidance = build("guidance", gtype, getattr(c, slots.guidance), f"system.{slots.guidance}")
        for name in guidance.loss_names:
            if not hasattr(c.loss, f"lambda_{name}"):
                raise ConfigError(f"system.loss: {gtype} returns loss_{name} but there is no lambda_{name} weight")
        setattr(self, slots.attribute, guidance)
        processor = build("prompt_processor", ptype, getattr(c, slots.prompt_processor), f"system.{slots.prompt_processor}")
        video = slots.kind == BatchKind.VIDEO
        return Branch(
            slots=slots,
            prompt_embeddings=processor(),
            trains_temporal=(c.freeze_static_modules or video) and not self.static,
            grad_budget=self.renderer.gradient_budget(video),
        )

    def optimizer_alias(self, name: str) -> Optional[str]:
        """4D-fy's ``guidance`` optimizer group: the attribute it named (the multi-view guidance if built, else the
        video one, else the single-view one); ``None`` for any other name. Only its trainable parameters join the
        group, so the frozen networks are never handed to the optimizer."""
        if name != "guidance":
            return None
        for attribute in ("guidance_multi_view", "guidance_video", "guidance_single_view"):
            if getattr(self, attribute, None) is not None:
                return attribute
        return "guidance_single_view"

    def guidances(self) -> dict[str, BaseGuidance]:
        return {b.slots.attribute: getattr(self, b.slots.attribute) for b in self.branches.values()}

    def parts(self) -> list[Any]:
        return [self.geometry, self.material, self.background, self.renderer, *self.guidances().values()]

    def frozen_state_keys(self) -> set[str]:
        keys: set[str] = set()
        for name, g in self.guidances().items():
            keys.update(g.frozen_state_keys(prefix=f"{name}."))
        return keys

    # -- rendering ------------------------------------------------------------------------------------------------

    def forward(self, batch: CameraBatch, grad_budget: Optional[int] = None) -> RenderOutput:
        """Render every camera of the batch at each of its times (``[B, T, H, W, C]`` outputs)."""
        return self.renderer(batch, grad_budget)

    # -- training -------------------------------------------------------------------------------------------------

    def on_fit_start(self) -> None:
        if self.cfg.freeze_static_modules:
            for p in self.parameters():
                p.requires_grad_(False)

    def set_temporal_training(self, branch: Branch) -> None:
        """Image branches leave the 4-D part of the field untouched (no gradient, so AdamW skips it, as in 4D-fy);
        video branches (and every branch with ``freeze_static_modules``) train it."""
        if self.static:
            return
        for p in self.geometry.temporal_parameters():
            p.requires_grad_(branch.trains_temporal)

    def training_step(self, batch: CameraBatch, batch_idx: int) -> torch.Tensor:
        branch = self.branches.get(batch.kind)
        if branch is None:
            raise RuntimeError(f"a {batch.kind.value} batch arrived but that branch was not built (prob mismatch?)")
        guidance = getattr(self, branch.slots.attribute)
        self.set_temporal_training(branch)
        out = self(batch, branch.grad_budget)
        rgb = out.comp_rgb if branch.slots.video else out.frames()
        g_out: GuidanceOutput = guidance.guide(rgb, branch.prompt_embeddings, batch)
        n = batch.batch_size
        logged: dict[str, torch.Tensor] = {}  # device scalars to log
        numbers: dict[str, float] = {}  # Python numbers to log, sent to the device together (log_step)
        loss = out.comp_rgb.new_zeros(())
        for name, value in g_out.losses.items():
            weight = self.scheduled(getattr(self.cfg.loss, f"lambda_{name}"))
            logged[f"train/loss_{name}"] = value
            loss = loss + value * weight
        for name, value in g_out.stats.items():
            if isinstance(value, torch.Tensor):
                logged[f"train/{name}"] = value
            else:
                numbers[f"train/{name}"] = float(value)
        regularisers = {
            "sparsity": lambda: losses.sparsity_loss(out.opacity),
            "opaque": lambda: losses.opaque_loss(out.opacity),
            "z_variance": lambda: losses.z_variance_loss(out.z_variance, out.opacity),
            "deformation": lambda: (
                losses.tv_loss(out.frames("deformation").permute(3, 0, 1, 2)) if out.deformation is not None else None
            ),
        }
        for name, fn in regularisers.items():
            weight = self.scheduled(getattr(self.cfg.loss, f"lambda_{name}"))
            if weight > 0:
                value = fn()
                if value is not None:
                    logged[f"train/loss_{name}"] = value
                    loss = loss + weight * value
        if self.logs_written_this_step():  # the loss weights only matter where the loggers write them
            for f in dataclasses.fields(self.cfg.loss):
                numbers[f"train_params/{f.name}"] = self.scheduled(getattr(self.cfg.loss, f.name))
        numbers["train/num_samples"] = float(out.num_samples)
        logged["train/loss"] = loss
        self.log_step(logged, numbers, batch_size=n, prog_bar=("train/loss",))
        return loss

    # -- evaluation -----------------------------------------------------------------------------------------------

    def set_save_dir(self, save_dir: str) -> None:
        """Folder for validation/test images and videos (``{trial_dir}/save``)."""
        self.save_dir = save_dir
        self._writer = None

    @property
    def writer(self) -> EvaluationWriter:
        """The validation/test output writer of this system (made on first use, in ``save_dir``)."""
        if getattr(self, "_writer", None) is None:
            self._writer = EvaluationWriter(getattr(self, "save_dir", "save"), self.static, self.cfg.eval_depth_range_perc)
        return self._writer

    def _writes(self) -> bool:
        return self._trainer is None or self.trainer.is_global_zero

    def _index(self, batch: CameraBatch, batch_idx: int) -> int:
        return int(batch.index[0]) if batch.index is not None else batch_idx

    def validation_step(self, batch: CameraBatch, batch_idx: int) -> None:
        self.writer.validation(self, batch, self.true_global_step, self._index(batch, batch_idx), self._writes())

    def test_step(self, batch: CameraBatch, batch_idx: int) -> None:
        self.writer.test(self, batch, self.true_global_step, self._index(batch, batch_idx), self._writes())

    def on_test_epoch_end(self) -> None:
        self.writer.finish_test(self.true_global_step, self._writes())

    def predict_step(self, batch: CameraBatch, batch_idx: int) -> None:
        raise NotImplementedError("--export (mesh export) is not implemented in fourdfy")
