"""Prompt processor: 4D-fy's cache layout, cold and warm cache, unreadable cache files, view-dependent prompts."""

import hashlib

import pytest
import torch

from fourdfy.prompt_processors.base import direction_index, directional_prompts, embedding_cache_path
from fourdfy.prompt_processors.stable_diffusion_prompt_processor import StableDiffusionPromptProcessor

CFG = {"prompt": "a panda dancing", "negative_prompt": "blurry", "pretrained_model_name_or_path": "tiny-random-clip",
       "front_threshold": 30.0, "back_threshold": 30.0}  # fmt: skip


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FOURDFY_CACHE_DIR", str(tmp_path / ".threestudio_cache"))
    return tmp_path / ".threestudio_cache" / "text_embeddings"


def test_cache_layout_is_4dfys(cache):
    digest = hashlib.md5(b"stabilityai/stable-diffusion-2-1-base-a panda dancing").hexdigest()
    assert embedding_cache_path("stabilityai/stable-diffusion-2-1-base", "a panda dancing") == cache / f"{digest}.pt"


@pytest.mark.parametrize("spawn", [False, True])
def test_cold_cache_computes_and_writes(cache, spawn):
    emb = StableDiffusionPromptProcessor({**CFG, "spawn": spawn})()
    strings = ["a panda dancing", "blurry", *directional_prompts("a panda dancing", False)]
    for s in strings:
        f = embedding_cache_path("tiny-random-clip", s)
        assert f.is_file(), s
        assert torch.load(f, weights_only=True).shape == (77, 32)
    assert emb.cond.shape == (77, 32) and emb.cond_directional.shape == (4, 77, 32)
    assert not torch.equal(emb.cond, emb.uncond)


def test_warm_cache_is_used_and_bad_files_are_recomputed(cache, monkeypatch):
    first = StableDiffusionPromptProcessor(CFG)()
    calls = []
    real = StableDiffusionPromptProcessor.encode_prompts
    monkeypatch.setattr(StableDiffusionPromptProcessor, "encode_prompts",
                        staticmethod(lambda m, p, prompts: calls.append(list(prompts)) or real(m, p, prompts)))  # fmt: skip
    again = StableDiffusionPromptProcessor({**CFG, "spawn": False})()
    assert calls == []  # everything came from the cache
    torch.testing.assert_close(again.cond, first.cond)
    embedding_cache_path("tiny-random-clip", "a panda dancing").write_bytes(b"truncated")
    third = StableDiffusionPromptProcessor({**CFG, "spawn": False})()
    assert calls == [["a panda dancing"]]  # only the unreadable entry was recomputed
    torch.testing.assert_close(third.cond, first.cond)


def test_view_dependent_selection(cache):
    emb = StableDiffusionPromptProcessor({**CFG, "spawn": False})()
    elev = torch.tensor([10.0, 10.0, 10.0, 10.0, 70.0])
    azi = torch.tensor([0.0, 90.0, 179.0, -170.0, 0.0])
    idx = direction_index(elev, azi, 30.0, 30.0, 60.0)
    assert idx.tolist() == [1, 0, 2, 2, 3]  # front, side, back, back, overhead
    cond, uncond = emb.get_text_embeddings(elev, azi, view_dependent_prompting=True)
    for i, d in enumerate(idx.tolist()):
        torch.testing.assert_close(cond[i], emb.cond_directional[d])
        torch.testing.assert_close(uncond[i], emb.uncond)
    cond, _ = emb.get_text_embeddings(elev, azi, view_dependent_prompting=False)
    torch.testing.assert_close(cond, emb.cond.expand(5, -1, -1))
    assert directional_prompts("x", False)[1] == "x, front view"
    assert directional_prompts("x", True)[2] == "back view of x"


def test_missing_text_encoder_names_the_key(cache):
    from fourdfy.errors import MissingWeightsError

    with pytest.raises(MissingWeightsError) as e:
        StableDiffusionPromptProcessor({**CFG, "spawn": False, "pretrained_model_name_or_path": "/nope/sd21"},
                                       path="system.prompt_processor_multi_view")  # fmt: skip
    msg = str(e.value)
    assert "system.prompt_processor_multi_view.pretrained_model_name_or_path" in msg and "sd2-community" in msg


def test_embeddings_move_to_a_device_once(cache):
    """Per-camera embeddings on another device come from one kept copy (a copy per step would sync the host)."""
    emb = StableDiffusionPromptProcessor({**CFG, "spawn": False})()
    meta = torch.device("meta")
    assert emb.on(emb.cond.device) is emb
    first = emb.on(meta)
    assert first is emb.on(meta) and first.cond.device == meta and first.cond.shape == emb.cond.shape
    elev, azi = torch.zeros(3, device=meta), torch.zeros(3, device=meta)
    cond, uncond = emb.get_text_embeddings(elev, azi, view_dependent_prompting=False)
    assert cond.device == meta and cond.shape == (3, *emb.cond.shape)
    assert emb.on(meta) is first
