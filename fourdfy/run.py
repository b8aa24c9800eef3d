"""What the command line runs: one experiment (train / validate / test), or a pipeline of stages.

An experiment goes through these phases; everything that can be checked is checked before anything is written:

1. load and validate the config (every problem reported at once);
2. check the places the run will write to (``exp_root_dir``, the text-embedding cache) and, for ``resume=``, that
   the checkpoint file can be read;
3. build the data module and the system (errors while building are reported like config errors);
4. for ``resume=``, check that the checkpoint's modules (and optimizer groups) are this configuration's;
5. create the trial folder (exclusively), build the trainer, write ``configs/``, ``log.txt`` and ``code/``;
6. train (with :class:`~fourdfy.guards.DivergenceGuard`) and test, or validate / test.

User errors end the run with one ``fourdfy: error: ...`` line (several config errors: one line each, under a
heading) and exit code 2; ``--verbose`` adds the traceback. The last line of a run names its trial folder.
"""

import argparse
import logging
import os
import shlex
import shutil
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any, Optional

from fourdfy.config import ConfigError
from fourdfy.errors import USER_ERRORS
from fourdfy.experiment import TIMESTAMP_ENV, ExperimentConfig, load_config
from fourdfy.trial import (
    TRIAL_DIR_ENV, TRIAL_RECORD_ENV, TrialLog, check_writable_folder, create_trial_dir, write_trial_files,
)  # fmt: skip

logger = logging.getLogger("fourdfy")

GUIDANCE_SLOTS = ("guidance", "guidance_multi_view", "guidance_video")
"""System config slots holding guidance configs (which may set a placement ``device``)."""

BUILD_ERRORS = (NotImplementedError, RuntimeError, ValueError, TypeError, KeyError, OSError, ImportError)
"""Exceptions that, raised while the data module and system are built, mean "this config cannot be built": they
are reported in one line like config errors (bad shapes, unimplemented parts, unreadable files)."""

QUIET_WARNINGS = (
    r".*LeafSpec.*is deprecated",  # Lightning's own use of a torch API
    r"Found \d+ module\(s\) in eval mode",  # the frozen diffusion networks are in eval mode by design
    r".*does not have many workers",  # the camera stream is generated in the main process by design
)
"""Lightning warnings a user cannot act on (shown with ``--verbose``)."""


def setup_logging(verbose: bool) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, format="[%(levelname)s] %(name)s: %(message)s")
    logging.getLogger("fourdfy").setLevel(level)  # also when the root logger was configured by someone else
    quiet_lightning(verbose)


def quiet_lightning(verbose: bool) -> None:
    """Lightning's tips and info lines, and its warnings a user cannot act on, stay out of the output (and
    ``log.txt``) unless ``--verbose``. Call again after importing Lightning: its import resets its logger level."""
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)
    if not verbose:
        for pattern in QUIET_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)


def rank() -> int:
    """This process's rank (Lightning's launcher sets LOCAL_RANK in the worker processes it starts)."""
    return int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))


def fail(message: str) -> int:
    print(f"fourdfy: error: {message}", file=sys.stderr)
    return 2


def report(e: BaseException, verbose: bool, context: str = "") -> int:
    """One line (``--verbose``: the traceback first)."""
    if verbose:
        traceback.print_exception(e)
    text = str(e) if isinstance(e, USER_ERRORS) else f"{type(e).__name__}: {e}"
    text = text.strip() or type(e).__name__
    if context:
        text = f"{context}: {text}"
    if not verbose and not isinstance(e, USER_ERRORS):
        text += " (run with --verbose for the traceback)"
    return fail(text)


def gpu_count(gpu: Optional[str]) -> int:
    return len([g for g in (gpu or "0").split(",") if g.strip() != ""])


