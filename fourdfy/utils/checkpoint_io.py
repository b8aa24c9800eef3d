"""Lightning checkpoint I/O that writes atomically (temp file + fsync + rename), and the checks of a ``resume=``
checkpoint made before a run writes anything.

A run killed while saving leaves the previous ``last.ckpt`` intact instead of a truncated file (and a
``.last.ckpt.*.tmp`` file, removed by the next run in that trial folder: :func:`clean_stale_temporaries`).
"""

import dataclasses
import pickle
from pathlib import Path
from typing import Any, Optional

import torch
from lightning_fabric.utilities.types import _PATH
from pytorch_lightning.plugins.io import TorchCheckpointIO

from fourdfy.errors import CheckpointError
from fourdfy.utils.io import atomic_write

TEMP_PATTERN = ".*.tmp"
"""Names of :func:`fourdfy.utils.io.atomic_write`'s temporaries (``.{name}.{random}.tmp``)."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose ``save_checkpoint`` never leaves a partial file behind."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Optional[Any] = None) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO does not take storage_options")
        atomic_write(path, lambda f: torch.save(checkpoint, f))


def clean_stale_temporaries(*folders: str | Path) -> list[Path]:
    """Delete the temporaries a killed writer left in ``folders`` (one run writes a trial folder at a time, so any
    temporary found at start-up is stale). Returns the deleted paths."""
    removed = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            continue
        for tmp in folder.glob(TEMP_PATTERN):
            if tmp.is_file():
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
    return removed


# ----------------------------------------------------------------------------------------------------------------
# resume=: read and check the checkpoint before anything is built or written
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class CheckpointSummary:
    """What a Lightning checkpoint holds, read without unpickling code."""

    path: str
    epoch: int
    global_step: int
    shapes: dict[str, tuple[int, ...]]
    """``state_dict`` key -> shape."""
    optimizer_groups: Optional[list[tuple[str, int]]]
    """``(group name, number of parameters)`` of the first optimizer, if the checkpoint has optimizer state."""


_EXAMPLE = "resume=outputs/fourdfy_stage_1/a_panda_dancing@20240101-000000/ckpts/last.ckpt"


def read_checkpoint(path: str, key: str = "resume") -> CheckpointSummary:
    """Open ``path`` as a Lightning checkpoint, or raise :class:`CheckpointError` saying what is wrong with it
    (missing, a folder, empty, truncated or not a checkpoint, no training state)."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{key}: no checkpoint at {path!r}. Give a trial's checkpoint file, e.g. {_EXAMPLE}")
    if p.is_dir():
        hint = p / "ckpts" / "last.ckpt" if (p / "ckpts" / "last.ckpt").is_file() else p / "last.ckpt"
        raise CheckpointError(f"{key}: {path!r} is a folder, not a checkpoint file; e.g. {key}={hint}")
    if p.stat().st_size == 0:
        raise CheckpointError(f"{key}: {path!r} is empty (0 bytes), not a checkpoint")
    try:
        try:
            ckpt = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap can only be used" not in str(e):
                raise
            ckpt = torch.load(p, map_location="cpu", weights_only=True)  # the legacy (pre-zip) format
    except Exception as e:  # noqa: BLE001 (zip, pickle and OS errors all mean "cannot read")
        first = str(e).strip().splitlines()[0][:120] if str(e).strip() else ""
        # torch's own text for a non-pickle file is a long note about weights_only, not about the file
        detail = type(e).__name__
        if first and not isinstance(e, pickle.UnpicklingError):
            detail += f": {first}"
        raise CheckpointError(
            f"{key}: cannot read {path!r}: the file is truncated or not a PyTorch checkpoint ({detail})"
        ) from None
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise CheckpointError(f"{key}: {path!r} is not a Lightning checkpoint (it has no 'state_dict')")
    if key == "resume" and "global_step" not in ckpt:
        raise CheckpointError(f"{key}: {path!r} holds weights but no training state; use system.weights={path}")
    groups = None
    opt_states = ckpt.get("optimizer_states") or []
    if opt_states and isinstance(opt_states[0], dict) and "param_groups" in opt_states[0]:
        param_groups = opt_states[0]["param_groups"]
        groups = [(str(g.get("name", i)), len(g.get("params", []))) for i, g in enumerate(param_groups)]
    shapes = {k: tuple(v.shape) for k, v in ckpt["state_dict"].items() if isinstance(v, torch.Tensor)}
    return CheckpointSummary(str(path), int(ckpt.get("epoch", 0)), int(ckpt.get("global_step", 0)), shapes, groups)


def _module(key: str) -> str:
    return key.split(".", 1)[0]


def check_checkpoint_fits(
    system: torch.nn.Module, ckpt: CheckpointSummary, training: bool, key: str = "resume"
) -> None:
    """Raise :class:`CheckpointError` when ``ckpt`` was not saved by a run of this configuration: module by module,
    the state-dict keys and shapes must be equal (frozen pretrained weights aside, they are never saved), and when
    training resumes, the optimizer groups too."""
    frozen = system.frozen_state_keys() if hasattr(system, "frozen_state_keys") else set()
    mine = {k: tuple(v.shape) for k, v in system.state_dict().items() if k not in frozen}
    theirs = {k: s for k, s in ckpt.shapes.items() if k not in frozen}
    problems: dict[str, list[str]] = {}
    for k in sorted(set(mine) | set(theirs)):
        if k not in theirs:
            problems.setdefault(_module(k), []).append(f"missing {k}")
        elif k not in mine:
            problems.setdefault(_module(k), []).append(f"unexpected {k}")
        elif mine[k] != theirs[k]:
            problems.setdefault(_module(k), []).append(f"{k} has shape {theirs[k]} there, {mine[k]} here")
    if problems:
        details = "; ".join(
            f"module {m!r}: {', '.join(items[:3])}{f' (+{len(items) - 3} more)' if len(items) > 3 else ''}"
            for m, items in problems.items()
        )
        raise CheckpointError(
            f"{key}: {ckpt.path} was saved by another stage or configuration; modules that do not match: "
            f"{', '.join(repr(m) for m in problems)} ({details}). {key}= continues a run with the same config; to "
            f"start this stage from another stage's weights use system.weights={ckpt.path} instead."
        )
    if training and ckpt.optimizer_groups is not None and hasattr(system, "configure_optimizers"):
        optimizer = system.configure_optimizers()
        if not isinstance(optimizer, torch.optim.Optimizer):
            return
        here = [(str(g.get("name", i)), len(g["params"])) for i, g in enumerate(optimizer.param_groups)]
        if here != ckpt.optimizer_groups:
            raise CheckpointError(
                f"{key}: {ckpt.path} has optimizer groups {ckpt.optimizer_groups} (name, parameters) but this config "
                f"builds {here}: system.optimizer.params changed since it was saved. Resume with the trial's "
                f"configs/parsed.yaml, or start from its weights with system.weights={ckpt.path}."
            )
