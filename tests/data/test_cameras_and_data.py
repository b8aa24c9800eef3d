"""Camera math and the combined data module (branches, schedules, evaluation paths)."""

import pytest
import torch

from fourdfy.config import parse_config
from fourdfy.data import cameras as cam
from fourdfy.data.batch import BatchKind
from fourdfy.data.camera_paths import eval_views
from fourdfy.data.random_camera import RandomCameraConfig, phase_value
from fourdfy.data.single_multiview_combined import SingleMultiviewCombinedCameraDataModule


def test_c2w_is_orthonormal_and_looks_at_origin():
    e, a, d = torch.tensor([0.0, 30.0, 10.0]), torch.tensor([0.0, 90.0, -135.0]), torch.tensor([3.0, 2.5, 2.7])
    pos = cam.spherical_to_position(e, a, d)
    torch.testing.assert_close(pos[0], torch.tensor([3.0, 0.0, 0.0]))
    torch.testing.assert_close(pos.norm(dim=-1), d)
    c2w = cam.look_at_c2w(pos, torch.zeros(3, 3), torch.tensor([0.0, 0.0, 1.0]).expand(3, 3))
    rot = c2w[:, :3, :3]
    torch.testing.assert_close(rot.transpose(1, 2) @ rot, torch.eye(3).expand(3, 3, 3), atol=1e-6, rtol=0)
    forward = -c2w[:, :3, 2]  # cameras look down -z
    torch.testing.assert_close(forward, -pos / d[:, None], atol=1e-6, rtol=0)
    assert (c2w[:, 2, 1] > 0).all()  # image up has a positive world-z component


def test_centre_ray_hits_origin_and_mvp_projects_to_centre():
    e, a, d, fovy = torch.tensor([20.0]), torch.tensor([45.0]), torch.tensor([3.0]), torch.tensor([40.0])
    pos = cam.spherical_to_position(e, a, d)
    c2w = cam.look_at_c2w(pos, torch.zeros(1, 3), torch.tensor([[0.0, 0.0, 1.0]]))
    focal = cam.focal_from_fovy(fovy, 64)
    rays_o, rays_d = cam.rays_from_c2w(cam.camera_ray_directions(64, 64, focal), c2w)
    centre = (rays_d[0, 31, 31] + rays_d[0, 32, 32] + rays_d[0, 31, 32] + rays_d[0, 32, 31]) / 4
    torch.testing.assert_close(torch.nn.functional.normalize(centre, dim=0), -pos[0] / 3.0, atol=1e-4, rtol=0)
    torch.testing.assert_close(rays_d.norm(dim=-1), torch.ones(1, 64, 64))
    mvp = cam.mvp_matrix(c2w, cam.projection_matrix(fovy, 1.0))
    clip = mvp[0] @ torch.tensor([0.0, 0.0, 0.0, 1.0])
    torch.testing.assert_close(clip[:2] / clip[3], torch.zeros(2), atol=1e-6, rtol=0)
    # the top image row (j = 0) looks upward in world z
    assert rays_d[0, 0, 32, 2] > rays_d[0, 63, 32, 2]


def _dm(**data):
    return SingleMultiviewCombinedCameraDataModule(data)


def test_multiview_batches_views_90_degrees_apart_and_phase_schedule():
    dm = _dm(
        prob_multi_view=1.0,
        multi_view={"batch_size": [8, 4], "n_view": 4, "width": [64, 256], "height": [64, 256],
                    "resolution_milestones": [5000], "camera_distance_range": [2.5, 3.0], "fovy_range": [15, 60],
                    "elevation_range": [0, 30], "relative_radius": False},
    )  # fmt: skip
    torch.manual_seed(0)
    b = dm.train_stream.sample()
    assert b.kind == BatchKind.MULTI_VIEW and b.rays_o.shape == (8, 64, 64, 3)
    az = b.azimuth.reshape(2, 4)
    diffs = (az[:, 1:] - az[:, :-1]) % 360
    torch.testing.assert_close(diffs, torch.full_like(diffs, 90.0))
    assert torch.allclose(b.elevation.reshape(2, 4), b.elevation.reshape(2, 4)[:, :1].expand(2, 4))
    assert ((b.camera_distances >= 2.5) & (b.camera_distances <= 3.0)).all()
    dm.update_step(0, 4999)
    assert dm.train_stream.sample().rays_o.shape == (8, 64, 64, 3)
    dm.update_step(0, 5000)  # the milestone step switches (inclusive)
    assert dm.train_stream.sample().rays_o.shape == (4, 256, 256, 3)
    assert phase_value([1, 2], [10], 9) == 1 and phase_value([1, 2], [10], 10) == 2


def _video_dm():
    """Multi-view and video batches (4 frames), half each."""
    return _dm(
        prob_multi_view=0.5,
        single_view={"static": False, "num_frames": 4, "simultan": True, "prob_single_view_video": 1.0,
                     "width_vid": 24, "height_vid": 16, "sample_rand_frames": "t0"},
        multi_view={"batch_size": 4, "n_view": 4, "static": False, "num_frames": 4, "sample_rand_frames": "t0"},
    )  # fmt: skip


