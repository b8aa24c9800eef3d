"""Image, video and depth-map writing with 4D-fy's conventions (used by :mod:`fourdfy.evaluation.writers`)."""

import re
from pathlib import Path

import numpy as np
from jaxtyping import Float
from torch import Tensor

from fourdfy.utils.io import save_image, save_video


def _np(t: Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy()


def save_rgb(path: Path, rgb: Float[Tensor, "H W 3"]) -> None:
    """One RGB image in [0, 1]."""
    save_image(path, _np(rgb))


def save_rgb_array(path: Path, rgb: np.ndarray) -> None:
    """One RGB image given as a float array in [0, 1]."""
    save_image(path, rgb)


def save_rgb_opacity_grid(path: Path, rgb: Float[Tensor, "N H W 3"], opacity: Float[Tensor, "N H W 1"]) -> None:
    """4D-fy's validation image: the first view's RGB, then its opacity as grey, side by side."""
    op = _np(opacity[0]).repeat(3, axis=-1)
    save_image(path, np.concatenate([_np(rgb[0]), op], axis=1))


def save_video_strip(path: Path, rgb: Float[Tensor, "T H W 3"], opacity: Float[Tensor, "T H W 1"]) -> None:
    """All frames side by side: RGB frames, then opacity frames."""
    frames = [_np(f) for f in rgb] + [_np(o).repeat(3, axis=-1) for o in opacity]
    save_image(path, np.concatenate(frames, axis=1))


def save_frames_video(path: Path, rgb: Float[Tensor, "T H W 3"], fps: int) -> Path:
    """Frames as a video (mp4, or GIF where no ffmpeg exists)."""
    return save_video(path, [_np(f) for f in rgb], fps)


def numbered_images(folder: Path) -> list[Path]:
    """``{i}.png`` files of a folder sorted by ``i`` (4D-fy's ``(\\d+)\\.png`` rule)."""
    pattern = re.compile(r"^(\d+)\.png$")
    found = [(int(m.group(1)), p) for p in Path(folder).iterdir() if (m := pattern.match(p.name))]
    return [p for _, p in sorted(found)]


def images_to_video(folder: Path, path: Path, fps: int) -> Path:
    """Turn ``folder/{i}.png`` into a video."""
    import imageio.v3 as iio

    frames = [iio.imread(p)[..., :3].astype(np.float32) / 255.0 for p in numbered_images(folder)]
    if not frames:
        raise FileNotFoundError(f"no numbered images in {folder}")
    return save_video(path, frames, fps)


def jet(x: np.ndarray) -> np.ndarray:
    """The 'jet' colour map on values in [0, 1] (piecewise linear, blue -> cyan -> yellow -> red)."""
    x = np.clip(x, 0.0, 1.0)
    r = np.clip(1.5 - np.abs(4.0 * x - 3.0), 0.0, 1.0)
    g = np.clip(1.5 - np.abs(4.0 * x - 2.0), 0.0, 1.0)
    b = np.clip(1.5 - np.abs(4.0 * x - 1.0), 0.0, 1.0)
    return np.stack([r, g, b], axis=-1)


def depth_to_jet(depths: list[np.ndarray], lo_perc: float, hi_perc: float) -> list[np.ndarray]:
    """4D-fy's test depth maps: normalise between percentiles of all non-zero depths, invert, colour with jet."""
    nonzero = np.concatenate([d[d > 0] for d in depths]) if depths else np.zeros(0)
    if nonzero.size == 0:
        return [jet(np.zeros_like(d)) for d in depths]
    lo, hi = np.percentile(nonzero, lo_perc), np.percentile(nonzero, hi_perc)
    scale = max(hi - lo, 1e-8)
    return [jet(1.0 - np.clip((d - lo) / scale, 0.0, 1.0)) for d in depths]
