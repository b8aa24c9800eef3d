"""``videocrafter-prompt-processor``: VideoCrafter2's own text conditioning, ``[77, 1024]`` per prompt.

VideoCrafter2 conditions on its checkpoint's ``FrozenOpenCLIPEmbedder(layer="penultimate")``: the OpenCLIP ViT-H-14
text tower of ``model.ckpt`` (``cond_stage_model.model.*``) run up to its second-to-last block, then ``ln_final``.
4D-fy computed it with the vendored LVDM code in a spawned process after putting LVDM on ``sys.path``.

Here, per string (cached exactly like the other processors, under ``md5("{pretrained_model_name_or_path}-{p}")``):

1. **Tokens** -- OpenCLIP's tokenizer layout: the CLIP byte-level BPE of the lower-cased, whitespace-normalised
   text, ``[<|startoftext|>, bpe..., <|endoftext|>]`` cut to 77 tokens with the end token kept last, then padded
   with **id 0** (:func:`open_clip_token_ids`). The BPE itself comes from transformers' ``CLIPTokenizer`` loaded
   from ``tokenizer_name_or_path``: OpenCLIP's vocabulary (``bpe_simple_vocab_16e6``) is OpenAI CLIP's, shared by
   every CLIP tokenizer folder (``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``, ``openai/clip-vit-large-patch14``, the
   ``tokenizer/`` of any SD 2.x folder). Padding is done here, not by the tokenizer, because those folders disagree
   on the pad token (``!`` = id 0 for SD 2.x, ``<|endoftext|>`` for OpenAI's) and the padded positions reach the
   UNet's cross-attention.
2. **Encoder** -- the checkpoint's text tower as a 23-layer transformers ``CLIPTextModel``
   (``extern.videocrafter.load_videocrafter2``, the same function as OpenCLIP's penultimate layer + ``ln_final``,
   verified in ``tests/extern/test_openclip_text_encoder.py``); its ``last_hidden_state`` is the embedding.
3. The negative prompt of 4D-fy's ``_vc`` configs is ``"low motion, static statue, not moving, no motion"`` (set
   by the configs, as in 4D-fy; the class default stays threestudio's empty string).

Deviations from 4D-fy, with reasons:

- no ``open_clip`` and no ``sys.path`` change: ``open_clip`` needs torchvision, which breaks this stack on CPU
  machines (``env-check.md``), and the transformers model computes the same function;
- the tokenizer is transformers' CLIP BPE instead of OpenCLIP's ``SimpleTokenizer``: same vocabulary, merges, special
  tokens, lower-casing and whitespace cleaning; OpenCLIP additionally runs ``ftfy.fix_text`` and HTML unescaping,
  so text with mojibake or HTML entities (``&amp;``) may tokenize differently (ordinary prompts do not);
- ``config`` (4D-fy: the LVDM yaml the model was built from) selects nothing: see :func:`check_lvdm_config`;
- the new key ``tokenizer_name_or_path`` says where the BPE files are (OpenCLIP ships them inside its wheel).

The reserved names ``tiny-random-videocrafter`` and ``random-init-videocrafter2`` (:mod:`fourdfy.stand_ins`) give a
random text encoder of the matching width with a character tokenizer, for tests and benchmarks.
"""

import dataclasses
import logging
from pathlib import PurePath
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from fourdfy import stand_ins
from fourdfy.config import ConfigError
from fourdfy.errors import MissingWeightsError
from fourdfy.prompt_processors.base import PromptProcessor
from fourdfy.registry import register

logger = logging.getLogger(__name__)

