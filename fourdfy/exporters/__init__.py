"""Mesh export (threestudio's ``exporter`` kind): marching cubes on the density field, OBJ/PLY/animated glTF.

- :mod:`fourdfy.exporters.mesh`: the pure extraction (``export_meshes(geometry, material, times, ...)``);
- :mod:`fourdfy.exporters.writers` (OBJ/PLY) and :mod:`fourdfy.exporters.gltf` (static or animated ``.glb``);
- :mod:`fourdfy.exporters.mesh_exporter`: the registered ``mesh-exporter`` (``system.exporter_type``);
- :mod:`fourdfy.exporters.trial_export`: ``export_trial(trial_dir)`` for ``--export``;
  ``python -m fourdfy.exporters <trial dir> [key=value ...]`` runs it from the shell.
"""

from fourdfy.exporters.gltf import write_glb
from fourdfy.exporters.mesh import Mesh, export_meshes, extract_mesh
from fourdfy.exporters.mesh_exporter import MeshExporter
from fourdfy.exporters.writers import write_mesh

__all__ = ["Mesh", "MeshExporter", "export_meshes", "extract_mesh", "write_glb", "write_mesh"]
