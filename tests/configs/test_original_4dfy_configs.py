"""4D-fy's own config files run unchanged (issue 11, item 3).

``original_4dfy/*.yaml`` are the key/value trees of the 12 YAML files of 4D-fy (all of them, complete trees, as
4D-fy ships them). Each must pass the strict parser as it is; the stage-1/2 ones must also train a few steps on CPU
with tiny stand-in networks, and so must the stage-3 ones.
"""

import logging
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import launch
from fourdfy.experiment import load_config, load_raw_config

ROOT = Path(__file__).resolve().parents[2]
ORIGINALS = Path(__file__).resolve().parent / "original_4dfy"
PROMPT = "system.prompt_processor.prompt=a panda dancing"
STAGE_12 = [
    "fourdfy_stage_1", "fourdfy_stage_1_low_vram", "fourdfy_stage_1_low_vram_deformation",
    "fourdfy_stage_2", "fourdfy_stage_2_low_vram", "fourdfy_stage_2_low_vram_deformation",
]  # fmt: skip
STAGE_3_ZEROSCOPE = ["fourdfy_stage_3", "fourdfy_stage_3_low_vram"]
STAGE_3_VC = [
    "fourdfy_stage_3_vc", "fourdfy_stage_3_low_vram_vc", "fourdfy_stage_3_vc_deformation",
    "fourdfy_stage_3_low_vram_vc_deformation",
]  # fmt: skip
STAGE_3 = STAGE_3_ZEROSCOPE + STAGE_3_VC
STEPS = 2


def original(name: str) -> Path:
    return ORIGINALS / f"{name}.yaml"


def test_the_fixtures_are_the_twelve_files_of_4dfy():
    assert sorted(p.stem for p in ORIGINALS.glob("*.yaml")) == sorted(STAGE_12 + STAGE_3)


@pytest.mark.parametrize("name", STAGE_12 + STAGE_3)
def test_original_config_parses_unchanged(name):
    cfg, resolved = load_config([str(original(name))], [PROMPT])
    assert cfg.name == name and cfg.tag == "a_panda_dancing"
    assert cfg.system_type == "fourdfy-system"
    assert resolved["system"]["guidance_multi_view"]["guidance_scale"] == 50.0
    # interpolations resolved as 4D-fy's OmegaConf would
    assert resolved["checkpoint"]["every_n_train_steps"] == resolved["trainer"]["max_steps"]
    assert resolved["system"]["prob_multi_view"] == resolved["data"]["prob_multi_view"]


def test_a_few_values_of_the_fixtures_against_the_reference():
    """Spot checks of reference-4dfy.md §3 (the fixtures were written from it)."""

    def tree(name):
        return OmegaConf.to_container(OmegaConf.load(original(name)), resolve=False)

    s2d = tree("fourdfy_stage_2_low_vram_deformation")
    assert "guidance_single_view" not in s2d["system"]["optimizer"]["params"]  # 4D-fy's omission (§11.4)
    assert s2d["data"]["multi_view"]["width"] == [256, 256]
    assert s2d["system"]["loss"]["lambda_sds_video"] == 1.0
    s3lv = tree("fourdfy_stage_3_low_vram_vc")
    assert "low_ram_vae" not in s3lv["system"]["guidance_video"]  # removed from its parent's value 4
    assert s3lv["trainer"]["precision"] == "16-mixed" and s3lv["system"]["freeze_static_modules"] is True
    assert s3lv["system"]["optimizer"]["params"]["guidance"] == {"lr": 0.0001}
    s3d = tree("fourdfy_stage_3_vc_deformation")
    assert s3d["system"]["optimizer"]["params"]["geometry.encoding.encoding.time_network"] == {"lr": 0.0001}
    assert s3d["system"]["renderer"]["base_renderer"]["train_max_nums"] == 140000
    assert tree("fourdfy_stage_1")["system"]["guidance"]["max_step_percent"] == 0.5
    assert tree("fourdfy_stage_2")["system"]["guidance"]["max_step_percent"] == 0.98


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        key = f"{prefix}[{k}]" if "." in k else (f"{prefix}.{k}" if prefix else k)
        out.update(_flat(v, key) if isinstance(v, dict) and v else {key: v})
    return out


# fourdfy's shipped configs keep exactly 4D-fy's trees, except these documented differences
SHIPPED_DIFFERENCES = {
    "fourdfy_stage_2_low_vram_deformation": {"system.optimizer.params.guidance_single_view.lr"},
}


@pytest.mark.parametrize("name", STAGE_12 + STAGE_3)
def test_shipped_config_resolves_to_the_original_tree(name):
    ours = _flat(load_raw_config([str(ROOT / "configs" / f"{name}.yaml")], [PROMPT]))
    theirs = _flat(load_raw_config([str(original(name))], [PROMPT]))
    differ = {k for k in set(ours) | set(theirs) if repr(ours.get(k, "<absent>")) != repr(theirs.get(k, "<absent>"))}
    assert differ == SHIPPED_DIFFERENCES.get(name, set())


