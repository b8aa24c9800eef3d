"""Reading an LDM-family checkpoint file (MVDream, VideoCrafter2) safely and building its frozen modules.

An LDM ``LatentDiffusion`` checkpoint is one state dict (possibly wrapped by Lightning or DeepSpeed) whose keys are

    model.diffusion_model.*     -> the UNet (names unchanged)
    first_stage_model.*         -> the KL-f8 VAE, mapped onto diffusers ``AutoencoderKL`` (``extern.ldm.vae``)
    cond_stage_model.model.*    -> the OpenCLIP ViT-H-14 text tower, mapped onto ``CLIPTextModel``
                                   (``extern.ldm.text_encoder``, penultimate layer)
    betas, alphas_cumprod, ...  -> schedule buffers: compared with the recomputed tables, never loaded

Files are read with ``torch.load(weights_only=True, mmap=True)`` (never ``weights_only=False``) or safetensors;
modules are built on the meta device and loaded with ``strict=True, assign=True``, so the parameters are the
(memory-mapped) checkpoint tensors themselves: no random init, no second copy in RAM. Every failure raises the
model's own error class (``CheckpointSource.error``) with the file, where to get it, and the offending keys named.
"""

import os
import pickle
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch
from diffusers import AutoencoderKL
from torch import Tensor, nn
from transformers import CLIPTextConfig, CLIPTextModel

from extern.ldm.state_dict_check import check_state_dict, remaining_meta_tensors
from extern.ldm.text_encoder import convert_open_clip_text_state_dict, reset_position_ids
from extern.ldm.vae import convert_ldm_vae_state_dict

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.model."
# Any other cond-stage key is ignored together with the tower when the text encoder is not requested.
COND_STAGE_PREFIX = "cond_stage_model."
# Largest relative deviation of a stored schedule buffer from the recomputed table before we warn.
SCHEDULE_TOLERANCE = 1e-6


@dataclass(frozen=True)
class CheckpointSource:
    """Which checkpoint a loader expects: names for messages, the hub file, and the error class to raise.

    Attributes:
        model: model name used in messages ("MVDream", "VideoCrafter2").
        repo_id, filename: the Hugging Face hub file.
        size_text: the official file's size, for the truncation message ("5.22 GB").
        error: exception class, called as ``error(message, path)``.
        path_option: the config key that takes a local path, named in messages (optional).
        article: "a" or "an" before ``model`` ("an MVDream checkpoint", "a VideoCrafter2 checkpoint").
    """

    model: str
    repo_id: str
    filename: str
    size_text: str
    error: Callable[[str, Optional[Path]], Exception]
    path_option: Optional[str] = None
    article: str = "a"

    @property
    def where_to_get(self) -> str:
        """One sentence saying where the file comes from."""
        option = f" (config key `{self.path_option}`)" if self.path_option else ""
        return (f"Download it from the Hugging Face hub repo '{self.repo_id}', file '{self.filename}' "
                f"(e.g. `huggingface-cli download {self.repo_id} {self.filename}`), and pass its local path"
                f"{option}.")

    def fail(self, message: str, path: Optional[Path] = None) -> Exception:
        """The error to raise (``raise source.fail(...)``)."""
        return self.error(message, path)


def resolve_checkpoint_path(source: CheckpointSource, path: Optional[Union[str, os.PathLike]] = None,
                            cache_dir: Optional[Union[str, os.PathLike]] = None) -> Path:
    """Return a local checkpoint file: ``path`` itself, or the hub file fetched with ``hf_hub_download``.

    With ``path=None`` the hub file is downloaded (or taken from the HF cache; ``HF_HUB_OFFLINE=1`` restricts this
    to the cache). Raises ``source.error`` if the file does not exist or the download/cache lookup fails.
    """
    if path is not None:
        resolved = Path(path).expanduser()
        if not resolved.is_file():
            raise source.fail(f"{source.model} checkpoint not found: '{resolved}' is not a file. "
                              f"{source.where_to_get}", resolved)
        return resolved
    # Imported lazily: only the download path needs the hub client.
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(source.repo_id, source.filename, cache_dir=cache_dir))
    except Exception as err:  # hub errors have many types (offline, 404, connection, auth); report them all alike
        raise source.fail(
            f"{source.model} checkpoint could not be obtained from the hub ({type(err).__name__}: {err}). "
            f"With HF_HUB_OFFLINE=1 only the local cache is searched. {source.where_to_get}"
        ) from err


