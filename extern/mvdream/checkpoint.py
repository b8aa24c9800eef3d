"""Loading the official MVDream checkpoint (``MVDream/MVDream`` : ``sd-v2.1-base-4view.pt``) into our modules.

The file is a flat dict of fp32 tensors (guidance-models.md §1.3):

    model.diffusion_model.*     (690) -> extern.mvdream.unet.MultiViewUNetModel        (names unchanged)
    first_stage_model.*         (248) -> diffusers.AutoencoderKL                        (extern.ldm.vae mapping)
    cond_stage_model.model.*    (294) -> transformers.CLIPTextModel, 23 layers          (extern.ldm.text_encoder)
    betas, alphas_cumprod, ...  (12)  -> compared with extern.ldm.schedule, not loaded

Loading reads the file with ``torch.load(weights_only=True, mmap=True)`` (never ``weights_only=False``), builds every
module on the meta device and loads with ``strict=True, assign=True``, so the parameters are the (memory-mapped)
checkpoint tensors themselves: no random init, no second copy in RAM. Every failure raises
``MVDreamCheckpointError`` with the file and the offending keys named.
"""

import os
import pickle
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch
from diffusers import AutoencoderKL
from jaxtyping import Float
from torch import Tensor, nn
from transformers import CLIPTextConfig, CLIPTextModel

from extern.ldm.schedule import SCHEDULE_BUFFER_NAMES, schedule_buffers
from extern.ldm.state_dict_check import check_state_dict, remaining_meta_tensors
from extern.ldm.text_encoder import convert_open_clip_text_state_dict, reset_position_ids, sd2_text_encoder_config
from extern.mvdream.unet import MVDREAM_UNET_CONFIGS, MultiViewUNetModel
from extern.ldm.vae import (
    SD_VAE_DDCONFIG,
    SD_VAE_EMBED_DIM,
    SD_VAE_SCALING_FACTOR,
    convert_ldm_vae_state_dict,
    diffusers_vae_config,
)

HUB_REPO_ID = "MVDream/MVDream"
HUB_FILENAME = "sd-v2.1-base-4view.pt"
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.model."
# Any other cond-stage key is ignored together with the tower when the text encoder is not requested.
COND_STAGE_PREFIX = "cond_stage_model."
# Largest relative deviation of a stored schedule buffer from the recomputed table before we warn.
SCHEDULE_TOLERANCE = 1e-6

_WHERE_TO_GET = (
    f"Download it from the Hugging Face hub repo '{HUB_REPO_ID}', file '{HUB_FILENAME}' "
    f"(e.g. `huggingface-cli download {HUB_REPO_ID} {HUB_FILENAME}`), and pass its local path."
)


class MVDreamCheckpointError(Exception):
    """The MVDream checkpoint is absent, unreadable, or not the expected model.

    ``str(err)`` is a complete message; callers may catch and re-raise with the name of their config key, or pass
    ``config_key`` to ``load_mvdream`` to have it prefixed.

    Attributes:
        path: the file concerned, if known.
    """

    def __init__(self, message: str, path: Optional[Path] = None) -> None:
        super().__init__(message)
        self.path = path


@dataclass
class MVDreamModels:
    """The frozen networks of one MVDream checkpoint (all in eval mode with ``requires_grad=False``).

    Attributes:
        unet: the multi-view eps-prediction UNet.
        vae: the KL-f8 autoencoder (diffusers); latents are scaled by ``vae.config.scaling_factor`` (0.18215).
        text_encoder: 23-layer CLIP text model whose ``last_hidden_state`` is MVDream's conditioning, or None
            when ``load_text_encoder=False``.
        alphas_cumprod: recomputed LDM ᾱ table [1000], float32, on the requested device.
        path: the checkpoint file.
    """

    unet: MultiViewUNetModel
    vae: AutoencoderKL
    text_encoder: Optional[CLIPTextModel]
    alphas_cumprod: Float[Tensor, "T"]
    path: Path


