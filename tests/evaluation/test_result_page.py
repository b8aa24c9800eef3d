"""save/index.html: self-contained (videos, model and viewer embedded), loss curves, prompt, config, evaluation."""

import base64
import html
import re
import stat

from fourdfy.evaluation.page import ASSETS, VIEWER_JS, render_page, write_result_page
from fourdfy.evaluation.svg_plot import line_plot_svg, nice_ticks
from synthetic_trials import PAGE_PROMPT


def page_text(page_trial) -> str:
    return (page_trial.trial / "save" / "index.html").read_text(encoding="utf-8")


def test_page_embeds_the_videos_and_the_model(page_trial):
    text = page_text(page_trial)
    # mp4 where ffmpeg exists, else the GIF fallback (as on the GPU machine)
    sources = re.findall(r'<(?:video|img class="anim") src="data:(?:video/mp4|image/gif);base64,([A-Za-z0-9+/=]+)"', text)
    assert [base64.b64decode(s) for s in sources] == [v.read_bytes() for v in page_trial.videos]
    glb = re.search(r'<script type="application/octet-stream" id="glb-base64">([A-Za-z0-9+/=]+)</script>', text)
    assert base64.b64decode(glb.group(1)) == page_trial.glb.read_bytes()
    assert '<div id="viewer"' in text and "window.fourdfyView(box, bytes)" in text
    assert f"<script>{VIEWER_JS.read_text(encoding='utf-8')}</script>" in text  # our viewer itself is inlined


def test_page_carries_no_third_party_bundle(page_trial):
    text = page_text(page_trial)
    assert "model-viewer" not in text.lower() and "customElements.define" not in text and "three.js" not in text.lower()
    assert sorted(p.name for p in ASSETS.iterdir()) == ["README.md", "viewer.js"]
    glb = len(page_trial.glb.read_bytes()) * 4 / 3
    videos = sum(len(v.read_bytes()) for v in page_trial.videos) * 4 / 3
    assert len(text) < glb + videos + 100_000  # the page is its data plus a few tens of kB of our own code


def test_page_needs_no_network(page_trial):
    text = page_text(page_trial)
    assert not re.search(r'(src|href)\s*=\s*["\']?(https?:)?//', text)
    assert not re.search(r"<script[^>]+src=", text)
    assert not re.search(r"<link[^>]+href=", text)


def test_page_shows_prompt_config_losses_and_evaluation(page_trial):
    text = page_text(page_trial)
    assert f"<h1>{html.escape(PAGE_PROMPT)}</h1>" in text and PAGE_PROMPT not in text  # escaped
    assert "fourdfy_stage_3" in text and "configs/parsed.yaml" in text
    losses = text[text.index('id="losses"') : text.index('id="config"')]
    assert losses.count("<polyline") == 2  # train/loss and train/loss_sds; the lr column is not a loss
    assert "train/loss_sds" in losses and "lr-AdamW" not in losses
    evaluation = text[text.index('id="evaluation"') : text.index('id="losses"')]
    assert "<th>clip_score</th><td>31.9</td>" in evaluation and "<polyline" in evaluation


def test_page_is_readable_by_everyone(page_trial):
    mode = (page_trial.trial / "save" / "index.html").stat().st_mode
    assert mode & stat.S_IROTH


def test_missing_parts_are_announced(tmp_path):
    (tmp_path / "save").mkdir()
    text = render_page(tmp_path)
    assert "No test video yet" in text and "Not evaluated yet" in text and "No csv_logs" in text
    assert "function parseGlb" not in text and '<div id="viewer"' not in text  # no model: no viewer code


def test_large_files_are_linked_not_embedded(page_trial, tmp_path):
    text = render_page(page_trial.trial, max_embed_mb=1e-6)
    assert re.search(r'<(video|img class="anim") src="it20-test\.(mp4|gif)"', text)
    assert 'href="it20-export/model.glb"' in text and 'id="glb-base64"' not in text


def test_loss_plot_uses_a_log_axis_for_wide_ranges():
    svg = line_plot_svg({"loss": [(0, 1000.0), (1, 10.0), (2, 1.0)]}, "loss")
    assert "(log y)" in svg and ">1000<" in svg and ">10<" in svg
    assert "(log y)" not in line_plot_svg({"x": [(0, 1.0), (1, 2.0)]}, "x")
    assert nice_ticks(0, 19) == [0, 5, 10, 15]
    assert "no data" in line_plot_svg({"nan": [(0, float("nan"))]}, "nan")


def test_write_result_page_returns_the_path(page_trial):
    path = write_result_page(page_trial.trial)
    assert path == page_trial.trial / "save" / "index.html"


def test_an_empty_export_is_explained(tmp_path):
    import numpy as np

    from fourdfy.exporters import Mesh, write_glb

    empty = Mesh(np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64))
    write_glb([empty], tmp_path / "save" / "it5-export" / "model.glb")
    text = render_page(tmp_path)
    assert "is empty" in text and "isosurface_threshold" in text and '<div id="viewer"' not in text
