"""Divergence detection: stop a run whose numbers went bad instead of training (and saving) garbage.

:class:`DivergenceGuard` is a Lightning callback added to every training run. It checks, every step,

1. the loss, as it enters the backward pass (single-process runs; in data-parallel runs a bad loss on one rank
   shows up as a bad averaged gradient on every rank, so every rank stops at the same check);
2. the gradients of the optimized parameters, before the optimizer step (skipped under ``16-mixed`` precision,
   whose gradient scaler skips steps with non-finite gradients by design);
3. the optimized parameters that require a gradient, after the optimizer step (4D-fy's ``guidance_single_view``
   group hands the whole VSD guidance to the optimizer, frozen UNets included: ~1,900 tensors and over a billion
   values that no step changes, whose check cost every stage-2/3 step a temporary copy of them and some 10 ms
   of host time);
4. every occupancy grid (a module with ``occs`` and ``binaries`` buffers): its values must stay finite and, once it
   has had an occupied cell, it must not become empty (nothing would be rendered any more).

The checks are computed on the device as they come (multi-tensor kernels, :func:`finite_flags`); at the end of the
step their flags are copied to the host together. With ``system.defer_step_reads`` (the default) they are read at
the end of the *next* step (:class:`~fourdfy.utils.host_copy.HostCopy`), when the GPU has long finished them, so the
host never waits for the GPU between steps; without it, at the step's own end (one host synchronisation per step).
Reading a flag before the backward pass would make the host wait for the whole forward pass before it could launch
any backward kernel. On a failure it raises :class:`~fourdfy.errors.DivergenceError` naming the step, the first
thing that went bad, in the order above, and the likely cause.

Nothing bad is ever saved: before a checkpoint is written (``on_save_checkpoint``, which Lightning calls before the
file is opened), at validation and at the end of training the unread flags are read at once (:meth:`settle`), so
the last good ``last.ckpt`` (if one was saved) stays as it was, and the message says where it is. A step run after
a bad one (its deferred read) may compute on non-finite numbers; if it fails with another error, that error gets a
note naming the divergence.
"""

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any, Optional

import pytorch_lightning as pl
import torch

from fourdfy.errors import DivergenceError
from fourdfy.utils.host_copy import HostCopy

logger = logging.getLogger(__name__)


def finite_flags(named: list[tuple[Any, torch.Tensor]]) -> tuple[list[Any], torch.Tensor]:
    """Keys and one bool per tensor, on the device, true when every element is finite; no host sync. ``x * 0``
    is 0 where ``x`` is finite and NaN where it is inf or NaN, so its 1-norm is 0 exactly when ``x`` is all finite
    (no overflow, unlike a norm of ``x`` itself). Multi-tensor kernels per (device, dtype) group instead of two
    launches per tensor; the keys (names, indices) come back in the order of the flags (grouped).

    Example: ``finite_flags([("a", tensor([1., nan])), ("b", tensor([2.]))])`` is ``(["a", "b"], tensor([False,
    True]))``."""
    groups: dict[tuple[torch.device, torch.dtype], list[tuple[Any, torch.Tensor]]] = {}
    for name, t in named:
        groups.setdefault((t.device, t.dtype), []).append((name, t))
    names, flags = [], []
    for members in groups.values():
        norms = torch._foreach_norm(torch._foreach_mul([t for _, t in members], 0.0), ord=1)
        names += [n for n, _ in members]
        flags.append(torch.stack(norms) == 0)
    if not flags:
        return [], torch.ones(0, dtype=torch.bool)
    device = flags[0].device
    return names, torch.cat([f.to(device) for f in flags])


