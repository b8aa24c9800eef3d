"""``videocrafter-prompt-processor``: embeddings of the ``_vc`` configs' prompts (tiny stand-in), OpenCLIP's token
layout from a transformers CLIP tokenizer, and the errors for a missing tokenizer or checkpoint."""

import string
from pathlib import Path

import pytest
import torch

from fourdfy.config import ConfigError
from fourdfy.errors import MissingWeightsError
from fourdfy.experiment import load_config
from fourdfy.prompt_processors.base import directional_prompts, embedding_cache_path
from fourdfy.prompt_processors.videocrafter_prompt_processor import (
    VideoCrafterPromptProcessor,
    load_clip_bpe_tokenizer,
    load_text_tower,
    open_clip_token_ids,
)
from fourdfy.registry import validate

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "a panda dancing"
NEGATIVE = "low motion, static statue, not moving, no motion"
KEY = "system.prompt_processor_video"


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FOURDFY_CACHE_DIR", str(tmp_path / ".threestudio_cache"))
    return tmp_path / ".threestudio_cache" / "text_embeddings"


def vc_section(config: str = "fourdfy_stage_3_vc.yaml") -> dict:
    """``system.prompt_processor_video`` of a 4D-fy ``_vc`` config, resolved, with the main prompt (the system
    copies it into the video processor's ``???``)."""
    _, raw = load_config([str(ROOT / "configs" / config)], [f"system.prompt_processor.prompt={PROMPT}"])
    section = dict(raw["system"]["prompt_processor_video"])
    assert section["prompt"] == "???"
    return {**section, "prompt": raw["system"]["prompt_processor"]["prompt"]}


@pytest.mark.parametrize("spawn", [False, True])
def test_vc_config_section_gives_77xD_embeddings_with_4dfys_negative_prompt(cache, spawn):
    section = vc_section()
    assert section["negative_prompt"] == NEGATIVE and section["prompt"] == PROMPT
    section.update(pretrained_model_name_or_path="tiny-random-videocrafter", spawn=spawn)
    emb = VideoCrafterPromptProcessor(section, path=KEY)()
    assert emb.cond.shape == (77, 32) and emb.uncond.shape == (77, 32)
    assert emb.cond_directional.shape == (4, 77, 32) and emb.uncond_directional.shape == (4, 77, 32)
    expected = VideoCrafterPromptProcessor.encode_prompts("tiny-random-videocrafter", KEY, [NEGATIVE, "", PROMPT])
    torch.testing.assert_close(emb.uncond, expected[0])
    assert not torch.allclose(emb.uncond, expected[1])  # the negative prompt is really used
    torch.testing.assert_close(emb.cond, expected[2])
    for d in range(4):
        torch.testing.assert_close(emb.uncond_directional[d], expected[0])
    # 4D-fy's cache layout, keyed by the model name
    for s in [PROMPT, NEGATIVE, *directional_prompts(PROMPT, False)]:
        assert embedding_cache_path("tiny-random-videocrafter", s).is_file(), s


def test_full_size_stand_in_text_tower_is_vc2s(monkeypatch):
    import fourdfy.stand_ins.full_size as full_size
    from fourdfy import stand_ins

    monkeypatch.setattr(full_size, "build_device", lambda: torch.device("meta"))  # shapes only, no memory
    monkeypatch.setattr(full_size, "random_init_", lambda module, seed: module)
    _, encoder = stand_ins.lookup("text", "random-init-videocrafter2")()
    config = encoder.config
    assert (config.hidden_size, config.num_hidden_layers, config.vocab_size) == (1024, 23, 49408)


def test_config_key_accepts_4dfys_yaml_only():
    for value in ("", "threestudio/models/guidance/videocrafter/configs/inference_t2v_512_v2.0.yaml",
                  "/abs/VideoCrafter/configs/inference_t2v_512_v2.0.yaml"):  # fmt: skip
        validate("prompt_processor", "videocrafter-prompt-processor", {"prompt": PROMPT, "config": value}, KEY)
    with pytest.raises(ConfigError) as e:
        validate("prompt_processor", "videocrafter-prompt-processor",
                 {"prompt": PROMPT, "config": "configs/inference_t2v_1024_v1.0.yaml"}, KEY)  # fmt: skip
    assert f"{KEY}.config" in str(e.value) and "inference_t2v_512_v2.0.yaml" in str(e.value)
    with pytest.raises(ConfigError, match="only used by the VideoCrafter prompt processor"):
        from fourdfy.prompt_processors.stable_diffusion_prompt_processor import StableDiffusionPromptProcessor

        StableDiffusionPromptProcessor({"prompt": PROMPT, "pretrained_model_name_or_path": "tiny-random-clip",
                                        "config": "inference_t2v_512_v2.0.yaml"})  # fmt: skip


