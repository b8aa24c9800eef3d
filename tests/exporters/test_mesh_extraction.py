"""fourdfy.exporters.mesh: marching cubes on a synthetic field whose surface is known (a sphere growing with t)."""

import math

import numpy as np
import pytest
import torch

from fourdfy.exporters.mesh import export_meshes, grid_points, marching_cubes, remove_small_components
from synthetic_trials import GrowingSphere, SigmoidMaterial, sphere_radius

RES = 48
CELL = 2.0 / (RES - 1)
TIMES = [0.0, 0.5, 1.0]


@pytest.fixture(scope="module")
def meshes():
    return export_meshes(GrowingSphere(), SigmoidMaterial(), TIMES, RES, 25.0, chunk=7000, progress=False)


def signed_volume(v: np.ndarray, f: np.ndarray) -> float:
    return float(np.einsum("ij,ij->i", v[f[:, 0]], np.cross(v[f[:, 1]], v[f[:, 2]])).sum() / 6.0)


def test_grid_points_span_the_box_in_x_major_order():
    p = grid_points(3, 2.0)
    assert p.shape == (27, 3)
    assert torch.equal(p[0], torch.tensor([-2.0, -2.0, -2.0])) and torch.equal(p[-1], torch.tensor([2.0, 2.0, 2.0]))
    assert torch.equal(p[1], torch.tensor([-2.0, -2.0, 0.0]))  # k (z) varies fastest
    assert torch.equal(p[9], torch.tensor([0.0, -2.0, -2.0]))


def test_vertices_lie_on_the_sphere_of_each_time(meshes):
    for mesh, t in zip(meshes, TIMES):
        r = sphere_radius(t)
        norms = np.linalg.norm(mesh.vertices, axis=1)
        # linear interpolation along grid edges is exact for a linear field up to the |p| curvature: well under a cell
        assert abs(norms.mean() - r) < 0.1 * CELL, (t, norms.mean(), r)
        assert np.abs(norms - r).max() < 0.5 * CELL
        lo, hi = mesh.bounds()
        np.testing.assert_allclose(hi, [r, r, r], atol=0.5 * CELL)
        np.testing.assert_allclose(lo, [-r, -r, -r], atol=0.5 * CELL)
        assert mesh.time == t


def test_vertex_count_and_volume_follow_the_radius(meshes):
    counts = [len(m.vertices) for m in meshes]
    assert counts[0] < counts[1] < counts[2]
    # vertices sit on grid edges crossing the surface: their number scales with the area, r^2
    for m, t in zip(meshes[1:], TIMES[1:]):
        expected = (sphere_radius(t) / sphere_radius(0.0)) ** 2
        assert abs(len(m.vertices) / counts[0] / expected - 1.0) < 0.2
    for m, t in zip(meshes, TIMES):
        vol = signed_volume(m.vertices, m.faces)  # positive: faces wind counter-clockwise seen from outside
        assert vol > 0
        assert abs(vol / (4.0 / 3.0 * math.pi * sphere_radius(t) ** 3) - 1.0) < 0.06


def test_meshes_are_closed(meshes):
    for m in meshes:
        edges = np.sort(np.concatenate([m.faces[:, [0, 1]], m.faces[:, [1, 2]], m.faces[:, [2, 0]]]), axis=1)
        _, counts = np.unique(edges, axis=0, return_counts=True)
        assert (counts == 2).all()  # every edge shared by exactly two faces


def test_colours_are_the_material_of_the_field_at_the_vertex(meshes):
    for m in meshes:
        expected = 1.0 / (1.0 + np.exp(-(4.0 * m.vertices + m.time)))  # sigmoid(features), computed independently
        np.testing.assert_allclose(m.colors, expected, atol=1e-5)
        assert m.colors.dtype == np.float32


def test_a_static_field_ignores_time():
    a, b = export_meshes(GrowingSphere(static=True), None, [0.0, 1.0], 24, 25.0, progress=False)
    np.testing.assert_array_equal(a.vertices, b.vertices)
    assert a.colors is None


def test_a_surface_touching_the_box_is_closed_at_the_box():
    volume = np.full((10, 10, 10), 100.0)  # everything inside
    v, f = marching_cubes(volume, 25.0, radius=1.0)
    np.testing.assert_allclose(v.min(0), -1.0)
    np.testing.assert_allclose(v.max(0), 1.0)
    assert signed_volume(v, f) == pytest.approx(8.0, rel=1e-6)


def test_empty_level_set_gives_an_empty_mesh(caplog):
    (m,) = export_meshes(GrowingSphere(), SigmoidMaterial(), [0.0], 16, 1e6, progress=False)
    assert m.is_empty and m.vertices.shape == (0, 3) and m.colors.shape == (0, 3)
    assert "never reached" in caplog.text


def test_small_components_are_removed():
    axis = np.linspace(-1, 1, 40)
    x, y, z = np.meshgrid(axis, axis, axis, indexing="ij")
    big = 0.5 - np.sqrt((x + 0.3) ** 2 + y**2 + z**2)
    small = 0.12 - np.sqrt((x - 0.7) ** 2 + y**2 + z**2)
    v, f = marching_cubes(np.maximum(big, small), 0.0, 1.0)
    kept_v, kept_f = remove_small_components(v, f, 0.2)  # a fifth of all faces
    assert 0 < len(kept_f) < len(f)
    assert kept_v[:, 0].max() < 0.3  # only the big sphere (x in [-0.8, 0.2]) is left
    assert kept_f.max() == len(kept_v) - 1 and len(np.unique(kept_f)) == len(kept_v)
    assert len(remove_small_components(v, f, 1)[1]) == len(f)  # an absolute count of 1 keeps everything
