"""The .glb layout that the result page's viewer (fourdfy/evaluation/assets/viewer.js) relies on, checked on the CPU.

The file is read here by hand, the way viewer.js reads it (GLB header and chunks, accessors through buffer views,
the scene's root nodes, the first animation's STEP ``scale`` channels cut into frames), so a change in
fourdfy/exporters/gltf.py that the viewer could not show fails without a browser. Keep the constants and
:func:`viewer_frames` in step with viewer.js.
"""

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from fourdfy.exporters import Mesh, write_glb
from fourdfy.exporters.gltf import Z_UP_TO_Y_UP

GLB_MAGIC, JSON_CHUNK, BIN_CHUNK = 0x46546C67, 0x4E4F534A, 0x004E4942
WIDTH = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT4": 16}
COMPONENT = {5120: np.int8, 5121: np.uint8, 5122: np.int16, 5123: np.uint16, 5125: np.uint32, 5126: np.float32}
"""What viewer.js's ``COMPONENT`` table reads."""
SUPPORTED_EXTENSIONS = {"KHR_materials_unlit"}
FLOAT, U8, U16, U32 = 5126, 5121, 5123, 5125


def read_glb(path: Path) -> tuple[dict, bytes]:
    """(JSON, BIN chunk) of a .glb, with the container checks of viewer.js's ``parseGlb``."""
    data = Path(path).read_bytes()
    magic, version, length = struct.unpack_from("<III", data, 0)
    assert (magic, version, length) == (GLB_MAGIC, 2, len(data))
    chunks, offset = [], 12
    while offset + 8 <= length:
        size, kind = struct.unpack_from("<II", data, offset)
        assert size % 4 == 0 and offset + 8 + size <= length  # chunks are 4-byte aligned and inside the file
        chunks.append((kind, data[offset + 8 : offset + 8 + size]))
        offset += 8 + size
    assert offset == length
    assert [k for k, _ in chunks] == [JSON_CHUNK, BIN_CHUNK]
    gltf = json.loads(chunks[0][1].decode("utf-8"))
    assert set(gltf.get("extensionsRequired", [])) <= SUPPORTED_EXTENSIONS
    return gltf, chunks[1][1]


def accessor(gltf: dict, binary: bytes, index: int) -> np.ndarray:
    """An accessor's elements ``[count, width]`` as viewer.js's ``readAccessor`` reads them (normalized to [0, 1])."""
    acc = gltf["accessors"][index]
    assert "sparse" not in acc and acc["type"] in WIDTH and acc["componentType"] in COMPONENT
    view = gltf["bufferViews"][acc["bufferView"]]
    assert view.get("buffer", 0) == 0
    dtype, width = np.dtype(COMPONENT[acc["componentType"]]), WIDTH[acc["type"]]
    stride = view.get("byteStride", width * dtype.itemsize)
    start = view.get("byteOffset", 0) + acc.get("byteOffset", 0)
    assert start % dtype.itemsize == 0  # aligned: viewer.js takes its typed-array fast path for floats
    end = start + (acc["count"] - 1) * stride + width * dtype.itemsize
    assert end <= view.get("byteOffset", 0) + view["byteLength"] <= len(binary)
    rows = [np.frombuffer(binary, dtype, width, start + i * stride) for i in range(acc["count"])]
    out = np.array(rows, dtype=np.float64).reshape(acc["count"], width)
    if acc.get("normalized"):
        out /= np.iinfo(dtype).max
    return out


def viewer_frames(gltf: dict, binary: bytes) -> list[tuple[float, float, list[int]]]:
    """``(start, end, visible root nodes)`` per frame, as viewer.js cuts the clip: the key times of the first
    animation's ``scale`` channels; in interval k a node is visible when its step-sampled scale at the interval's
    start is non-zero (an untracked node keeps its rest scale). No keys: one static frame of every root."""
    tracks, keys = {}, set()
    for channel in (gltf.get("animations") or [{}])[0].get("channels", []):
        if channel["target"].get("path") != "scale":
            continue
        sampler = gltf["animations"][0]["samplers"][channel["sampler"]]
        times, values = accessor(gltf, binary, sampler["input"])[:, 0], accessor(gltf, binary, sampler["output"])
        tracks[channel["target"]["node"]] = (times, values)
        keys.update(times.tolist())
    keys = sorted(keys) if len(keys) > 1 else [0.0, 0.0]
    roots = gltf["scenes"][gltf.get("scene", 0)]["nodes"]
    frames = []
    for start, end in zip(keys[:-1], keys[1:]):
        visible = []
        for i in roots:
            if i in tracks:
                times, values = tracks[i]
                scale = values[max(np.searchsorted(times, start, side="right") - 1, 0)]
            else:
                scale = gltf["nodes"][i].get("scale", [1, 1, 1])
            if np.any(np.asarray(scale) != 0):
                visible.append(i)
        frames.append((start, end, visible))
    return frames


