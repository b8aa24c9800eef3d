"""Divergence detection: stop a run whose numbers went bad instead of training (and saving) garbage.

:class:`DivergenceGuard` is a Lightning callback added to every training run. It checks, every step,

1. the loss, before the backward pass (single-process runs; in data-parallel runs a bad loss on one rank shows up
   as a bad averaged gradient on every rank, so every rank stops at the same check);
2. the gradients, after the backward pass and before the optimizer step (skipped under ``16-mixed`` precision,
   whose gradient scaler skips steps with non-finite gradients by design);
3. the trainable parameters, after the optimizer step;
4. every occupancy grid (a module with ``occs`` and ``binaries`` buffers): its values must stay finite and, once it
   has had an occupied cell, it must not become empty (nothing would be rendered any more).

On a failure it raises :class:`~fourdfy.errors.DivergenceError` naming the step, what went bad and the likely
cause. Lightning's ``ModelCheckpoint`` runs after this callback in the same hook, so the bad state is never written:
the last good ``last.ckpt`` (if one was saved) stays as it was, and the message says where it is.

Cost: one host synchronisation per check (a few per step), negligible next to a diffusion-model forward pass.
"""

import logging
import math
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
import torch

from fourdfy.errors import DivergenceError

logger = logging.getLogger(__name__)


def _all_finite(tensors: list[torch.Tensor]) -> bool:
    if not tensors:
        return True
    flags = torch.stack([torch.isfinite(t).all() for t in tensors])
    return bool(flags.all())


def _first_non_finite(named: list[tuple[str, torch.Tensor]]) -> Optional[str]:
    """Name of the first tensor holding a NaN or inf (``None`` when all are finite, one host sync then)."""
    if _all_finite([t for _, t in named]):
        return None
    for name, t in named:
        if not bool(torch.isfinite(t).all()):
            return name
    return None


def occupancy_grids(module: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """Sub-modules that look like an occupancy grid (``occs`` and ``binaries`` buffers), by name."""
    return [
        (name, m) for name, m in module.named_modules()
        if isinstance(getattr(m, "occs", None), torch.Tensor) and isinstance(getattr(m, "binaries", None), torch.Tensor)
    ]  # fmt: skip


class DivergenceGuard(pl.Callback):
    """Stop training at the first non-finite loss, gradient or parameter, or an emptied occupancy grid.

    Args:
        ckpt_dir: the trial's ``ckpts`` folder, named in the message with the last good checkpoint it holds.
    """

    def __init__(self, ckpt_dir: Optional[str | Path] = None) -> None:
        self.ckpt_dir = Path(ckpt_dir) if ckpt_dir is not None else None
        self._grid_had_cells: dict[str, bool] = {}

    # -- the checks -------------------------------------------------------------------------------------------

    def on_before_backward(self, trainer: Any, pl_module: torch.nn.Module, loss: torch.Tensor) -> None:
        if trainer.world_size > 1 or _all_finite([loss.detach()]):
            return
        terms = self._loss_terms(trainer)
        self._stop(
            trainer, pl_module, f"step {trainer.global_step}: the loss is {loss.detach().float().sum().item()}"
            + (f" ({terms})" if terms else ""),
            cause="a learning rate or loss weight (system.loss.lambda_*) too high, or a NaN coming out of a "
            "guidance (try trainer.precision=32)",
        )  # fmt: skip

    def on_before_optimizer_step(
        self, trainer: Any, pl_module: torch.nn.Module, optimizer: torch.optim.Optimizer
    ) -> None:
        if "16-mixed" in str(trainer.precision) and trainer.precision != "bf16-mixed":
            return  # the gradient scaler skips non-finite steps and lowers its scale: expected, not divergence
        named = [(n, p.grad) for n, p in pl_module.named_parameters() if p.grad is not None]
        bad = _first_non_finite(named)
        if bad is not None:
            self._stop(
                trainer, pl_module, f"step {trainer.global_step}: the gradient of {bad} is not finite",
                cause=self._lr_cause(bad, optimizer),
            )  # fmt: skip

    def on_train_batch_end(
        self, trainer: Any, pl_module: torch.nn.Module, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        named = [(n, p.detach()) for n, p in pl_module.named_parameters() if p.requires_grad]
        bad = _first_non_finite(named)
        if bad is not None:
            optimizer = trainer.optimizers[0] if trainer.optimizers else None
            self._stop(
                trainer, pl_module,
                f"step {trainer.global_step - 1}: parameter {bad} became inf or NaN in the optimizer step",
                cause=self._lr_cause(bad, optimizer),
            )  # fmt: skip
        for name, grid in occupancy_grids(pl_module):
            if not _all_finite([grid.occs]):
                self._stop(
                    trainer, pl_module, f"step {trainer.global_step - 1}: the occupancy grid {name} holds NaN/inf "
                    "densities", cause="the density field diverged (a learning rate of the geometry too high)",
                )  # fmt: skip
            has_cells = bool(grid.binaries.any())
            if has_cells:
                self._grid_had_cells[name] = True
            elif self._grid_had_cells.get(name):
                self._stop(
                    trainer, pl_module, f"step {trainer.global_step - 1}: the occupancy grid {name} emptied (no "
                    "cell is occupied any more, so nothing is rendered)",
                    cause="the density collapsed: a learning rate of the geometry too high, or sparsity/opacity "
                    "loss weights (system.loss.lambda_sparsity, lambda_opaque) too strong",
                )  # fmt: skip

    # -- the message --------------------------------------------------------------------------------------------

    @staticmethod
    def _loss_terms(trainer: Any) -> str:
        try:
            metrics = dict(trainer.callback_metrics)
        except Exception:  # noqa: BLE001 (the message must not fail)
            return ""
        parts = []
        for key, value in metrics.items():
            if key.startswith("train/loss_") and isinstance(value, torch.Tensor) and value.numel() == 1:
                parts.append(f"{key.split('/', 1)[1]}={value.item():.4g}")
        return ", ".join(parts)

    @staticmethod
    def _lr_cause(param_name: str, optimizer: Optional[torch.optim.Optimizer]) -> str:
        """"the learning rate of group X (lr=...) too high", using the group that holds the parameter."""
        if optimizer is not None:
            groups = [(g.get("name", str(i)), g.get("lr")) for i, g in enumerate(optimizer.param_groups)]
            for name, lr in groups:
                if name and (param_name == name or param_name.startswith(name + ".")):
                    return (
                        f"the learning rate of optimizer group {name!r} (lr={lr:g}) too high; lower "
                        f"'system.optimizer.params[{name}].lr'"
                    )
            lrs = [lr for _, lr in groups if isinstance(lr, (int, float)) and math.isfinite(lr)]
            if lrs:
                top = max(groups, key=lambda g: g[1] if isinstance(g[1], (int, float)) else -1)
                return f"a learning rate too high (largest: group {top[0]!r}, lr={top[1]:g})"
        return "a learning rate or loss weight too high"

    def _last_good(self) -> str:
        ckpt = self.ckpt_dir / "last.ckpt" if self.ckpt_dir is not None else None
        if ckpt is None or not ckpt.is_file():
            return "No checkpoint had been saved yet."
        try:
            step = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True).get("global_step", "?")
        except Exception:  # noqa: BLE001
            step = "?"
        return f"The last good checkpoint is kept: {ckpt} (step {step})."

    def _stop(self, trainer: Any, pl_module: torch.nn.Module, what: str, cause: str) -> None:
        raise DivergenceError(
            f"training diverged at {what}. Likely cause: {cause}. The run was stopped before saving this state. "
            f"{self._last_good()}"
        )
