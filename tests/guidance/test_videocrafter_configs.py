"""The four ``_vc`` stage-3 configs: exactly 4D-fy's differences from their parents (reference §3.2), strict parsing,
the README's ``num_frames=8`` override, and the tiny smoke overlay."""

from pathlib import Path

import pytest

from fourdfy.experiment import load_config, load_yaml_tree

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
PROMPT = "system.prompt_processor.prompt=a panda dancing"
ABSENT = object()

VC_YAML = "threestudio/models/guidance/videocrafter/configs/inference_t2v_512_v2.0.yaml"
NEGATIVE = "low motion, static statue, not moving, no motion"
SCALE = 1.447269237440378


def flatten(tree: dict, prefix: str = "") -> dict:
    """Dotted keys of a config tree (keys with dots in brackets, as reference §3 writes them); lists are leaves."""
    out = {}
    for key, value in tree.items():
        path = f"{prefix}[{key}]" if "." in key else (f"{prefix}.{key}" if prefix else key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, path))
        else:
            out[path] = value
    return out


def diff(child: str, parent: str) -> dict:
    a, b = flatten(load_yaml_tree(CONFIGS / parent)), flatten(load_yaml_tree(CONFIGS / child))
    pairs = {k: (a.get(k, ABSENT), b.get(k, ABSENT)) for k in a.keys() | b.keys()}
    return {k: pair for k, pair in pairs.items() if pair[0] != pair[1]}


VIDEO_CRAFTER = {  # the video branch switched to VideoCrafter2 (both non-deformation _vc files)
    "system.prompt_processor_type_video": ("zeroscope-prompt-processor", "videocrafter-prompt-processor"),
    "system.prompt_processor_video.config": (ABSENT, VC_YAML),
    "system.prompt_processor_video.pretrained_model_name_or_path": ("cerspense/zeroscope_v2_576w",
                                                                    "VideoCrafter/VideoCrafter2"),
    "system.prompt_processor_video.negative_prompt": (ABSENT, NEGATIVE),
    "system.guidance_type_video": ("zeroscope-guidance", "videocrafter-guidance"),
    "system.guidance_video.config": (ABSENT, "${system.prompt_processor_video.config}"),
    "system.guidance_video.pretrained_model_name_or_path": (
        "cerspense/zeroscope_v2_576w", "${system.prompt_processor_video.pretrained_model_name_or_path}"),
    "system.guidance_video.use_hifa": (ABSENT, False),
    "system.guidance_video.width_vid": (ABSENT, "${data.single_view.width_vid}"),
    "system.guidance_video.height_vid": (ABSENT, "${data.single_view.height_vid}"),
    "system.guidance_video.motion_amp_scale": (ABSENT, 30.0),
    "system.guidance_video.half_precision_weights": (ABSENT, False),
    "system.guidance_video.fps": (ABSENT, 8),
    "system.guidance_video.min_step_percent": (ABSENT, [0, 0.02, 0.02, 5000]),
    "system.guidance_video.max_step_percent": (ABSENT, [0, 0.98, 0.5, 5000]),
    "data.single_view.width_vid": (288, 128),
    "data.single_view.height_vid": (160, 80),
}  # fmt: skip
DEFORMATION = {  # geometry, losses, optimizer and length of both deformation files
    "system.geometry.pos_encoding_config.otype": ("HashGridSpatialTime", "HashGridSpatialTimeDeform"),
    **{f"system.geometry.pos_encoding_config.time_encoding_config.{k}": (ABSENT, v) for k, v in {
        "otype": "Grid", "type": "Hash", "n_levels": 8, "n_features_per_level": 2, "log2_hashmap_size": 19,
        "base_resolution": 4, "per_level_scale": SCALE, "start_level": 4, "start_step": 0, "update_steps": 500,
    }.items()},
    **{f"system.geometry.pos_encoding_config.time_network_config.{k}": (ABSENT, v) for k, v in {
        "otype": "VanillaMLP", "n_neurons": 64, "n_hidden_layers": 2}.items()},
    "system.renderer.base_renderer.train_max_nums": (100000, 140000),
    "system.loss.lambda_sds_video": (0.1, 1.0),
    "system.loss.lambda_sparsity": (10.0, 0.0),
    "system.loss.lambda_opaque": ([10000, 0.0, 1000.0, 10001], 0.0),
    "system.loss.lambda_deformation": (0.0, 100.0),
    "system.optimizer.params[geometry.density_network].lr": (0.001, 0.0),
    "system.optimizer.params[geometry.feature_network].lr": (0.001, 0.0),
    "system.optimizer.params[geometry.encoding.encoding.encoding].lr": (0.0001, 0.0),
    "system.optimizer.params[geometry.encoding.encoding.encoding_time].lr": (0.01, 0.001),
    "system.optimizer.params[geometry.encoding.encoding.time_network].lr": (ABSENT, 0.0001),
    "system.optimizer.params.background.lr": (0.001, 0.0),
    "system.optimizer.params.guidance.lr": (0.0001, ABSENT),
    "trainer.max_steps": (200000, 150000),
}  # fmt: skip

