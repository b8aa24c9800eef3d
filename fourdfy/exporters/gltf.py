"""glTF binary (``.glb``) files of one mesh or of a mesh sequence that plays as an animation (via pygltflib).

Layout, node per frame (what we use for the 4-D hash grid, whose topology changes from frame to frame):

- one node ``frame_{k:03d}`` per time step, each with its own mesh (POSITION, NORMAL, COLOR_0, uint32 indices)
  and ``extras: {"time": t_k}``; an empty frame is a node without a mesh;
- one animation ``motion`` with one STEP-interpolated ``scale`` channel per node: keyframes at ``k / fps`` for
  ``k = 0..K`` (the last one holds the final frame for ``1 / fps``); node ``k`` has scale 1 on
  ``[k / fps, (k + 1) / fps)`` and 0 elsewhere, so exactly one frame is visible at a time and the clip loops
  after ``K / fps`` seconds. The nodes' rest scales show frame 0, for viewers that do not play animations;
- an unlit material (``KHR_materials_unlit``, white base colour): the vertex colours are the radiance the NeRF
  renders, so no lighting should be added on top.

Axes: glTF is y-up, our world is z-up: positions and normals are written as ``(x, z, -y)`` (a rotation of -90
degrees about x, so triangle winding is kept). OBJ/PLY keep the world frame.

Morph targets on one canonical mesh (natural for the deformation variant) are not written yet.
"""

from pathlib import Path
from typing import Optional

import numpy as np

from fourdfy.exporters.mesh import Mesh

Z_UP_TO_Y_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]], dtype=np.float32)
"""Row vectors ``p @ Z_UP_TO_Y_UP.T`` map world (z-up) to glTF (y-up): ``(x, y, z) -> (x, z, -y)``."""


class _Blob:
    """Accumulates the binary buffer, its buffer views and accessors."""

    def __init__(self, gltf) -> None:
        self.gltf = gltf
        self.data = bytearray()

    def add(self, array: np.ndarray, kind: str, target: Optional[int], with_bounds: bool = False) -> int:
        import pygltflib as g

        array = np.ascontiguousarray(array)
        component = {np.dtype(np.float32): g.FLOAT, np.dtype(np.uint32): g.UNSIGNED_INT}[array.dtype]
        while len(self.data) % 4:
            self.data.append(0)
        offset = len(self.data)
        raw = array.tobytes()
        self.data.extend(raw)
        self.gltf.bufferViews.append(g.BufferView(buffer=0, byteOffset=offset, byteLength=len(raw), target=target))
        flat = array.reshape(array.shape[0], -1)
        accessor = g.Accessor(
            bufferView=len(self.gltf.bufferViews) - 1, componentType=component, count=int(array.shape[0]), type=kind
        )
        if with_bounds:
            accessor.min = [float(v) for v in flat.min(0)]
            accessor.max = [float(v) for v in flat.max(0)]
        self.gltf.accessors.append(accessor)
        return len(self.gltf.accessors) - 1


def write_glb(meshes: list[Mesh], path: str | Path, fps: float | int = 8.0) -> Path:
    """Write one mesh (a static ``.glb``) or a sequence (node per frame + a looping step animation, see the module
    docstring) and return the path. ``fps`` is the playback rate of the sequence."""
    import pygltflib as g

    if not meshes:
        raise ValueError("write_glb: no meshes")
    if fps <= 0:
        raise ValueError(f"write_glb: fps must be > 0, got {fps}")
    gltf = g.GLTF2(
        asset=g.Asset(generator="fourdfy", version="2.0"),
        scene=0,
        scenes=[g.Scene(nodes=[])],
        extensionsUsed=["KHR_materials_unlit"],
        materials=[
            g.Material(
                name="vertex_colour_unlit",
                pbrMetallicRoughness=g.PbrMetallicRoughness(
                    baseColorFactor=[1.0, 1.0, 1.0, 1.0], metallicFactor=0.0, roughnessFactor=1.0
                ),
                extensions={"KHR_materials_unlit": {}},
            )
        ],
    )
    blob = _Blob(gltf)
    n = len(meshes)
    for k, mesh in enumerate(meshes):
        node = g.Node(name=f"frame_{k:03d}", extras={"time": float(mesh.time)})
        if n > 1:
            node.scale = [1.0, 1.0, 1.0] if k == 0 else [0.0, 0.0, 0.0]
        if not mesh.is_empty:
            attributes = g.Attributes(
                POSITION=blob.add(mesh.vertices.astype(np.float32) @ Z_UP_TO_Y_UP.T, g.VEC3, g.ARRAY_BUFFER, True),
                NORMAL=blob.add(mesh.vertex_normals() @ Z_UP_TO_Y_UP.T, g.VEC3, g.ARRAY_BUFFER),
            )
            if mesh.colors is not None:
                attributes.COLOR_0 = blob.add(mesh.colors.astype(np.float32), g.VEC3, g.ARRAY_BUFFER)
            indices = blob.add(mesh.faces.astype(np.uint32).reshape(-1), g.SCALAR, g.ELEMENT_ARRAY_BUFFER)
            gltf.meshes.append(g.Mesh(name=f"frame_{k:03d}", primitives=[g.Primitive(attributes=attributes, indices=indices, material=0)]))
            node.mesh = len(gltf.meshes) - 1
        gltf.nodes.append(node)
        gltf.scenes[0].nodes.append(len(gltf.nodes) - 1)
    if n > 1:
        key_times = np.arange(n + 1, dtype=np.float32) / np.float32(fps)
        time_accessor = blob.add(key_times, g.SCALAR, None, with_bounds=True)
        animation = g.Animation(name="motion", samplers=[], channels=[])
        for k in range(n):
            scales = np.zeros((n + 1, 3), dtype=np.float32)
            scales[k] = 1.0
            if k == n - 1:
                scales[n] = 1.0  # the closing key holds the last frame
            out = blob.add(scales, g.VEC3, None)
            animation.samplers.append(g.AnimationSampler(input=time_accessor, output=out, interpolation="STEP"))
            animation.channels.append(
                g.AnimationChannel(sampler=k, target=g.AnimationChannelTarget(node=k, path="scale"))
            )
        gltf.animations.append(animation)
    while len(blob.data) % 4:
        blob.data.append(0)
    gltf.buffers.append(g.Buffer(byteLength=len(blob.data)))
    gltf.set_binary_blob(bytes(blob.data))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    gltf.save_binary(str(path))
    return path
