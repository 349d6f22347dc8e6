"""A static HTML report of grounding results: ``write_report(results, out_dir, store)``.

One self-contained ``index.html`` (inline CSS, JS, SVG and PNG thumbnails; no
server, no network). Per video: an HTML5 player that stays in view while its
queries scroll, and a message in the page when its file cannot be loaded. The
player's source is the video's absolute ``file://`` URL (the report works from
anywhere on this machine), or with ``media="copy"`` / ``"link"`` a copy of / a
symlink to the video in ``out_dir/media/`` (a folder that travels). Per query:
the top moments as buttons that seek the player, the saliency curve over time
with the moments shaded and a time axis, the true moments when ground truth is
given, and a thumbnail of each moment's most salient frame, cut from the frames
stored in the feature store while decoding (only files inside the store are
read: an id that leads out of it is an UnsafeNameError). A legend says what
each mark means.
"""

from __future__ import annotations

import base64
import html
import io
import os
import shutil
from pathlib import Path
from urllib.parse import quote

import numpy as np
from PIL import Image
from safetensors import safe_open

from .features import atomic_write_text, feature_path, partial_path
from .grounder import unique_id
from .names import hms, path_in

MEDIA_CHOICES = ("absolute", "copy", "link")
MOMENT, TRUTH, CURVE = "#ffb74d", "#2e7d32", "#1565c0"  # colours of the predicted and true moments, the saliency curve
TICK_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 18000, 36000)  # seconds between axis ticks

STYLE = f"""
body{{font-family:system-ui,sans-serif;margin:2rem;max-width:1100px;color:#222}}
h1{{font-size:1.4rem}} h2{{font-size:1.1rem;margin-top:2rem;border-bottom:1px solid #ccc}}
.video{{display:flex;gap:1.5rem;align-items:flex-start}} .player{{position:sticky;top:.5rem;width:420px;flex:none}}
video{{width:420px;background:#000}} .query{{margin:.6rem 0 1.2rem}} .query b{{font-size:1rem}}
button{{margin:.2rem;padding:.2rem .5rem;border:1px solid #888;border-radius:4px;background:#f4f4f4;cursor:pointer}}
button:hover{{background:#e0ecff}} .thumbs img{{width:96px;height:96px;margin-right:4px;image-rendering:pixelated;border:1px solid #aaa}}
.error{{color:#b00020}} svg{{background:#fafafa;border:1px solid #ddd;display:block}}
.legend{{font-size:.85rem;border:1px solid #ddd;background:#fafafa;padding:.4rem .8rem}} .legend li{{list-style:none;margin:.2rem 0}}
.legend ul{{padding:0;margin:0}} .swatch{{display:inline-block;width:1.6rem;height:.7rem;margin-right:.4rem;vertical-align:middle}}
.swatch.line{{height:0;border-top:2px solid {CURVE}}} .swatch.moment{{background:{MOMENT};opacity:.35}} .swatch.truth{{background:{TRUTH};opacity:.6}}
"""

SCRIPT = """
window.addEventListener('error', e => { document.body.dataset.errors = (document.body.dataset.errors || '') + e.message + ';'; });
function seek(id, t) {
  const v = document.getElementById(id); v.currentTime = t; v.scrollIntoView({block: 'nearest'});
  const p = v.play(); if (p) p.catch(() => {});
}
function unplayable(v) { v.parentElement.querySelector('.error').hidden = false; }
document.addEventListener('DOMContentLoaded', () => { document.body.dataset.rendered = 'ok'; });
"""


