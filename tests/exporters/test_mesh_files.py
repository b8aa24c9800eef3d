"""mesh-exporter files: OBJ/PLY round trips, and the animated .glb read back with pygltflib and trimesh."""

import numpy as np
import pygltflib
import pytest
import trimesh

from fourdfy.config import ConfigError
from fourdfy.exporters import MeshExporter, write_glb
from fourdfy.exporters.gltf import Z_UP_TO_Y_UP
from fourdfy.registry import build, find
from synthetic_trials import GrowingSphere, SigmoidMaterial, sphere_radius

K = 5
FPS = 4.0


def accessor_array(gltf: pygltflib.GLTF2, index: int) -> np.ndarray:
    """An accessor's data, read from the binary chunk by hand (byte offsets, component type, element width)."""
    acc = gltf.accessors[index]
    view = gltf.bufferViews[acc.bufferView]
    dtype = {pygltflib.FLOAT: np.float32, pygltflib.UNSIGNED_INT: np.uint32}[acc.componentType]
    width = {"SCALAR": 1, "VEC3": 3, "VEC4": 4}[acc.type]
    raw = gltf.binary_blob()[view.byteOffset + (acc.byteOffset or 0) :][: acc.count * width * 4]
    return np.frombuffer(raw, dtype=dtype).reshape(acc.count, width)


@pytest.fixture(scope="module")
def dynamic_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("dyn")
    geometry = GrowingSphere(resolution=32)
    exporter = build("exporter", "mesh-exporter", {"num_times": K, "fps": FPS}, "system.exporter", geometry, SigmoidMaterial(), None)
    paths = exporter(out, progress=False)
    return out, paths, exporter


def test_registered_with_threestudio_name_and_keys():
    assert find("mesh-exporter", "exporter", "system.exporter_type") is MeshExporter
    cfg = MeshExporter.Config()
    for key in ("fmt", "save_name", "save_normal", "save_uv", "save_texture", "texture_size", "texture_format",
                "xatlas_chart_options", "xatlas_pack_options", "context_type", "save_video"):  # fmt: skip
        assert hasattr(cfg, key), key
    with pytest.raises(ConfigError, match="system.exporter.fmt"):
        build("exporter", "mesh-exporter", {"fmt": "fbx"}, "system.exporter", GrowingSphere(), SigmoidMaterial(), None)
    with pytest.raises(ConfigError, match="did you mean|Did you mean"):
        build("exporter", "mesh-exporter", {"num_time": 3}, "system.exporter", GrowingSphere(), SigmoidMaterial(), None)


def test_static_export_writes_obj_ply_glb_that_load_back(tmp_path):
    geometry = GrowingSphere(static=True, resolution=32)
    exporter = MeshExporter({"fmt": ["obj-mtl", "ply"], "save_normal": True}, geometry, SigmoidMaterial())
    paths = exporter(tmp_path, progress=False)
    assert sorted(p.name for p in paths) == ["model.glb", "model.obj", "model.ply"]
    (mesh,) = exporter.extract(progress=False)
    for name in ("model.obj", "model.ply"):
        loaded = trimesh.load(tmp_path / name, force="mesh", process=False)
        np.testing.assert_allclose(loaded.vertices, mesh.vertices, atol=1e-6)
        np.testing.assert_array_equal(loaded.faces, mesh.faces)
        np.testing.assert_allclose(loaded.visual.vertex_colors[:, :3] / 255.0, mesh.colors, atol=0.5 / 255 + 1e-6)
    np.testing.assert_allclose(np.abs(mesh.vertices).max(), sphere_radius(0.0), atol=0.03)
    scene = trimesh.load(tmp_path / "model.glb")
    (geom,) = scene.geometry.values()
    np.testing.assert_allclose(geom.vertices, mesh.vertices @ Z_UP_TO_Y_UP.T, atol=1e-6)  # glTF is y-up
    assert not pygltflib.GLTF2.load(tmp_path / "model.glb").animations


