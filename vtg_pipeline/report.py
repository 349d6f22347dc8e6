"""A static HTML report of grounding results: ``write_report(results, out_dir, store)``.

One self-contained ``index.html`` (inline CSS, JS, SVG and PNG thumbnails; no
server, no network). Per video: an HTML5 player on the local file. Per query:
the top moments as buttons that seek the player, the saliency curve over time
with the moments shaded, and a thumbnail of each moment's most salient frame,
cut from the frames stored in the feature store while decoding (only files
inside the store are read: an id that leads out of it is an UnsafeNameError).
"""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path
from urllib.parse import quote

import numpy as np
from PIL import Image
from safetensors import safe_open

from .features import atomic_write_text, feature_path
from .grounder import hms

STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;max-width:1100px;color:#222}
h1{font-size:1.4rem} h2{font-size:1.1rem;margin-top:2rem;border-bottom:1px solid #ccc}
.video{display:flex;gap:1.5rem;align-items:flex-start} video{width:420px;background:#000}
.query{margin:.6rem 0 1.2rem} .query b{font-size:1rem}
button{margin:.2rem;padding:.2rem .5rem;border:1px solid #888;border-radius:4px;background:#f4f4f4;cursor:pointer}
button:hover{background:#e0ecff} .thumbs img{width:96px;height:96px;margin-right:4px;image-rendering:pixelated;border:1px solid #aaa}
.error{color:#b00020} svg{background:#fafafa;border:1px solid #ddd}
"""

SCRIPT = """
window.addEventListener('error', e => { document.body.dataset.errors = (document.body.dataset.errors || '') + e.message + ';'; });
function seek(id, t) { const v = document.getElementById(id); v.currentTime = t; const p = v.play(); if (p) p.catch(() => {}); }
document.addEventListener('DOMContentLoaded', () => { document.body.dataset.rendered = 'ok'; });
"""


def saliency_svg(times: list[float], scores: list[float], moments: list[list[float]], duration: float, width: int = 560, height: int = 90) -> str:
    """An inline SVG: the saliency curve (min-max scaled) over [0, duration] s with the moments shaded."""
    if not times:
        return ""
    low, span = min(scores), max(max(scores) - min(scores), 1e-6)
    x = lambda t: width * t / max(duration, 1e-6)  # noqa: E731
    shades = "".join(f'<rect x="{x(s):.1f}" y="0" width="{max(x(e) - x(s), 1):.1f}" height="{height}" fill="#ffb74d" opacity="0.35"/>'
                     for s, e, _ in moments)
    points = " ".join(f"{x(t):.1f},{height - 14 - (height - 18) * (v - low) / span:.1f}" for t, v in zip(times, scores))
    return (f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="saliency over time">'
            f'{shades}<polyline points="{points}" fill="none" stroke="#1565c0" stroke-width="1.5"/>'
            f'<text x="2" y="{height - 2}" font-size="10">0:00</text><text x="{width - 2}" y="{height - 2}" font-size="10" '
            f'text-anchor="end">{hms(duration)}</text></svg>')


def png_data_uri(frame: np.ndarray) -> str:
    """uint8 (3, S, S) -> data:image/png;base64,..."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame.transpose(1, 2, 0))).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def best_frames(result: dict, moments: list[list[float]]) -> list[int]:
    """Per moment, the index of its most salient clip (the clip its start falls in when it holds none)."""
    times = np.asarray(result["clip_times"])
    scores = np.asarray(result["pred_saliency_scores"])
    chosen = []
    for start, end, _ in moments:
        inside = np.nonzero((times >= start) & (times < end))[0]
        chosen.append(int(inside[np.argmax(scores[inside])]) if len(inside) else int(max(0, np.searchsorted(times, start, "right") - 1)))
    return chosen


def thumbnails(feature_file: Path, indices: list[int]) -> list[str]:
    """Data URIs of the stored frames at ``indices`` (none when the store has no frames)."""
    try:
        with safe_open(str(feature_file), framework="np") as f:
            if "frames" not in f.keys():
                return []
            frames = f.get_slice("frames")
            return [png_data_uri(frames[i : i + 1][0]) for i in indices]
    except OSError:
        return []


def write_report(results: list[dict], out_dir: str | Path, store: str | Path | None, top: int = 5) -> Path:
    """Write ``out_dir/index.html`` for ``results`` (from ``Grounder.ground_many``); returns its path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    by_video: dict[str, list[dict]] = {}
    for r in results:
        by_video.setdefault(r["video"], []).append(r)
    sections = []
    for n, (video, items) in enumerate(by_video.items()):
        player = f"v{n}"
        source = quote(Path(os.path.relpath(os.path.abspath(video), out_dir.resolve())).as_posix())
        queries = []
        for r in items:
            title = f'<b>{html.escape(r["query"] or "(empty query)")}</b> <small>qid {html.escape(str(r["qid"]))}</small>'
            if "error" in r:
                queries.append(f'<div class="query">{title}<div class="error">{html.escape(r["error"])}</div></div>')
                continue
            moments = r["pred_relevant_windows"][:top]
            buttons = "".join(f'<button onclick="seek(\'{player}\', {s})">{html.escape(hs)}–{html.escape(he)} · {p:.2f}</button>'
                              for (s, e, p), (hs, he) in zip(moments, r["pred_relevant_windows_hms"]))
            thumbs = thumbnails(feature_path(store, r["vid"]), best_frames(r, moments)) if store else []
            images = "".join(f'<img src="{uri}" alt="best frame of moment {i + 1}" title="moment {i + 1}">' for i, uri in enumerate(thumbs))
            warning = f'<div class="error">{html.escape(r["warning"])}</div>' if r.get("warning") else ""
            queries.append(f'<div class="query">{title}{warning}<div>{buttons}</div>'
                           f'{saliency_svg(r["clip_times"], r["pred_saliency_scores"], moments, r["duration"])}'
                           f'<div class="thumbs">{images}</div></div>')
        sections.append(f'<h2>{html.escape(video)}</h2><div class="video"><video id="{player}" controls preload="metadata" '
                        f'src="{html.escape(source)}"></video><div>{"".join(queries)}</div></div>')
    page = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>vtg ground report</title>'
            f'<style>{STYLE}</style><script>{SCRIPT}</script></head><body><h1>Grounding report: {len(results)} queries on '
            f'{len(by_video)} videos</h1>{"".join(sections)}</body></html>')
    path = out_dir / "index.html"
    atomic_write_text(path, page)
    return path