HUB_REPO_ID = "VideoCrafter/VideoCrafter2"
"""4D-fy's model id (``model.ckpt`` is downloaded from it); also the embedding-cache key in 4D-fy's configs."""
LVDM_CONFIG_NAME = "inference_t2v_512_v2.0.yaml"
"""File name of VideoCrafter2's LVDM model config (4D-fy's value of ``config`` ends with it)."""
DEFAULT_TOKENIZER = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
"""The OpenCLIP model whose text tower VideoCrafter2 uses; its hub repository holds the CLIP BPE tokenizer files."""
CONTEXT_LENGTH = 77
START_TOKEN, END_TOKEN = "<|startoftext|>", "<|endoftext|>"
PAD_ID = 0
"""OpenCLIP pads with zeros."""


def check_lvdm_config(value: str, key: str) -> None:
    """Check the ``config`` key of the VideoCrafter prompt processor and guidance.

    4D-fy built the LVDM model from this yaml (its vendored ``configs/inference_t2v_512_v2.0.yaml``). fourdfy has
    that file's architecture as code (``extern.videocrafter.VIDEOCRAFTER2_UNET_CONFIGS["t2v_512_v2"]``, the SD KL-f8
    VAE, the ViT-H text tower, the LDM schedule), so the key only has to name it: ``""`` or any path whose file name is
    ``inference_t2v_512_v2.0.yaml`` (4D-fy's value; the file is not read and need not exist) is accepted; anything
    else is refused, since no other LVDM model (e.g. VideoCrafter1's 1024 px ``inference_t2v_1024_v1.0.yaml``) is
    built in.

    Raises:
        ConfigError: ``key: ...`` naming the accepted values.
    """
    if value and PurePath(value).name != LVDM_CONFIG_NAME:
        raise ConfigError(
            f"{key}: {value!r} is not VideoCrafter2's LVDM config; fourdfy builds only that architecture (from its "
            f"own table, the yaml is not read). Use '' or 4D-fy's value (a path ending in {LVDM_CONFIG_NAME})"
        )