def resolve_checkpoint_path(path: Optional[Union[str, os.PathLike]] = None,
                            cache_dir: Optional[Union[str, os.PathLike]] = None) -> Path:
    """Return a local checkpoint file: ``path`` itself, or the hub file fetched with ``hf_hub_download``.

    Args:
        path: local file; when None, ``MVDream/MVDream:sd-v2.1-base-4view.pt`` is downloaded (or taken from the
            HF cache; ``HF_HUB_OFFLINE=1`` restricts this to the cache).
        cache_dir: optional HF cache directory for the download.

    Raises:
        MVDreamCheckpointError: the file does not exist, or the download/cache lookup failed.
    """
    if path is not None:
        resolved = Path(path).expanduser()
        if not resolved.is_file():
            raise MVDreamCheckpointError(f"MVDream checkpoint not found: '{resolved}' is not a file. {_WHERE_TO_GET}",
                                         resolved)
        return resolved
    # Imported lazily: only the download path needs the hub client.
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(HUB_REPO_ID, HUB_FILENAME, cache_dir=cache_dir))
    except Exception as err:  # hub errors have many types (offline, 404, connection, auth); report them all alike
        raise MVDreamCheckpointError(
            f"MVDream checkpoint could not be obtained from the hub ({type(err).__name__}: {err}). "
            f"With HF_HUB_OFFLINE=1 only the local cache is searched. {_WHERE_TO_GET}"
        ) from err


def _corrupt_file_error(path: Path, err: Exception) -> MVDreamCheckpointError:
    size = path.stat().st_size
    return MVDreamCheckpointError(
        f"MVDream checkpoint '{path}' ({size / 1e9:.3f} GB) could not be read; it is probably truncated or corrupt "
        f"(the official file is 5.22 GB). Delete it and download again. {_WHERE_TO_GET} "
        f"Details: {type(err).__name__}: {err}", path
    )


def _torch_load(path: Path, mmap: bool) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def read_checkpoint(path: Path) -> dict[str, Tensor]:
    """Read a checkpoint file into a flat ``{name: tensor}`` dict without executing pickled code.

    ``.safetensors`` files are read with safetensors; anything else with ``torch.load(weights_only=True,
    mmap=True)``, retried without mmap only for the legacy (pre-zip) torch format. Lightning/DeepSpeed wrappers
    (``state_dict``, ``module``, ``_forward_module.``) are unwrapped.

    Raises:
        MVDreamCheckpointError: truncated/corrupt file, non-tensor pickles, or no tensor dict inside.
    """
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            raw: Any = load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as err:
            raise MVDreamCheckpointError(
                f"MVDream checkpoint '{path}' could not be read as safetensors (truncated or corrupt?): {err}", path
            ) from err
        return unwrap_state_dict(raw, path)
    try:
        try:
            raw = _torch_load(path, mmap=True)
        except RuntimeError as err:
            # Files from torch.save(_use_new_zipfile_serialization=False) cannot be memory-mapped.
            if "mmap can only be used" not in str(err):
                raise
            raw = _torch_load(path, mmap=False)
    except pickle.UnpicklingError as err:
        # The restricted unpickler also rejects garbage bytes; only "Unsupported global" means a real object.
        if "unsupported global" in str(err).lower():
            raise MVDreamCheckpointError(
                f"MVDream checkpoint '{path}' contains pickled objects other than tensors and containers, and is "
                f"never loaded with weights_only=False. Re-save its state dict (tensors only), or get the original "
                f"file. Details: {err}", path
            ) from err
        raise _corrupt_file_error(path, err) from err
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile) as err:
        raise _corrupt_file_error(path, err) from err
    return unwrap_state_dict(raw, path)


def unwrap_state_dict(obj: Any, path: Optional[Path] = None) -> dict[str, Tensor]:
    """Strip the usual containers (``{"state_dict": ...}``, ``{"module": ...}``, ``_forward_module.``) off a checkpoint.

    Raises:
        MVDreamCheckpointError: if what remains is not a dict of tensors.
    """
    while isinstance(obj, Mapping):
        if isinstance(obj.get("state_dict"), Mapping):
            obj = obj["state_dict"]
        elif isinstance(obj.get("module"), Mapping):
            obj = obj["module"]
        else:
            break
    if not isinstance(obj, Mapping):
        raise MVDreamCheckpointError(
            f"MVDream checkpoint '{path}' holds a {type(obj).__name__}, not a state dict. {_WHERE_TO_GET}", path
        )
    non_tensors = sorted(str(k) for k, v in obj.items() if not isinstance(v, Tensor))
    if non_tensors:
        raise MVDreamCheckpointError(
            f"MVDream checkpoint '{path}': entries that are not tensors: {non_tensors[:10]}"
            f"{' ...' if len(non_tensors) > 10 else ''}. Expected a flat state dict. {_WHERE_TO_GET}", path
        )
    wrapper = "_forward_module."
    return {(k[len(wrapper):] if k.startswith(wrapper) else k): v for k, v in obj.items()}


