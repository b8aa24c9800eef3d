"""The README's speed table, made from the JSONs of ``benchmarks/iteration.py`` (and ``hash_grid.py``).

    python benchmarks/speed_table.py benchmarks/results/iteration_*_nvidia-h200.json

Pairs each config/phase measured with fast paths on and off (same card), and prints Markdown: branch-weighted
seconds per iteration (random and fitted field), per-branch medians, peak memory, samples per ray, the speed-up
over "off", and the whole-prompt estimate of the pipeline's three stages (``fourdfy_stage_1``, ``_2``, ``_3``).
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from iteration import estimate  # noqa: E402

SHORT = {"multi_view": "MV", "single_view": "VSD", "video": "video"}
PIPELINE = ("configs/fourdfy_stage_1.yaml", "configs/fourdfy_stage_2.yaml", "configs/fourdfy_stage_3.yaml")


def load(paths: list[str]) -> dict[str, dict[tuple[str, ...], dict]]:
    """Iteration JSONs by kind: ``main`` (no memory cap, no ``--tag``) keyed by (config, phase, fast_paths), the
    newest file winning on duplicates; ``capped`` (``--memory-cap-gib``) and ``variant`` (a ``--tag``, e.g. a
    setting tried) keyed by the file too."""
    runs: dict[str, dict[tuple[str, ...], dict]] = {"main": {}, "capped": {}, "variant": {}}
    for p in sorted(paths, key=lambda f: Path(f).stat().st_mtime):
        data = json.loads(Path(p).read_text())
        if data.get("benchmark") != "iteration":
            continue
        kind = "capped" if data.get("memory_cap_gib") is not None else "variant" if data.get("tag") else "main"
        data["_path"] = p
        key = (data["config"], data["phase"], data["fast_paths"])
        runs[kind][key if kind == "main" else (*key, Path(p).name)] = data
    return runs


def other_lines(runs: dict[tuple[str, ...], dict]) -> str:
    """One line per capped or tagged run: the cap or tag, its extra overrides, s/it and the peaks."""
    out = []
    for (config, _, mode, name), r in sorted(runs.items()):
        rnd = r["fields"]["random"]
        how = f"under a {r['memory_cap_gib']:g} GiB cap" if r.get("memory_cap_gib") is not None else f"`{r['tag']}`"
        extra = r.get("extra_overrides", [])
        out.append(f"- `{Path(config).stem}` (fast paths {mode}) {how}"
                   + (f" ({', '.join(f'`{o}`' for o in extra)})" if extra else "")
                   + f": {fmt(rnd['seconds_per_iter_weighted'])} s/it, peak {fmt(rnd['peak_memory_gib'], '.1f')} GiB "
                   f"allocated, {fmt(rnd.get('peak_reserved_gib'), '.1f')} GiB reserved ({name})")  # fmt: skip
    return "\n".join(out)


def peak(field: dict) -> str:
    """Peak allocated GiB, with the allocator's reserved peak in brackets where it was recorded."""
    reserved = field.get("peak_reserved_gib")
    return fmt(field["peak_memory_gib"], ".1f") + (f" ({reserved:.1f})" if reserved is not None else "")


def fmt(x: float | None, spec: str = ".3f") -> str:
    return "—" if x is None or x != x else format(x, spec)