# ----------------------------------------------------------------------------------------------------------------
# tokens
# ----------------------------------------------------------------------------------------------------------------


def test_open_clip_token_layout():
    ids = open_clip_token_ids([[5, 6], list(range(100, 200)), []], 49406, 49407)
    assert ids.shape == (3, 77) and ids.dtype == torch.long
    assert ids[0, :4].tolist() == [49406, 5, 6, 49407] and (ids[0, 4:] == 0).all()
    assert ids[1, 0] == 49406 and ids[1, 1:76].tolist() == list(range(100, 175)) and ids[1, 76] == 49407
    assert ids[2, :2].tolist() == [49406, 49407] and (ids[2, 2:] == 0).all()


def tiny_bpe_vocab(size: int | None = None) -> tuple[dict, list]:
    """A CLIP-style BPE vocabulary over a-z and ',' with two merges ("an", "and</w>"), CLIP's two special tokens
    last; filled with unused tokens up to ``size`` entries."""
    vocab: dict[str, int] = {}
    for c in string.ascii_lowercase + ",":
        vocab[c] = len(vocab)
    for c in string.ascii_lowercase + ",":
        vocab[c + "</w>"] = len(vocab)
    merges = [("a", "n"), ("an", "d</w>")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    while size is not None and len(vocab) < size - 2:
        vocab[f"unused{len(vocab)}</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab, merges


def save_tokenizer(folder: Path, size: int | None = None) -> Path:
    from transformers import CLIPTokenizer

    vocab, merges = tiny_bpe_vocab(size)
    CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77).save_pretrained(str(folder))
    return folder


def test_tokenizer_from_a_folder_gives_open_clip_ids(tmp_path):
    vocab, _ = tiny_bpe_vocab()
    for folder in (tmp_path / "plain", tmp_path / "diffusers"):
        save_tokenizer(folder if folder.name == "plain" else folder / "tokenizer")
        tok = load_clip_bpe_tokenizer(str(folder), f"{KEY}.tokenizer_name_or_path", len(vocab))
        bpe = tok(["A panda AND  dancing,"], add_special_tokens=False)["input_ids"]
        ids = open_clip_token_ids(bpe, tok.bos_token_id, tok.eos_token_id)[0]
        v = vocab
        words = [[v["a</w>"]], [v["p"], v["an"], v["d"], v["a</w>"]], [v["and</w>"]],
                 [v["d"], v["an"], v["c"], v["i"], v["n"], v["g</w>"]], [v[",</w>"]]]  # fmt: skip
        body = [i for w in words for i in w]
        assert ids[: len(body) + 2].tolist() == [v["<|startoftext|>"], *body, v["<|endoftext|>"]]
        assert (ids[len(body) + 2 :] == 0).all()  # OpenCLIP pads with 0 (the tokenizer's pad is <|endoftext|>)


def test_absent_tokenizer_is_an_error_not_an_empty_tokenizer(tmp_path):
    (tmp_path / "empty").mkdir()
    save_tokenizer(tmp_path / "small")
    for where in (tmp_path / "empty", tmp_path / "small", tmp_path / "missing"):
        with pytest.raises(MissingWeightsError) as e:
            load_clip_bpe_tokenizer(str(where), f"{KEY}.tokenizer_name_or_path", 49408)
        assert str(e.value).startswith(f"{KEY}.tokenizer_name_or_path: no CLIP BPE tokenizer with 49408 tokens")


def test_missing_checkpoint_names_the_key(tmp_path, cache):
    folder = save_tokenizer(tmp_path / "tok", size=49408)  # a tokenizer of the real size, so the checkpoint is next
    with pytest.raises(MissingWeightsError) as e:
        cfg = {"prompt": PROMPT, "spawn": False, "tokenizer_name_or_path": str(folder),
               "pretrained_model_name_or_path": str(tmp_path / "model.ckpt")}
        VideoCrafterPromptProcessor(cfg, path=KEY)
    msg = str(e.value)
    assert msg.startswith(f"{KEY}.pretrained_model_name_or_path") and "\n" not in msg and "model.ckpt" in msg
    with pytest.raises(MissingWeightsError, match="VideoCrafter/VideoCrafter2"):
        load_text_tower("VideoCrafter/VideoCrafter2", f"{KEY}.pretrained_model_name_or_path")  # offline: no cache
