"""Export of trial folders end to end: the tiny stage-1 checkpoint (static) and its 4-D-grid twin (dynamic)."""

import numpy as np
import pygltflib
import pytest
import torch
import trimesh

from fourdfy.errors import StageWeightsError
from fourdfy.evaluation.trial import load_trial
from fourdfy.exporters.__main__ import main as export_main
from fourdfy.exporters.trial_export import export_trial

# the untrained tiny field is the blob prior: density softplus(10 (1 - |p| / 0.5) + MLP), so level 5 is a ball of
# radius about 0.25 (the default level 25 is reached only after training)
SMALL = ("system.geometry.isosurface_threshold=5", "system.geometry.isosurface_resolution=24")


def test_static_trial_exports_obj_ply_glb(static_tiny_trial):
    paths = export_trial(static_tiny_trial, SMALL, progress=False)
    out = static_tiny_trial / "save" / "it20-export"
    assert sorted(p.name for p in paths) == ["model.glb", "model.obj", "model.ply"]
    assert all(p.parent == out for p in paths)
    obj = trimesh.load(out / "model.obj", force="mesh", process=False)
    ply = trimesh.load(out / "model.ply", force="mesh", process=False)
    assert len(obj.vertices) == len(ply.vertices) > 100
    r = np.linalg.norm(ply.vertices, axis=1)
    assert 0.15 < r.mean() < 0.35, r.mean()  # the blob, centred at the origin
    np.testing.assert_allclose(ply.vertices.mean(0), 0.0, atol=0.05)
    assert obj.is_watertight
    # vertex colours are the field's: recompute them from the loaded parts
    parts = load_trial(static_tiny_trial)
    with torch.no_grad():
        pts = torch.from_numpy(np.asarray(ply.vertices, dtype=np.float32))
        features = parts.geometry(pts, torch.zeros(1, 1)).features
        rgb = parts.material(features, torch.zeros_like(pts)).numpy()
    np.testing.assert_allclose(ply.visual.vertex_colors[:, :3] / 255.0, rgb, atol=0.5 / 255 + 1e-4)
    assert not pygltflib.GLTF2.load(out / "model.glb").animations


def test_dynamic_trial_exports_a_sequence_and_an_animation(dynamic_tiny_trial):
    paths = export_trial(dynamic_tiny_trial, SMALL + ("system.exporter.num_times=3", "system.exporter.fmt=ply"), progress=False)
    out = dynamic_tiny_trial / "save" / "it20-export"
    assert sorted(p.relative_to(out).as_posix() for p in paths) == [
        "frames/frame_000.ply", "frames/frame_001.ply", "frames/frame_002.ply", "model.glb",
    ]  # fmt: skip
    frames = [trimesh.load(out / "frames" / f"frame_{k:03d}.ply", force="mesh", process=False) for k in range(3)]
    assert not np.array_equal(frames[0].vertices, frames[2].vertices)  # the random 4-D grid moves the surface
    gltf = pygltflib.GLTF2.load(out / "model.glb")
    assert len(gltf.nodes) == 3 and len(gltf.animations[0].channels) == 3


def test_load_trial_rejects_weights_of_another_config(static_tiny_trial):
    with pytest.raises(StageWeightsError, match="geometry"):
        load_trial(static_tiny_trial, ("system.geometry.pos_encoding_config.n_levels=3",))


def test_command_line(static_tiny_trial, capsys):
    assert export_main([str(static_tiny_trial), *SMALL, "system.exporter.fmt=obj", "system.exporter.save_name=mesh", "--no-page"]) == 0
    printed = capsys.readouterr().out
    assert "mesh.obj" in printed and "mesh.glb" in printed
    assert export_main([str(static_tiny_trial / "nope")]) == 2
    assert "not a trial folder" in capsys.readouterr().err