def occupancy_grids(module: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """Sub-modules that look like an occupancy grid (``occs`` and ``binaries`` buffers), by name."""
    return [
        (name, m) for name, m in module.named_modules()
        if isinstance(getattr(m, "occs", None), torch.Tensor) and isinstance(getattr(m, "binaries", None), torch.Tensor)
    ]  # fmt: skip


@dataclasses.dataclass
class _Check:
    """One check of a step: what it covers (``kind``), the step it names, the checked tensors' names and their
    flags on the device (true = good), then the flags read back (``read``)."""

    kind: str
    step: int
    names: list[Any]
    """Names, or for gradients and parameters indices into ``params``."""
    flags: torch.Tensor
    value: Optional[torch.Tensor] = None
    optimizer: Optional[torch.optim.Optimizer] = None
    params: list[torch.Tensor] = dataclasses.field(default_factory=list)
    read: list[bool] = dataclasses.field(default_factory=list)


def optimized_parameters(optimizers: list[torch.optim.Optimizer]) -> list[torch.Tensor]:
    """The parameters the optimizers update (the trainable state that can diverge), without walking the module
    tree: a stage-3 system holds thousands of frozen diffusion-network modules."""
    return [p for opt in optimizers for group in opt.param_groups for p in group["params"]]


class DivergenceGuard(pl.Callback):
    """Stop training at the first non-finite loss, gradient or parameter, or an emptied occupancy grid.

    Args:
        ckpt_dir: the trial's ``ckpts`` folder, named in the message with the last good checkpoint it holds.
        defer: read a step's flags at the end of the next step (true) or of its own (false); ``None`` follows the
            module's ``cfg.defer_step_reads`` (false for a module without it).
    """

    def __init__(self, ckpt_dir: Optional[str | Path] = None, defer: Optional[bool] = None) -> None:
        self.ckpt_dir = Path(ckpt_dir) if ckpt_dir is not None else None
        self.defer = defer
        self._grid_had_cells: dict[str, bool] = {}
        self._pending: list[_Check] = []
        self._unread: Optional[tuple[list[_Check], HostCopy]] = None  # a finished step's checks, flags on the way
        self._grids: Optional[tuple[int, list[tuple[str, torch.nn.Module]]]] = None  # (id of the module, its grids)

    # -- the checks: computed on the device as the step goes, read at its end ---------------------------------

    def on_train_batch_start(self, trainer: Any, pl_module: torch.nn.Module, batch: Any, batch_idx: int) -> None:
        self._pending = []  # a step that did not reach its end (skipped, or interrupted) leaves nothing behind

    def on_before_backward(self, trainer: Any, pl_module: torch.nn.Module, loss: torch.Tensor) -> None:
        if trainer.world_size > 1:
            return
        loss = loss.detach()
        self._pending.append(_Check("loss", trainer.global_step, *finite_flags([("loss", loss)]), value=loss))

    def on_before_optimizer_step(
        self, trainer: Any, pl_module: torch.nn.Module, optimizer: torch.optim.Optimizer
    ) -> None:
        if "16-mixed" in str(trainer.precision) and trainer.precision != "bf16-mixed":
            return  # the gradient scaler skips non-finite steps and lowers its scale: expected, not divergence
        params = [p for p in optimized_parameters([optimizer]) if p.grad is not None]
        keys, flags = finite_flags([(i, p.grad) for i, p in enumerate(params)])
        self._pending.append(_Check("gradient", trainer.global_step, keys, flags, optimizer=optimizer, params=params))

    def on_train_batch_end(
        self, trainer: Any, pl_module: torch.nn.Module, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step - 1  # the optimizer step has counted
        params = [p for p in optimized_parameters(trainer.optimizers) if p.requires_grad]
        with torch.no_grad():
            keys, flags = finite_flags(list(enumerate(params)))
        checks = self._pending + [_Check("parameter", step, keys, flags, params=params)]
        if self._grids is None or self._grids[0] != id(pl_module):  # the module tree is walked once
            self._grids = (id(pl_module), occupancy_grids(pl_module))
        for name, grid in self._grids[1]:
            checks.append(_Check("grid", step, *finite_flags([(name, grid.occs)])))
            checks.append(_Check("grid_cells", step, [name], grid.binaries.any().reshape(1)))
        self._pending = []
        device = next((c.flags.device for c in checks if c.flags.numel() > 0), torch.device("cpu"))
        copy = HostCopy.start(torch.cat([c.flags.to(device) for c in checks]))
        defer = self.defer if self.defer is not None else bool(getattr(getattr(pl_module, "cfg", None),
                                                                         "defer_step_reads", False))
        self.settle(trainer, pl_module)  # the previous step's flags (deferred): its work finished long ago
        self._unread = (checks, copy)
        if not defer:
            self.settle(trainer, pl_module)  # this step's: the host waits for the GPU here

    def settle(self, trainer: Any, pl_module: torch.nn.Module) -> None:
        """Read and judge the flags not read yet (waiting for the GPU if need be); raise on a failure."""
        if self._unread is None:
            return
        checks, copy = self._unread
        self._unread = None
        flags = copy.wait().tolist()
        for check in checks:
            check.read, flags = flags[: len(check.names)], flags[len(check.names) :]
        for check in checks:
            self._judge(trainer, pl_module, check)

    def on_save_checkpoint(self, trainer: Any, pl_module: torch.nn.Module, checkpoint: dict) -> None:
        self.settle(trainer, pl_module)  # before the file is written: a bad state is never saved

    def on_validation_start(self, trainer: Any, pl_module: torch.nn.Module) -> None:
        self.settle(trainer, pl_module)

    def on_train_end(self, trainer: Any, pl_module: torch.nn.Module) -> None:
        self.settle(trainer, pl_module)

    def on_exception(self, trainer: Any, pl_module: torch.nn.Module, exception: BaseException) -> None:
        """Another error in the step after a bad one (deferred read) gets a note naming the divergence; Lightning
        re-raises the original error after its callbacks, so the note travels with it."""
        if isinstance(exception, DivergenceError):
            return
        try:
            self.settle(trainer, pl_module)
        except DivergenceError as e:
            exception.add_note(f"fourdfy: the step before had diverged: {e}")
        except Exception:  # noqa: BLE001 (reading the flags must not hide the error being raised)
            self._unread = None

    def _judge(self, trainer: Any, pl_module: torch.nn.Module, check: "_Check") -> None:
        if check.kind == "grid_cells":
            (name,), (occupied,) = check.names, check.read
            if occupied:
                self._grid_had_cells[name] = True
            elif self._grid_had_cells.get(name):
                self._stop(
                    trainer, pl_module, f"step {check.step}: the occupancy grid {name} emptied (no cell is occupied "
                    "any more, so nothing is rendered)",
                    cause="the density collapsed: a learning rate of the geometry too high, or sparsity/opacity "
                    "loss weights (system.loss.lambda_sparsity, lambda_opaque) too strong",
                )  # fmt: skip
            return
        bad = next((n for n, ok in zip(check.names, check.read) if not ok), None)
        if bad is None:
            return
        if check.params:  # an index: name the parameter (the module tree is walked only now)
            param = check.params[bad]
            bad = next((n for n, p in pl_module.named_parameters() if p is param), "<a parameter without a name>")
        if check.kind == "loss":
            terms = self._loss_terms(trainer)
            self._stop(
                trainer, pl_module, f"step {check.step}: the loss is {check.value.float().sum().item()}"
                + (f" ({terms})" if terms else ""),
                cause="a learning rate or loss weight (system.loss.lambda_*) too high, or a NaN coming out of a "
                "guidance (try trainer.precision=32)",
            )  # fmt: skip
        elif check.kind == "gradient":
            self._stop(
                trainer, pl_module, f"step {check.step}: the gradient of {bad} is not finite",
                cause=self._lr_cause(bad, check.optimizer),
            )  # fmt: skip
        elif check.kind == "parameter":
            optimizer = trainer.optimizers[0] if trainer.optimizers else None
            self._stop(
                trainer, pl_module, f"step {check.step}: parameter {bad} became inf or NaN in the optimizer step",
                cause=self._lr_cause(bad, optimizer),
            )  # fmt: skip
        else:
            self._stop(
                trainer, pl_module, f"step {check.step}: the occupancy grid {bad} holds NaN/inf densities",
                cause="the density field diverged (a learning rate of the geometry too high)",
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
