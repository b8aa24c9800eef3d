"""``launch.py --pipeline <file> --train ...``: run the stages of a pipeline file in order.

A pipeline file lists stage configs (paths relative to the file) and optional per-stage overrides::

    stages:
      - config: fourdfy_stage_1.yaml
      - config: fourdfy_stage_2.yaml

Every stage gets the command-line overrides, and every stage after the first gets
``system.weights=<previous stage's trial>/ckpts/last.ckpt``. All stage configs are validated before the first
stage starts (every error of every stage reported at once). Each stage runs in its own process
(``python -m fourdfy --config ... --train``), so a data-parallel stage starts its ranks cleanly.

On a rerun, a stage whose finished trial already exists is skipped and its checkpoint handed on. A trial counts as
finished when its ``last.ckpt`` reached ``trainer.max_steps`` and its test video exists, and it matches when its
``parsed.yaml`` equals this stage's resolved config apart from the trial-folder fields (so the same prompt, seed,
settings and the same previous-stage checkpoint). A matching trial killed after writing a checkpoint is resumed
from it instead of restarting.
"""

import argparse
import dataclasses
import datetime
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

import torch
from omegaconf import OmegaConf

from fourdfy.config import ConfigError, parse_config
from fourdfy.experiment import load_config
from fourdfy.trial import TRIAL_RECORD_ENV

logger = logging.getLogger("fourdfy.pipeline")

VOLATILE_KEYS = ("timestamp", "exp_dir", "trial_name", "trial_dir", "n_gpus", "resume")
PACKAGE_PARENT = str(Path(__file__).resolve().parents[1])
"""Put on the stages' ``PYTHONPATH`` so ``python -m fourdfy`` imports this very package from any working folder."""


@dataclasses.dataclass
class PipelineStage:
    config: str
    """Stage config file, relative to the pipeline file."""
    overrides: list[str] = dataclasses.field(default_factory=list)
    """``key=value`` overrides for this stage only (the command line's come after them)."""


@dataclasses.dataclass
class PipelineConfig:
    stages: list[PipelineStage]
    """Stages in order; each starts from the previous one's last checkpoint."""
    description: str = ""


def load_pipeline(path: str) -> tuple[PipelineConfig, list[str]]:
    """The parsed pipeline and the absolute stage config paths."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"pipeline file not found: {path}")
    try:
        tree = OmegaConf.to_container(OmegaConf.load(file), resolve=False)
    except Exception as e:  # yaml and OmegaConf errors
        raise ConfigError(f"{path}: cannot read YAML: {e}") from None
    pipe = parse_config(PipelineConfig, tree, "pipeline")
    if not pipe.stages:
        raise ConfigError(f"{path}: `stages` is empty")
    paths = [str((file.parent / s.config).resolve()) for s in pipe.stages]
    return pipe, paths


def comparable(raw: dict) -> dict:
    """A resolved config without the fields that name the trial folder."""
    return {k: v for k, v in raw.items() if k not in VOLATILE_KEYS}


def find_trial(cfg, raw: dict) -> tuple[Optional[Path], bool]:
    """The newest existing trial of this stage with the same resolved config, and whether it is finished."""
    exp_dir = Path(cfg.exp_dir)
    if not exp_dir.is_dir():
        return None, False
    want = comparable(raw)
    for trial in sorted(exp_dir.glob(f"{cfg.tag}@*"), reverse=True):
        parsed = trial / "configs" / "parsed.yaml"
        if not parsed.is_file():
            continue
        if comparable(OmegaConf.to_container(OmegaConf.load(parsed), resolve=False)) != want:
            continue
        ckpt = trial / "ckpts" / "last.ckpt"
        if not ckpt.is_file():
            continue
        step = int(torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True).get("global_step", -1))
        max_steps = int(raw.get("trainer", {}).get("max_steps", -1))
        tested = any((trial / "save").glob(f"it{step}-test.*"))
        return trial, (step >= max_steps and tested)
    return None, False


def stage_env() -> dict[str, str]:
    """The environment of a stage process: this one's, with this package importable."""
    env = dict(os.environ)
    paths = [PACKAGE_PARENT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def run_pipeline(args: argparse.Namespace, extras: list[str]) -> int:
    """Run (or skip) each stage; returns the first failing stage's exit code, else 0."""
    if not args.train:
        raise ConfigError("--pipeline runs training: add --train")
    pipe, paths = load_pipeline(args.pipeline)
    # validate every stage before running any (a placeholder stands for checkpoints not written yet)
    errors = []
    for i, path in enumerate(paths):
        weights = ["system.weights=<previous stage>/ckpts/last.ckpt"] if i > 0 else []
        try:
            load_config([path], [*pipe.stages[i].overrides, *extras, *weights])
        except ConfigError as e:
            errors += [f"stage {i + 1} ({pipe.stages[i].config}): {m}" for m in e.errors]
    if errors:
        raise ConfigError(*errors)
    previous: Optional[Path] = None
    for i, (stage, path) in enumerate(zip(pipe.stages, paths)):
        overrides = [*stage.overrides, *extras]
        if previous is not None:
            overrides.append(f"system.weights={previous}")
        cfg, raw = load_config([path], overrides)
        trial, finished = find_trial(cfg, raw)
        if finished:
            logger.info("stage %d (%s): finished trial %s found, skipping", i + 1, cfg.name, trial)
            previous = trial / "ckpts" / "last.ckpt"
            continue
        if trial is not None:
            logger.info("stage %d (%s): resuming %s from its last checkpoint", i + 1, cfg.name, trial)
            cmd = ["--config", str(trial / "configs" / "parsed.yaml"), f"resume={trial / 'ckpts' / 'last.ckpt'}"]
        else:
            stamp = datetime.datetime.now().strftime("@%Y%m%d-%H%M%S")
            cmd = ["--config", path, *overrides, f"timestamp='{stamp}'"]
            cfg, _ = load_config([path], [*overrides, f"timestamp='{stamp}'"])
            trial = Path(cfg.trial_dir)
            logger.info("stage %d (%s): training in %s", i + 1, cfg.name, trial)
        full = [sys.executable, "-m", "fourdfy", *cmd, "--train"]
        full += (["--gpu", args.gpu] if args.gpu is not None else []) + (["--verbose"] if args.verbose else [])
        with tempfile.TemporaryDirectory() as tmp:
            # the stage says which trial folder it used (another launch in the same second makes it `...-1`)
            record = Path(tmp) / "trial"
            rc = subprocess.run(full, env={**stage_env(), TRIAL_RECORD_ENV: str(record)}).returncode
            if record.is_file():
                trial = Path(record.read_text())
        if rc != 0:
            logger.error("stage %d (%s) failed with exit code %d", i + 1, cfg.name, rc)
            return rc
        previous = trial / "ckpts" / "last.ckpt"
    return 0