# reference §3.2: each _vc file as its exact differences from its parent
EXPECTED = {
    ("fourdfy_stage_3_vc.yaml", "fourdfy_stage_3.yaml"): {
        "name": ("fourdfy_stage_3", "fourdfy_stage_3_vc"),
        **VIDEO_CRAFTER,
        "system.freeze_static_modules": (ABSENT, True),
        "system.geometry.anneal_density_blob_std_config.end_val": (5.0, 0.5),
        "system.background.random_aug": (True, False),
        "system.renderer_type": ("nerf-volume-renderer", "stable-nerf-volume-renderer"),
        "system.renderer.base_renderer_type": (ABSENT, "mask-nerf-volume-renderer"),
        "system.renderer.base_renderer.radius": (ABSENT, "${system.geometry.radius}"),
        "system.renderer.base_renderer.num_samples_per_ray": (ABSENT, 512),
        "system.renderer.base_renderer.train_max_nums": (ABSENT, 100000),
        "system.renderer.base_renderer.train_max_nums_static": (ABSENT,
                                                                 "${system.renderer.base_renderer.train_max_nums}"),
        "system.guidance_video.low_ram_vae": (ABSENT, 2),
        "system.optimizer.params.guidance.lr": (ABSENT, 0.0001),
        "trainer.max_steps": (100000, 200000),
        "trainer.precision": (32, "16-mixed"),
        "system.renderer.radius": ("${system.geometry.radius}", ABSENT),
        "system.renderer.num_samples_per_ray": (512, ABSENT),
        "system.optimizer.params.guidance_single_view.lr": (0.0001, ABSENT),
    },
    ("fourdfy_stage_3_low_vram_vc.yaml", "fourdfy_stage_3_low_vram.yaml"): {
        "name": ("fourdfy_stage_3_low_vram", "fourdfy_stage_3_low_vram_vc"),
        **VIDEO_CRAFTER,
        "system.guidance_video.low_ram_vae": (4, ABSENT),
    },
    ("fourdfy_stage_3_vc_deformation.yaml", "fourdfy_stage_3_vc.yaml"): {
        "name": ("fourdfy_stage_3_vc", "fourdfy_stage_3_vc_deformation"),
        "data.single_view.prob_single_view_video": (0.5, 1.0),
        **DEFORMATION,
        "system.guidance_video.low_ram_vae": (2, ABSENT),
    },
    ("fourdfy_stage_3_low_vram_vc_deformation.yaml", "fourdfy_stage_3_low_vram_vc.yaml"): {
        "name": ("fourdfy_stage_3_low_vram_vc", "fourdfy_stage_3_low_vram_vc_deformation"),
        "data.prob_multi_view": (0.75, 0.5),
        **DEFORMATION,
        "system.guidance_video.low_ram_vae": (ABSENT, 1),
    },
}
VC_FILES = [child for child, _ in EXPECTED]


@pytest.mark.parametrize("child, parent", list(EXPECTED))
def test_vc_files_differ_from_their_parents_exactly_as_4dfys(child, parent):
    found = diff(child, parent)
    expected = EXPECTED[(child, parent)]
    assert set(found) == set(expected), (sorted(set(found) - set(expected)), sorted(set(expected) - set(found)))
    for key, (before, after) in expected.items():
        assert found[key] == (before, after), key


@pytest.mark.parametrize("name", VC_FILES)
def test_vc_configs_parse_strictly_and_resolve(name):
    cfg, raw = load_config([str(CONFIGS / name)], [PROMPT])
    system = raw["system"]
    assert cfg.name == name.removesuffix(".yaml")
    assert system["guidance_type_video"] == "videocrafter-guidance"
    assert system["prompt_processor_type_video"] == "videocrafter-prompt-processor"
    g = system["guidance_video"]
    assert (g["width_vid"], g["height_vid"], g["fps"], g["motion_amp_scale"]) == (128, 80, 8, 30.0)
    assert g["pretrained_model_name_or_path"] == "VideoCrafter/VideoCrafter2" and g["config"] == VC_YAML
    assert (g["guidance_scale"], g["weighting_strategy"], g["half_precision_weights"]) == (100.0, "sds", False)
    assert g.get("low_ram_vae", -1) == {"fourdfy_stage_3_vc.yaml": 2,
                                        "fourdfy_stage_3_low_vram_vc_deformation.yaml": 1}.get(name, -1)  # fmt: skip
    assert raw["trainer"]["precision"] == "16-mixed"


@pytest.mark.parametrize("name", ["fourdfy_stage_3_vc.yaml", "fourdfy_stage_3_low_vram_vc_deformation.yaml"])
def test_readme_overrides_reach_the_video_guidance(name):
    overrides = [PROMPT, "data.single_view.num_frames=8", "data.single_view.width_vid=144",
                 "data.single_view.height_vid=80", "system.guidance_video.enable_memory_efficient_attention=true"]
    _, raw = load_config([str(CONFIGS / name)], overrides)
    assert raw["system"]["geometry"]["pos_encoding_config"]["num_frames"] == 8
    assert raw["data"]["multi_view"]["num_frames"] == 8
    assert raw["system"]["guidance_video"]["width_vid"] == 144


@pytest.mark.parametrize("name", VC_FILES)
def test_tiny_smoke_overlay_parses_on_every_vc_config(name):
    _, raw = load_config(
        [str(CONFIGS / name), str(CONFIGS / "smoke" / "tiny.yaml"), str(CONFIGS / "smoke" / "vc_tiny.yaml")], [PROMPT]
    )
    g, p = raw["system"]["guidance_video"], raw["system"]["prompt_processor_video"]
    assert g["pretrained_model_name_or_path"] == p["pretrained_model_name_or_path"] == "tiny-random-videocrafter"
    assert raw["data"]["single_view"]["num_frames"] == 4
    assert raw["system"]["geometry"]["pos_encoding_config"]["num_frames"] == 4
    assert (g["width_vid"], g["height_vid"]) == (32, 16)