@dataclass
class CheckpointParts:
    """A checkpoint split by prefix (prefixes stripped)."""

    unet: dict[str, Tensor]
    vae: dict[str, Tensor]
    text: dict[str, Tensor]
    schedule: dict[str, Tensor]


def _prefix_summary(names: list[str]) -> str:
    counts: dict[str, int] = {}
    for name in names:
        head = name.split(".", 1)[0] + ("." if "." in name else "")
        counts[head] = counts.get(head, 0) + 1
    return ", ".join(f"'{head}*': {n}" for head, n in sorted(counts.items())) or "none"


def split_checkpoint(state_dict: Mapping[str, Tensor], load_text_encoder: bool = True,
                     path: Optional[Path] = None) -> CheckpointParts:
    """Split an MVDream state dict into UNet, VAE, text-tower and schedule-buffer parts.

    Args:
        state_dict: flat checkpoint dict.
        load_text_encoder: if False, all ``cond_stage_model.*`` keys are ignored (and may be absent).
        path: for error messages.

    Raises:
        MVDreamCheckpointError: a required prefix is absent, or keys outside the known prefixes exist.
    """
    parts = CheckpointParts({}, {}, {}, {})
    unknown: list[str] = []
    for name, tensor in state_dict.items():
        if name.startswith(UNET_PREFIX):
            parts.unet[name[len(UNET_PREFIX):]] = tensor
        elif name.startswith(VAE_PREFIX):
            parts.vae[name[len(VAE_PREFIX):]] = tensor
        elif name.startswith(TEXT_PREFIX) and load_text_encoder:
            parts.text[name[len(TEXT_PREFIX):]] = tensor
        elif name.startswith(COND_STAGE_PREFIX) and not load_text_encoder:
            continue
        elif name in SCHEDULE_BUFFER_NAMES:
            parts.schedule[name] = tensor
        else:
            unknown.append(name)
    required = [(UNET_PREFIX, parts.unet), (VAE_PREFIX, parts.vae)]
    if load_text_encoder:
        required.append((TEXT_PREFIX, parts.text))
    absent = [prefix for prefix, part in required if not part]
    if absent:
        raise MVDreamCheckpointError(
            f"'{path}' is not an MVDream checkpoint: no keys with prefix {absent}. Top-level key groups found: "
            f"{_prefix_summary(list(state_dict))}. {_WHERE_TO_GET}", path
        )
    if unknown:
        shown = ", ".join(sorted(unknown)[:12])
        raise MVDreamCheckpointError(
            f"'{path}' has {len(unknown)} key(s) outside the MVDream layout (model.diffusion_model., "
            f"first_stage_model., cond_stage_model.model., schedule buffers): {shown}"
            f"{' ...' if len(unknown) > 12 else ''}. Is this the right model? {_WHERE_TO_GET}", path
        )
    return parts


def compare_schedule_buffers(stored: Mapping[str, Tensor]) -> dict[str, float]:
    """Compare stored LDM schedule buffers with the recomputed tables; warn where they deviate.

    Deviation is ``max |stored - ours| / max(|ours|, 1)``; above ``SCHEDULE_TOLERANCE`` a ``UserWarning`` names the
    buffer. The stored buffers are never used (our tables are recomputed), so this only flags a checkpoint trained
    with a different schedule.

    Returns:
        the deviation per stored buffer name.
    """
    ours = schedule_buffers()
    deviations: dict[str, float] = {}
    for name, tensor in stored.items():
        reference = ours[name]
        if tuple(tensor.shape) != tuple(reference.shape):
            warnings.warn(f"MVDream checkpoint buffer '{name}' has shape {tuple(tensor.shape)}, expected "
                          f"{tuple(reference.shape)}: the checkpoint's schedule differs from the LDM linear "
                          f"0.00085..0.012 x 1000 schedule used here.", stacklevel=3)
            deviations[name] = float("inf")
            continue
        diff = (tensor.double() - reference.double()).abs() / reference.double().abs().clamp(min=1.0)
        deviations[name] = float(diff.max())
        if deviations[name] > SCHEDULE_TOLERANCE:
            warnings.warn(f"MVDream checkpoint buffer '{name}' deviates from the recomputed LDM schedule by "
                          f"{deviations[name]:.3g} (> {SCHEDULE_TOLERANCE}); the recomputed table is used.",
                          stacklevel=3)
    return deviations


def _load_strict(module: nn.Module, tensors: Mapping[str, Tensor], what: str, path: Path) -> None:
    try:
        check_state_dict(tensors, module.state_dict(), what)
    except ValueError as err:
        raise MVDreamCheckpointError(f"'{path}': {err}", path) from err
    module.load_state_dict(tensors, strict=True, assign=True)


