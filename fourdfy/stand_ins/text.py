"""Tiny text stand-in and the seeding helper every tiny stand-in uses.

``tiny-random-clip`` (``pretrained_model_name_or_path`` of a prompt processor): a 2-layer CLIP text encoder of
width :data:`TINY_TEXT_DIM` and a character-level tokenizer with CLIP's 77-token layout. Built deterministically
(fixed seed) with the real class, so the code paths are the real ones; only the weights are random.
"""

from contextlib import contextmanager

import torch
from jaxtyping import Int
from torch import Tensor

TINY_CLIP = "tiny-random-clip"
TINY_TEXT_DIM = 32
MAX_LENGTH = 77
_SOT, _EOT, _PAD, _OFFSET, _VOCAB = 1, 2, 0, 3, 259


@contextmanager
def seeded(seed: int):
    """Run a block with a fixed global torch seed, restoring the RNG state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class TinyCharTokenizer:
    """Character-level tokenizer with CLIP's layout: start token, characters, end token, zero padding to 77."""

    model_max_length = MAX_LENGTH

    def __call__(self, prompts: list[str]) -> Int[Tensor, "N 77"]:
        ids = torch.full((len(prompts), MAX_LENGTH), _PAD, dtype=torch.long)
        for n, text in enumerate(prompts):
            chars = [_OFFSET + (b % 256) for b in text.encode("utf-8")][: MAX_LENGTH - 2]
            row = [_SOT, *chars, _EOT]
            ids[n, : len(row)] = torch.tensor(row)
        return ids


def tiny_text_encoder():
    """A 2-layer ``transformers.CLIPTextModel`` of width 32 with seeded random weights."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=_VOCAB,
        hidden_size=TINY_TEXT_DIM,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_LENGTH,
        hidden_act="gelu",
        pad_token_id=_PAD,
        bos_token_id=_SOT,
        eos_token_id=_EOT,
    )
    with seeded(1234):
        model = CLIPTextModel(config)
    return model.eval()


def tiny_clip():
    """``tiny-random-clip``: the character tokenizer and the 2-layer text encoder."""
    return TinyCharTokenizer(), tiny_text_encoder()
