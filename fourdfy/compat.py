"""4D-fy keys that fourdfy accepts only at their default values, in one table.

4D-fy's YAMLs (and threestudio's config classes behind them) carry keys that no 4D-fy code path reads, or that
select features fourdfy does not have (normals, proposal networks, moving training cameras, ...). A 4D-fy config
must still load unchanged, and a user who sets such a key to anything else must hear why it cannot work, so each
key is listed here with its accepted value and the reason. :func:`strip` checks and removes them from a config
slice *before* strict parsing; the ``Config`` classes then list only what the code uses.

Keys are dotted paths inside the config of the registered type named in the first column (so
``single_view.train_dynamic_camera`` of the data module is ``data.single_view.train_dynamic_camera``).
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

from fourdfy.config import ConfigError, join_path

NO_NORMALS = "no 4D-fy material uses normals, so fourdfy computes none"
NO_PROPOSAL = "only the occupancy-grid estimator exists (4D-fy's configs use no other)"
NOT_READ = "present in 4D-fy's configs but read by no 4D-fy code"


@dataclasses.dataclass(frozen=True)
class CompatKey:
    """One accepted-at-default key."""

    type_name: str
    """Registered type whose config holds the key."""
    key: str
    """Dotted path inside that config."""
    value: Any
    """The only accepted value (4D-fy's default)."""
    reason: str
    """Why any other value is refused."""


_SYSTEM = "fourdfy-system"
_DATA = "single-multiview-combined-camera-datamodule"
_MASK = "mask-nerf-volume-renderer"

COMPAT: tuple[CompatKey, ...] = (
    CompatKey(_SYSTEM, "geometry_convert_from", None, "converting a geometry from another is unused by 4D-fy"),
    CompatKey(_SYSTEM, "geometry_convert_inherit_texture", False, "geometry conversion is unused by 4D-fy"),
    CompatKey(_SYSTEM, "geometry_convert_override", {}, "geometry conversion is unused by 4D-fy"),
    CompatKey(_SYSTEM, "guidance_type_image", "", "the image-guidance slot is unused by 4D-fy"),
    CompatKey(_SYSTEM, "guidance_image", {}, "the image-guidance slot is unused by 4D-fy"),
    CompatKey(_SYSTEM, "prompt_processor_type_image", "", "the image-guidance slot is unused by 4D-fy"),
    CompatKey(_SYSTEM, "prompt_processor_image", {}, "the image-guidance slot is unused by 4D-fy"),
    CompatKey(_SYSTEM, "visualize_samples", False, "sampling images from the VSD model is not implemented"),
    CompatKey(_SYSTEM, "stage", "coarse", "4D-fy has one stage kind"),
    CompatKey(_SYSTEM, "scheduler", None, "no 4D-fy config uses a learning-rate scheduler; none is implemented"),
    CompatKey(_SYSTEM, "loss.lambda_orient", 0.0, f"the orientation loss needs normals: {NO_NORMALS}"),
    CompatKey(_SYSTEM, "loss.lambda_tv", 0.0, f"{NOT_READ}; the temporal smoothness term is lambda_deformation"),
    CompatKey("implicit-volume", "normal_type", "finite_difference", NO_NORMALS),
    CompatKey("implicit-volume", "finite_difference_normal_eps", 0.01, NO_NORMALS),
    CompatKey("nerf-volume-renderer", "return_comp_normal", False, NO_NORMALS),
    CompatKey("nerf-volume-renderer", "return_normal_perturb", False, NO_NORMALS),
    CompatKey(_MASK, "return_comp_normal", False, NO_NORMALS),
    CompatKey(_MASK, "return_normal_perturb", False, NO_NORMALS),
    CompatKey(_MASK, "estimator", "occgrid", NO_PROPOSAL),
    CompatKey(_MASK, "proposal_network_config", None, NO_PROPOSAL),
    CompatKey(_MASK, "prop_optimizer_config", None, NO_PROPOSAL),
    CompatKey(_MASK, "prop_scheduler_config", None, NO_PROPOSAL),
    CompatKey(_MASK, "num_samples_per_ray_proposal", 64, NO_PROPOSAL),
    CompatKey(_MASK, "num_samples_per_ray_importance", 64, NO_PROPOSAL),
    CompatKey("stable-diffusion-vsd-guidance", "enable_sequential_cpu_offload", False,
              "Lightning places the guidance on the training device and accelerate's offload hooks would move it "
              "back behind its back; to save memory use half_precision_weights, enable_attention_slicing or a "
              "low-VRAM config"),
    *(
        CompatKey("videocrafter-guidance", key, value, reason)
        for key, value, reason in (
            ("enable_sequential_cpu_offload", False, "a diffusers-pipeline option; VideoCrafter2 is not a pipeline "
             "here (to save memory: low_ram_vae, a smaller frame_size, or device placement)"),
            ("enable_attention_slicing", False, "the UNet's attention is PyTorch SDPA, which needs no slicing"),
            ("enable_channels_last_format", False, "the UNet mixes 2-D and 3-D convolutions; not implemented"),
            ("use_sjc", False, "score Jacobian chaining is not implemented (no 4D-fy config uses it)"),
            ("var_red", True, "read only by score Jacobian chaining (use_sjc), which is not implemented"),
            ("token_merging", False, "token merging (tomesd) patches diffusers UNets only; not implemented"),
            ("token_merging_params", {}, "token merging is not implemented"),
            ("use_hifa", False, "4D-fy's HiFA path is broken (undefined size_scale, decode_latents raises)"),
        )
    ),
    *(
        CompatKey(_DATA, f"{view}.{key}", value, reason)
        for view in ("single_view", "multi_view")
        for key, value, reason in (
            ("train_dynamic_camera", False, "moving cameras within a clip are broken in 4D-fy (reference §11)"),
            ("num_test_loop_factor", 1, "only read by 4D-fy's unused test_traj paths"),
            ("num_test_loop_static", 4, "only read by 4D-fy's unused test_traj paths"),
            ("light_sample_strategy", "dreamfusion", "4D-fy samples lights the DreamFusion way only"),
            ("eval_batch_size", 1, "evaluation renders one view per batch, as in 4D-fy"),
        )
    ),
)  # fmt: skip


def _pop(data: dict, dotted: str) -> tuple[bool, Any]:
    """Remove ``dotted`` from the nested mapping ``data`` (copied on the way); returns (found, value)."""
    head, _, rest = dotted.partition(".")
    if head not in data:
        return False, None
    if not rest:
        return True, data.pop(head)
    inner = data[head]
    if not isinstance(inner, Mapping):
        return False, None
    inner = dict(inner)
    data[head] = inner
    return _pop(inner, rest)


def strip(type_name: str, raw: Any, path: str) -> Any:
    """``raw`` without the compatibility keys of ``type_name``; each one set to another value than 4D-fy's is an
    error naming its dotted key, the accepted value and the reason (all of them in one :class:`ConfigError`)."""
    entries = [c for c in COMPAT if c.type_name == type_name]
    if not entries or not isinstance(raw, Mapping):
        return raw
    data = dict(raw)
    errors = []
    for entry in entries:
        found, value = _pop(data, entry.key)
        if found and value != entry.value:
            errors.append(
                f"{join_path(path, entry.key)}: only {entry.value!r} is accepted (got {value!r}): {entry.reason}; "
                "remove the key"
            )
    if errors:
        raise ConfigError("\n".join(errors))
    return data
