"""Meshes from a density field: marching cubes on a regular grid over the field's box, colours from the field.

The field is sampled at the ``R^3`` corners of a regular grid spanning ``[-radius, radius]^3`` (both ends
included, spacing ``2 radius / (R - 1)``); PyMCubes extracts the ``density = threshold`` level set with the
inside (``density > threshold``) enclosed, so faces wind counter-clockwise seen from outside and the signed
volume is positive. The grid is padded with one layer below the threshold, so a surface touching the box is
closed there (its vertices are clamped to the box).

Worked example: a ball of density 30 inside radius 0.5 and 0 outside, ``threshold = 25``, ``R = 65`` over
``radius = 1``: the mesh is a closed sphere of radius ~0.5 with a bounding box ~``[-0.5, 0.5]^3``.

Colours: the geometry's features at each vertex, through the material, looking at the vertex against its normal
(no-material ignores the view direction).
"""

import dataclasses
import logging
from collections.abc import Iterable
from typing import Optional

import numpy as np
import torch
from torch import nn

logger = logging.getLogger(__name__)

DEFAULT_CHUNK = 1 << 18
"""Points per field evaluation when ``chunk`` is 0."""


@dataclasses.dataclass
class Mesh:
    """A triangle mesh in world space (z-up), optionally with per-vertex colours."""

    vertices: np.ndarray
    """``[V, 3]`` float32 positions."""
    faces: np.ndarray
    """``[F, 3]`` int64 vertex indices, counter-clockwise seen from outside."""
    colors: Optional[np.ndarray] = None
    """``[V, 3]`` float32 RGB in [0, 1]."""
    time: float = 0.0
    """The time in [0, 1] the mesh was extracted at."""

    @property
    def is_empty(self) -> bool:
        """True when the level set was empty (no faces)."""
        return len(self.faces) == 0

    def bounds(self) -> np.ndarray:
        """``[[xmin, ymin, zmin], [xmax, ymax, zmax]]`` (zeros for an empty mesh)."""
        if len(self.vertices) == 0:
            return np.zeros((2, 3), dtype=np.float32)
        return np.stack([self.vertices.min(0), self.vertices.max(0)])

    def vertex_normals(self) -> np.ndarray:
        """Area-weighted unit vertex normals ``[V, 3]`` (outward for a mesh from :func:`extract_mesh`)."""
        v, f = self.vertices.astype(np.float64), self.faces
        normals = np.zeros_like(v)
        if len(f):
            face_n = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])
            for k in range(3):
                np.add.at(normals, f[:, k], face_n)
        length = np.linalg.norm(normals, axis=1, keepdims=True)
        return (normals / np.maximum(length, 1e-12)).astype(np.float32)


def grid_points(resolution: int, radius: float) -> torch.Tensor:
    """The ``[R^3, 3]`` grid corners over ``[-radius, radius]^3``, x-major (index ``(i*R + j)*R + k`` is (i, j, k))."""
    axis = torch.linspace(-radius, radius, resolution)
    x, y, z = torch.meshgrid(axis, axis, axis, indexing="ij")
    return torch.stack([x, y, z], dim=-1).reshape(-1, 3)


@torch.no_grad()
def sample_density(
    geometry: nn.Module, time: float, resolution: int, radius: float, chunk: int = 0
) -> np.ndarray:
    """``geometry.forward_density`` on the grid of :func:`grid_points` at one time, as an ``[R, R, R]`` array."""
    device = _device_of(geometry)
    points = grid_points(resolution, radius)
    step = chunk if chunk > 0 else DEFAULT_CHUNK
    t = torch.full((1, 1), float(time), device=device)
    out = []
    for start in range(0, points.shape[0], step):
        p = points[start : start + step].to(device)
        out.append(geometry.forward_density(p, t).float().reshape(-1).cpu())
    return torch.cat(out).reshape(resolution, resolution, resolution).numpy()


def marching_cubes(volume: np.ndarray, threshold: float, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """The ``volume = threshold`` surface of an ``[R, R, R]`` grid over ``[-radius, radius]^3`` (see module doc).

    Returns:
        (vertices ``[V, 3]`` float32 world positions, faces ``[F, 3]`` int64).
    """
    import mcubes

    res = volume.shape[0]
    below = min(float(np.nanmin(volume)), threshold) - 1.0
    padded = np.pad(np.nan_to_num(volume, nan=below), 1, mode="constant", constant_values=below)
    verts, faces = mcubes.marching_cubes(padded.astype(np.float64), float(threshold))
    if len(faces) == 0:
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64)
    idx = np.clip(verts - 1.0, 0.0, res - 1.0)
    world = idx * (2.0 * radius / (res - 1)) - radius
    return world.astype(np.float32), faces.astype(np.int64)


