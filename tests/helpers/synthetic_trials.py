"""Test fixtures shared by tests/exporters and tests/evaluation: a synthetic growing-sphere field, a tiny random
CLIP model, and trial folders built (not trained) from the tiny smoke config.

A built trial has the real layout (``configs/parsed.yaml``, ``ckpts/last.ckpt`` with ``geometry.*``,
``material.*``, ``background.*``, ``renderer.*`` keys) and randomly initialised parts whose occupancy grid has
been refreshed once, so it renders the tiny config's density blob. Building one takes ~1 s; training the smoke
config takes ~1 min on 2 cores.
"""

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
TINY1 = ROOT / "configs" / "smoke" / "fourdfy_stage_1_tiny.yaml"


def sphere_radius(t: float) -> float:
    """Radius of the synthetic sphere at time ``t``."""
    return 0.2 + 0.5 * float(t)


class GrowingSphere(nn.Module):
    """``density = 25 + 100 (r(t) - |p|)``: the level 25 (the default ``isosurface_threshold``) is the sphere of
    radius ``r(t) = 0.2 + 0.5 t``. Features ``4 p + t`` (colour = their sigmoid, through a no-op material)."""

    def __init__(self, static: bool = False, resolution: int = 48) -> None:
        super().__init__()
        self.static = static
        self.anchor = nn.Parameter(torch.zeros(1))  # gives the module a device
        self.cfg = SimpleNamespace(
            radius=1.0, isosurface_resolution=resolution, isosurface_threshold=25.0, isosurface_chunk=5000,
            isosurface_remove_outliers=True, isosurface_outlier_n_faces_threshold=0.01,
        )  # fmt: skip

    @property
    def is_static(self) -> bool:
        return self.static

    def _t(self, times: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(times) if self.static else times

    def forward_density(self, points: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
        r = 0.2 + 0.5 * self._t(times)
        return 25.0 + 100.0 * (r - points.norm(dim=-1, keepdim=True))

    def density_and_encoding(self, points: torch.Tensor, times: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.forward_density(points, times), None  # no encoding to reuse

    def forward(self, points: torch.Tensor, times: torch.Tensor, encoding: None = None) -> SimpleNamespace:
        features = 4.0 * points + self._t(times)
        return SimpleNamespace(density=self.forward_density(points, times), features=features, dx=None)


class SigmoidMaterial(nn.Module):
    """``rgb = sigmoid(features)`` (no-material's default)."""

    def forward(self, features: torch.Tensor, viewdirs: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(features)


# --------------------------------------------------------------------------------------------------------------
# tiny CLIP
# --------------------------------------------------------------------------------------------------------------

TINY_CLIP_SIZE = 32
"""Input size of the tiny CLIP's vision tower."""
_SPECIAL = ["<|startoftext|>", "<|endoftext|>"]


def tiny_clip_model(seed: int = 0):
    """A random-weight ``CLIPModel`` (2 layers, width 32, 32x32 images, 8x8 patches, projection 16)."""
    from transformers import CLIPConfig, CLIPModel

    vocab = tiny_clip_vocab()
    cfg = CLIPConfig(
        text_config=dict(
            vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=77, bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
            pad_token_id=vocab["<|endoftext|>"],
        ),
        vision_config=dict(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            image_size=TINY_CLIP_SIZE, patch_size=8,
        ),
        projection_dim=16,
    )  # fmt: skip
    torch.manual_seed(seed)
    return CLIPModel(cfg).eval()


def tiny_clip_vocab() -> dict[str, int]:
    """A character-level BPE vocabulary (``a``-``z``, ``a</w>``-``z</w>``, CLIP's two special tokens)."""
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    tokens = letters + [c + "</w>" for c in letters] + _SPECIAL
    return {t: i for i, t in enumerate(tokens)}


def save_tiny_clip(folder: Path, seed: int = 0) -> Path:
    """Write a loadable tiny CLIP folder (``CLIPModel`` weights + ``CLIPTokenizer`` files) for the CLI."""
    folder.mkdir(parents=True, exist_ok=True)
    tiny_clip_model(seed).save_pretrained(folder)
    (folder / "vocab.json").write_text(json.dumps(tiny_clip_vocab()))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return folder


def tiny_clip_encoder(seed: int = 0):
    """A :class:`ClipEncoder` on the tiny model with a character tokenizer (ids of ``tiny_clip_vocab``)."""
    from fourdfy.evaluation.clip_model import ClipEncoder

    vocab = tiny_clip_vocab()

    def tokenize(prompts: list[str]) -> torch.Tensor:
        rows = []
        for p in prompts:
            ids = [vocab["<|startoftext|>"]] + [vocab[c] for c in p.lower() if c in vocab] + [vocab["<|endoftext|>"]]
            rows.append(ids)
        width = max(len(r) for r in rows)
        return torch.tensor([r + [vocab["<|endoftext|>"]] * (width - len(r)) for r in rows])

    return ClipEncoder(tiny_clip_model(seed), tokenize, name="tiny-random-clip")


# --------------------------------------------------------------------------------------------------------------
# trial folders
# --------------------------------------------------------------------------------------------------------------


def build_tiny_trial(root: Path, prompt: str = "a panda", step: int = 20, dynamic: bool = False, seed: int = 0) -> Path:
    """A trial folder of the tiny stage-1 config (``dynamic``: with the 4-D grid switched on) with random weights."""
    from fourdfy.experiment import dump_yaml, load_config
    from fourdfy.registry import build

    overrides = [f"system.prompt_processor.prompt={prompt}", f"exp_root_dir={root}"]
    if dynamic:
        overrides += ["system.geometry.pos_encoding_config.static=false", "data.single_view.static=false",
                      "name=fourdfy_dynamic_tiny"]
    cfg, resolved = load_config([str(TINY1)], overrides)
    trial = Path(cfg.trial_dir)
    dump_yaml(resolved, trial / "configs" / "parsed.yaml")
    s = resolved["system"]
    torch.manual_seed(seed)
    parts = {k: build(k, s[f"{k}_type"], s[k], f"system.{k}") for k in ("geometry", "material", "background")}
    parts["renderer"] = build(
        "renderer", s["renderer_type"], s["renderer"], "system.renderer",
        parts["geometry"], parts["material"], parts["background"],
    )  # fmt: skip
    if dynamic:  # make the random 4-D grid visibly time-dependent
        with torch.no_grad():
            for p in parts["geometry"].temporal_parameters():
                p.normal_(0.0, 1.0)
    parts["renderer"].train()
    parts["renderer"].update_step(0, 0)  # one occupancy-grid refresh, as the first training step does
    state = {f"{name}.{k}": v for name, part in parts.items() for k, v in part.state_dict().items()}
    (trial / "ckpts").mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 0, "global_step": step, "state_dict": state}, trial / "ckpts" / "last.ckpt")
    return trial


def write_fake_logs(trial: Path, steps: int = 30) -> None:
    """A Lightning-style ``csv_logs/version_0/metrics.csv`` with a decaying loss (and empty cells, as Lightning
    writes them)."""
    folder = trial / "csv_logs" / "version_0"
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["epoch,step,train/loss,train/loss_sds,lr-AdamW/geometry"]
    for s in range(steps):
        lines.append(f"0,{s},{1000.0 * 0.8**s:.6f},{900.0 * 0.8**s:.6f},")
    lines.append(f",{steps},,,0.01")
    (folder / "metrics.csv").write_text("\n".join(lines) + "\n")


@dataclasses.dataclass
class PageTrial:
    """A trial folder with everything the result page shows."""

    trial: Path
    glb: Path
    videos: list[Path]


PAGE_PROMPT = "a <b>panda</b> & friends dancing"
"""Needs HTML escaping."""


def build_page_trial(root: Path, num_times: int = 4) -> PageTrial:
    """A trial folder for the result page (no checkpoint): parsed config, two test videos of moving colour
    gradients, an animated ``.glb`` of the growing sphere, CSV logs and an ``eval.json``."""
    import numpy as np

    from fourdfy.exporters import export_meshes, write_glb
    from fourdfy.experiment import dump_yaml
    from fourdfy.evaluation.saving import save_frames_video

    trial = root / "fourdfy_stage_3" / "a_panda@20260101-000000"
    dump_yaml({"name": "fourdfy_stage_3", "system": {"prompt_processor": {"prompt": PAGE_PROMPT}}}, trial / "configs" / "parsed.yaml")
    save = trial / "save"
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    frames = torch.stack([torch.stack([(xx + k / 8) % 1.0, yy, 0.5 + 0.0 * xx], -1) for k in range(8)])
    videos = [
        save_frames_video(save / "it20-test.mp4", frames, fps=8),
        save_frames_video(save / "it20-test-depth-jet.mp4", frames.flip(-1), fps=8),
    ]
    meshes = export_meshes(GrowingSphere(), SigmoidMaterial(), np.linspace(0, 1, num_times), 32, 25.0, progress=False)
    glb = write_glb(meshes, save / "it20-export" / "model.glb", fps=4)
    write_fake_logs(trial)
    result = {"metrics": {"clip_score": 31.9, "motion_amount": 0.012}, "per_frame_clip_score": [31.0, 32.8, 31.9],
              "clip_model": "tiny", "orbit": {"num_frames": 3}, "protocol": "test"}  # fmt: skip
    (save / "eval.json").write_text(json.dumps(result))
    return PageTrial(trial=trial, glb=glb, videos=videos)