def _corrupt_file_error(source: CheckpointSource, path: Path, err: Exception) -> Exception:
    size = path.stat().st_size
    return source.fail(
        f"{source.model} checkpoint '{path}' ({size / 1e9:.3f} GB) could not be read; it is probably truncated or "
        f"corrupt (the official file is {source.size_text}). Delete it and download again. {source.where_to_get} "
        f"Details: {type(err).__name__}: {err}", path
    )


def _torch_load(path: Path, mmap: bool) -> Any:
    return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def read_checkpoint(source: CheckpointSource, path: Path) -> dict[str, Tensor]:
    """Read a checkpoint file into a flat ``{name: tensor}`` dict without executing pickled code.

    ``.safetensors`` files are read with safetensors; anything else with ``torch.load(weights_only=True,
    mmap=True)``, retried without mmap only for the legacy (pre-zip) torch format. Lightning/DeepSpeed wrappers
    (``state_dict``, ``module``, ``_forward_module.``) are unwrapped. Raises ``source.error`` for a truncated or
    corrupt file, pickled objects other than tensors, or no tensor dict inside.
    """
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            raw: Any = load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as err:
            raise source.fail(f"{source.model} checkpoint '{path}' could not be read as safetensors (truncated or "
                              f"corrupt?): {err}", path) from err
        return unwrap_state_dict(source, raw, path)
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
            raise source.fail(
                f"{source.model} checkpoint '{path}' contains pickled objects other than tensors and containers, "
                f"and is never loaded with weights_only=False. Re-save its state dict (tensors only), or get the "
                f"original file. Details: {err}", path
            ) from err
        raise _corrupt_file_error(source, path, err) from err
    except Exception as err:  # garbage fails in many ways: EOFError, KeyError, UnicodeDecodeError, BadZipFile, ...
        raise _corrupt_file_error(source, path, err) from err
    return unwrap_state_dict(source, raw, path)