def remove_small_components(
    vertices: np.ndarray, faces: np.ndarray, min_faces: float | int
) -> tuple[np.ndarray, np.ndarray]:
    """Drop connected components with fewer faces than ``min_faces`` (a fraction of all faces when < 1, a face
    count otherwise: threestudio's ``isosurface_outlier_n_faces_threshold`` rule), then unused vertices."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if len(faces) == 0:
        return vertices, faces
    limit = min_faces * len(faces) if min_faces < 1 else min_faces
    n = len(vertices)
    rows = np.concatenate([faces[:, 0], faces[:, 1], faces[:, 2]])
    cols = np.concatenate([faces[:, 1], faces[:, 2], faces[:, 0]])
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    face_label = labels[faces[:, 0]]
    counts = np.bincount(face_label)
    keep = counts[face_label] >= limit
    faces = faces[keep]
    used = np.unique(faces)
    remap = np.full(n, -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    return vertices[used], remap[faces]


@torch.no_grad()
def vertex_colors(
    geometry: nn.Module, material: nn.Module, mesh: Mesh, chunk: int = 0
) -> np.ndarray:
    """RGB ``[V, 3]`` of the field at the mesh's vertices and time: ``material(features, -normal)``."""
    if len(mesh.vertices) == 0:
        return np.zeros((0, 3), np.float32)
    device = _device_of(geometry)
    step = chunk if chunk > 0 else DEFAULT_CHUNK
    points = torch.from_numpy(mesh.vertices).float()
    viewdirs = -torch.from_numpy(mesh.vertex_normals()).float()
    t = torch.full((1, 1), float(mesh.time), device=device)
    out = []
    for start in range(0, points.shape[0], step):
        p = points[start : start + step].to(device)
        features = geometry(p, t).features
        rgb = material(features, viewdirs[start : start + step].to(device))
        out.append(rgb.float().clamp(0.0, 1.0).cpu())
    return torch.cat(out).numpy()


def extract_mesh(
    geometry: nn.Module,
    material: Optional[nn.Module],
    time: float,
    resolution: int,
    threshold: float,
    radius: float,
    chunk: int = 0,
    min_component_faces: Optional[float] = None,
) -> Mesh:
    """One mesh of the field at ``time``: marching cubes, optional outlier removal, colours when ``material``."""
    volume = sample_density(geometry, time, resolution, radius, chunk)
    vertices, faces = marching_cubes(volume, threshold, radius)
    if min_component_faces is not None and min_component_faces > 0:
        vertices, faces = remove_small_components(vertices, faces, min_component_faces)
    mesh = Mesh(vertices=vertices, faces=faces, time=float(time))
    if mesh.is_empty:
        logger.warning(
            "the density level %.4g is never reached at t=%.3f (max density %.4g): empty mesh; lower "
            "system.geometry.isosurface_threshold", threshold, time, float(np.nanmax(volume)),
        )  # fmt: skip
    if material is not None:
        mesh.colors = vertex_colors(geometry, material, mesh, chunk)
    return mesh


def export_meshes(
    geometry: nn.Module,
    material: Optional[nn.Module],
    times: Iterable[float],
    resolution: int,
    threshold: float,
    chunk: int = 0,
    radius: Optional[float] = None,
    min_component_faces: Optional[float] = None,
    progress: bool = True,
) -> list[Mesh]:
    """One :class:`Mesh` per time (a static field takes one time, e.g. ``[0.0]``), with a progress bar.

    Args:
        geometry: a field with ``forward_density(points [N, 3], times [1, 1]) -> [N, 1]`` and
            ``forward(points, times).features`` (``ImplicitVolume`` or any module with that contract).
        material: maps ``(features, viewdirs)`` to RGB; ``None`` exports no colours.
        times: the times in [0, 1] to extract.
        resolution: grid corners per axis (``isosurface_resolution``).
        threshold: the density level (``isosurface_threshold``).
        chunk: points per field evaluation (0: a default of 2^18).
        radius: half-size of the box; defaults to ``geometry.cfg.radius``.
        min_component_faces: drop smaller connected components (see :func:`remove_small_components`).
        progress: show a tqdm bar (one step per time).
    """
    from tqdm.auto import tqdm

    if radius is None:
        radius = float(geometry.cfg.radius)
    meshes = []
    for t in tqdm(list(times), desc="marching cubes", unit="frame", disable=not progress):
        meshes.append(extract_mesh(geometry, material, float(t), resolution, threshold, radius, chunk, min_component_faces))
    return meshes


def _device_of(module: nn.Module) -> torch.device:
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")
