"""Prompt-suite runner: one table of evaluation figures over a prompt list.

``python -m fourdfy.evaluation.suite PROMPTS.txt [--outputs outputs] [--name fourdfy_stage_3] [--evaluate]
[--clip PATH] [--out suite]`` finds, for each prompt, the latest trial ``{outputs}/{name}/{tag}@*`` (tag = the
prompt with spaces replaced by ``_``, 4D-fy's rule; any experiment name when ``--name`` is not given), reads its
``save/eval.json`` (running the evaluation first with ``--evaluate`` when it is missing) and writes
``{out}.md`` and ``{out}.json``: one row per prompt, then the mean over the evaluated prompts. Prompts without a
trial are listed with the ``launch.py`` command that would make one (``--commands``).

Prompt files: one prompt per line; blank lines and lines starting with ``#`` are skipped. Shipped lists:
``fourdfy/evaluation/prompts/mav3d_28.txt`` and ``fourdfy_user_study_5.txt`` (see their headers).
"""

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Optional

PROMPTS_DIR = Path(__file__).resolve().parent / "prompts"
COLUMNS = ("clip_score", "clip_consistency_orbit", "clip_consistency_time", "motion_amount", "motion_range", "flicker")
"""Metrics shown in the table, in order."""


def read_prompts(path: str | Path) -> list[str]:
    """Prompts of a list file (a shipped list may be named by its file name, e.g. ``mav3d_28.txt``)."""
    p = Path(path)
    if not p.is_file() and (PROMPTS_DIR / p.name).is_file():
        p = PROMPTS_DIR / p.name
    lines = [line.strip() for line in p.read_text(encoding="utf-8").splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def prompt_tag(prompt: str) -> str:
    """4D-fy's trial tag: the prompt with spaces replaced by ``_``."""
    return prompt.replace(" ", "_")


def find_trial(outputs: Path, prompt: str, name: Optional[str] = None) -> Optional[Path]:
    """The latest trial folder of ``prompt`` (by its ``@YYYYmmdd-HHMMSS`` suffix) under ``outputs``."""
    tag = prompt_tag(prompt)
    exp_dirs = [outputs / name] if name else [p for p in outputs.iterdir() if p.is_dir()] if outputs.is_dir() else []
    found = []
    for exp in exp_dirs:
        if not exp.is_dir():
            continue
        for trial in exp.iterdir():
            if trial.is_dir() and (trial.name == tag or trial.name.startswith(tag + "@")):
                found.append((trial.name[len(tag) :], str(trial), trial))
    return max(found)[2] if found else None


def collect(
    prompts: list[str],
    outputs: Path,
    name: Optional[str] = None,
    evaluate: bool = False,
    clip: Any = None,
    progress: bool = True,
    settings: Any = None,
) -> dict[str, Any]:
    """One row per prompt (``status``: ``ok``, ``no trial``, ``not evaluated``) and the mean of each metric over
    the ``ok`` rows. With ``evaluate``, trials without ``save/eval.json`` are evaluated first (``clip``: a loaded
    encoder or a hub id / folder; ``settings``: an ``EvalSettings``)."""
    from tqdm.auto import tqdm

    rows = []
    encoder = None
    for prompt in tqdm(prompts, desc="prompt suite", unit="prompt", disable=not progress):
        trial = find_trial(outputs, prompt, name)
        row: dict[str, Any] = {"prompt": prompt, "trial": str(trial) if trial else None}
        if trial is None:
            rows.append({**row, "status": "no trial"})
            continue
        eval_path = trial / "save" / "eval.json"
        if not eval_path.is_file() and evaluate:
            from fourdfy.evaluation.clip_model import ClipEncoder
            from fourdfy.evaluation import evaluate_trial as ev

            if encoder is None:
                encoder = clip if isinstance(clip, ClipEncoder) else ClipEncoder.from_pretrained(clip)
            ev.evaluate_trial(trial, encoder, settings or ev.EvalSettings(), progress=False)
        if not eval_path.is_file():
            rows.append({**row, "status": "not evaluated"})
            continue
        result = json.loads(eval_path.read_text())
        row.update(status="ok", step=result.get("step"), static=result.get("static"))
        row.update({k: result.get("metrics", {}).get(k) for k in COLUMNS})
        rows.append(row)
    ok = [r for r in rows if r["status"] == "ok"]
    mean = {}
    for k in COLUMNS:
        values = [r[k] for r in ok if isinstance(r.get(k), (int, float)) and math.isfinite(r[k])]
        mean[k] = sum(values) / len(values) if values else None
    return {"rows": rows, "mean": mean, "evaluated": len(ok), "total": len(rows)}


def _cell(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.2f}"
    return str(v).replace("|", "\\|")


def markdown_table(table: dict[str, Any]) -> str:
    """The suite as a markdown table (a last row holds the means)."""
    head = ["prompt", "status", "step", *COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in table["rows"]:
        lines.append("| " + " | ".join(_cell(r.get(k)) for k in head) + " |")
    mean = table["mean"]
    lines.append(
        "| **mean** | " + f"{table['evaluated']}/{table['total']} | | " + " | ".join(_cell(mean[k]) for k in COLUMNS) + " |"
    )
    return "\n".join(lines) + "\n"


def launch_command(prompt: str, config: str = "configs/fourdfy.yaml") -> str:
    """The command that trains a missing prompt (the pipeline of all stages)."""
    return f'python launch.py --pipeline {config} --train --gpu 0 system.prompt_processor.prompt="{prompt}"'


def main(argv: Optional[list[str]] = None) -> int:
    """Command-line entry (see the module docstring)."""
    ap = argparse.ArgumentParser(prog="python -m fourdfy.evaluation.suite", description=__doc__.splitlines()[0])
    ap.add_argument("prompts", help="prompt list file (or the name of a shipped list, e.g. mav3d_28.txt)")
    ap.add_argument("--outputs", default="outputs", help="experiment root (exp_root_dir)")
    ap.add_argument("--name", default=None, help="experiment name (config name), e.g. fourdfy_stage_3")
    ap.add_argument("--evaluate", action="store_true", help="evaluate trials that have no save/eval.json")
    ap.add_argument("--clip", default=None, help="CLIP model for --evaluate (hub id or local folder)")
    ap.add_argument("--out", default="suite", help="output stem: writes {out}.md and {out}.json")
    ap.add_argument("--commands", action="store_true", help="print launch commands for prompts without a trial")
    args = ap.parse_args(argv)
    from fourdfy.errors import USER_ERRORS

    try:
        table = collect(read_prompts(args.prompts), Path(args.outputs), args.name, args.evaluate, args.clip)
    except (*USER_ERRORS, FileNotFoundError) as e:
        print(f"fourdfy: error: {e}", file=sys.stderr)
        return 2
    md = markdown_table(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.md").write_text(md)
    Path(f"{out}.json").write_text(json.dumps(table, indent=2) + "\n")
    print(md)
    if args.commands:
        for r in table["rows"]:
            if r["status"] == "no trial":
                print(launch_command(r["prompt"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
