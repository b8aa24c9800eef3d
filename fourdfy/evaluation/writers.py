"""Validation and test outputs with 4D-fy's file names, written from renders (4D-fy §5.4–5.6).

Everything lands in the trial's ``save/`` folder, ``{S}`` being the training step:

* validation (every ``val_check_interval``): ``it{S}-{i}.png`` (RGB | opacity); dynamic stages also render the
  view at ``times_video`` and write ``it{S}-{i}_video.png`` (the frames side by side, then their opacities) and
  ``it{S}-{i}_video.mp4`` (16 fps);
* test: ``it{S}-test/{i}.png`` along the test trajectory (dynamic: each view at its own time), the static
  render at t = 0 ``it{S}-test_static/{i}.png`` (dynamic stages), the depth maps ``it{S}-test-depth-jet/{i}.png``;
  at the end the folders become ``.mp4`` videos at 15 fps (GIF where no ffmpeg exists).

A dynamic test view is rendered once at ``[t, 0]`` (its time and the static time) rather than twice.
"""

from pathlib import Path
from collections.abc import Callable

import numpy as np
import torch

from fourdfy.data.batch import CameraBatch
from fourdfy.evaluation import saving
from fourdfy.renderers.base import RenderOutput

Render = Callable[[CameraBatch], RenderOutput]


class EvaluationWriter:
    """Writes validation and test outputs of one system into ``save_dir`` (only where ``writes`` is true, i.e.
    on rank 0; every rank renders, so collective operations stay in step)."""

    def __init__(self, save_dir: str | Path, static: bool, depth_range_perc: tuple[float, float]) -> None:
        self.save_dir = Path(save_dir)
        self.static = static
        self.depth_range_perc = depth_range_perc
        self._test_depths: list[np.ndarray] = []

    def path(self, name: str) -> Path:
        return self.save_dir / name

    def validation(self, render: Render, batch: CameraBatch, step: int, index: int, writes: bool) -> None:
        """One validation view (and its video over time in dynamic stages)."""
        out = render(batch)
        if writes:
            saving.save_rgb_opacity_grid(self.path(f"it{step}-{index}.png"), out.frames(), out.frames("opacity"))
        if not self.static and batch.times_video is not None:
            video = render(batch.with_times(batch.times_video.to(batch.times)))
            if writes:
                rgb, opacity = video.comp_rgb[0], video.opacity[0]
                saving.save_video_strip(self.path(f"it{step}-{index}_video.png"), rgb, opacity)
                saving.save_frames_video(self.path(f"it{step}-{index}_video.mp4"), rgb, fps=16)

    def test(self, render: Render, batch: CameraBatch, step: int, index: int, writes: bool) -> None:
        """One test view: at its time, and (dynamic stages) also at t = 0."""
        if not self.static:
            batch = batch.with_times(torch.cat([batch.times, torch.zeros_like(batch.times)], dim=1))
        out = render(batch)
        if writes:
            saving.save_rgb(self.path(f"it{step}-test/{index}.png"), out.comp_rgb[0, 0])
            self._test_depths.append(out.depth[0, 0, ..., 0].detach().float().cpu().numpy())
            if not self.static:
                saving.save_rgb(self.path(f"it{step}-test_static/{index}.png"), out.comp_rgb[0, 1])

    def finish_test(self, step: int, writes: bool) -> None:
        """Assemble the test videos and the depth maps."""
        depths, self._test_depths = self._test_depths, []
        if not writes:
            return
        saving.images_to_video(self.path(f"it{step}-test"), self.path(f"it{step}-test.mp4"), fps=15)
        if not self.static:
            saving.images_to_video(self.path(f"it{step}-test_static"), self.path(f"it{step}-test_static.mp4"), fps=15)
        if depths:
            lo, hi = self.depth_range_perc
            folder = self.path(f"it{step}-test-depth-jet")
            for i, img in enumerate(saving.depth_to_jet(depths, lo, hi)):
                saving.save_rgb_array(folder / f"{i}.png", img)
            saving.images_to_video(folder, self.path(f"it{step}-test-depth-jet.mp4"), fps=15)