def open_clip_token_ids(
    bpe_ids: list[list[int]], start_id: int, end_id: int, length: int = CONTEXT_LENGTH
) -> Int[Tensor, "N L"]:
    """OpenCLIP's token layout from BPE ids without special tokens: ``[start, bpe..., end]``, cut to ``length`` with
    ``end`` as the last kept token, padded with 0.

    Example:
        ``open_clip_token_ids([[5, 6]], 49406, 49407, 6)`` -> ``[[49406, 5, 6, 49407, 0, 0]]``.
    """
    out = torch.full((len(bpe_ids), length), PAD_ID, dtype=torch.long)
    for n, ids in enumerate(bpe_ids):
        row = [start_id, *ids[: length - 2], end_id]
        out[n, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def load_clip_bpe_tokenizer(name: str, key: str, vocab_size: int) -> Any:
    """transformers ``CLIPTokenizer`` with the CLIP BPE vocabulary from a hub id or a local folder (or its
    ``tokenizer/`` subfolder, as in a diffusers folder).

    transformers 5 returns an empty 2-token tokenizer, without an error, when the files are absent; so the result is
    checked: ``vocab_size`` entries (the text encoder's) and CLIP's start/end tokens.

    Raises:
        MissingWeightsError: naming ``key`` when no candidate location holds such a tokenizer.
    """
    from transformers import CLIPTokenizer

    problems = []
    for subfolder in (None, "tokenizer"):
        where = f"{name}/{subfolder}" if subfolder else name
        try:
            kwargs = {"subfolder": subfolder} if subfolder else {}
            tokenizer = CLIPTokenizer.from_pretrained(name, **kwargs)
        except Exception as e:  # hub and file errors come in many types; each is reported, none is fatal here
            problems.append(f"{where}: {type(e).__name__}: {' '.join(str(e).split())[:200]}")
            continue
        if (
            len(tokenizer) == vocab_size
            and tokenizer.bos_token == START_TOKEN
            and tokenizer.eos_token == END_TOKEN
        ):
            return tokenizer
        problems.append(f"{where}: {len(tokenizer)} tokens, start/end {tokenizer.bos_token!r}/{tokenizer.eos_token!r}")
    raise MissingWeightsError(
        f"{key}: no CLIP BPE tokenizer with {vocab_size} tokens and {START_TOKEN}/{END_TOKEN} at {name!r} "
        f"({'; '.join(problems)}). Download one (e.g. `huggingface-cli download {DEFAULT_TOKENIZER} vocab.json "
        f"merges.txt tokenizer_config.json special_tokens_map.json`; any CLIP tokenizer folder, such as the "
        f"tokenizer/ of an SD 2.x folder, has the same vocabulary) and pass its local folder as {key}=/path."
    )


def load_text_tower(model: str, key: str) -> torch.nn.Module:
    """VideoCrafter2's text tower (23-layer ``CLIPTextModel``) from ``model.ckpt``: a local path, or 4D-fy's hub id
    (or ``""``) to download it. The UNet and VAE tensors of the file are memory-mapped, not read."""
    from extern.videocrafter import VideoCrafter2CheckpointError, load_videocrafter2

    try:
        models = load_videocrafter2(model or None, load_text_encoder=True, config_key=key)
    except VideoCrafter2CheckpointError as e:
        raise MissingWeightsError(" ".join(str(e).split())) from None
    return models.text_encoder


@register("videocrafter-prompt-processor")
class VideoCrafterPromptProcessor(PromptProcessor):
    """Prompt embeddings from VideoCrafter2's own OpenCLIP text tower (penultimate layer), for the VC2 guidance."""

    @dataclasses.dataclass
    class Config(PromptProcessor.Config):
        pretrained_model_name_or_path: str = HUB_REPO_ID
        """``model.ckpt``: a local path, or the hub id ``VideoCrafter/VideoCrafter2`` (or ``""``) to download it;
        or a stand-in name. Also the cache key of the embeddings (4D-fy's layout)."""
        config: str = ""
        """4D-fy's LVDM model yaml: ``""`` or a path ending in ``inference_t2v_512_v2.0.yaml`` (not read; see
        :func:`check_lvdm_config`)."""
        tokenizer_name_or_path: str = DEFAULT_TOKENIZER
        """Where the CLIP BPE tokenizer files are: hub id or local folder (or a diffusers folder with
        ``tokenizer/``). Not part of the cache key: every CLIP tokenizer has the same vocabulary. (Not a 4D-fy key:
        4D-fy used the vocabulary inside the ``open_clip`` package.)"""

        def __post_init__(self) -> None:
            super().__post_init__()
            check_lvdm_config(self.config, "config")

    def __init__(self, cfg=None, path: str = "system.prompt_processor_video") -> None:
        super().__init__(cfg, path)

    def encoder_options(self) -> dict:
        return {"tokenizer_name_or_path": self.cfg.tokenizer_name_or_path}

    @staticmethod
    def encode_prompts(
        model: str, path: str, prompts: list[str], tokenizer_name_or_path: str = DEFAULT_TOKENIZER
    ) -> list[Tensor]:
        """``[77, D]`` embeddings (CPU, fp32) of ``prompts``: checkpoint (or stand-in) text tower on OpenCLIP tokens."""
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        builder = stand_ins.lookup("text", model)
        if builder is not None:
            tokenize, encoder = builder()
            ids = tokenize(prompts)
        else:
            from extern.ldm import sd2_text_encoder_config

            # the (cheap) tokenizer first: a missing one fails before the 7.4 GB checkpoint is opened
            tokenizer = load_clip_bpe_tokenizer(
                tokenizer_name_or_path, f"{path}.tokenizer_name_or_path", sd2_text_encoder_config().vocab_size
            )
            encoder = load_text_tower(model, f"{path}.pretrained_model_name_or_path")
            bpe = tokenizer(prompts, add_special_tokens=False)["input_ids"]
            ids = open_clip_token_ids(bpe, tokenizer.bos_token_id, tokenizer.eos_token_id)
        encoder = encoder.to(device).eval()
        with torch.no_grad():
            hidden = encoder(ids.to(device))[0]
        return [h.float().cpu() for h in hidden]