def check_gpu(args: argparse.Namespace) -> None:
    """``--gpu`` on a machine without CUDA runs on the CPU: say so (rank 0 only)."""
    import torch

    if args.gpu is not None and rank() == 0 and not torch.cuda.is_available():
        n = gpu_count(args.gpu)
        logger.warning(
            "--gpu %s: no CUDA device is available, so this run uses the CPU (%s)", args.gpu,
            "one process" if n == 1 else f"{n} processes, data-parallel over gloo",
        )  # fmt: skip


def run_experiment(
    args: argparse.Namespace, extras: list[str], extra_callbacks: tuple = (), argv: Optional[list[str]] = None
) -> int:
    """Load the config, build data and system, and run the chosen mode. User errors end with one message.

    ``extra_callbacks`` are added to the Lightning trainer (used by tests and tools that inspect a run);
    ``argv`` is the command line recorded in ``log.txt`` (default ``python`` + ``sys.argv``)."""
    setup_logging(args.verbose)
    if args.export:
        return run_export(args, extras)
    n_gpus = gpu_count(args.gpu)
    # one timestamp and trial folder for every rank of a data-parallel run: rank 0 exports them, the worker
    # processes that Lightning starts (LOCAL_RANK >= 1) inherit them
    extras = list(extras)
    if rank() > 0 and not any(e.startswith("timestamp=") for e in extras) and os.environ.get(TIMESTAMP_ENV):
        extras.append(f"timestamp='{os.environ[TIMESTAMP_ENV]}'")
    with TrialLog(logging.DEBUG if args.verbose else logging.INFO) as log:
        try:
            cfg, resolved = load_config(args.config, extras, n_gpus=n_gpus)
            os.environ[TIMESTAMP_ENV] = cfg.timestamp or ""
            command = argv if argv is not None else ["python", *sys.argv]
            return _run(cfg, resolved, args, list(extra_callbacks), log, command)
        except USER_ERRORS as e:
            return report(e, args.verbose)


def _run(
    cfg: ExperimentConfig, resolved: dict, args: argparse.Namespace, extra_callbacks: list, log: TrialLog,
    argv: list[str],
) -> int:  # fmt: skip
    from fourdfy.prompt_processors.base import CACHE_ENV, cache_root
    from fourdfy.utils.checkpoint_io import read_checkpoint

    check_gpu(args)
    # -- 2. checks before anything is built or written --------------------------------------------------------
    if not args.train and cfg.resume is None:
        raise ConfigError("resume: --validate/--test need a checkpoint, e.g. resume=<trial>/ckpts/last.ckpt")
    placed = [slot for slot in GUIDANCE_SLOTS if (cfg.system.get(slot) or {}).get("device")]
    if placed and cfg.n_gpus > 1:
        raise ConfigError(
            f"system.{placed[0]}.device: model placement (a guidance on its own GPU) and data parallelism "
            f"(--gpu {args.gpu}) cannot be combined; use --gpu with one index, or no placement"
        )
    if args.train and rank() == 0:
        check_writable_folder(cfg.exp_root_dir, "exp_root_dir", " Set exp_root_dir=<a folder you can write>.")
    check_writable_folder(
        cache_root(), CACHE_ENV if os.environ.get(CACHE_ENV) else f"{cache_root()} (the text-embedding cache)",
        f" The text-embedding cache lives there; set {CACHE_ENV}=<a folder you can write>.",
    )  # fmt: skip
    ckpt = read_checkpoint(cfg.resume) if cfg.resume is not None else None

    # -- 3. build ---------------------------------------------------------------------------------------------
    import pytorch_lightning as pl

    quiet_lightning(args.verbose)
    # per-rank seed: every rank draws its own cameras, times and noise (4D-fy used one seed for all ranks);
    # parameters start equal anyway because DDP broadcasts rank 0's at start-up
    pl.seed_everything(cfg.seed + rank(), workers=True, verbose=False)
    dm, system = build_parts(cfg)

    # -- 4. the resumed checkpoint must be this configuration's ---------------------------------------------------
    if ckpt is not None:
        from fourdfy.utils.checkpoint_io import check_checkpoint_fits

        check_checkpoint_fits(system, ckpt, training=args.train)

    # -- 5. the trial folder ------------------------------------------------------------------------------------
    trial, created = claim_trial(cfg, resolved, args)
    system.set_save_dir(str(trial / "save"))
    try:
        trainer = build_trainer(cfg, args, trial, system, extra_callbacks)
    except BaseException:
        if created:
            shutil.rmtree(trial, ignore_errors=True)  # nothing was written in it yet
        raise
    if rank() == 0 and (args.train or trial.is_dir()):
        if args.train:
            write_trial_files(cfg, resolved, args, trial, argv, resumed_here=not created)
        else:
            with open(trial / "log.txt", "a") as f:
                f.write(f"\n# {'validate' if args.validate else 'test'}\n{shlex.join(argv)}\n")
        log.attach(trial / "log.txt")

    # -- 6. run -------------------------------------------------------------------------------------------------
    if args.train:
        trainer.fit(system, datamodule=dm, ckpt_path=cfg.resume)
        trainer.test(system, datamodule=dm)
    else:
        assert ckpt is not None
        system.set_status(ckpt.epoch, ckpt.global_step)
        if args.validate:
            trainer.validate(system, datamodule=dm, ckpt_path=cfg.resume)
        else:
            trainer.test(system, datamodule=dm, ckpt_path=cfg.resume)
    if rank() == 0:
        refresh_result_page(trial)
        logger.info("trial folder: %s", trial)
    return 0


