"""Camera sampling as 4D-fy draws it: uniform camera_perturb, per-object perturbations of multi-view batches, and
distinct validation azimuths (issue 11, item 4)."""

import math

import torch

from fourdfy.config import parse_config
from fourdfy.data import cameras as cam
from fourdfy.data.camera_paths import EvalCameraDataset, eval_views
from fourdfy.data.random_camera import RandomCameraConfig, RandomCameraSampler
from fourdfy.data.random_multiview import RandomMultiviewCameraConfig, RandomMultiviewCameraSampler

P = 0.3


def position_offsets(batch) -> torch.Tensor:
    """camera position minus the unperturbed spherical position: the camera_perturb draw."""
    ideal = cam.spherical_to_position(batch.elevation, batch.azimuth, batch.camera_distances)
    return batch.camera_positions - ideal


def test_camera_perturb_is_uniform_in_plus_minus_p():
    torch.manual_seed(0)
    c = parse_config(RandomCameraConfig, {"batch_size": 64, "camera_perturb": P, "center_perturb": 0.0,
                                          "up_perturb": 0.0, "width": 4, "height": 4})  # fmt: skip
    sampler = RandomCameraSampler(c)
    d = torch.cat([position_offsets(sampler.sample()) for _ in range(40)]).flatten()  # 7680 draws
    assert d.abs().max() <= P + 1e-6  # bounded: a Gaussian of std P would exceed P in ~32 % of the draws
    assert d.abs().max() > 0.98 * P  # and it reaches the bound
    assert math.isclose(float(d.std()), P / math.sqrt(3), rel_tol=0.05)  # U[-P, P] has std P/sqrt(3)
    assert abs(float(d.mean())) < 0.02
    hist = torch.histc(d, bins=6, min=-P, max=P)  # flat
    assert float(hist.min() / hist.max()) > 0.85


def test_multi_view_perturbations_are_drawn_once_per_object():
    torch.manual_seed(1)
    c = parse_config(RandomMultiviewCameraConfig, {"batch_size": 8, "n_view": 4, "camera_perturb": P,
                                                   "center_perturb": 0.2, "up_perturb": 0.02,
                                                   "width": 4, "height": 4})  # fmt: skip
    batch = RandomMultiviewCameraSampler(c).sample()
    d = position_offsets(batch).reshape(2, 4, 3)
    assert torch.allclose(d, d[:, :1].expand_as(d))  # the 4 views of an object share the draw (4D-fy)
    assert not torch.allclose(d[0], d[1])  # two objects, two draws
    assert d.abs().max() <= P + 1e-6
    # the shared centre perturbation: the 4 views of an object look at one point, so the optical axis (-z column
    # of c2w) of each view meets view 0's axis (their closest-approach gap is 0); per-view centres would not
    look = -batch.c2w[:, :3, 2].reshape(2, 4, 3)
    pos = batch.camera_positions.reshape(2, 4, 3)
    for o in range(2):
        for k in range(1, 4):
            n = torch.linalg.cross(look[o, 0], look[o, k])
            gap = torch.abs(torch.dot(pos[o, k] - pos[o, 0], n)) / n.norm()
            assert gap < 1e-4, (o, k, float(gap))


def test_single_view_centre_and_up_stay_gaussian():
    torch.manual_seed(2)
    c = parse_config(RandomCameraConfig, {"batch_size": 256, "camera_perturb": 0.0, "center_perturb": 0.2,
                                          "up_perturb": 0.0, "width": 2, "height": 2})  # fmt: skip
    batch = RandomCameraSampler(c).sample()
    assert torch.allclose(position_offsets(batch), torch.zeros(256, 3), atol=1e-5)  # p = 0: no offset at all


def test_validation_azimuths_are_distinct_and_evenly_spaced():
    c = parse_config(RandomCameraConfig, {"n_val_views": 4, "n_test_views": 5})
    az, times, video = eval_views(c, "val")
    assert az.tolist() == [0.0, 90.0, 180.0, 270.0]  # 4D-fy: linspace(0, 360, n + 1)[:n], no 0/360 repeat
    assert times.tolist() == [0.0] * 4 and video is None
    one, _, _ = eval_views(parse_config(RandomCameraConfig, {}), "val")
    assert one.tolist() == [0.0]  # the default n_val_views = 1
    test_az, _, _ = eval_views(c, "test")
    assert test_az.tolist() == [0.0, 90.0, 180.0, 270.0, 360.0]  # test keeps linspace(0, 360, n) (closing loop)
    ds = EvalCameraDataset(c, "val")
    assert len(ds) == 4 and [float(ds[i].azimuth) for i in range(4)] == [0.0, 90.0, 180.0, 270.0]
