"""Prompt processors: text embeddings for the prompt, the negative prompt and the view-dependent prompts.

Embeddings are computed once per string and cached on disk in 4D-fy's layout,
``{cache_root}/text_embeddings/{md5(f"{pretrained_model_name_or_path}-{prompt}")}.pt`` (one ``[77, D]`` tensor per
file; ``cache_root`` is ``.threestudio_cache`` in the working directory unless ``FOURDFY_CACHE_DIR`` is set). A cache
file that is missing or unreadable is recomputed; files are written atomically, so concurrent ranks and killed runs
never leave a half-written embedding behind. 4D-fy's cold-cache crash (a wrong subprocess signature) does not exist
here: the subprocess (``spawn: true``) and in-process paths run the same function.
"""

import dataclasses
import hashlib
import logging
import multiprocessing
import os
from pathlib import Path
from typing import Optional

import torch
from jaxtyping import Float
from torch import Tensor

from fourdfy.config import ConfigError
from fourdfy.utils.base import BaseObject
from fourdfy.utils.io import atomic_write
from fourdfy.utils.tensor_fields import map_tensors

logger = logging.getLogger(__name__)

DIRECTIONS = ("side", "front", "back", "overhead")
"""View directions in 4D-fy's order; a camera gets the *last* one whose condition holds."""

CACHE_ENV = "FOURDFY_CACHE_DIR"


def cache_root() -> Path:
    """Root of the on-disk caches (``$FOURDFY_CACHE_DIR`` or ``./.threestudio_cache``)."""
    return Path(os.environ.get(CACHE_ENV, ".threestudio_cache"))


def embedding_cache_path(model: str, prompt: str) -> Path:
    """4D-fy's cache file of one string's embedding."""
    digest = hashlib.md5(f"{model}-{prompt}".encode()).hexdigest()
    return cache_root() / "text_embeddings" / f"{digest}.pt"


def shift_azimuth(azimuth_deg: Tensor) -> Tensor:
    """Map azimuths to [-180, 180)."""
    return (azimuth_deg + 180.0) % 360.0 - 180.0


def direction_index(
    elevation_deg: Float[Tensor, "B"],
    azimuth_deg: Float[Tensor, "B"],
    front_threshold: float,
    back_threshold: float,
    overhead_threshold: float,
) -> Tensor:
    """Index into :data:`DIRECTIONS` for each camera: the last matching of side (always), front
    (``|azimuth| < front_threshold``), back (``|azimuth| > 180 - back_threshold``), overhead (``elevation >
    overhead_threshold``).

    Example:
        azimuth 0, elevation 10 -> front (1); azimuth 90 -> side (0); azimuth 179 -> back (2); elevation 70 ->
        overhead (3) with the default threshold 60.
    """
    azi = shift_azimuth(azimuth_deg)
    idx = torch.zeros_like(azi, dtype=torch.long)
    idx = torch.where(azi.abs() < front_threshold, torch.ones_like(idx), idx)
    back = (azi > 180.0 - back_threshold) | (azi < -180.0 + back_threshold)
    idx = torch.where(back, torch.full_like(idx, 2), idx)
    idx = torch.where(elevation_deg > overhead_threshold, torch.full_like(idx, 3), idx)
    return idx