def refresh_result_page(trial: Path) -> None:
    """Write ``save/index.html`` (videos, model, losses, evaluation in one offline file). A page that cannot be
    written costs a warning, never the run's results."""
    from fourdfy.evaluation.page import write_result_page

    try:
        logger.info("result page: %s", write_result_page(trial))
    except Exception as e:  # noqa: BLE001  (the page is a report; the trial's files are already safe)
        logger.warning("could not write the result page of %s: %s", trial, e)


def run_export(args: argparse.Namespace, extras: list[str]) -> int:
    """``--config <trial>/configs/parsed.yaml --export resume=<trial>/ckpts/<file>.ckpt [system.exporter.*=...]
    [system.geometry.isosurface_*=...]`` (threestudio's form): the configured exporter on the trial's field, built
    from the trial's own ``configs/parsed.yaml`` (no guidance network is built), files in ``save/it{S}-export/``,
    then the result page."""
    from fourdfy.evaluation.trial import load_trial
    from fourdfy.exporters.trial_export import export_parts

    resume = [e.split("=", 1)[1].strip("'\"") for e in extras if e.startswith("resume=")]
    if not resume:
        return fail("resume: --export needs a checkpoint of a trial, e.g. resume=<trial>/ckpts/last.ckpt")
    ckpt = Path(resume[-1]).expanduser()
    trial = ckpt.parent.parent
    if not ckpt.is_file() or not (trial / "configs" / "parsed.yaml").is_file():
        return fail(f"resume: {ckpt} is not a checkpoint inside a trial folder (<trial>/ckpts/last.ckpt)")
    overrides = tuple(e for e in extras if not e.startswith("resume="))
    try:
        parts = load_trial(trial, overrides, ckpt=ckpt, device="cuda" if torch_cuda() else "cpu")
        written = export_parts(parts)
    except USER_ERRORS as e:
        return report(e, args.verbose)
    for path in written:
        logger.info("exported %s", path)
    refresh_result_page(trial)
    logger.info("trial folder: %s", trial)
    return 0


def torch_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def build_parts(cfg: ExperimentConfig) -> tuple[Any, Any]:
    """The data module and the system; an error while building them becomes one user-facing message."""
    from fourdfy.registry import build

    try:
        dm = build("datamodule", cfg.data_type, cfg.data, "data")
    except USER_ERRORS:
        raise
    except BUILD_ERRORS as e:
        raise BuildError("data", e) from e
    try:
        system = build("system", cfg.system_type, cfg.system, "system", resumed=cfg.resume is not None)
    except USER_ERRORS:
        raise
    except BUILD_ERRORS as e:
        raise BuildError("system", e) from e
    return dm, system


