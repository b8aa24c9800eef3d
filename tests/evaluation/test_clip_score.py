"""The CLIP score the documented way (100 * cosine, averaged over frames) with a tiny random-weight CLIP."""

import os

import pytest
import torch

from fourdfy.errors import MissingWeightsError
from fourdfy.evaluation import metrics
from fourdfy.evaluation.clip_model import CLIP_ENV, CLIP_MEAN, CLIP_STD, ClipEncoder, preprocess
from synthetic_trials import TINY_CLIP_SIZE, save_tiny_clip, tiny_clip_encoder


def test_worked_example_of_the_metrics_docstring():
    frames = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    text = torch.tensor([0.8, 0.6])
    assert metrics.clip_scores(frames, text).tolist() == pytest.approx([80.0, 96.0])
    assert metrics.clip_score(frames, text) == pytest.approx(88.0)
    assert metrics.consecutive_cosine(frames) == pytest.approx(0.6)
    assert metrics.clip_score(3.0 * frames, 2.0 * text) == pytest.approx(88.0)  # scale-free


def test_clip_score_by_hand_on_two_frames():
    enc = tiny_clip_encoder()
    model = enc.model
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(2, TINY_CLIP_SIZE, TINY_CLIP_SIZE, 3, generator=g)  # already the input size: no resize
    prompt = "a panda dancing"
    # by hand: CLIP normalisation, CLIPModel.forward's logits (= exp(logit_scale) * cosine), averaged, x100
    mean = torch.tensor(CLIP_MEAN)[None, :, None, None]
    std = torch.tensor(CLIP_STD)[None, :, None, None]
    pixels = (frames.permute(0, 3, 1, 2) - mean) / std
    with torch.no_grad():
        out = model(input_ids=enc.tokenize([prompt]), pixel_values=pixels)
        cos = out.logits_per_image[:, 0] / model.logit_scale.exp()
    expected = float(100.0 * (cos[0] + cos[1]) / 2.0)
    score = metrics.clip_score(enc.image_embeds(frames), enc.text_embeds([prompt])[0])
    assert score == pytest.approx(expected, abs=1e-4)
    # and the per-frame scores differ from each other and from another prompt's (the embeddings are used)
    per = metrics.clip_scores(enc.image_embeds(frames), enc.text_embeds([prompt])[0])
    assert abs(per[0] - per[1]) > 1e-3
    assert metrics.clip_score(enc.image_embeds(frames), enc.text_embeds(["zebra"])[0]) != pytest.approx(score, abs=1e-3)


def test_preprocess_resizes_the_short_side_and_centre_crops():
    frames = torch.zeros(1, 40, 64, 3)
    frames[..., 0] = 0.25
    frames[:, :, :12] = 1.0  # a bright band on the left edge, cropped away by the centre crop
    x = preprocess(frames, 32)
    assert x.shape == (1, 3, 32, 32)
    # 40x64 -> 32x51, crop columns 9..41: the band (columns 0..9.6 after resize) is gone
    expected = (torch.tensor([0.25, 0.0, 0.0]) - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(x[0, :, :, 2:], expected[:, None, None].expand(3, 32, 30), atol=1e-5, rtol=0)


def test_missing_clip_names_the_flag_and_variable(tmp_path, monkeypatch):
    monkeypatch.delenv(CLIP_ENV, raising=False)
    with pytest.raises(MissingWeightsError) as e:
        ClipEncoder.from_pretrained(str(tmp_path / "no-such-clip"))
    assert "--clip" in str(e.value) and CLIP_ENV in str(e.value) and "openai/clip-vit-base-patch32" in str(e.value)
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache("openai/clip-vit-base-patch32", "config.json")
    if os.environ.get("HF_HUB_OFFLINE") == "1" and not isinstance(cached, str):  # the hub id, offline, not cached
        with pytest.raises(MissingWeightsError, match="--clip"):
            ClipEncoder.from_pretrained(None)


def test_a_local_clip_folder_loads_and_gives_the_same_embeddings(tmp_path):
    folder = save_tiny_clip(tmp_path / "clip")
    enc = ClipEncoder.from_pretrained(str(folder))
    ref = tiny_clip_encoder()
    frames = torch.rand(3, 20, 24, 3, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(enc.image_embeds(frames), ref.image_embeds(frames))
    assert enc.text_embeds(["a cat", "a dog"]).shape == (2, 16)
