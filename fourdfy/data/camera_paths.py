"""The evaluation camera paths (validation and test views, and their times), kept apart from the training samplers.

4D-fy's paths (``uncond.py``'s ``RandomCameraDataset``): static stages orbit at a fixed elevation; dynamic stages
hold and sweep time and view (``test_traj``). The data module serves them as its validation and test sets.
"""

from typing import Optional

import torch
from torch import Tensor

from fourdfy.data.batch import BatchKind, CameraBatch
from fourdfy.data.random_camera import RandomCameraConfig, make_batch


def eval_views(cfg: RandomCameraConfig, split: str) -> tuple[Tensor, Tensor, Optional[Tensor]]:
    """Azimuths (degrees), per-view times, and the validation video times for an evaluation split.

    Static, time 0: ``val`` has ``n_val_views`` views at ``linspace(0, 360, n + 1)[:n]`` (distinct, evenly spaced);
    ``test`` has ``n_test_views`` views at ``linspace(0, 360, n)`` (first and last coincide, closing the video
    loop). Both as in 4D-fy.
    Dynamic (``static: false``), with ``N = num_frames * num_frames_factor`` times:

    - ``val``: one view at azimuth 0 whose video is rendered at ``linspace(0, 1, N)``;
    - ``test`` with ``test_traj: motion_smooth``: ``2N - 4`` views: four times a hold of N/4 views at
      ``(4 - i) * 90`` degrees then a sweep to ``(3 - i) * 90`` in N/4 - 1 steps, with times
      ``linspace(0, 1, N)[:N-2]`` repeated twice; ``motion_smooth_full`` keeps every sweep end (2N views);
    - ``test`` with no trajectory: four times N holds at ``i * 90`` plus an N-step sweep to ``(i + 1) * 90``.

    Returns:
        (azimuth_deg [V], times [V], times_video [N] or None).
    """
    n_frames = cfg.num_frames * cfg.num_frames_factor
    if cfg.static:
        if split == "val":
            n = cfg.n_val_views
            return torch.linspace(0.0, 360.0, n + 1)[:n], torch.zeros(n), None
        n = cfg.n_test_views
        return torch.linspace(0.0, 360.0, n), torch.zeros(n), None
    video_times = torch.linspace(0.0, 1.0, n_frames)
    if split == "val":
        return torch.zeros(1), torch.zeros(1), video_times
    if cfg.test_traj in ("motion_smooth", "motion_smooth_full"):
        full = cfg.test_traj == "motion_smooth_full"
        n_az = (2 * n_frames) // 8
        azimuths = []
        for i in range(4):
            start, end = (4 - i) * 90.0, (3 - i) * 90.0
            azimuths.append(torch.full((n_az,), start))
            sweep = torch.linspace(start, end, n_az)
            azimuths.append(sweep if full else sweep[1:])
        azimuth = torch.cat(azimuths)
        base = video_times if full else video_times[: n_frames - 2]
        times = base.repeat(2)
        return azimuth, times[: azimuth.shape[0]], video_times
    azimuths, times = [], []
    for i in range(4):
        azimuths += [torch.full((n_frames,), i * 90.0), torch.linspace(i * 90.0, (i + 1) * 90.0, n_frames)]
        times += [video_times, video_times]
    return torch.cat(azimuths), torch.cat(times), video_times


class EvalCameraDataset(torch.utils.data.Dataset):
    """Fixed evaluation cameras: elevation ``eval_elevation_deg``, distance ``eval_camera_distance``, fovy
    ``eval_fovy_deg``, ``eval_height x eval_width``; the light sits at the camera."""

    def __init__(self, cfg: RandomCameraConfig, split: str) -> None:
        self.cfg = cfg
        self.split = split
        self.azimuth, self.times, self.times_video = eval_views(cfg, split)

    def __len__(self) -> int:
        return self.azimuth.shape[0]

    def __getitem__(self, i: int) -> CameraBatch:
        c = self.cfg
        one = torch.ones(1)
        return make_batch(
            one * c.eval_elevation_deg, self.azimuth[i : i + 1], one * c.eval_camera_distance, one * c.eval_fovy_deg,
            c.eval_height, c.eval_width, self.times[i : i + 1], BatchKind.EVAL,
            index=torch.tensor([i]), times_video=self.times_video,
        )  # fmt: skip