class BuildError(ConfigError):
    """A module could not be built from its (valid-looking) config."""

    def __init__(self, where: str, error: BaseException) -> None:
        text = str(error).strip().splitlines()[0] if str(error).strip() else ""
        kind = "not implemented" if isinstance(error, NotImplementedError) else type(error).__name__
        super().__init__(f"{where}: cannot build it ({kind}): {text or '-'} (--verbose shows the traceback)")
        self.original = error


def claim_trial(cfg: ExperimentConfig, resolved: dict, args: argparse.Namespace) -> tuple[Path, bool]:
    """The trial folder of this run, and whether this run created it.

    Training creates a new folder exclusively, except when it resumes (``resume=``) into an existing one. Other
    ranks of a data-parallel run take rank 0's folder. Validate/test write into the configured folder."""
    if rank() > 0 and os.environ.get(TRIAL_DIR_ENV):
        return Path(os.environ[TRIAL_DIR_ENV]), False
    trial = Path(cfg.trial_dir)
    if not args.train or (cfg.resume is not None and trial.is_dir()):
        return trial, False
    trial = create_trial_dir(cfg, resolved)
    os.environ[TRIAL_DIR_ENV] = str(trial)
    if os.environ.get(TRIAL_RECORD_ENV):
        Path(os.environ[TRIAL_RECORD_ENV]).write_text(str(trial))
    return trial, True


def build_trainer(
    cfg: ExperimentConfig, args: argparse.Namespace, trial: Path, system: Any, extra_callbacks: list
) -> Any:
    """The Lightning trainer (with checkpoints, loggers, progress bar and the divergence guard when training).
    Lightning's own complaints about trainer/checkpoint arguments become config errors."""
    import pytorch_lightning as pl
    import torch
    from lightning_fabric.utilities.exceptions import MisconfigurationException
    from pytorch_lightning.callbacks import ModelCheckpoint

    from fourdfy.garbage_collection import FreezeSetupObjects
    from fourdfy.guards import DivergenceGuard
    from fourdfy.loggers import StepLearningRates, trial_loggers
    from fourdfy.progress import StepProgressBar
    from fourdfy.utils.checkpoint_io import AtomicCheckpointIO, clean_stale_temporaries

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
    if trainer_kwargs.get("enable_progress_bar", True) is not False:
        callbacks.append(StepProgressBar())
    if args.train:
        ckpts = trial / "ckpts"
        if rank() == 0:
            for tmp in clean_stale_temporaries(ckpts, trial / "configs"):
                logger.info("removed %s (left by a run killed while writing)", tmp)
        try:
            checkpoint = ModelCheckpoint(dirpath=str(ckpts), enable_version_counter=False, **cfg.checkpoint)
        except (MisconfigurationException, ValueError, TypeError) as e:
            raise ConfigError(f"checkpoint: {e}") from None
        callbacks += [DivergenceGuard(ckpts), checkpoint, StepLearningRates()]
        if cfg.freeze_gc:
            callbacks.append(FreezeSetupObjects())
        loggers = trial_loggers(trial)
        if system.cfg.loggers.wandb.enable:
            from pytorch_lightning.loggers import WandbLogger

            w = system.cfg.loggers.wandb
            loggers.append(WandbLogger(project=w.project, name=w.name or cfg.trial_name, save_dir=str(trial)))
    try:
        return pl.Trainer(callbacks=callbacks + extra_callbacks, logger=loggers or False, **trainer_kwargs)
    except (MisconfigurationException, ValueError, TypeError) as e:
        raise ConfigError(f"trainer: {e}") from None


def run_pipeline(args: argparse.Namespace, extras: list[str]) -> int:
    """Run the stages of a pipeline file in order (see ``fourdfy.pipeline``)."""
    from fourdfy.pipeline import run_pipeline as _run_pipeline

    setup_logging(args.verbose)
    try:
        return _run_pipeline(args, extras)
    except USER_ERRORS as e:
        return report(e, args.verbose)