def tetrahedron(size: float, time: float, empty: bool = False) -> Mesh:
    v = size * np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
    f = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]], np.int64)
    if empty:
        return Mesh(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64), time=time)
    return Mesh(v, f, colors=np.linspace(0, 1, 12, dtype=np.float32).reshape(4, 3), time=time)


def check_primitives(gltf: dict, binary: bytes, meshes: list[Mesh]) -> None:
    """Every drawn mesh: triangles with the attribute and index formats viewer.js reads, holding the data."""
    drawn = [m for m in meshes if not m.is_empty]
    assert len(gltf["meshes"]) == len(drawn)
    for source, mesh in zip(drawn, gltf["meshes"]):
        (prim,) = mesh["primitives"]
        assert prim.get("mode", 4) == 4
        attrs, acc = prim["attributes"], gltf["accessors"]
        n = acc[attrs["POSITION"]]["count"]
        assert (acc[attrs["POSITION"]]["type"], acc[attrs["POSITION"]]["componentType"]) == ("VEC3", FLOAT)
        assert (acc[attrs["NORMAL"]]["type"], acc[attrs["NORMAL"]]["componentType"], acc[attrs["NORMAL"]]["count"]) == ("VEC3", FLOAT, n)
        color = acc[attrs["COLOR_0"]]
        assert color["type"] in ("VEC3", "VEC4") and color["count"] == n
        assert color["componentType"] == FLOAT or (color["componentType"] in (U8, U16) and color.get("normalized"))
        index = acc[prim["indices"]]
        assert index["type"] == "SCALAR" and index["componentType"] in (U8, U16, U32) and not index.get("normalized")
        np.testing.assert_allclose(accessor(gltf, binary, attrs["POSITION"]), source.vertices @ Z_UP_TO_Y_UP.T, atol=1e-6)
        np.testing.assert_allclose(accessor(gltf, binary, attrs["COLOR_0"])[:, :3], source.colors, atol=1e-6)
        faces = accessor(gltf, binary, prim["indices"]).reshape(-1, 3)
        np.testing.assert_array_equal(faces, source.faces)
        assert faces.max() < n
        material = gltf["materials"][prim["material"]]
        assert "KHR_materials_unlit" in material.get("extensions", {})  # shown unlit by default


@pytest.mark.parametrize("fps", [4.0, 10])
def test_dynamic_glb_plays_one_frame_node_at_a_time(tmp_path, fps):
    meshes = [tetrahedron(0.2 + 0.1 * k, k / 4, empty=(k == 2)) for k in range(5)]  # frame 2 has no surface
    gltf, binary = read_glb(write_glb(meshes, tmp_path / "model.glb", fps=fps))
    check_primitives(gltf, binary, meshes)
    roots = gltf["scenes"][gltf.get("scene", 0)]["nodes"]
    assert roots == list(range(5)) and [gltf["nodes"][i]["name"] for i in roots] == [f"frame_{k:03d}" for k in range(5)]
    assert [gltf["nodes"][i].get("mesh") for i in roots] == [0, 1, None, 2, 3]
    assert all("children" not in n and "matrix" not in n for n in gltf["nodes"])
    (animation,) = gltf["animations"]
    assert {s["interpolation"] for s in animation["samplers"]} == {"STEP"}
    assert sorted(c["target"]["node"] for c in animation["channels"]) == roots
    frames = viewer_frames(gltf, binary)
    assert [visible for _, _, visible in frames] == [[k] for k in range(5)]  # frame k shows node k alone
    np.testing.assert_allclose([start for start, _, _ in frames], np.arange(5) / fps, rtol=1e-6)
    np.testing.assert_allclose([end - start for start, end, _ in frames], 1 / fps, rtol=1e-5)
    # at rest (a viewer without animations) only frame 0 shows
    assert [gltf["nodes"][i]["scale"] for i in roots] == [[1, 1, 1]] + [[0, 0, 0]] * 4


def test_static_glb_is_one_frame(tmp_path):
    meshes = [tetrahedron(0.5, 0.0)]
    gltf, binary = read_glb(write_glb(meshes, tmp_path / "model.glb"))
    check_primitives(gltf, binary, meshes)
    assert "animations" not in gltf or not gltf["animations"]
    assert viewer_frames(gltf, binary) == [(0.0, 0.0, [0])]
    assert gltf["nodes"][0].get("scale", [1, 1, 1]) == [1, 1, 1]


def test_exported_sphere_sequence_reads_back(tmp_path):
    """The real exporter path (marching cubes on the growing sphere) gives the layout above."""
    from synthetic_trials import GrowingSphere, SigmoidMaterial

    from fourdfy.exporters import export_meshes

    meshes = export_meshes(GrowingSphere(resolution=24), SigmoidMaterial(), np.linspace(0, 1, 3), 24, 25.0, progress=False)
    gltf, binary = read_glb(write_glb(meshes, tmp_path / "model.glb", fps=4))
    check_primitives(gltf, binary, meshes)
    assert [visible for _, _, visible in viewer_frames(gltf, binary)] == [[0], [1], [2]]
