"""Trial folders: checked before a run starts, created exclusively, and filled with the run's config, log and a
bounded snapshot of the project's source.

Layout (4D-fy's): ``{exp_root_dir}/{name}/{tag}@{YYYYmmdd-HHMMSS}/`` with ``configs/raw.yaml`` (the ``--config``
file as given, from the trial's *first* run), ``configs/parsed.yaml`` (the resolved config of the latest run),
``log.txt`` (every run's command line and log, appended), ``code/`` (the source that ran first), ``ckpts/``,
``save/``, ``tb_logs/``, ``csv_logs/``.

Rules:

* **Exclusive.** A new training run never shares a folder: when ``{tag}@{timestamp}`` exists (two launches in one
  second) the run takes ``@{timestamp}-1``, ``-2``... The suffix is part of the stored ``timestamp``, so relaunching
  from that trial's ``parsed.yaml`` finds it again.
* **Resuming in place** (``--train resume=...`` whose trial folder exists, e.g. with
  ``--config <trial>/configs/parsed.yaml``) keeps ``raw.yaml``, ``code/`` and ``log.txt`` and appends to the log.
* **Never outside ``exp_root_dir``**: the tag is made a safe folder name when the config is parsed
  (:func:`fourdfy.experiment.safe_tag`) and :func:`create_trial_dir` checks the resolved path.
* **The code snapshot** holds what ``git ls-files`` tracks in the checkout the ``fourdfy`` package was imported from,
  plus untracked, not-ignored source files under the package folders (``fourdfy/``, ``extern/``); never a trial
  folder or anything under ``exp_root_dir``; at most :data:`SNAPSHOT_MAX_FILE_BYTES` per file and
  :data:`SNAPSHOT_MAX_BYTES` in all (with a warning naming what was left out).
"""

import argparse
import datetime
import logging
import logging.handlers
import os
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Optional

from fourdfy.errors import TrialFolderError

logger = logging.getLogger("fourdfy")

TRIAL_DIR_ENV = "FOURDFY_TRIAL_DIR"
"""Set by rank 0 once the trial folder exists, read by the other ranks of a data-parallel run."""
TRIAL_RECORD_ENV = "FOURDFY_TRIAL_RECORD"
"""If set, a training run writes the path of its trial folder to this file (how a pipeline learns it)."""
PACKAGE_FOLDERS = ("fourdfy", "extern")
"""Folders of the checkout whose untracked source files are snapshotted too."""
SOURCE_SUFFIXES = (".py", ".yaml", ".yml", ".json", ".md", ".txt", ".toml", ".cfg", ".sh")
SNAPSHOT_MAX_FILE_BYTES = 2 * 1024 * 1024
"""Larger files are left out of ``code/`` (with a warning)."""
SNAPSHOT_MAX_BYTES = 32 * 1024 * 1024
"""``code/`` stops growing at this size (with a warning)."""
MAX_SUFFIX = 1000


# ----------------------------------------------------------------------------------------------------------------
# Checks before anything is written
# ----------------------------------------------------------------------------------------------------------------