def table(runs: dict[tuple[str, str, str], dict]) -> str:
    """Markdown rows, one per (config, phase) measured with fast paths on."""
    lines = [
        "| config (phase) | s/it, fast paths on: random field (fitted) | per branch, random field (median s) | "
        "peak GiB (reserved) | samples/ray random (fitted) | s/it, every fast path off | peak GiB off | speed-up |",
        "|---|---|---|---|---|---|---|---|",
    ]
    marked = False
    for (config, phase, mode), on in sorted(runs.items()):
        if mode != "on":
            continue
        off = runs.get((config, phase, "off"))
        rnd, fit = on["fields"]["random"], on["fields"].get("fitted")
        kinds = rnd["seconds_per_iter_by_kind"]
        branches = ", ".join(f"{SHORT[k]} {kinds[k]['median']:.3f}" for k in SHORT if k in kinds)
        s_off = off["fields"]["random"]["seconds_per_iter_weighted"] if off else None
        speedup = s_off / rnd["seconds_per_iter_weighted"] if off else None
        # a ratio is a same-call comparison only when both runs measured the same code
        apart = off is not None and on.get("fourdfy_commit") != off.get("fourdfy_commit")
        name = Path(config).stem + (f" ({phase})" if on["phase_fraction"] < 1 else "")
        lines.append(
            f"| `{name}` | {fmt(rnd['seconds_per_iter_weighted'])} ({fmt(fit['seconds_per_iter_weighted'] if fit else None)}) "
            f"| {branches} | {peak(rnd)} | {fmt(rnd['samples_per_ray_median'], '.1f')} "
            f"({fmt(fit['samples_per_ray_median'] if fit else None, '.1f')}) | {fmt(s_off)} "
            f"| {peak(off['fields']['random']) if off else '—'} | {fmt(speedup, '.2f')}×{' ‡' if apart else ''} |"
        )  # fmt: skip
        marked = marked or apart
    if marked:
        lines.append("\n‡ fast paths on and off measured at different commits (different calls, and the default "
                     "settings may have changed in between): not a same-call ratio.")
    return "\n".join(lines)


def whole_prompt(runs: dict[tuple[str, str, str], dict]) -> str:
    """The estimate of the pipeline's stages measured with each fast-path mode; a stage not measured is named."""
    out = []
    for mode in ("on", "off"):
        files = [r["_path"] for (config, _, m), r in runs.items() if m == mode and config in PIPELINE]
        if not files:
            continue
        missing = [c for c in PIPELINE if c not in {runs[k]["config"] for k in runs if k[2] == mode}]
        for field in ("random", "fitted"):
            est = estimate(files, field)
            if field == "fitted" and all(r["field"] != "fitted" for r in est["rows"]):
                continue
            parts = " + ".join(f"{Path(r['config']).stem} {r['hours']:.2f}" + (f" ({r['field']} field)" if r["field"] != field
                               else "") for r in est["rows"])  # fmt: skip
            gap = f"; not measured: {', '.join(missing)}" if missing else ""
            by_mean = estimate(files, field, "mean")["hours"]
            out.append(f"- fast paths {mode}, {field} field: {parts} = **{est['hours']:.1f} h** from per-branch "
                       f"medians, {by_mean:.1f} h from means ({sum(r['iterations'] for r in est['rows'])} "
                       f"iterations{gap})")  # fmt: skip
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("json", nargs="+")
    args = p.parse_args()
    loaded = load(args.json)
    runs = loaded["main"]
    cards = sorted({r["card"] for r in runs.values()})
    print(f"Card: {', '.join(cards)}; torch {', '.join(sorted({r['torch'] for r in runs.values()}))}\n")
    print(table(runs))
    print("\nWhole prompt (stages 1 + 2 + 3 at their configured iterations, branch-weighted):\n")
    print(whole_prompt(runs))
    capped, variants = loaded["capped"], loaded["variant"]
    if capped:
        print("\nUnder a memory cap (PyTorch's allocator limited to the card size named; an OOM fails the run):\n")
        print(other_lines(capped))
    if variants:
        print("\nVariants (tagged runs: a setting tried, not the default):\n")
        print(other_lines(variants))
    grids = [json.loads(Path(f).read_text()) for f in args.json if Path(f).name.startswith("hash_grid")]
    for g in grids:
        print(f"\nHash grid and MLP alone ({g['args']['points']} points, {g['card']}, triton {g['versions']['triton']}):\n")
        print(hash_grid_table(g))
    return 0


def hash_grid_table(g: dict) -> str:
    """Markdown rows of a ``benchmarks/hash_grid.py`` JSON: forward and forward + backward medians per part/mode."""
    lines = ["| part | mode | forward ms | forward + backward ms | peak MiB |", "|---|---|---|---|---|"]
    for r in g["rows"]:
        lines.append(f"| {r['part']} | {r['mode']} | {r['forward']['median_ms']:.2f} | "
                     f"{r['forward_backward']['median_ms']:.2f} | {r['forward_backward']['peak_mem_mib']:.0f} |")  # fmt: skip
    return "\n".join(lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
