"""``save/index.html``: one self-contained result page per trial, readable offline from ``file://``.

Everything the page shows is inside the file: the test videos as ``data:`` URIs (GIF fallbacks as images), the
exported ``.glb`` as base64 text handed to our own WebGL viewer (``assets/viewer.js``, inlined, no dependencies;
a ``file://`` page may not fetch neighbouring files, so the model must be embedded), the loss curves as inline
SVG from ``csv_logs/**/metrics.csv``, the prompt, the resolved config and ``save/eval.json``. A file larger than
``max_embed_mb`` is linked by relative path instead (videos still play from ``file://``; the 3D viewer then
shows a note).

A small script records what loaded on ``<body>``: ``data-videos-total``/``data-videos-ready``, ``data-model``
(``none``/``loading``/``loaded``/``error``), ``data-frames`` (frames of the model), ``data-errors`` (errors are
also shown in the page) and ``data-warnings``; the viewer's own state is ``window.fourdfyViewer`` (see
``viewer.js``). The Chromium test reads both.
"""

import base64
import html
import json
import re
from pathlib import Path
from typing import Any, Optional

from fourdfy.evaluation.svg_plot import line_plot_svg, loss_curves_svg
from fourdfy.evaluation.trial import prompt_of
from fourdfy.utils.io import atomic_write_text

ASSETS = Path(__file__).resolve().parent / "assets"
VIEWER_JS = ASSETS / "viewer.js"
PAGE_NAME = "index.html"
VIDEO_KINDS = (
    ("test", "test orbit"),
    ("test_static", "test orbit at t = 0"),
    ("test-depth-jet", "test depth"),
    ("eval-motion", "evaluation motion probe (fixed camera)"),
)
"""(file-name kind, caption) of the videos shown, in page order."""
MIME = {".mp4": "video/mp4", ".gif": "image/gif", ".glb": "model/gltf-binary", ".png": "image/png"}

CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1400px}
h1{font-size:1.5em;margin-bottom:.2em} .meta{color:#666;margin-top:0}
section{margin:1.4em 0} h2{font-size:1.15em;border-bottom:1px solid #ddd;padding-bottom:.2em}
.grid{display:flex;flex-wrap:wrap;gap:14px} figure{margin:0} figcaption{font-size:.85em;color:#555}
video,img.anim{width:256px;height:256px;object-fit:contain;background:#eee;image-rendering:auto}
table{border-collapse:collapse} td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:.9em}
pre{background:#f7f7f7;padding:.8em;max-height:420px;overflow:auto;font-size:.8em}
#page-errors{color:#b00;white-space:pre-wrap}
"""

ERRORS_JS = """
(function () {
  var errors = window.__fourdfyErrors = [], warnings = 0;
  window.__fourdfyShowErrors = function () {
    if (!document.body) return;
    document.body.dataset.errors = String(errors.length);
    document.body.dataset.warnings = String(warnings);
    var el = document.getElementById('page-errors');
    if (el && errors.length) { el.textContent = errors.join('\\n'); el.hidden = false; }
  };
  function record(kind, args) {
    errors.push(kind + ': ' + Array.prototype.map.call(args, String).join(' '));
    window.__fourdfyShowErrors();
  }
  var error = console.error, warn = console.warn;
  console.error = function () { record('console.error', arguments); return error.apply(console, arguments); };
  console.warn = function () { warnings += 1; window.__fourdfyShowErrors(); return warn.apply(console, arguments); };
  window.addEventListener('error', function (e) { record('error', [e.message || e]); });
  window.addEventListener('unhandledrejection', function (e) { record('unhandled rejection', [e.reason]); });
})();
"""
"""Runs first (in ``<head>``): every ``console.error``, uncaught error and unhandled rejection is listed in the
page and counted in ``body[data-errors]``; ``console.warn`` calls are counted in ``body[data-warnings]``."""

STATUS_JS = """
(function () {
  var body = document.body, errors = window.__fourdfyErrors, show = window.__fourdfyShowErrors;
  var vids = Array.prototype.slice.call(document.querySelectorAll('video'));
  var ready = 0;
  body.dataset.videosTotal = String(vids.length);
  body.dataset.videosReady = '0';
  vids.forEach(function (v) {
    function done() {
      if (v.dataset.ready) return;
      v.dataset.ready = '1'; ready += 1; body.dataset.videosReady = String(ready);
      var p = v.play(); if (p && p.catch) p.catch(function () {});
    }
    if (v.readyState >= 2) done(); else v.addEventListener('loadeddata', done);
    v.addEventListener('error', function () { errors.push('video failed to load: ' + v.dataset.name); show(); });
  });
  var box = document.getElementById('viewer'), data = document.getElementById('glb-base64');
  body.dataset.model = box && data ? 'loading' : 'none';
  if (box && data) {
    var bin = atob(data.textContent.trim()), bytes = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    var link = document.getElementById('glb-download');
    if (link) link.href = URL.createObjectURL(new Blob([bytes], {type: 'model/gltf-binary'}));
    try {
      var viewer = window.fourdfyViewer = window.fourdfyView(box, bytes);  // shows its own errors
      body.dataset.model = viewer.error ? 'error' : 'loaded';
      body.dataset.frames = String(viewer.frames);
    } catch (e) {
      body.dataset.model = 'error'; errors.push('3D viewer: ' + e); show();
    }
  }
  show();
})();
"""


def _esc(s: Any) -> str:
    return html.escape(str(s), quote=True)


def _latest(save: Path, pattern: str) -> Optional[Path]:
    """The file or folder in ``save`` whose name fully matches ``pattern`` with the highest step (group 1)."""
    rx = re.compile(pattern)
    found = [(int(m.group(1)), p.name, p) for p in save.iterdir() if (m := rx.fullmatch(p.name))] if save.is_dir() else []
    return max(found)[2] if found else None


def find_videos(save: Path) -> list[tuple[str, Path]]:
    """(caption, path) of the latest ``it{S}-{kind}.mp4`` (or ``.gif``) of each kind in :data:`VIDEO_KINDS`."""
    out = []
    for kind, caption in VIDEO_KINDS:
        p = _latest(save, rf"it(\d+)-{re.escape(kind)}\.(?:mp4|gif)")
        if p is not None:
            out.append((f"{caption} ({p.name})", p))
    return out


def find_model(save: Path) -> Optional[Path]:
    """The ``.glb`` of the latest ``it{S}-export/`` folder (``model.glb`` first), or ``None``."""
    rx = re.compile(r"it(\d+)-export")
    folders = sorted(
        ((int(m.group(1)), p) for p in save.iterdir() if p.is_dir() and (m := rx.fullmatch(p.name))), reverse=True
    ) if save.is_dir() else []  # fmt: skip
    for _, folder in folders:
        glbs = sorted(folder.glob("*.glb"), key=lambda p: (p.name != "model.glb", p.name))
        if glbs:
            return glbs[0]
    return None


def _data_uri(path: Path) -> str:
    return f"data:{MIME.get(path.suffix.lower(), 'application/octet-stream')};base64," + base64.b64encode(path.read_bytes()).decode()


def _video_html(caption: str, path: Path, save: Path, limit: int) -> str:
    src = _data_uri(path) if path.stat().st_size <= limit else path.relative_to(save).as_posix()
    if path.suffix.lower() == ".gif":
        body = f'<img class="anim" src="{src}" alt="{_esc(caption)}">'
    else:
        body = f'<video src="{src}" data-name="{_esc(path.name)}" autoplay loop muted playsinline controls></video>'
    return f"<figure>{body}<figcaption>{_esc(caption)}</figcaption></figure>"


def _eval_html(result: dict[str, Any]) -> str:
    rows = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in result.get("metrics", {}).items())
    orbit = result.get("orbit", {})
    info = ", ".join(f"{k} {v}" for k, v in orbit.items())
    parts = [
        f"<table id=\"eval-table\">{rows}</table>",
        f"<p class=\"meta\">CLIP model {_esc(result.get('clip_model', ''))}; orbit: {_esc(info)}. "
        f"{_esc(result.get('protocol', ''))}</p>",
    ]
    per_frame = result.get("per_frame_clip_score") or []
    if len(per_frame) > 1:
        parts.append(line_plot_svg({"CLIP score": list(enumerate(per_frame))}, "CLIP score per orbit frame", x_label="frame", log_y=False, integer_x=True))
    return "".join(parts)


def glb_vertex_count(glb: Path) -> int:
    """The number of vertices in a ``.glb`` (0: the export found no surface)."""
    import pygltflib

    gltf = pygltflib.GLTF2.load(str(glb))
    return sum(gltf.accessors[prim.attributes.POSITION].count for mesh in gltf.meshes for prim in mesh.primitives)


def _viewer_script() -> str:
    js = VIEWER_JS.read_text(encoding="utf-8")
    if re.search(r"</?script", js, re.IGNORECASE):
        raise ValueError(f"{VIEWER_JS}: contains a <script> tag and cannot be inlined safely")
    return f"<script>{js}</script>"


def render_page(trial_dir: Path, max_embed_mb: float = 64.0) -> str:
    """The HTML text of a trial's result page (see the module docstring)."""
    trial_dir = Path(trial_dir)
    save = trial_dir / "save"
    limit = int(max_embed_mb * 2**20)
    parsed = trial_dir / "configs" / "parsed.yaml"
    config_text = parsed.read_text(encoding="utf-8") if parsed.is_file() else ""
    config: dict = {}
    if config_text:
        import yaml

        config = yaml.safe_load(config_text) or {}
    prompt = prompt_of(config) or trial_dir.name
    name = config.get("name", trial_dir.parent.name)

    videos = find_videos(save)
    model = find_model(save)
    eval_path = save / "eval.json"
    result = json.loads(eval_path.read_text()) if eval_path.is_file() else None
    losses = loss_curves_svg(trial_dir)

    head = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_esc(prompt)} · fourdfy</title>", f"<style>{CSS}</style>", f"<script>{ERRORS_JS}</script>",
    ]  # fmt: skip
    body = [
        "<body>",
        f"<h1>{_esc(prompt)}</h1>",
        f'<p class="meta">{_esc(name)} · trial <code>{_esc(trial_dir.name)}</code></p>',
        '<div id="page-errors" hidden></div>',
    ]
    if model is not None:
        rel = model.relative_to(save).as_posix()
        body.append('<section id="model"><h2>Exported mesh</h2>')
        if not glb_vertex_count(model):
            body.append(
                f"<p>The exported mesh <code>{_esc(rel)}</code> is empty: the density never reaches "
                "<code>system.geometry.isosurface_threshold</code>. Export again with a lower threshold.</p>"
            )
        elif model.stat().st_size <= limit:
            body.append(
                f'<div id="viewer" role="img" aria-label="{_esc(prompt)}"></div>'
                f'<p class="meta"><a id="glb-download" download="{_esc(model.name)}">download {_esc(rel)}</a> '
                "(drag to orbit, wheel to zoom, double-click to reset; a dynamic scene plays its frames in a loop)</p>"
                f'<script type="application/octet-stream" id="glb-base64">{base64.b64encode(model.read_bytes()).decode()}</script>'
                + _viewer_script()
            )
        else:
            body.append(f'<p>The model is too large to embed: <a href="{_esc(rel)}">{_esc(rel)}</a></p>')
        body.append("</section>")
    body.append('<section id="videos"><h2>Videos</h2><div class="grid">')
    body.extend(_video_html(c, p, save, limit) for c, p in videos)
    if not videos:
        body.append("<p>No test video yet (run --test).</p>")
    body.append("</div></section>")
    body.append('<section id="evaluation"><h2>Evaluation</h2>')
    body.append(_eval_html(result) if result else "<p>Not evaluated yet: <code>python -m fourdfy.evaluate &lt;trial dir&gt;</code></p>")
    body.append("</section>")
    body.append('<section id="losses"><h2>Training losses</h2><div class="grid">')
    body.extend(losses or ["<p>No csv_logs/**/metrics.csv.</p>"])
    body.append("</div></section>")
    body.append(f'<section id="config"><h2>Config</h2><details><summary>configs/parsed.yaml</summary><pre>{_esc(config_text)}</pre></details></section>')
    body.append(f"<script>{STATUS_JS}</script>")
    body.append("</body></html>")
    head.append("</head>")
    return "\n".join(head + body)


def write_result_page(trial_dir: str | Path, max_embed_mb: float = 64.0) -> Path:
    """Write (or refresh) ``{trial_dir}/save/index.html`` and return its path. Call it at the end of training,
    ``--test`` and ``--export``, and after ``python -m fourdfy.evaluate``."""
    trial_dir = Path(trial_dir)
    path = trial_dir / "save" / PAGE_NAME
    atomic_write_text(path, render_page(trial_dir, max_embed_mb))
    path.chmod(0o644)  # atomic writes create private files; the page is meant to be shared
    return path