@dataclasses.dataclass
class PromptEmbeddings:
    """Text embeddings of one prompt: plain, negative, and per view direction (side, front, back, overhead)."""

    cond: Float[Tensor, "L D"]
    uncond: Float[Tensor, "L D"]
    cond_directional: Float[Tensor, "4 L D"]
    uncond_directional: Float[Tensor, "4 L D"]
    front_threshold: float
    back_threshold: float
    overhead_threshold: float

    def get_text_embeddings(
        self, elevation: Float[Tensor, "B"], azimuth: Float[Tensor, "B"], view_dependent_prompting: bool
    ) -> tuple[Float[Tensor, "B L D"], Float[Tensor, "B L D"]]:
        """Per-camera (conditional, unconditional) embeddings, on the device of ``elevation``."""
        b = elevation.shape[0]
        device = elevation.device
        emb = self.on(device)
        if not view_dependent_prompting:
            return emb.cond.expand(b, -1, -1), emb.uncond.expand(b, -1, -1)
        idx = direction_index(
            elevation, azimuth, self.front_threshold, self.back_threshold, self.overhead_threshold
        ).to(device)
        return emb.cond_directional[idx], emb.uncond_directional[idx]

    def to(self, device: torch.device) -> "PromptEmbeddings":
        """Move all tensors to ``device``."""
        return map_tensors(self, lambda x: x.to(device))

    def on(self, device: torch.device) -> "PromptEmbeddings":
        """These embeddings on ``device``: ``self`` if they are there, else a copy made on first use and kept (the
        embeddings never change; copying them every step would synchronise the host with the GPU each time)."""
        if self.cond.device == device:
            return self
        copies = self.__dict__.setdefault("_copies", {})
        if device not in copies:
            copies[device] = self.to(device)
        return copies[device]


def directional_prompts(prompt: str, view_dependent_prompt_front: bool) -> list[str]:
    """``"{p}, side view"`` ... (or ``"side view of {p}"`` with ``view_dependent_prompt_front``)."""
    if view_dependent_prompt_front:
        return [f"{d} view of {prompt}" for d in DIRECTIONS]
    return [f"{prompt}, {d} view" for d in DIRECTIONS]


def _encode_and_cache(
    encoder_cls_path: str, model: str, path: str, prompts: list[str], options: Optional[dict] = None
) -> None:
    """Subprocess entry point: build the encoder and write the embeddings of ``prompts`` to the cache."""
    import importlib

    module, name = encoder_cls_path.rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    embeddings = cls.encode_prompts(model, path, prompts, **(options or {}))
    for prompt, emb in zip(prompts, embeddings):
        save_embedding(embedding_cache_path(model, prompt), emb)


def save_embedding(path: Path, embedding: Tensor) -> None:
    """Write one cached embedding atomically."""
    atomic_write(path, lambda f: torch.save(embedding.detach().cpu().clone(), f))


def load_embedding(path: Path) -> Optional[Tensor]:
    """Read one cached embedding; ``None`` when the file is missing or unreadable (it is then recomputed)."""
    if not path.is_file():
        return None
    try:
        emb = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file is a cache miss, not a crash
        logger.warning("ignoring unreadable embedding cache file %s (%s); recomputing", path, e)
        return None
    if not isinstance(emb, Tensor) or emb.dim() != 2:
        logger.warning("ignoring malformed embedding cache file %s; recomputing", path)
        return None
    return emb


