"""Motion, flicker and consistency figures on frames whose values are known."""

import math

import pytest
import torch

from fourdfy.evaluation import metrics
from fourdfy.evaluation.rendering import orbit_azimuths, orbit_times


def ramp(values: list[float]) -> torch.Tensor:
    """One view, one constant frame per value: ``[1, T, 2, 2, 3]``."""
    return torch.tensor(values)[None, :, None, None, None].expand(1, len(values), 2, 2, 3).clone()


def test_a_frozen_scene_has_no_motion():
    frames = torch.rand(3, 1, 8, 8, 3).expand(3, 6, 8, 8, 3)
    assert metrics.motion_amount(frames) == 0.0
    assert metrics.motion_range(frames) == 0.0
    assert metrics.flicker(frames) == 0.0


def test_motion_values_by_hand():
    f = ramp([0.0, 0.1, 0.3, 0.2])
    assert metrics.motion_amount(f) == pytest.approx((0.1 + 0.2 + 0.1) / 3)
    assert metrics.motion_range(f) == pytest.approx(0.3)
    assert metrics.flicker(f) == pytest.approx((abs(0.3 - 0.2 + 0.0) + abs(0.2 - 0.6 + 0.1)) / 2)
    # uniform motion does not flicker; back-and-forth does
    assert metrics.flicker(ramp([0.0, 0.1, 0.2, 0.3])) == pytest.approx(0.0, abs=1e-7)
    assert metrics.flicker(ramp([0.0, 0.3, 0.0, 0.3])) == pytest.approx(0.6)
    # views are averaged
    two = torch.cat([ramp([0.0, 0.2]), ramp([0.0, 0.0])])
    assert metrics.motion_amount(two) == pytest.approx(0.1)


def test_degenerate_lengths():
    assert metrics.motion_amount(ramp([0.5])) == 0.0
    assert metrics.flicker(ramp([0.0, 1.0])) == 0.0
    assert math.isnan(metrics.consecutive_cosine(torch.ones(1, 4)))


def test_orbit_cameras():
    assert orbit_azimuths(4).tolist() == [-180.0, -90.0, 0.0, 90.0]
    assert orbit_times(5, static=True).tolist() == [0.0] * 5
    assert orbit_times(5, static=False).tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
