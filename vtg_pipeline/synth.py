"""Synthetic grounding data: videos of coloured shapes doing things, with queries.

``make_dataset(out, videos, seed)`` writes ``out/videos/*.mp4``,
``out/train.jsonl`` / ``out/val.jsonl`` in QVHighlights format and
``out/val_queries.jsonl`` for ``vtg ground --queries``. Each video
(30 to 180 s, an even number of seconds; small mixed sizes and frame rates)
shows 3 to 7 events, one at a time with background between them, over a
drifting, cutting background. An event is a (colour, look, action) such as
"a red striped disc moves to the left", lasting 4 to 40 s on the 2 s clip
grid. Events share the colour, look or action of another event of the video,
and some repeat (a query with two windows), so a model has to read the whole
query: with a fixed query it can only guess which event is meant. Everything
follows from the seed, video by video.
"""

from __future__ import annotations

import json
import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Sequence

import av
import numpy as np

from .features import atomic_write_text, partial_path

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 90, 235),
    "yellow": (235, 215, 40),
    "white": (245, 245, 245),
    "purple": (150, 60, 200),
}
# Looks that differ inside a 16-px patch: a random-weight vtg-tiny separates these
# textures (linear probe 0.85) but hardly outlines such as square/triangle/diamond (0.36).
SHAPES = ("disc", "ring", "striped disc", "checkered disc")
ACTIONS = ("moves to the left", "moves to the right", "rises", "falls", "grows", "shrinks", "blinks")
SIZES = ((160, 90), (128, 96), (144, 108), (112, 112))
FRAME_RATES = (8, 10, 12)
CLIP_SECONDS = 2