class PromptProcessor(BaseObject):
    """Base prompt processor. Subclasses implement :meth:`encode_prompts` (a static method, run in-process or in a
    spawned subprocess so the text encoder's memory is returned to the system afterwards)."""

    kind = "prompt_processor"

    @dataclasses.dataclass
    class Config:
        prompt: str = "a hamburger"
        """The text prompt."""
        negative_prompt: str = ""
        """Negative prompt (also used for every view direction)."""
        pretrained_model_name_or_path: str = ""
        """Hub id or local diffusers folder holding ``tokenizer/`` and ``text_encoder/``."""
        overhead_threshold: float = 60.0
        """Elevation (degrees) above which the 'overhead view' prompt is used."""
        front_threshold: float = 45.0
        """Half-width (degrees) of the azimuth range using the 'front view' prompt."""
        back_threshold: float = 45.0
        """Half-width (degrees) of the azimuth range using the 'back view' prompt."""
        view_dependent_prompt_front: bool = False
        """Write view prompts as 'side view of ...' instead of '..., side view'."""
        use_cache: bool = True
        """Read and write the on-disk embedding cache."""
        spawn: bool = True
        """Compute missing embeddings in a subprocess (frees the text encoder's memory completely)."""
        config: str = ""
        """Model config file (used by the VideoCrafter processor only; must be empty here)."""

        def __post_init__(self) -> None:
            if self.prompt.startswith("lib:"):
                raise ConfigError("prompt: 'lib:' prompts (threestudio's prompt library) are not supported")

    def __init__(self, cfg=None, path: str = "system.prompt_processor") -> None:
        self.path = path
        super().__init__(cfg, path)

    def configure(self) -> None:
        if self.cfg.config and self.registry_name != "videocrafter-prompt-processor":
            raise ConfigError(f"{self.path}.config: only used by the VideoCrafter prompt processor; leave it empty")
        self.embeddings = self.load_embeddings()

    def __call__(self) -> PromptEmbeddings:
        return self.embeddings

    @staticmethod
    def encode_prompts(model: str, path: str, prompts: list[str]) -> list[Tensor]:
        """Encode strings into ``[L, D]`` embeddings (CPU tensors). ``path`` is the config key, for messages.
        Subclasses whose :meth:`encoder_options` is not empty take those options as keyword arguments too."""
        raise NotImplementedError

    def encoder_options(self) -> dict:
        """Extra keyword arguments of :meth:`encode_prompts` taken from the config (plain values, so they reach a
        spawned subprocess); none by default."""
        return {}

    def load_embeddings(self) -> PromptEmbeddings:
        """Load every needed embedding from the cache, computing the missing ones."""
        c = self.cfg
        model = c.pretrained_model_name_or_path
        strings = [c.prompt, c.negative_prompt] + directional_prompts(c.prompt, c.view_dependent_prompt_front)
        unique = list(dict.fromkeys(strings))
        found: dict[str, Tensor] = {}
        if c.use_cache:
            for s in unique:
                emb = load_embedding(embedding_cache_path(model, s))
                if emb is not None:
                    found[s] = emb
        missing = [s for s in unique if s not in found]
        if missing:
            logger.info("computing %d text embedding(s) with %s", len(missing), model)
            if c.spawn and c.use_cache:
                self._compute_in_subprocess(model, missing)
                for s in missing:
                    emb = load_embedding(embedding_cache_path(model, s))
                    if emb is None:
                        raise RuntimeError(f"{self.path}: the embedding subprocess did not write {s!r}")
                    found[s] = emb
            else:
                computed = type(self).encode_prompts(model, self.path, missing, **self.encoder_options())
                for s, emb in zip(missing, computed):
                    found[s] = emb
                    if c.use_cache:
                        save_embedding(embedding_cache_path(model, s), emb)
        neg = found[c.negative_prompt]
        directional = [found[s] for s in directional_prompts(c.prompt, c.view_dependent_prompt_front)]
        return PromptEmbeddings(
            cond=found[c.prompt],
            uncond=neg,
            cond_directional=torch.stack(directional),
            uncond_directional=neg[None].expand(len(DIRECTIONS), -1, -1).clone(),
            front_threshold=c.front_threshold,
            back_threshold=c.back_threshold,
            overhead_threshold=c.overhead_threshold,
        )

    def _compute_in_subprocess(self, model: str, prompts: list[str]) -> None:
        cls_path = f"{type(self).__module__}.{type(self).__qualname__}"
        ctx = multiprocessing.get_context("spawn")
        options = self.encoder_options()
        proc = ctx.Process(target=_encode_and_cache, args=(cls_path, model, self.path, prompts, options))
        proc.start()
        proc.join()
        if proc.exitcode != 0:
            # the child printed its error; repeat the work here so the user sees the real exception
            logger.warning("embedding subprocess failed (exit code %s); computing in-process", proc.exitcode)
            for s, emb in zip(prompts, type(self).encode_prompts(model, self.path, prompts, **options)):
                save_embedding(embedding_cache_path(model, s), emb)