def test_branch_probabilities_and_video_batches():
    dm = _video_dm()
    torch.manual_seed(0)
    kinds = [dm.train_stream.sample() for _ in range(200)]
    n_mv = sum(k.kind == BatchKind.MULTI_VIEW for k in kinds)
    assert 70 < n_mv < 130
    video = next(k for k in kinds if k.kind == BatchKind.VIDEO)
    assert video.rays_o.shape == (1, 16, 24, 3) and video.times.shape == (1, 4)
    gaps = video.times[0, 1:] - video.times[0, :-1]
    torch.testing.assert_close(gaps, torch.full_like(gaps, 0.25))
    assert 0.0 <= float(video.times[0, 0]) < 0.25
    mv = next(k for k in kinds if k.kind == BatchKind.MULTI_VIEW)
    assert mv.times.shape == (4, 1)  # image steps render one of the clip's times, the same for every view
    assert bool((mv.times == mv.times[0, 0]).all())


def test_eval_paths():
    static = parse_config(RandomCameraConfig, {"n_test_views": 120})
    az, times, video = eval_views(static, "test")
    assert az.shape == (120,) and float(az[0]) == 0.0 and float(az[-1]) == 360.0 and video is None
    dyn = parse_config(
        RandomCameraConfig, {"static": False, "num_frames": 16, "num_frames_factor": 4, "test_traj": "motion_smooth"}
    )
    az, times, video = eval_views(dyn, "test")
    assert az.shape == (124,) and times.shape == (124,) and video.shape == (64,)
    assert float(az[0]) == 360.0 and float(az[-1]) == 0.0
    torch.testing.assert_close(times[1] - times[0], torch.tensor(1.0 / 63))
    az, times, video = eval_views(dyn, "val")
    assert az.shape == (1,) and video.shape == (64,)


def test_eval_dataset_cameras():
    dm = _dm(single_view={"eval_height": 32, "eval_width": 48, "eval_camera_distance": 3.0, "eval_fovy_deg": 40.0,
                          "n_test_views": 5})  # fmt: skip
    ds = dm.test_dataloader().dataset
    b = ds[2]
    assert len(ds) == 5 and b.rays_o.shape == (1, 32, 48, 3) and b.kind == BatchKind.EVAL
    torch.testing.assert_close(b.camera_distances, torch.tensor([3.0]))
    torch.testing.assert_close(b.elevation, torch.tensor([15.0]))
    torch.testing.assert_close(b.light_positions, b.camera_positions)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the pinned, non-blocking copy runs only to a CUDA device")
def test_batch_to_cuda_goes_through_pinned_memory_with_equal_values():
    dm = _video_dm()
    torch.manual_seed(0)
    for batch in [dm.train_stream.sample() for _ in range(6)]:  # both kinds; times are expanded views
        moved = batch.to("cuda")
        torch.cuda.synchronize()
        for name in ("rays_o", "rays_d", "c2w", "mvp_mtx", "times"):
            host, dev = getattr(batch, name), getattr(moved, name)
            assert dev.device.type == "cuda"
            torch.testing.assert_close(dev.cpu(), host, rtol=0, atol=0)
        assert moved.kind == batch.kind and moved.height == batch.height


def _draw(dm, n: int, seed: int = 0) -> list:
    torch.manual_seed(seed)
    return [dm.train_stream.sample() for _ in range(n)]


def test_rays_are_built_where_the_trainer_trains_and_nothing_else_moves():
    """``data.rays_on_device``: the training loader builds the rays on the rank's device (``meta`` here stands in for
    a GPU: it shows where they were made) while the camera numbers stay on the CPU; false, or no trainer, keeps
    everything on the CPU."""
    from types import SimpleNamespace

    for on, device, expected in ((True, torch.device("meta"), "meta"), (False, torch.device("meta"), "cpu"),
                                 (True, None, "cpu")):  # fmt: skip
        dm = _video_dm()
        dm.cfg.rays_on_device = on
        if device is not None:
            dm.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=device))
        batch = next(iter(dm.train_dataloader()))
        assert batch.rays_o.device.type == batch.rays_d.device.type == expected
        assert batch.c2w.device.type == batch.fovy.device.type == "cpu"
        assert batch.rays_d.shape[1:3] == (batch.height, batch.width)


def test_rays_on_another_device_draw_the_same_cameras():
    """Placing the rays elsewhere changes no random draw: the same seed gives the same cameras and, on the CPU, the
    same rays bit for bit."""
    plain, placed = _video_dm(), _video_dm()
    placed.train_stream.place_rays(torch.device("cpu"))
    for a, b in zip(_draw(plain, 6), _draw(placed, 6)):
        assert a.kind == b.kind
        for name in ("rays_o", "rays_d", "c2w", "fovy", "times"):
            torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="compares rays built on a CUDA device with the CPU's")
def test_rays_built_on_cuda_match_the_cpu_rays():
    plain, placed = _video_dm(), _video_dm()
    placed.train_stream.place_rays(torch.device("cuda"))
    for a, b in zip(_draw(plain, 6), _draw(placed, 6)):
        assert b.rays_d.device.type == "cuda" and b.c2w.device.type == "cpu"
        torch.testing.assert_close(b.rays_o.cpu(), a.rays_o, rtol=0, atol=1e-6)
        torch.testing.assert_close(b.rays_d.cpu(), a.rays_d, rtol=0, atol=1e-6)
