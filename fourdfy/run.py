"""What ``launch.py`` runs: one experiment (train / validate / test), or a pipeline of stages."""

import argparse
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from fourdfy.config import ConfigError
from fourdfy.errors import USER_ERRORS
from fourdfy.experiment import TIMESTAMP_ENV, ExperimentConfig, dump_yaml, load_config
from fourdfy.utils.io import atomic_write, atomic_write_text

logger = logging.getLogger("fourdfy")

GUIDANCE_SLOTS = ("guidance", "guidance_multi_view", "guidance_video")
"""System config slots holding guidance configs (which may set a placement ``device``)."""


def setup_logging(verbose: bool) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format="[%(levelname)s] %(name)s: %(message)s")
    logging.getLogger("pytorch_lightning").setLevel(logging.DEBUG if verbose else logging.WARNING)
    logging.getLogger("lightning").setLevel(logging.DEBUG if verbose else logging.WARNING)


def rank() -> int:
    """This process's rank (Lightning's launcher sets LOCAL_RANK in the worker processes it starts)."""
    return int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))


def fail(message: str) -> int:
    print(f"fourdfy: error: {message}", file=sys.stderr)
    return 2


def run_experiment(args: argparse.Namespace, extras: list[str], extra_callbacks: tuple = ()) -> int:
    """Load the config, build data and system, and run the chosen mode. User errors end with one message.

    ``extra_callbacks`` are added to the Lightning trainer (used by tests and tools that inspect a run)."""
    setup_logging(args.verbose)
    if args.export:
        return fail("--export (mesh export) is not implemented in fourdfy")
    n_gpus = len([g for g in args.gpu.split(",") if g.strip() != ""])
    # one timestamp for every rank of a data-parallel run: rank 0 exports it, the worker processes that Lightning
    # starts (LOCAL_RANK >= 1) inherit it
    extras = list(extras)
    if rank() > 0 and not any(e.startswith("timestamp=") for e in extras) and os.environ.get(TIMESTAMP_ENV):
        extras.append(f"timestamp='{os.environ[TIMESTAMP_ENV]}'")
    try:
        cfg, resolved = load_config(args.config, extras, n_gpus=n_gpus)
        os.environ[TIMESTAMP_ENV] = cfg.timestamp or ""
        return _run(cfg, resolved, args, list(extra_callbacks))
    except USER_ERRORS as e:
        return fail(str(e))