def _finish(module: nn.Module, what: str, device: Optional[torch.device], dtype: Optional[torch.dtype]) -> None:
    left = remaining_meta_tensors(module)
    if left:  # a bug in our mapping, not a user error: every tensor must have come from the file
        raise RuntimeError(f"{what}: tensors left uninitialised after loading: {left[:10]}")
    module.to(device=device, dtype=dtype)
    module.requires_grad_(False)
    module.eval()


def load_mvdream(
    path: Optional[Union[str, os.PathLike]] = None,
    *,
    device: Optional[Union[str, torch.device]] = None,
    dtype: Optional[torch.dtype] = None,
    load_text_encoder: bool = True,
    unet_config: Optional[Mapping[str, Any]] = None,
    vae_ddconfig: Optional[Mapping[str, Any]] = None,
    text_config: Optional[CLIPTextConfig] = None,
    cache_dir: Optional[Union[str, os.PathLike]] = None,
    config_key: Optional[str] = None,
) -> MVDreamModels:
    """Load UNet, VAE and (optionally) text encoder of an MVDream checkpoint, each with ``strict=True``.

    Args:
        path: local checkpoint (``.pt``/``.ckpt``/``.safetensors``); None downloads ``MVDream/MVDream`` :
            ``sd-v2.1-base-4view.pt`` via ``hf_hub_download`` (cache only when ``HF_HUB_OFFLINE=1``).
        device: target device (default: stay on CPU, memory-mapped).
        dtype: target floating dtype (default: the file's, fp32).
        load_text_encoder: also build the 23-layer CLIP text model from ``cond_stage_model.model.*``.
        unet_config: ``MultiViewUNetModel`` kwargs (default: ``MVDREAM_UNET_CONFIGS["sd-v2.1-base-4view"]``).
        vae_ddconfig: LDM VAE ddconfig (default: the SD KL-f8 VAE).
        text_config: text encoder config (default: ``sd2_text_encoder_config()``).
        cache_dir: HF cache directory for the download.
        config_key: name of the caller's config option holding ``path``; prefixed to error messages.

    Returns:
        ``MVDreamModels`` with frozen, eval-mode modules and the recomputed ᾱ table.

    Raises:
        MVDreamCheckpointError: missing file, unreadable file, or a checkpoint of another model (keys listed).
    """
    target = torch.device(device) if device is not None else None
    try:
        file = resolve_checkpoint_path(path, cache_dir)
        parts = split_checkpoint(read_checkpoint(file), load_text_encoder, file)
        compare_schedule_buffers(parts.schedule)

        with torch.device("meta"):
            unet = MultiViewUNetModel(**dict(unet_config or MVDREAM_UNET_CONFIGS["sd-v2.1-base-4view"]))
        _load_strict(unet, parts.unet, f"UNet ({UNET_PREFIX}*)", file)
        _finish(unet, "UNet", target, dtype)

        vae_config = diffusers_vae_config(vae_ddconfig or SD_VAE_DDCONFIG, SD_VAE_EMBED_DIM, SD_VAE_SCALING_FACTOR)
        try:
            vae_tensors = convert_ldm_vae_state_dict(parts.vae, vae_config)
        except ValueError as err:
            raise MVDreamCheckpointError(f"'{file}': {err}", file) from err
        with torch.device("meta"):
            vae = AutoencoderKL(**vae_config)
        _load_strict(vae, vae_tensors, f"VAE ({VAE_PREFIX}*)", file)
        _finish(vae, "VAE", target, dtype)

        text_encoder = None
        if load_text_encoder:
            config = text_config or sd2_text_encoder_config()
            try:
                text_tensors = convert_open_clip_text_state_dict(parts.text, config)
            except ValueError as err:
                raise MVDreamCheckpointError(f"'{file}': {err}", file) from err
            with torch.device("meta"):
                text_encoder = CLIPTextModel(config)
            _load_strict(text_encoder, text_tensors, f"text encoder ({TEXT_PREFIX}*)", file)
            reset_position_ids(text_encoder)
            _finish(text_encoder, "text encoder", target, dtype)
    except MVDreamCheckpointError as err:
        if config_key is None:
            raise
        raise MVDreamCheckpointError(f"{config_key}: {err}", err.path) from err

    alphas_cumprod = schedule_buffers()["alphas_cumprod"].to(target or torch.device("cpu"))
    return MVDreamModels(unet=unet, vae=vae, text_encoder=text_encoder, alphas_cumprod=alphas_cumprod, path=file)
