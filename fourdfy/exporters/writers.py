"""Mesh files: OBJ and PLY through trimesh, in the world frame (z-up, as threestudio writes them).

OBJ stores vertex colours as the common ``v x y z r g b`` extension (read by Blender, MeshLab and trimesh);
PLY stores them as ``red green blue alpha`` uchar vertex properties (binary little endian).
"""

from pathlib import Path

import numpy as np

from fourdfy.exporters.mesh import Mesh

MESH_SUFFIXES = {"obj": ".obj", "obj-mtl": ".obj", "ply": ".ply", "glb": ".glb"}
"""File suffix of each ``fmt`` value."""


def to_trimesh(mesh: Mesh, with_normals: bool = False):
    """The mesh as a ``trimesh.Trimesh`` (no processing: vertices and faces stay exactly as given)."""
    import trimesh

    kwargs = {}
    if mesh.colors is not None:
        rgb = np.clip(mesh.colors, 0.0, 1.0) * 255.0 + 0.5
        alpha = np.full((len(rgb), 1), 255.0)
        kwargs["vertex_colors"] = np.concatenate([rgb, alpha], axis=1).astype(np.uint8)
    if with_normals:
        kwargs["vertex_normals"] = mesh.vertex_normals()
    return trimesh.Trimesh(vertices=mesh.vertices, faces=mesh.faces, process=False, **kwargs)


def write_mesh(mesh: Mesh, path: str | Path, save_normal: bool = False) -> Path:
    """Write ``mesh`` as OBJ or PLY (chosen by the suffix of ``path``); returns the path written.

    An empty mesh (the level set was never reached) is written as a file with no vertices.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix.lower()
    if suffix not in (".obj", ".ply"):
        raise ValueError(f"write_mesh: unsupported suffix {suffix!r} (use .obj or .ply; .glb: fourdfy.exporters.gltf)")
    if mesh.is_empty:
        if suffix == ".obj":
            path.write_text("# empty mesh: the density level was never reached\n")
        else:
            path.write_text(
                "ply\nformat ascii 1.0\nelement vertex 0\nproperty float x\nproperty float y\nproperty float z\n"
                "element face 0\nproperty list uchar int vertex_indices\nend_header\n"
            )
        return path
    tm = to_trimesh(mesh, with_normals=save_normal)
    if suffix == ".obj":
        from trimesh.exchange.obj import export_obj

        text = export_obj(tm, include_normals=save_normal, include_color=mesh.colors is not None, include_texture=False)
        path.write_text(text)
    else:
        from trimesh.exchange.ply import export_ply

        path.write_bytes(export_ply(tm, encoding="binary", vertex_normal=save_normal, include_attributes=False))
    return path