def _run(cfg: ExperimentConfig, resolved: dict, args: argparse.Namespace, extra_callbacks: list) -> int:
    import pytorch_lightning as pl
    import torch
    from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    from fourdfy.registry import build
    from fourdfy.utils.checkpoint_io import AtomicCheckpointIO

    if not args.train and cfg.resume is None:
        raise ConfigError("resume: --validate/--test need a checkpoint, e.g. resume=<trial>/ckpts/last.ckpt")
    # per-rank seed: every rank draws its own cameras, times and noise (4D-fy used one seed for all ranks);
    # parameters start equal anyway because DDP broadcasts rank 0's at start-up
    pl.seed_everything(cfg.seed + rank(), workers=True, verbose=False)
    trial = Path(cfg.trial_dir)
    placed = [slot for slot in GUIDANCE_SLOTS if (cfg.system.get(slot) or {}).get("device")]
    if placed and cfg.n_gpus > 1:
        raise ConfigError(
            f"system.{placed[0]}.device: model placement (a guidance on its own GPU) and data parallelism "
            f"(--gpu {args.gpu}) cannot be combined; use --gpu with one index, or no placement"
        )
    dm = build("datamodule", cfg.data_type, cfg.data, "data")
    system = build("system", cfg.system_type, cfg.system, "system", resumed=cfg.resume is not None)
    system.set_save_dir(str(trial / "save"))

    n_gpus = cfg.n_gpus
    use_cuda = torch.cuda.is_available()
    trainer_kwargs: dict[str, Any] = dict(
        accelerator="gpu" if use_cuda else "cpu",
        devices=n_gpus,
        inference_mode=False,
        plugins=[AtomicCheckpointIO()],
        use_distributed_sampler=False,  # every rank renders all eval views; only rank 0 writes them
        default_root_dir=str(trial),
    )
    if n_gpus > 1:
        from pytorch_lightning.strategies import DDPStrategy

        # VSD's LoRA is unused on multi-view steps, the 4-D grid on image steps: some parameters get no gradient
        trainer_kwargs["strategy"] = DDPStrategy(
            find_unused_parameters=True, process_group_backend="nccl" if use_cuda else "gloo"
        )
    trainer_kwargs.update(cfg.trainer)

    callbacks: list[Any] = []
    loggers: list[Any] = []
    if args.train:
        callbacks = [ModelCheckpoint(dirpath=str(trial / "ckpts"), **cfg.checkpoint), LearningRateMonitor("step")]
        loggers = [TensorBoardLogger(str(trial), name="tb_logs"), CSVLogger(str(trial), name="csv_logs")]
        if system.cfg.loggers.wandb.enable:
            from pytorch_lightning.loggers import WandbLogger

            w = system.cfg.loggers.wandb
            loggers.append(WandbLogger(project=w.project, name=w.name or cfg.trial_name, save_dir=str(trial)))
        if rank() == 0:
            write_trial_files(cfg, resolved, args, trial)
    trainer = pl.Trainer(callbacks=callbacks + extra_callbacks, logger=loggers or False, **trainer_kwargs)

    if args.train:
        trainer.fit(system, datamodule=dm, ckpt_path=cfg.resume)
        trainer.test(system, datamodule=dm)
    else:
        epoch, step = checkpoint_position(cfg.resume)
        system.set_status(epoch, step)
        if args.validate:
            trainer.validate(system, datamodule=dm, ckpt_path=cfg.resume)
        else:
            trainer.test(system, datamodule=dm, ckpt_path=cfg.resume)
    return 0


def checkpoint_position(path: str) -> tuple[int, int]:
    """(epoch, global_step) stored in a checkpoint, for output names in eval-only runs."""
    import torch

    from fourdfy.errors import StageWeightsError

    if not os.path.isfile(path):
        raise StageWeightsError(f"resume: no checkpoint at {path!r}")
    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    return int(ckpt.get("epoch", 0)), int(ckpt.get("global_step", 0))


def write_trial_files(cfg: ExperimentConfig, resolved: dict, args: argparse.Namespace, trial: Path) -> None:
    """``configs/raw.yaml`` (the --config file verbatim), ``configs/parsed.yaml`` (resolved), ``log.txt``, ``code/``."""
    (trial / "configs").mkdir(parents=True, exist_ok=True)
    if len(args.config) == 1:
        raw = Path(args.config[0]).read_bytes()
        atomic_write(trial / "configs" / "raw.yaml", lambda f: f.write(raw))
    else:
        from fourdfy.experiment import load_yaml_tree, merge_trees

        tree: dict = {}
        for p in args.config:
            tree = merge_trees(tree, load_yaml_tree(p))
        dump_yaml(tree, trial / "configs" / "raw.yaml")
    dump_yaml(resolved, trial / "configs" / "parsed.yaml")
    atomic_write_text(trial / "log.txt", "python " + " ".join(sys.argv) + "\n" + str(args) + "\n")
    snapshot_code(trial / "code")


def snapshot_code(dest: Path) -> None:
    """Copy the tracked and untracked-but-not-ignored files of the git work tree (if any) to ``dest``."""
    try:
        top = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        files = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
            cwd=top, capture_output=True, text=True, check=True, timeout=30,
        ).stdout.splitlines()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return
    for rel in files:
        src = Path(top) / rel
        if rel.startswith(("load/", "outputs/")) or not src.is_file():
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)


def run_pipeline(args: argparse.Namespace, extras: list[str]) -> int:
    """Run the stages of a pipeline file in order (see ``fourdfy.pipeline``)."""
    from fourdfy.pipeline import run_pipeline as _run_pipeline

    setup_logging(args.verbose)
    try:
        return _run_pipeline(args, extras)
    except USER_ERRORS as e:
        return fail(str(e))