def axis_ticks(duration: float, most: int = 8) -> list[float]:
    """Tick times for [0, duration] s, a round step apart, at most about ``most`` of them."""
    step = next((s for s in TICK_STEPS if duration / s <= most), TICK_STEPS[-1])
    return [k * step for k in range(int(duration // step) + 1)]


def saliency_svg(
    times: list[float],
    scores: list[float],
    moments: list[list[float]],
    duration: float,
    truth: list[list[float]] | None = None,
    width: int = 560,
) -> str:
    """An inline SVG over [0, duration] s: the saliency curve (min-max scaled) with the moments shaded, a row of
    true moments when ``truth`` is given, and a time axis in h:mm:ss."""
    if not times:
        return ""
    left, right, top, plot, row = 28, width - 28, 4, 60, 10  # plot: curve height; row: true-moment row height
    low, span = min(scores), max(max(scores) - min(scores), 1e-6)
    x = lambda t: left + (right - left) * min(max(t, 0.0), duration) / max(duration, 1e-6)  # noqa: E731
    shades = "".join(
        f'<rect class="moment" x="{x(s):.1f}" y="{top}" width="{max(x(e) - x(s), 1):.1f}" height="{plot}" fill="{MOMENT}" '
        f'opacity="0.35"><title>moment {i + 1}: {hms(s)}–{hms(e)} · {p:.2f}</title></rect>'
        for i, (s, e, p) in enumerate(moments)
    )
    points = " ".join(f"{x(t):.1f},{top + plot - plot * (v - low) / span:.1f}" for t, v in zip(times, scores))
    axis = top + plot + 2
    if truth is not None:
        shades += "".join(
            f'<rect class="truth" x="{x(s):.1f}" y="{axis + 2}" width="{max(x(e) - x(s), 1):.1f}" height="{row}" '
            f'fill="{TRUTH}" opacity="0.6"><title>true moment {hms(s)}–{hms(e)}</title></rect>'
            for s, e in truth
        )
        axis += row + 4
    ticks = "".join(
        f'<line x1="{x(t):.1f}" y1="{axis}" x2="{x(t):.1f}" y2="{axis + 4}" stroke="#555"/>'
        f'<text x="{x(t):.1f}" y="{axis + 15}" font-size="10" text-anchor="middle">{hms(t).removesuffix(".0")}</text>'
        for t in axis_ticks(duration)
    )
    height = axis + 19
    return (
        f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="saliency over time, moments shaded">{shades}'
        f'<polyline points="{points}" fill="none" stroke="{CURVE}" stroke-width="1.5"/>'
        f'<line x1="{left}" y1="{axis}" x2="{right}" y2="{axis}" stroke="#555"/>{ticks}</svg>'
    )


def legend(top: int, truth: tuple[int, int] | None) -> str:
    """What the marks mean; ``truth``: (queries with true moments, queries) when ground truth was given."""
    items = [
        '<span class="swatch line"></span>saliency: how well each clip matches the query, min-max scaled per query '
        "(the top of the plot is its best clip)",
        f'<span class="swatch moment"></span>shaded bands: the top {top} predicted moments',
        "<b>0:00:12.0–0:00:20.0 · 0.87</b> on a button: a moment's start–end (h:mm:ss.s) and its score, higher is more "
        "confident; click to play from its start",
        "axis: time in h:mm:ss from the start of the video",
    ]
    if truth is not None:
        items.insert(
            2,
            f'<span class="swatch truth"></span>the row under the curve: the true moments (ground truth, found for '
            f"{truth[0]} of {truth[1]} queries by qid, else by video and query)",
        )
    return f'<div class="legend"><b>Legend</b><ul>{"".join(f"<li>{item}</li>" for item in items)}</ul></div>'


def png_bytes(frame: np.ndarray) -> bytes:
    """uint8 (3, S, S) -> a PNG file's bytes."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame.transpose(1, 2, 0))).save(buffer, format="PNG")
    return buffer.getvalue()


def png_data_uri(frame: np.ndarray) -> str:
    """uint8 (3, S, S) -> data:image/png;base64,..."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(frame)).decode()


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


def true_windows(results: list[dict], records: list[dict]) -> list[list[list[float]] | None]:
    """Per result, the ``relevant_windows`` of its annotation record, None when it has none.

    A record matches a result of the same video (its ``vid``, or the video file's stem) with the same qid, else
    with the same query text: default qids (0, 1, ...) of another video's records are never taken.
    """
    by_qid = {r["qid"]: r for r in records}
    by_query: dict[tuple[str, str], dict] = {}
    for r in records:
        by_query.setdefault((r["vid"], r["query"].strip()), r)
    found = []
    for r in results:
        names = (r.get("vid"), Path(r["video"]).stem)
        record = by_qid.get(r["qid"])
        if record is None or record["vid"] not in names:
            record = next((by_query[n, r["query"].strip()] for n in names if (n, r["query"].strip()) in by_query), None)
        found.append(record.get("relevant_windows") if record else None)
    return found


def place_media(video: Path, dest: Path, mode: str) -> None:
    """Put ``video`` at ``dest`` as a copy or a symlink; an up-to-date one is kept, and the video itself never removed."""
    if dest.is_symlink():
        if mode == "link" and Path(os.readlink(dest)) == video:
            return
        dest.unlink()
    elif dest.exists():
        have, want = dest.stat(), video.stat()
        if os.path.samefile(dest, video) or mode == "copy" and (have.st_size, have.st_mtime_ns) == (want.st_size, want.st_mtime_ns):
            return
        dest.unlink()
    if mode == "link":
        dest.symlink_to(video)
        return
    tmp = partial_path(dest)
    try:
        shutil.copy2(video, tmp)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def media_sources(videos: list[str], out_dir: Path, mode: str) -> dict[str, str]:
    """Per video, its player's src: the absolute file:// URL, or (copy, link) ``media/NAME`` once the file is there.

    A missing video keeps its absolute URL (the page says it cannot be loaded). A file that cannot be placed is a
    ValueError naming it.
    """
    if mode not in MEDIA_CHOICES:
        raise ValueError(f"report media {mode!r}: expected one of {', '.join(MEDIA_CHOICES)}")
    sources, taken = {}, set()
    for video in videos:
        path = Path(video).resolve()
        if mode == "absolute" or not path.is_file():
            sources[video] = path.as_uri()
            continue
        name = unique_id(path.stem, taken)
        taken.add(name)
        folder = path_in(out_dir, "media")
        dest = folder / f"{name}{path.suffix}"
        try:
            folder.mkdir(exist_ok=True)
            place_media(path, dest, mode)
        except OSError as e:
            raise ValueError(f"{dest}: cannot {mode} {video} there ({e.strerror or e})") from None
        sources[video] = quote(f"media/{dest.name}")
    return sources


def write_report(
    results: list[dict],
    out_dir: str | Path,
    store: str | Path | None,
    top: int = 5,
    media: str = "absolute",
    ground_truth: list[dict] | None = None,
) -> Path:
    """Write ``out_dir/index.html`` for ``results`` (from ``Grounder.ground_many``); returns its path.

    ``media``: how players reach the videos (one of MEDIA_CHOICES); ``ground_truth``: annotation records
    (``evaluation.load_ground_truth``) whose true moments are drawn (``true_windows`` matches them).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    by_video: dict[str, list[tuple[dict, list[list[float]] | None]]] = {}
    truth = true_windows(results, ground_truth) if ground_truth is not None else [None] * len(results)
    for r, windows in zip(results, truth):
        by_video.setdefault(r["video"], []).append((r, windows))
    sources = media_sources(list(by_video), out_dir, media)
    sections = []
    for n, (video, items) in enumerate(by_video.items()):
        player = f"v{n}"
        queries = []
        for r, windows in items:
            title = f"<b>{html.escape(r['query'] or '(empty query)')}</b> <small>qid {html.escape(str(r['qid']))}</small>"
            head = f'<div class="query" data-qid="{html.escape(str(r["qid"]))}">{title}'
            if "error" in r:
                queries.append(f'{head}<div class="error">{html.escape(r["error"])}</div></div>')
                continue
            moments = r["pred_relevant_windows"][:top]
            buttons = "".join(
                f'<button onclick="seek(\'{player}\', {s})" title="play from {html.escape(hs)} (score {p:.2f})">'
                f"{html.escape(hs)}–{html.escape(he)} · {p:.2f}</button>"
                for (s, e, p), (hs, he) in zip(moments, r["pred_relevant_windows_hms"])
            )
            thumbs = thumbnails(feature_path(store, r["vid"]), best_frames(r, moments)) if store else []
            images = "".join(f'<img src="{uri}" alt="best frame of moment {i + 1}" title="moment {i + 1}">' for i, uri in enumerate(thumbs))
            warning = f'<div class="error">{html.escape(r["warning"])}</div>' if r.get("warning") else ""
            queries.append(
                f"{head}{warning}<div>{buttons}</div>"
                f"{saliency_svg(r['clip_times'], r['pred_saliency_scores'], moments, r['duration'], windows)}"
                f'<div class="thumbs">{images}</div></div>'
            )
        name = html.escape(video)
        sections.append(
            f'<h2>{name}</h2><div class="video"><div class="player"><video id="{player}" controls preload="metadata" '
            f'src="{html.escape(sources[video])}" onerror="unplayable(this)"></video><p class="error" hidden>cannot load '
            f"{name}: it was moved or deleted (or this browser cannot play it); write the report again, or with "
            f"--report-media copy to take the videos along</p></div><div>{''.join(queries)}</div></div>"
        )
    matched = (sum(w is not None for w in truth), len(results)) if ground_truth is not None else None
    page = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>vtg ground report</title>'
        f"<style>{STYLE}</style><script>{SCRIPT}</script></head><body><h1>Grounding report: {len(results)} queries on "
        f"{len(by_video)} videos</h1>{legend(top, matched)}{''.join(sections)}</body></html>"
    )
    path = out_dir / "index.html"
    atomic_write_text(path, page)
    return path