def write_video(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fps: float = 25,
    times: Sequence[float] | None = None,
    rotation: int = 0,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    gop: int | None = None,
    options: dict[str, str] | None = None,
) -> Path:
    """Encode RGB uint8 (H, W, 3) frames with PyAV.

    ``times`` gives each frame's presentation time in seconds (variable frame
    rate, or a non-zero start); by default frame i is at i / fps. ``rotation``
    (degrees) is written as display-matrix metadata.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(tmp), mode="w", format=path.suffix.lstrip(".").replace("mkv", "matroska")) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.pix_fmt = pix_fmt
        stream.options = {"preset": "ultrafast", "crf": "18", **(options or {})} if codec == "libx264" else dict(options or {})
        if gop:
            stream.codec_context.gop_size = gop
        time_base = Fraction(1, 1000) if times is not None else 1 / rate
        stream.codec_context.time_base = time_base
        if rotation:
            stream.set_display_rotation(rotation)
        for i, rgb in enumerate(frames):
            if i == 0:
                stream.height, stream.width = rgb.shape[:2]
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            frame.pts = round(times[i] / time_base) if times is not None else i
            frame.time_base = time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    os.replace(tmp, path)
    return path


@dataclass(frozen=True)
class Event:
    """One visual event: a shape doing an action over [start, end) seconds."""

    color: str
    shape: str
    action: str
    start: float
    end: float
    x: float  # centre at the event's start, as a fraction of the width
    y: float  # centre at the event's start, as a fraction of the height

    @property
    def query(self) -> str:
        return f"a {self.color} {self.shape} {self.action}"


def _shape_mask(shape: str, xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, r: float, band: float) -> np.ndarray:
    """Pixels of a disc of radius r (px) at (cx, cy), drawn as ``shape``; ``band``: stripe and check width (px)."""
    d2 = (xx - cx) ** 2 + (yy - cy) ** 2
    disc = d2 <= r * r
    if shape == "ring":
        return disc & (d2 >= (0.55 * r) ** 2)
    if shape == "striped disc":
        return disc & (np.floor(yy / band) % 2 == 0)
    if shape == "checkered disc":
        return disc & ((np.floor(yy / band) + np.floor(xx / band)) % 2 == 0)
    return disc


def _event_geometry(event: Event, t: float, width: int, height: int) -> tuple[float, float, float, bool]:
    """Centre (px), radius (px) and visibility of an event's shape at time t.

    Positions are fractions of the centred square of side min(width, height),
    the part that CLIP's resize-and-centre-crop keeps, so every event stays
    in view whatever the frame's aspect ratio.
    """
    side = min(width, height)
    p = (t - event.start) / (event.end - event.start)
    base = 0.2 * side  # a shape spans about two 16-px patches at CLIP's 64-px input: its outline is visible
    cx, cy, r = (width - side) / 2 + event.x * side, (height - side) / 2 + event.y * side, base
    travel = 0.5
    if event.action == "moves to the left":
        cx -= p * travel * side
    elif event.action == "moves to the right":
        cx += p * travel * side
    elif event.action == "rises":
        cy -= p * travel * side
    elif event.action == "falls":
        cy += p * travel * side
    elif event.action == "grows":
        r = base * (0.5 + p)
    elif event.action == "shrinks":
        r = base * (1.5 - p)
    visible = event.action != "blinks" or (t - event.start) % 4.0 < 2.0  # on 2 s, off 2 s: every other 0.5-fps sample
    return cx, cy, r, visible


def _start_position(action: str, rng: np.random.Generator) -> tuple[float, float]:
    x, y = rng.uniform(0.4, 0.6), rng.uniform(0.4, 0.6)
    if action == "moves to the left":
        x = rng.uniform(0.72, 0.78)
    elif action == "moves to the right":
        x = rng.uniform(0.22, 0.28)
    elif action == "rises":
        y = rng.uniform(0.72, 0.78)
    elif action == "falls":
        y = rng.uniform(0.22, 0.28)
    return x, y


def _plan_events(duration: int, rng: np.random.Generator) -> list[Event]:
    """Targets plus distractors that share colour, shape or action with them."""
    count = int(np.clip(duration // 25, 3, 7))
    combos: list[tuple[str, str, str]] = []
    while len(combos) < count:
        if combos and rng.random() < 0.6:  # a near miss of an earlier event: change one attribute
            color, shape, action = combos[rng.integers(len(combos))]
            which = rng.integers(3)
            color = rng.choice(list(COLORS)) if which == 0 else color
            shape = rng.choice(SHAPES) if which == 1 else shape
            action = rng.choice(ACTIONS) if which == 2 else action
            combo = (str(color), str(shape), str(action))
        else:
            combo = (str(rng.choice(list(COLORS))), str(rng.choice(SHAPES)), str(rng.choice(ACTIONS)))
        if combo not in combos:
            combos.append(combo)
    if duration >= 90 and rng.random() < 0.5:  # one event happens twice: a query with two windows
        combos.append(combos[rng.integers(len(combos))])
    combos = [combos[i] for i in rng.permutation(len(combos))]
    events = []
    clips = duration // CLIP_SECONDS
    longest = int(np.clip(clips * 3 // (4 * len(combos)), 2, 20))  # events fill at most 3/4 of the video
    lengths = rng.integers(2, longest + 1, size=len(combos))  # clips: 4 to 40 s
    gaps = rng.multinomial(clips - int(lengths.sum()), np.full(len(combos) + 1, 1 / (len(combos) + 1)))
    start = 0
    for (color, shape, action), length, gap in zip(combos, lengths, gaps):  # one event at a time, in random order
        start += int(gap)
        x, y = _start_position(action, rng)
        events.append(Event(color, shape, action, start * CLIP_SECONDS, (start + int(length)) * CLIP_SECONDS, x, y))
        start += int(length)
    return events


def render_frames(events: list[Event], duration: int, fps: int, width: int, height: int, rng: np.random.Generator):
    """Yield RGB uint8 (H, W, 3) frames: a drifting two-tone background with cuts, and the events."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    cut_times = np.cumsum(rng.uniform(15, 40, size=16))
    palettes = rng.integers(20, 120, size=(len(cut_times) + 1, 2, 3)).astype(np.float32)
    ramp = (xx / width)[..., None]
    band = min(width, height) / 24
    for i in range(int(duration * fps)):
        t = i / fps
        scene = int(np.searchsorted(cut_times, t))
        top, bottom = palettes[scene]
        drift = 0.5 + 0.5 * math.sin(2 * math.pi * t / 23.0)
        frame = top * (1 - ramp) * drift + bottom * (ramp * (1 - drift) + drift * ramp) + 10 * np.sin(yy / 9.0 + t)[..., None]
        for event in events:
            if event.start <= t < event.end:
                cx, cy, r, visible = _event_geometry(event, t, width, height)
                if visible:
                    frame[_shape_mask(event.shape, xx, yy, cx, cy, r, band)] = COLORS[event.color]
        yield np.clip(frame, 0, 255).astype(np.uint8)


