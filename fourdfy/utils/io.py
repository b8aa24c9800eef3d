"""Atomic file writes and image/video output.

Everything that must survive a killed run (checkpoints, configs) is written to a temporary file in the same
folder, flushed to disk and renamed over the target: a reader sees the old file or the new one, never half of one.
"""

import os
import tempfile
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np


def atomic_write(path: str | Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write ``path`` atomically: ``write(fileobj)`` fills a temp file that then replaces ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    # make the rename itself durable
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically."""
    atomic_write(path, lambda f: f.write(text), mode="w")


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Convert a float image in [0, 1] (H, W[, C]) to uint8."""
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def save_image(path: str | Path, img: np.ndarray) -> None:
    """Save a float [0,1] image (H, W, 3) or (H, W) as PNG."""
    import imageio.v3 as iio

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, to_uint8(img))


def save_video(path: str | Path, frames: list[np.ndarray], fps: int) -> Path:
    """Save frames (float [0,1], H W 3) as an mp4 with ffmpeg (imageio-ffmpeg).

    If no ffmpeg is available (e.g. a GPU machine without imageio-ffmpeg), an animated GIF is written next to the
    requested path instead and its path returned, so a run never dies at its last step over a video codec.
    """
    import imageio.v2 as iio2

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = [to_uint8(f) for f in frames]
    try:
        import imageio_ffmpeg  # noqa: F401

        iio2.mimwrite(path, data, fps=fps, macro_block_size=1, quality=8)
        return path
    except ImportError:
        gif = path.with_suffix(".gif")
        iio2.mimwrite(gif, data, duration=1000.0 / fps, loop=0)
        return gif