def check_writable_folder(path: str | Path, key: str, hint: str = "") -> None:
    """Fail with :class:`TrialFolderError` naming ``key`` unless ``path`` is a folder we can write in, or can be
    created. Nothing is left behind: the check creates and removes an empty probe folder in ``path`` or its nearest
    existing parent (permission bits alone do not tell, e.g. for root or read-only mounts)."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise TrialFolderError(f"{key}: {path} is a file, not a folder.{hint}")
    probe = p
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise TrialFolderError(f"{key}: cannot create {path}: {probe} is a file, not a folder.{hint}")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".fourdfy-probe-", dir=probe))
    except OSError as e:
        where = "in" if probe == p else f"{path}: cannot create folders in"
        raise TrialFolderError(f"{key}: cannot write {where} {probe} ({e.strerror or e}).{hint}") from None


# ----------------------------------------------------------------------------------------------------------------
# The trial folder
# ----------------------------------------------------------------------------------------------------------------


def create_trial_dir(cfg: Any, resolved: dict) -> Path:
    """Create ``cfg.trial_dir`` exclusively; if it exists, the first free ``-N`` suffix. Updates ``timestamp``,
    ``trial_name`` and ``trial_dir`` in ``cfg`` and ``resolved`` to the folder actually created."""
    exp_dir = Path(cfg.exp_dir)
    root = Path(cfg.exp_root_dir).resolve()
    try:
        exp_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TrialFolderError(f"exp_root_dir: cannot create {exp_dir} ({e.strerror or e})") from None
    for n in range(MAX_SUFFIX):
        stamp = cfg.timestamp + (f"-{n}" if n else "")
        trial = exp_dir / (cfg.tag + stamp)
        if not trial.resolve().is_relative_to(root):
            raise TrialFolderError(f"tag: the trial folder {trial} would lie outside exp_root_dir={cfg.exp_root_dir}")
        try:
            trial.mkdir()
        except FileExistsError:
            continue
        except OSError as e:
            why = e.strerror or e
            raise TrialFolderError(f"exp_root_dir: cannot create the trial folder {trial} ({why})") from None
        if n:
            logger.info("trial folder %s exists (launched in the same second?): this run uses %s", cfg.trial_dir, trial)
        cfg.timestamp, cfg.trial_name, cfg.trial_dir = stamp, trial.name, str(trial)
        resolved.update(timestamp=stamp, trial_name=trial.name, trial_dir=str(trial))
        return trial
    raise TrialFolderError(f"exp_root_dir: {MAX_SUFFIX} trial folders named {cfg.trial_dir}[-N] exist already")


def write_trial_files(
    cfg: Any, resolved: dict, args: argparse.Namespace, trial: Path, argv: list[str], resumed_here: bool
) -> None:
    """``configs/raw.yaml`` and ``code/`` (first run only), ``configs/parsed.yaml`` (every run) and the command
    line at the head of ``log.txt`` (appended when resuming in place)."""
    from fourdfy.experiment import dump_yaml, load_yaml_tree, merge_trees
    from fourdfy.utils.io import atomic_write

    (trial / "configs").mkdir(parents=True, exist_ok=True)
    raw_path = trial / "configs" / "raw.yaml"
    if not raw_path.exists():
        if len(args.config) == 1:
            raw = Path(args.config[0]).read_bytes()
            atomic_write(raw_path, lambda f: f.write(raw))
        else:
            tree: dict = {}
            for p in args.config:
                tree = merge_trees(tree, load_yaml_tree(p))
            dump_yaml(tree, raw_path)
    dump_yaml(resolved, trial / "configs" / "parsed.yaml")
    now = datetime.datetime.now().isoformat(timespec="seconds")
    head = "resumed" if resumed_here else "started"
    with open(trial / "log.txt", "a") as f:
        if resumed_here:
            f.write("\n")
        f.write(f"# {head} {now}\n{shlex.join(argv)}\n{args}\n")
    if not (trial / "code").exists():
        snapshot_code(trial / "code", exclude=[Path(cfg.exp_root_dir)])


# ----------------------------------------------------------------------------------------------------------------
# The code snapshot
# ----------------------------------------------------------------------------------------------------------------


def project_root() -> Path:
    """The folder holding the ``fourdfy`` package that is running."""
    return Path(__file__).resolve().parents[1]


def _git_files(root: Path) -> Optional[list[str]]:
    """Tracked files plus untracked, not-ignored files under the package folders; None outside a git checkout."""
    try:
        top = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"], cwd=root, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        if Path(top).resolve() != root.resolve():
            return None  # the package lives inside some other repository: not the project's checkout
        tracked = subprocess.run(
            ["git", "ls-files", "--cached"], cwd=root, capture_output=True, text=True, check=True, timeout=30
        ).stdout.splitlines()
        folders = [f for f in PACKAGE_FOLDERS if (root / f).is_dir()]
        untracked = subprocess.run(
            ["git", "ls-files", "--others", "--exclude-standard", "--", *folders],
            cwd=root, capture_output=True, text=True, check=True, timeout=30,
        ).stdout.splitlines() if folders else []  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return sorted(set(tracked) | {f for f in untracked if f.endswith(SOURCE_SUFFIXES)})


def _package_files(root: Path) -> list[str]:
    """Without git: the source files of the package folders."""
    out = []
    for folder in PACKAGE_FOLDERS:
        for p in (root / folder).rglob("*"):
            if p.is_file() and p.suffix in SOURCE_SUFFIXES and "__pycache__" not in p.parts:
                out.append(str(p.relative_to(root)))
    return sorted(out)


def snapshot_code(dest: Path, exclude: tuple | list = (), root: Optional[Path] = None) -> list[str]:
    """Copy the project's own source files to ``dest`` (see the module docstring). Returns the copied relative
    paths. Never copies a trial folder (a folder holding ``configs/parsed.yaml``) or anything under ``exclude``."""
    root = (root or project_root()).resolve()
    files = _git_files(root)
    if files is None:
        files = _package_files(root)
    excluded = [Path(e).resolve() for e in exclude]
    trial_cache: dict[Path, bool] = {}

    def in_trial(path: Path) -> bool:
        for parent in path.parents:
            if parent == root or root not in parent.parents:
                return False
            if parent not in trial_cache:
                trial_cache[parent] = (parent / "configs" / "parsed.yaml").is_file()
            if trial_cache[parent]:
                return True
        return False

    copied, too_big, over_cap, total = [], [], 0, 0
    for rel in files:
        src = root / rel
        if rel.startswith("load/") or not src.is_file() or src.is_symlink():
            continue
        resolved = src.resolve()
        if any(resolved == e or e in resolved.parents for e in excluded) or in_trial(src):
            continue
        size = src.stat().st_size
        if size > SNAPSHOT_MAX_FILE_BYTES:
            too_big.append(rel)
            continue
        if total + size > SNAPSHOT_MAX_BYTES:
            over_cap += 1
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
        copied.append(rel)
        total += size
    if too_big:
        logger.warning(
            "code snapshot: left out %d file(s) over %d MiB: %s", len(too_big), SNAPSHOT_MAX_FILE_BYTES >> 20,
            ", ".join(too_big[:5]) + (" ..." if len(too_big) > 5 else ""),
        )  # fmt: skip
    if over_cap:
        logger.warning(
            "code snapshot: stopped at %d MiB, %d file(s) left out (is a large folder tracked by git?)",
            SNAPSHOT_MAX_BYTES >> 20, over_cap,
        )  # fmt: skip
    return copied


# ----------------------------------------------------------------------------------------------------------------
# log.txt: the run's log
# ----------------------------------------------------------------------------------------------------------------

LOG_FORMAT = "%(asctime)s [%(levelname)s] %(name)s: %(message)s"


class TrialLog:
    """Copies every log record of the run into ``log.txt``: records from before the trial folder exists are held in
    memory and written when :meth:`attach` is called. Use as a context manager around the whole run."""

    def __init__(self, level: int = logging.INFO) -> None:
        self.level = level
        self.buffer = logging.handlers.MemoryHandler(capacity=100000, flushLevel=logging.CRITICAL + 1)
        self.buffer.setLevel(level)
        self.file: Optional[logging.Handler] = None

    def __enter__(self) -> "TrialLog":
        logging.getLogger().addHandler(self.buffer)
        logging.captureWarnings(True)
        return self

    def attach(self, path: Path) -> None:
        """Write the held records, then every new one, to ``path`` (appending)."""
        if self.file is not None:
            return
        self.file = logging.FileHandler(path, mode="a", encoding="utf-8")
        self.file.setLevel(self.level)
        self.file.setFormatter(logging.Formatter(LOG_FORMAT))
        self.buffer.setTarget(self.file)
        self.buffer.flush()
        logging.getLogger().removeHandler(self.buffer)
        logging.getLogger().addHandler(self.file)

    def __exit__(self, *exc: Any) -> None:
        root = logging.getLogger()
        root.removeHandler(self.buffer)
        self.buffer.setTarget(None)
        self.buffer.close()
        if self.file is not None:
            root.removeHandler(self.file)
            self.file.close()
        logging.captureWarnings(False)