def _saliency(windows: list[list[float]], rng: np.random.Generator) -> tuple[list[int], list[list[int]]]:
    """Clip ids inside the windows and 3 annotators' scores (1-4, highest mid-moment)."""
    ids, scores = [], []
    for start, end in windows:
        first, last = int(start // CLIP_SECONDS), int(math.ceil(end / CLIP_SECONDS))
        middle = (first + last - 1) / 2
        half = max(1.0, (last - first) / 2)
        for clip in range(first, last):
            base = 2 + 2 * (1 - abs(clip - middle) / half)
            ids.append(clip)
            scores.append([int(np.clip(round(base + rng.integers(-1, 2)), 1, 4)) for _ in range(3)])
    return ids, scores


def make_video_record(index: int, out_dir: Path, seed: int) -> list[dict]:
    """Render video ``index`` of the dataset ``seed`` and return its QVHighlights query records."""
    rng = np.random.default_rng([seed, index])
    duration = int(rng.integers(15, 91)) * CLIP_SECONDS
    width, height = SIZES[rng.integers(len(SIZES))]
    fps = int(rng.choice(FRAME_RATES))
    vid = f"synth_{index:04d}"
    events = _plan_events(duration, rng)
    write_video(out_dir / "videos" / f"{vid}.mp4", render_frames(events, duration, fps, width, height, rng), fps=fps)
    by_query: dict[str, list[list[float]]] = {}
    for event in events:
        by_query.setdefault(event.query, []).append([float(event.start), float(event.end)])
    records = []
    for query, windows in by_query.items():
        windows = sorted(windows)
        clip_ids, scores = _saliency(windows, rng)
        records.append(
            {
                "qid": index * 100 + len(records),
                "query": query,
                "duration": duration,
                "vid": vid,
                "relevant_windows": windows,
                "relevant_clip_ids": clip_ids,
                "saliency_scores": scores,
            }
        )
    return records


def make_dataset(out: str | Path, videos: int = 40, seed: int = 0, val_fraction: float = 0.25, progress: bool = True) -> dict:
    """Write a synthetic dataset; returns counts. Videos already present are re-rendered identically."""
    from tqdm import tqdm

    out = Path(out)
    if videos < 2:
        raise ValueError("--videos must be at least 2 (one for train, one for val)")
    n_val = max(1, round(videos * val_fraction))
    splits: dict[str, list[dict]] = {"train": [], "val": []}
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:  # each video has its own seed: same output
        rendered = pool.map(make_video_record, range(videos), [out] * videos, [seed] * videos)
        for i, records in enumerate(tqdm(rendered, total=videos, desc="synth", unit="video", disable=not progress)):
            splits["val" if i >= videos - n_val else "train"].extend(records)
    for split, records in splits.items():
        atomic_write_text(out / f"{split}.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    # The validation queries as a `vtg ground --queries` file (video paths relative to `out`).
    queries = [{"video": f"videos/{r['vid']}.mp4", "query": r["query"], "qid": r["qid"]} for r in splits["val"]]
    atomic_write_text(out / "val_queries.jsonl", "".join(json.dumps(q) + "\n" for q in queries))
    return {"videos": videos, "train_queries": len(splits["train"]), "val_queries": len(splits["val"])}