def test_dynamic_export_writes_a_frame_sequence(dynamic_export):
    out, paths, exporter = dynamic_export
    assert exporter.times() == pytest.approx(list(np.linspace(0, 1, K)))
    names = sorted(p.relative_to(out).as_posix() for p in paths)
    assert names == sorted([f"frames/frame_{k:03d}.{e}" for k in range(K) for e in ("obj", "ply")] + ["model.glb"])
    radii = []
    for k in range(K):
        m = trimesh.load(out / "frames" / f"frame_{k:03d}.ply", force="mesh", process=False)
        radii.append(np.linalg.norm(m.vertices, axis=1).mean())
        assert radii[-1] == pytest.approx(sphere_radius(k / (K - 1)), abs=0.01)
    assert np.all(np.diff(radii) > 0.1)


def test_glb_plays_one_frame_node_after_another(dynamic_export):
    out, _, exporter = dynamic_export
    meshes = exporter.extract(progress=False)
    gltf = pygltflib.GLTF2.load(out / "model.glb")
    assert len(gltf.nodes) == K and len(gltf.meshes) == K and gltf.scenes[0].nodes == list(range(K))
    assert [n.extras["time"] for n in gltf.nodes] == pytest.approx(list(np.linspace(0, 1, K)))
    assert gltf.extensionsUsed == ["KHR_materials_unlit"]
    (anim,) = gltf.animations
    assert len(anim.channels) == K
    visible = np.zeros((K + 1, K))
    for ch in anim.channels:
        assert ch.target.path == "scale"
        sampler = anim.samplers[ch.sampler]
        assert sampler.interpolation == "STEP"
        keys = accessor_array(gltf, sampler.input)[:, 0]
        np.testing.assert_allclose(keys, np.arange(K + 1) / FPS)
        visible[:, ch.target.node] = accessor_array(gltf, sampler.output)[:, 0]
    # at key k (k < K) exactly node k is shown; the closing key holds the last frame
    np.testing.assert_array_equal(visible[:K], np.eye(K))
    np.testing.assert_array_equal(visible[K], np.eye(K)[K - 1])
    assert gltf.nodes[0].scale == [1.0, 1.0, 1.0] and all(n.scale == [0.0, 0.0, 0.0] for n in gltf.nodes[1:])
    # the motion is in the data: frame k's positions are the k-th mesh (y-up), its radius grows
    for k, node in enumerate(gltf.nodes):
        prim = gltf.meshes[node.mesh].primitives[0]
        pos = accessor_array(gltf, prim.attributes.POSITION)
        np.testing.assert_allclose(pos, meshes[k].vertices @ Z_UP_TO_Y_UP.T, atol=1e-6)
        np.testing.assert_allclose(gltf.accessors[prim.attributes.POSITION].max, pos.max(0), rtol=1e-6)
        np.testing.assert_allclose(accessor_array(gltf, prim.attributes.COLOR_0), meshes[k].colors, atol=1e-6)
        faces = accessor_array(gltf, prim.indices).reshape(-1, 3)
        np.testing.assert_array_equal(faces, meshes[k].faces)
        assert np.linalg.norm(pos, axis=1).mean() == pytest.approx(sphere_radius(node.extras["time"]), abs=0.01)


def test_glb_loads_in_trimesh_with_one_geometry_per_frame(dynamic_export):
    out, _, exporter = dynamic_export
    scene = trimesh.load(out / "model.glb")
    counts = {name: len(g.vertices) for name, g in scene.geometry.items()}
    expected = {f"frame_{k:03d}": len(m.vertices) for k, m in enumerate(exporter.extract(progress=False))}
    assert counts == expected


def test_empty_frames_become_nodes_without_a_mesh(tmp_path):
    from fourdfy.exporters.mesh import Mesh

    empty = Mesh(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64), None, time=0.0)
    tri = Mesh(np.eye(3, dtype=np.float32), np.array([[0, 1, 2]]), None, time=1.0)
    path = write_glb([empty, tri], tmp_path / "x.glb", fps=2)
    gltf = pygltflib.GLTF2.load(path)
    assert gltf.nodes[0].mesh is None and gltf.nodes[1].mesh == 0 and len(gltf.animations[0].channels) == 2