def unwrap_state_dict(source: CheckpointSource, obj: Any, path: Optional[Path] = None) -> dict[str, Tensor]:
    """Strip the usual containers (``{"state_dict": ...}``, ``{"module": ...}``, ``_forward_module.``) off a checkpoint.

    Lightning checkpoints also hold ``epoch``, ``global_step`` etc. next to ``state_dict``; those are dropped with
    the wrapper. Raises ``source.error`` if what remains is not a flat dict of tensors.
    """
    while isinstance(obj, Mapping):
        if isinstance(obj.get("state_dict"), Mapping):
            obj = obj["state_dict"]
        elif isinstance(obj.get("module"), Mapping):
            obj = obj["module"]
        else:
            break
    if not isinstance(obj, Mapping):
        raise source.fail(f"{source.model} checkpoint '{path}' holds a {type(obj).__name__}, not a state dict. "
                          f"{source.where_to_get}", path)
    non_tensors = sorted(str(k) for k, v in obj.items() if not isinstance(v, Tensor))
    if non_tensors:
        raise source.fail(
            f"{source.model} checkpoint '{path}': entries that are not tensors: {non_tensors[:10]}"
            f"{' ...' if len(non_tensors) > 10 else ''}. Expected a flat state dict. {source.where_to_get}", path
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


def split_checkpoint(source: CheckpointSource, state_dict: Mapping[str, Tensor], buffer_names: tuple[str, ...],
                     load_text_encoder: bool = True, path: Optional[Path] = None) -> CheckpointParts:
    """Split an LDM state dict into UNet, VAE, text-tower and schedule-buffer parts.

    Args:
        source: the expected checkpoint (for messages).
        state_dict: flat checkpoint dict.
        buffer_names: the unprefixed buffers the model registers (absent ones are tolerated).
        load_text_encoder: if False, all ``cond_stage_model.*`` keys are ignored (and may be absent).
        path: for error messages.

    Raises:
        source.error: a required prefix is absent, or keys outside the known prefixes exist.
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
        elif name in buffer_names:
            parts.schedule[name] = tensor
        else:
            unknown.append(name)
    required = [(UNET_PREFIX, parts.unet), (VAE_PREFIX, parts.vae)]
    if load_text_encoder:
        required.append((TEXT_PREFIX, parts.text))
    absent = [prefix for prefix, part in required if not part]
    if absent:
        raise source.fail(
            f"'{path}' is not {source.article} {source.model} checkpoint: no keys with prefix {absent}. "
            f"Top-level key groups found: {_prefix_summary(list(state_dict))}. {source.where_to_get}", path
        )
    if unknown:
        shown = ", ".join(sorted(unknown)[:12])
        raise source.fail(
            f"'{path}' has {len(unknown)} key(s) outside the {source.model} layout ({UNET_PREFIX}, {VAE_PREFIX}, "
            f"{TEXT_PREFIX}, schedule buffers): {shown}{' ...' if len(unknown) > 12 else ''}. "
            f"Is this the right model? {source.where_to_get}", path
        )
    return parts


def compare_schedule_buffers(source: CheckpointSource, stored: Mapping[str, Tensor],
                             reference: Mapping[str, Tensor]) -> dict[str, float]:
    """Compare stored schedule buffers with recomputed tables; warn where they deviate.

    Deviation is ``max |stored - ours| / max(|ours|, 1)``; above ``SCHEDULE_TOLERANCE`` (or for a shape mismatch)
    a ``UserWarning`` names the buffer. The stored buffers are never used, so this only flags a checkpoint trained
    with a different schedule.

    Returns:
        the deviation per stored buffer name (inf for a shape mismatch).
    """
    deviations: dict[str, float] = {}
    for name, tensor in stored.items():
        ours = reference[name]
        if tuple(tensor.shape) != tuple(ours.shape):
            warnings.warn(f"{source.model} checkpoint buffer '{name}' has shape {tuple(tensor.shape)}, expected "
                          f"{tuple(ours.shape)}: the checkpoint's schedule differs from the one recomputed here.",
                          stacklevel=3)
            deviations[name] = float("inf")
            continue
        diff = (tensor.double() - ours.double()).abs() / ours.double().abs().clamp(min=1.0)
        deviations[name] = float(diff.max())
        if deviations[name] > SCHEDULE_TOLERANCE:
            warnings.warn(f"{source.model} checkpoint buffer '{name}' deviates from the recomputed schedule by "
                          f"{deviations[name]:.3g} (> {SCHEDULE_TOLERANCE}); the recomputed table is used.",
                          stacklevel=3)
    return deviations


def load_strict(source: CheckpointSource, module: nn.Module, tensors: Mapping[str, Tensor], what: str,
                path: Path) -> None:
    """Check names and shapes (every mismatch listed in ``source.error``), then ``load_state_dict(strict, assign)``."""
    try:
        check_state_dict(tensors, module.state_dict(), what)
    except ValueError as err:
        raise source.fail(f"'{path}': {err}", path) from err
    module.load_state_dict(tensors, strict=True, assign=True)


def finish_module(module: nn.Module, what: str, device: Optional[torch.device], dtype: Optional[torch.dtype]) -> None:
    """Move to ``device``/``dtype``, freeze and set eval mode; fail if any tensor was never loaded (a mapping bug)."""
    left = remaining_meta_tensors(module)
    if left:
        raise RuntimeError(f"{what}: tensors left uninitialised after loading: {left[:10]}")
    module.to(device=device, dtype=dtype)
    module.requires_grad_(False)
    module.eval()


def build_vae(source: CheckpointSource, tensors: Mapping[str, Tensor], config: Mapping[str, Any], path: Path,
              device: Optional[torch.device], dtype: Optional[torch.dtype]) -> AutoencoderKL:
    """Frozen diffusers ``AutoencoderKL`` (``config`` from ``diffusers_vae_config``) from ``first_stage_model.*``."""
    try:
        mapped = convert_ldm_vae_state_dict(tensors, dict(config))
    except ValueError as err:
        raise source.fail(f"'{path}': {err}", path) from err
    with torch.device("meta"):
        vae = AutoencoderKL(**config)
    load_strict(source, vae, mapped, f"VAE ({VAE_PREFIX}*)", path)
    finish_module(vae, "VAE", device, dtype)
    return vae


def build_text_encoder(source: CheckpointSource, tensors: Mapping[str, Tensor], config: CLIPTextConfig, path: Path,
                       device: Optional[torch.device], dtype: Optional[torch.dtype]) -> CLIPTextModel:
    """Frozen ``CLIPTextModel`` (penultimate-layer OpenCLIP text tower) from ``cond_stage_model.model.*``."""
    try:
        mapped = convert_open_clip_text_state_dict(tensors, config)
    except ValueError as err:
        raise source.fail(f"'{path}': {err}", path) from err
    with torch.device("meta"):
        text_encoder = CLIPTextModel(config)
    load_strict(source, text_encoder, mapped, f"text encoder ({TEXT_PREFIX}*)", path)
    reset_position_ids(text_encoder)
    finish_module(text_encoder, "text encoder", device, dtype)
    return text_encoder
