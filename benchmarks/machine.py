"""What every benchmark records about the machine it ran on: the card's name, a file-name slug of it, and the
versions of the libraries that decide the speed (plus the commit measured)."""

import importlib
import platform
import re
import subprocess
from pathlib import Path
from typing import Optional

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def card_name(device: Optional[torch.device] = None) -> str:
    """The accelerator's name (``device``, default: the first CUDA device when there is one), or
    ``"cpu: <processor>"``."""
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu: {platform.processor() or platform.machine()}"


def slug(text: str) -> str:
    """Lower-case file-name slug: ``'NVIDIA H200'`` -> ``'nvidia-h200'``."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def versions(*packages: str) -> dict[str, Optional[str]]:
    """Python, torch, CUDA and cuDNN (None on a CPU build), the given packages' ``__version__`` (None when they do not
    import), the git commit of this checkout (None outside one) and whether the tracked files match it."""
    out: dict[str, Optional[str]] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": str(torch.backends.cudnn.version()) if torch.backends.cudnn.is_available() else None,
    }
    for name in packages:
        try:
            out[name] = getattr(importlib.import_module(name), "__version__", "unknown")
        except Exception:  # noqa: BLE001  (absent or broken: recorded as such)
            out[name] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        out["fourdfy_commit"] = commit.stdout.strip() or None
        # a copied working tree (the lent GPU machine's) may sit on an older HEAD: say whether it differs from it
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                                capture_output=True, text=True, timeout=10)  # fmt: skip
        out["fourdfy_tree_matches_commit"] = status.returncode == 0 and not status.stdout.strip()
    except Exception:  # noqa: BLE001
        out["fourdfy_commit"] = None
        out["fourdfy_tree_matches_commit"] = None
    return out


def write_report(report: dict, name: str, out: Optional[Path], tiny: bool) -> Path:
    """Write a benchmark's JSON report to ``out``, or by default to ``benchmarks/results/<name>_<card slug>.json``
    (``_tiny`` appended for a tiny-config smoke run); prints and returns the path."""
    import json

    if out is None:
        out = REPO_ROOT / "benchmarks" / "results" / f"{name}_{slug(report['card'])}{'_tiny' if tiny else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return out
