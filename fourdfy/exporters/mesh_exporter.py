"""``mesh-exporter``: threestudio's exporter name and keys, for static and dynamic (4-D) fields.

``--export`` builds it from ``system.exporter_type`` / ``system.exporter`` and calls it with the output folder
``save/it{S}-export/``. The surface comes from the geometry's ``isosurface_*`` keys (resolution, threshold,
chunk, outlier removal; see :class:`fourdfy.geometry.implicit_volume.ImplicitVolume.Config`).

- Static geometry: ``{save_name}.{obj,ply}`` (the formats in ``fmt``) and ``{save_name}.glb``.
- Dynamic geometry (``geometry.is_static`` false): ``num_times`` meshes at ``linspace(0, 1, num_times)``, written
  as ``frames/frame_{k:03d}.{obj,ply}`` and one animated ``{save_name}.glb`` (node per frame with a looping step
  animation of the nodes' scales at ``fps``; see :mod:`fourdfy.exporters.gltf`).

Differences from threestudio: colours are per vertex (threestudio's ``fmt: obj`` with ``save_texture``); no UV
atlas or texture image is baked (``save_uv``, ``texture_*``, ``xatlas_*`` are accepted and have no effect), and
no rasteriser is used (``context_type`` has no effect). ``isosurface_method`` is always marching cubes on a
regular grid (threestudio's ``mc-cpu``): 4D-fy's default ``mt`` needs tetrahedra files that it does not ship.
"""

import dataclasses
import logging
from pathlib import Path
from typing import Any, Union

import numpy as np
from torch import nn

from fourdfy.config import ConfigError
from fourdfy.exporters.gltf import write_glb
from fourdfy.exporters.mesh import Mesh, export_meshes
from fourdfy.exporters.writers import MESH_SUFFIXES, write_mesh
from fourdfy.registry import register
from fourdfy.utils.base import Configurable

logger = logging.getLogger(__name__)

FILE_FORMATS = ("obj-mtl", "obj", "ply", "glb")


@register("mesh-exporter")
class MeshExporter(Configurable):
    """Marching-cubes meshes of the density field with vertex colours; a mesh sequence + animated glb when dynamic."""

    kind = "exporter"

    @dataclasses.dataclass
    class Config:
        fmt: Union[str, list[str]] = dataclasses.field(default_factory=lambda: ["obj", "ply"])
        """Mesh file format(s): ``obj`` (``obj-mtl`` is read as ``obj``: vertex colours, no material file),
        ``ply``, ``glb``; one name or a list. Each frame of a sequence is written in each format."""
        save_name: str = "model"
        """File stem of the mesh (and of the animated ``.glb``)."""
        save_glb: bool = True
        """Also write ``{save_name}.glb`` (static mesh, or the animation of a dynamic scene); the result page
        shows it."""
        num_times: int = 16
        """Dynamic scenes: number K of time steps in [0, 1] (``linspace(0, 1, K)``)."""
        fps: float = 8.0
        """Playback rate of the animated ``.glb`` (frames per second)."""
        save_normal: bool = False
        """Write vertex normals into OBJ/PLY (the ``.glb`` always has them)."""
        save_texture: bool = True
        """Write vertex colours from the field (false: geometry only)."""
        save_uv: bool = True
        """Accepted for threestudio configs; no effect (no UV atlas is made)."""
        texture_size: int = 1024
        """Accepted for threestudio configs; no effect."""
        texture_format: str = "jpg"
        """Accepted for threestudio configs; no effect."""
        xatlas_chart_options: dict = dataclasses.field(default_factory=dict)
        """Accepted for threestudio configs; no effect."""
        xatlas_pack_options: dict = dataclasses.field(default_factory=dict)
        """Accepted for threestudio configs; no effect."""
        context_type: str = "gl"
        """Accepted for threestudio configs; no effect (no rasteriser is used)."""
        save_video: bool = False
        """Accepted for threestudio configs; no effect."""

        def __post_init__(self) -> None:
            fmts = [self.fmt] if isinstance(self.fmt, str) else list(self.fmt)
            for f in fmts:
                if f not in FILE_FORMATS:
                    raise ConfigError(f"fmt: unknown mesh format {f!r}; use one or a list of {', '.join(FILE_FORMATS)}")
            if self.num_times < 1:
                raise ConfigError("num_times: must be >= 1")
            if self.fps <= 0:
                raise ConfigError("fps: must be > 0")

    def __init__(
        self, cfg: Any, geometry: nn.Module, material: nn.Module, background: Any = None, path: str = "system.exporter"
    ) -> None:
        self._set_cfg(cfg, path)
        self.path = path
        self.geometry = geometry
        self.material = material
        self.background = background

    @property
    def formats(self) -> list[str]:
        """The file suffixes to write (``.obj``, ``.ply``, ``.glb``), without duplicates."""
        fmts = [self.cfg.fmt] if isinstance(self.cfg.fmt, str) else list(self.cfg.fmt)
        return list(dict.fromkeys(MESH_SUFFIXES[f] for f in fmts))

    def times(self) -> list[float]:
        """``[0.0]`` for a static geometry, else ``linspace(0, 1, num_times)``."""
        if bool(getattr(self.geometry, "is_static", True)):
            return [0.0]
        return [float(t) for t in np.linspace(0.0, 1.0, self.cfg.num_times)]

    def extract(self, progress: bool = True) -> list[Mesh]:
        """The meshes, using the geometry's ``isosurface_*`` settings."""
        g = self.geometry.cfg
        remove = getattr(g, "isosurface_remove_outliers", False)
        return export_meshes(
            self.geometry,
            self.material if self.cfg.save_texture else None,
            self.times(),
            resolution=int(g.isosurface_resolution),
            threshold=float(g.isosurface_threshold),
            chunk=int(getattr(g, "isosurface_chunk", 0)),
            radius=float(g.radius),
            min_component_faces=float(g.isosurface_outlier_n_faces_threshold) if remove else None,
            progress=progress,
        )

    def __call__(self, out_dir: str | Path, progress: bool = True) -> list[Path]:
        """Extract and write every file into ``out_dir``; returns the paths written."""
        out_dir = Path(out_dir)
        meshes = self.extract(progress=progress)
        written: list[Path] = []
        c = self.cfg
        if len(meshes) == 1:
            for suffix in self.formats:
                if suffix != ".glb":
                    written.append(write_mesh(meshes[0], out_dir / f"{c.save_name}{suffix}", c.save_normal))
        else:
            from tqdm.auto import tqdm

            for k, mesh in enumerate(tqdm(meshes, desc="writing frames", unit="frame", disable=not progress)):
                for suffix in self.formats:
                    if suffix != ".glb":
                        written.append(write_mesh(mesh, out_dir / "frames" / f"frame_{k:03d}{suffix}", c.save_normal))
        if c.save_glb or ".glb" in self.formats:
            written.append(write_glb(meshes, out_dir / f"{c.save_name}.glb", fps=c.fps))
        logger.info("exported %d mesh(es) to %s", len(meshes), out_dir)
        return written