def tiny_overrides(name: str, out: Path) -> list[str]:
    """Shrink an original config to a CPU run of a few steps with tiny stand-in networks (the networks and sizes
    only; every other key keeps 4D-fy's value)."""
    raw = load_raw_config([str(original(name))], [PROMPT])
    s = raw["system"]
    o = [PROMPT, f"exp_root_dir={out}", f"trainer.max_steps={STEPS}", f"trainer.val_check_interval={STEPS}",
         "trainer.enable_progress_bar=false"]  # fmt: skip
    for view in ("single_view", "multi_view"):
        o += [f"data.{view}.width=32", f"data.{view}.height=32", f"data.{view}.resolution_milestones=[]"]
    o += ["data.multi_view.batch_size=4", "data.single_view.batch_size=1", "data.single_view.eval_height=32",
          "data.single_view.eval_width=32", "data.single_view.n_test_views=2"]  # fmt: skip
    if not raw["data"]["single_view"]["static"]:
        o += ["data.single_view.width_vid=32", "data.single_view.height_vid=32", "data.single_view.num_frames=4",
              "data.single_view.num_frames_factor=1"]  # fmt: skip
    enc = "system.geometry.pos_encoding_config"
    o += [f"{enc}.n_levels=4", f"{enc}.log2_hashmap_size=12", f"{enc}.base_resolution=8", f"{enc}.per_level_scale=2.0"]
    if "time_encoding_config" in s["geometry"]["pos_encoding_config"]:
        o += [f"{enc}.time_encoding_config.log2_hashmap_size=12"]
    if s["renderer_type"] == "stable-nerf-volume-renderer":
        base = "system.renderer.base_renderer"
        o += [f"{base}.num_samples_per_ray=64", f"{base}.train_max_nums=20000", f"{base}.train_max_nums_static=20000"]
    else:
        o += ["system.renderer.num_samples_per_ray=64"]
    for proc in ("prompt_processor", "prompt_processor_multi_view"):
        o += [f"system.{proc}.pretrained_model_name_or_path=tiny-random-clip", f"system.{proc}.spawn=false"]
    o += ["system.guidance.pretrained_model_name_or_path=tiny-random-sd-eps",
          "system.guidance.pretrained_model_name_or_path_lora=tiny-random-sd-v",
          "system.guidance_multi_view.model_name=tiny-random-4view", "system.guidance_multi_view.image_size=64"]  # fmt: skip
    if not raw["data"]["single_view"]["static"]:
        video = "tiny-random-zeroscope" if s["guidance_type_video"] == "zeroscope-guidance" else "tiny-random-videocrafter"
        o += [f"system.guidance_video.pretrained_model_name_or_path={video}",
              f"system.prompt_processor_video.pretrained_model_name_or_path={video}",
              "system.prompt_processor_video.spawn=false"]  # fmt: skip
    return o


def train_original(name: str, out: Path) -> Path:
    assert launch.main(["--config", str(original(name)), "--train", *tiny_overrides(name, out)]) == 0
    (trial,) = (out / name).iterdir()
    return trial


@pytest.mark.parametrize("name", STAGE_12)
def test_original_stage_1_2_config_trains_with_tiny_networks(name, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="fourdfy.systems.optim")
    trial = train_original(name, tmp_path)
    ckpt = torch.load(trial / "ckpts" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == STEPS
    assert (trial / "save" / f"it{STEPS}-test.mp4").is_file() or (trial / "save" / f"it{STEPS}-test.gif").is_file()
    frozen = [r.getMessage() for r in caplog.records if "no optimizer group" in r.getMessage()]
    if name == "fourdfy_stage_2_low_vram_deformation":
        # 4D-fy's file has no guidance_single_view group: the VSD LoRA and camera MLP stay untrained, one warning
        assert len(frozen) == 1, frozen
        assert "guidance_single_view.lora_layers" in frozen[0] and "guidance_single_view.camera_embedding" in frozen[0]
        lora_up = [v for k, v in ckpt["state_dict"].items() if k.startswith("guidance_single_view.lora_layers") and
                   k.endswith("lora_up")]  # fmt: skip
        assert lora_up and all(torch.count_nonzero(v) == 0 for v in lora_up)  # still at its zero init
    else:
        assert frozen == []


@pytest.mark.parametrize("name", STAGE_3)
def test_original_stage_3_config_builds_and_trains_with_tiny_networks(name, tmp_path):
    trial = train_original(name, tmp_path)
    ckpt = torch.load(trial / "ckpts" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == STEPS
    save = trial / "save"
    for video in (f"it{STEPS}-test", f"it{STEPS}-test_static", f"it{STEPS}-0_video"):
        assert (save / f"{video}.mp4").is_file() or (save / f"{video}.gif").is_file(), video
