"""Small dependency-free SVG line plots (loss curves, per-frame scores) for the result page."""

import csv
import html
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def nice_ticks(lo: float | int, hi: float | int, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering ``[lo, hi]`` (steps of 1, 2 or 5 times a power of ten)."""
    if not math.isfinite(lo) or not math.isfinite(hi):
        return []
    if hi <= lo:
        return [float(lo)]
    raw = (hi - lo) / max(count - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    v = first
    while v <= hi + step * 1e-9:
        ticks.append(float(round(v, 12)))
        v += step
    return ticks


def _fmt(v: float | int) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1e4 or abs(v) < 1e-2:
        return f"{v:.0e}".replace("e+0", "e").replace("e-0", "e-")
    return f"{v:g}"


def line_plot_svg(
    series: dict[str, Sequence[tuple]],
    title: str = "",
    x_label: str = "step",
    width: int = 440,
    height: int = 240,
    log_y: bool | None = None,
    max_points: int = 1500,
    integer_x: bool = False,
) -> str:
    """An inline ``<svg>`` with one polyline per named series of ``(x, y)`` points (non-finite y are skipped).

    ``log_y=None`` picks a log axis when every value is positive and they span more than two decades;
    ``integer_x`` keeps only whole-number x ticks (frame indices).
    """
    clean = {k: [(float(x), float(y)) for x, y in pts if math.isfinite(y) and math.isfinite(x)] for k, pts in series.items()}
    clean = {k: v for k, v in clean.items() if v}
    esc = html.escape
    if not clean:
        return f'<svg class="plot" width="{width}" height="{height}" role="img"><text x="10" y="20">{esc(title)}: no data</text></svg>'
    ys = [y for pts in clean.values() for _, y in pts]
    xs = [x for pts in clean.values() for x, _ in pts]
    if log_y is None:
        log_y = min(ys) > 0 and max(ys) / min(ys) > 100
    ty = (lambda y: math.log10(y)) if log_y else (lambda y: y)
    y_lo, y_hi = min(ty(y) for y in ys if not log_y or y > 0), max(ty(y) for y in ys if not log_y or y > 0)
    if y_hi == y_lo:
        y_lo, y_hi = y_lo - 0.5, y_hi + 0.5
    x_lo, x_hi = min(xs), max(xs)
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 0.5, x_hi + 0.5
    left, right, top, bottom = 56, 12, 24, 34
    pw, ph = width - left - right, height - top - bottom

    def px(x: float) -> float:
        return left + (x - x_lo) / (x_hi - x_lo) * pw

    def py(y: float) -> float:
        return top + (1.0 - (ty(y) - y_lo) / (y_hi - y_lo)) * ph

    parts = [
        f'<svg class="plot" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(title)}">',
        f'<text x="{left}" y="15" font-size="13" font-weight="bold">{esc(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>',
    ]
    y_ticks = [10**e for e in nice_ticks(math.floor(y_lo), math.ceil(y_hi)) if y_lo <= e <= y_hi] if log_y else [
        t for t in nice_ticks(y_lo, y_hi) if y_lo <= t <= y_hi
    ]
    for t in y_ticks:
        y = py(t)
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>')
        parts.append(f'<text x="{left - 4}" y="{y + 4:.1f}" font-size="10" text-anchor="end">{_fmt(t)}</text>')
    for t in nice_ticks(x_lo, x_hi):
        if x_lo <= t <= x_hi and (not integer_x or float(t).is_integer()):
            x = px(t)
            parts.append(f'<text x="{x:.1f}" y="{top + ph + 14}" font-size="10" text-anchor="middle">{_fmt(t)}</text>')
    parts.append(f'<text x="{left + pw / 2}" y="{height - 4}" font-size="10" text-anchor="middle">{esc(x_label)}{" (log y)" if log_y else ""}</text>')
    for i, (name, pts) in enumerate(clean.items()):
        if log_y:
            pts = [(x, y) for x, y in pts if y > 0]
        stride = max(1, math.ceil(len(pts) / max_points))
        pts = pts[::stride]
        colour = PALETTE[i % len(PALETTE)]
        coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.4" points="{coords}"><title>{esc(name)}</title></polyline>')
        parts.append(f'<text x="{left + 6}" y="{top + 14 + 12 * i}" font-size="10" fill="{colour}">{esc(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def read_metric_rows(paths: Iterable[Path]) -> list[dict[str, str]]:
    """All rows of Lightning ``metrics.csv`` files (in the order given)."""
    rows: list[dict[str, str]] = []
    for p in paths:
        with open(p, newline="") as f:
            rows.extend(csv.DictReader(f))
    return rows


def metric_series(rows: list[dict[str, str]], prefix: str = "train/loss") -> dict[str, list[tuple[float, float]]]:
    """``{column: [(step, value), ...]}`` for every column starting with ``prefix`` (empty cells skipped)."""
    out: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        step = row.get("step", "")
        if step in ("", None):
            continue
        for key, value in row.items():
            if key and key.startswith(prefix) and value not in ("", None):
                try:
                    out.setdefault(key, []).append((float(step), float(value)))
                except ValueError:
                    continue
    return out


def loss_curves_svg(trial_dir: Path) -> list[str]:
    """One plot per ``train/loss*`` column of ``csv_logs/**/metrics.csv`` (``train/loss`` first)."""
    files = sorted(Path(trial_dir).glob("csv_logs/**/metrics.csv"))
    series = metric_series(read_metric_rows(files))
    names = sorted(series, key=lambda k: (k != "train/loss", k))
    return [line_plot_svg({name: series[name]}, title=name) for name in names]
