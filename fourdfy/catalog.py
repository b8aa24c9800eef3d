"""The built-in module types, declared lazily: name, kind, the class, and where its ``Config`` can be read.

Plain data: nothing here imports a module. ``fourdfy/__init__`` imports this file once, so every built-in name
is known to :mod:`fourdfy.registry` from the start; a module is imported only when its type is looked up. Types
whose class lives in a heavy module (Lightning) name a light module for their ``Config``, so checking a config
imports neither Lightning nor diffusers nor transformers.

To add a type: register the class with ``@register("name")`` and add a row here.
"""

from fourdfy.registry import declare

BUILTINS: tuple[tuple[str, str, str, str | None], ...] = (
    # name, kind, "module:Class", "module:Config" where the class's module is heavy
    ("single-multiview-combined-camera-datamodule", "datamodule",
     "fourdfy.data.single_multiview_combined:SingleMultiviewCombinedCameraDataModule",
     "fourdfy.data.config:CombinedCameraDataConfig"),
    ("fourdfy-system", "system", "fourdfy.systems.fourdfy:FourDFYSystem", "fourdfy.systems.config:FourDFYSystemConfig"),
    ("implicit-volume", "geometry", "fourdfy.geometry.implicit_volume:ImplicitVolume", None),
    ("no-material", "material", "fourdfy.materials.no_material:NoMaterial", None),
    ("neural-environment-map-background", "background",
     "fourdfy.background.neural_environment_map_background:NeuralEnvironmentMapBackground", None),
    ("nerf-volume-renderer", "renderer", "fourdfy.renderers.nerf_volume_renderer:NeRFVolumeRenderer", None),
    ("mask-nerf-volume-renderer", "renderer", "fourdfy.renderers.nerf_volume_renderer:MaskNeRFVolumeRenderer", None),
    ("stable-nerf-volume-renderer", "renderer", "fourdfy.renderers.nerf_volume_renderer:StableNeRFVolumeRenderer", None),
    ("multiview-diffusion-guidance", "guidance",
     "fourdfy.guidance.multiview_diffusion_guidance:MultiviewDiffusionGuidance", None),
    ("stable-diffusion-vsd-guidance", "guidance",
     "fourdfy.guidance.stable_diffusion_vsd_guidance:StableDiffusionVSDGuidance", None),
    ("zeroscope-guidance", "guidance", "fourdfy.guidance.zeroscope_guidance:ZeroscopeGuidance", None),
    ("videocrafter-guidance", "guidance", "fourdfy.guidance.videocrafter_guidance:VideoCrafterGuidance", None),
    ("stable-diffusion-prompt-processor", "prompt_processor",
     "fourdfy.prompt_processors.stable_diffusion_prompt_processor:StableDiffusionPromptProcessor", None),
    ("zeroscope-prompt-processor", "prompt_processor",
     "fourdfy.prompt_processors.zeroscope_prompt_processor:ZeroscopePromptProcessor", None),
    ("videocrafter-prompt-processor", "prompt_processor",
     "fourdfy.prompt_processors.videocrafter_prompt_processor:VideoCrafterPromptProcessor", None),
    ("mesh-exporter", "exporter", "fourdfy.exporters.mesh_exporter:MeshExporter", None),
)  # fmt: skip

for _name, _kind, _target, _config in BUILTINS:
    declare(_name, _kind, _target, _config)
