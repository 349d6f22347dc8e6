"""Synthetic grounding data: videos of coloured shapes doing things, with queries.

``make_dataset(out, videos, seed, long=False)`` writes ``out/videos/*.mp4``,
``out/train.jsonl`` / ``out/val.jsonl`` in QVHighlights format and
``out/val_queries.jsonl`` for ``vtg ground --queries`` (the last quarter of
the videos is the validation split). An event is a (colour, look, action)
such as "a red striped disc moves to the left", drawn inside the centre
square that CLIP's crop keeps, one event at a time with background between
them, over a drifting, cutting background. Everything follows from the
seed, video by video (each video draws from its own generator
``[seed, index]``), so videos render in parallel processes.

Short dataset (default, ``synth_NNNN``): each video (30 to 180 s, an even
number of seconds; small mixed sizes and frame rates) shows 3 to 7 events
lasting 4 to 40 s on the 2 s clip grid, and every event is a query. Events
share the colour, look or action of another event of the video, and some
repeat (a query with two windows), so a model has to read the whole query:
with a fixed query it can only guess which event is meant.

Long dataset (``long=True``, ``vtg synth --long``, ``long_NNNN``), for
window retrieval + grounding (RGNet): videos of 20 to 60 minutes (even
seconds) at 1 frame/s and 64 to 128 px, cheap to render and decode at the
0.5 fps that sampling uses. About one event every 30 to 60 s. Each video has
5 to 10 TARGET events (4 to 30 s) whose (colour, look, action) appears only
once in the video; they are the queries, one window each. All other events
are DISTRACTORS of the same lengths that copy one or two attributes of a
target, so finding the right window needs every word of the query.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

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
VOCABULARY = (tuple(COLORS), SHAPES, ACTIONS)  # the attributes of an event, in query order
SIZES = ((160, 90), (128, 96), (144, 108), (112, 112))
FRAME_RATES = (8, 10, 12)
CLIP_SECONDS = 2

# Long videos: sizes CLIP's 64-px resize-and-crop reads well, 1 frame/s (sampling takes 0.5 fps).
LONG_SIZES = ((64, 64), (96, 96), (128, 96))
LONG_FPS = 1
LONG_MINUTES = (20, 60)
LONG_TARGETS = (5, 10)  # queries per video
LONG_SPACING = (30, 60)  # mean seconds from one event to the next, drawn per video
LONG_EVENT_CLIPS = (2, 15)  # every event of a long video lasts 4 to 30 s
LONG_GOP = 30  # a keyframe every 30 s keeps seeking into an hour-long video cheap
RENDER_CHUNK = 128  # frames drawn per vectorised step


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
    """One visual event: a shape doing an action over [start, end) seconds.

    ``target``: the event is a query of its video (every event of a short
    video; in a long video, the events whose combination is unique in it).
    """

    color: str
    shape: str
    action: str
    start: float
    end: float
    x: float  # centre at the event's start, as a fraction of the width
    y: float  # centre at the event's start, as a fraction of the height
    target: bool = True

    @property
    def combo(self) -> tuple[str, str, str]:
        return self.color, self.shape, self.action

    @property
    def query(self) -> str:
        return f"a {self.color} {self.shape} {self.action}"


@dataclass(frozen=True)
class VideoPlan:
    """Everything a video shows, drawn from its seed before rendering (rendering draws nothing)."""

    duration: int  # seconds, a multiple of CLIP_SECONDS
    width: int
    height: int
    fps: int
    events: tuple[Event, ...]
    cut_times: np.ndarray  # background scene cuts (seconds)
    palettes: np.ndarray  # (cuts + 1, 2, 3) float32: each scene's two background tones

    @property
    def frames(self) -> int:
        return int(self.duration * self.fps)


def _shape_mask(shape: str, xx: np.ndarray, yy: np.ndarray, cx, cy, r, band: float) -> np.ndarray:
    """Pixels of a disc of radius r (px) at (cx, cy), drawn as ``shape``; ``band``: stripe and check width (px).

    Works on one frame (scalar centre and radius, xx / yy of shape (H, W)) or
    many at once (centre and radius arrays that broadcast against xx / yy).
    Arithmetic is float32, with float64 centres and radii rounded once.
    """
    cx, cy = (np.asarray(v, np.float64).astype(np.float32) for v in (cx, cy))
    r = np.asarray(r, np.float64)
    d2 = (xx - cx) ** 2 + (yy - cy) ** 2
    disc = d2 <= (r * r).astype(np.float32)
    band = np.float32(band)
    if shape == "ring":
        return disc & (d2 >= ((0.55 * r) ** 2).astype(np.float32))
    if shape == "striped disc":
        return disc & (np.floor(yy / band) % 2 == 0)
    if shape == "checkered disc":
        return disc & ((np.floor(yy / band) + np.floor(xx / band)) % 2 == 0)
    return disc


def _event_geometry(event: Event, t, width: int, height: int):
    """Centre (px), radius (px) and visibility of an event's shape at time t (seconds, or an array of them).

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
    # blinks: on 2 s, off 2 s, so every other 0.5-fps sample shows it
    visible = np.logical_or(event.action != "blinks", (t - event.start) % 4.0 < 2.0)
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


def _random_combo(rng: np.random.Generator) -> tuple[str, str, str]:
    return tuple(str(rng.choice(values)) for values in VOCABULARY)  # type: ignore[return-value]


def _vary(combo: tuple[str, str, str], which: Iterable[int], rng: np.random.Generator, differ: bool = False) -> tuple[str, str, str]:
    """``combo`` with the attributes ``which`` (0 colour, 1 look, 2 action) redrawn; ``differ``: to another value."""
    out = list(combo)
    for w in which:
        out[w] = str(rng.choice([v for v in VOCABULARY[w] if not (differ and v == combo[w])]))
    return tuple(out)  # type: ignore[return-value]


def _place(
    kinds: Sequence[tuple[tuple[str, str, str], bool]], lengths: np.ndarray, gaps: np.ndarray, rng: np.random.Generator
) -> list[Event]:
    """Events one after another: gap, event, gap, event, ... (lengths and gaps in clips)."""
    events, start = [], 0
    for ((color, shape, action), target), length, gap in zip(kinds, lengths, gaps):
        start += int(gap)
        x, y = _start_position(action, rng)
        events.append(Event(color, shape, action, start * CLIP_SECONDS, (start + int(length)) * CLIP_SECONDS, x, y, target))
        start += int(length)
    return events


def _plan_events(duration: int, rng: np.random.Generator) -> list[Event]:
    """Short video: events that share colour, shape or action with each other; every one is a query."""
    count = int(np.clip(duration // 25, 3, 7))
    combos: list[tuple[str, str, str]] = []
    while len(combos) < count:
        if combos and rng.random() < 0.6:  # a near miss of an earlier event: change one attribute
            combo = _vary(combos[rng.integers(len(combos))], [int(rng.integers(3))], rng)
        else:
            combo = _random_combo(rng)
        if combo not in combos:
            combos.append(combo)
    if duration >= 90 and rng.random() < 0.5:  # one event happens twice: a query with two windows
        combos.append(combos[rng.integers(len(combos))])
    combos = [combos[i] for i in rng.permutation(len(combos))]
    clips = duration // CLIP_SECONDS
    longest = int(np.clip(clips * 3 // (4 * len(combos)), 2, 20))  # events fill at most 3/4 of the video
    lengths = rng.integers(2, longest + 1, size=len(combos))  # clips: 4 to 40 s
    gaps = rng.multinomial(clips - int(lengths.sum()), np.full(len(combos) + 1, 1 / (len(combos) + 1)))
    return _place([(combo, True) for combo in combos], lengths, gaps, rng)  # one event at a time, in random order


def _plan_long_events(duration: int, rng: np.random.Generator) -> list[Event]:
    """Long video: a few targets (unique combinations) hidden among distractors that copy 1 or 2 of their attributes."""
    n_targets = int(rng.integers(LONG_TARGETS[0], LONG_TARGETS[1] + 1))
    n_events = max(2 * n_targets, round(duration / rng.uniform(*LONG_SPACING)))
    targets: list[tuple[str, str, str]] = []
    while len(targets) < n_targets:
        combo = _random_combo(rng)
        if combo not in targets:
            targets.append(combo)
    distractors: list[tuple[str, str, str]] = []
    while len(distractors) < n_events - n_targets:  # each target in turn gets a near miss
        target = targets[len(distractors) % n_targets]
        keep_two = rng.random() < 0.6  # share two attributes with the target (change one), else share one
        combo = _vary(target, rng.choice(3, size=1 if keep_two else 2, replace=False), rng, differ=True)
        if combo not in targets:  # distractors may repeat each other; never a target
            distractors.append(combo)
    kinds = [(c, True) for c in targets] + [(c, False) for c in distractors]
    kinds = [kinds[i] for i in rng.permutation(len(kinds))]
    clips = duration // CLIP_SECONDS
    while True:  # at least one clip of background between events (a redraw is rare: they fill ~1/2 at most on average)
        lengths = rng.integers(LONG_EVENT_CLIPS[0], LONG_EVENT_CLIPS[1] + 1, size=n_events)
        free = clips - int(lengths.sum()) - (n_events - 1)
        if free >= 0:
            break
    gaps = rng.multinomial(free, rng.dirichlet(np.full(n_events + 1, 2.0)))  # uneven gaps: no regular rhythm
    gaps[1:-1] += 1
    return _place(kinds, lengths, gaps, rng)


def plan_video(rng: np.random.Generator, long: bool = False) -> VideoPlan:
    """Draw a video's duration, size, frame rate, events and background from ``rng``."""
    if long:
        duration = int(rng.integers(LONG_MINUTES[0] * 60 // CLIP_SECONDS, LONG_MINUTES[1] * 60 // CLIP_SECONDS + 1)) * CLIP_SECONDS
        width, height = LONG_SIZES[rng.integers(len(LONG_SIZES))]
        fps = LONG_FPS
        events = _plan_long_events(duration, rng)
    else:
        duration = int(rng.integers(15, 91)) * CLIP_SECONDS
        width, height = SIZES[rng.integers(len(SIZES))]
        fps = int(rng.choice(FRAME_RATES))
        events = _plan_events(duration, rng)
    cut_times = np.cumsum(rng.uniform(15, 40, size=max(16, math.ceil(duration / 15) + 1)))  # a cut every 15-40 s
    palettes = rng.integers(20, 120, size=(len(cut_times) + 1, 2, 3)).astype(np.float32)
    return VideoPlan(duration, width, height, fps, tuple(events), cut_times, palettes)


def _render_chunk(plan: VideoPlan, times: np.ndarray) -> np.ndarray:
    """RGB uint8 (n, H, W, 3) frames at ``times`` (float64 seconds, ascending): background, then the events."""
    width, height = plan.width, plan.height
    xx = np.arange(width, dtype=np.float32)[None, None, :]  # (1, 1, W)
    yy = np.arange(height, dtype=np.float32)[None, :, None]  # (1, H, 1)
    ramp = (xx / width)[..., None]  # (1, 1, W, 1): the background varies along x, its ripple along y
    scene = np.searchsorted(plan.cut_times, times)
    top, bottom = plan.palettes[scene, 0][:, None, None, :], plan.palettes[scene, 1][:, None, None, :]
    drift = np.array([0.5 + 0.5 * math.sin(2 * math.pi * t / 23.0) for t in times])[:, None, None, None]
    rows = top * (1 - ramp) * drift.astype(np.float32) + bottom * (ramp * (1 - drift).astype(np.float32) + drift.astype(np.float32) * ramp)
    ripple = 10 * np.sin(yy[..., None] / 9.0 + times.astype(np.float32)[:, None, None, None])  # (n, H, 1, 1)
    frames = rows + ripple  # (n, H, W, 3)
    band = min(width, height) / 24
    for event in plan.events:
        if event.end <= times[0] or event.start > times[-1]:
            continue
        index = np.flatnonzero((times >= event.start) & (times < event.end))
        cx, cy, r, visible = np.broadcast_arrays(*_event_geometry(event, times[index], width, height))
        index, cx, cy, r = index[visible], cx[visible], cy[visible], r[visible]
        if len(index):
            mask = _shape_mask(event.shape, xx, yy, cx[:, None, None], cy[:, None, None], r[:, None, None], band)
            drawn = frames[index]
            drawn[mask] = COLORS[event.color]
            frames[index] = drawn
    return np.clip(frames, 0, 255, out=frames).astype(np.uint8)


def render_frames(plan: VideoPlan, start: int = 0, stop: int | None = None, chunk: int = RENDER_CHUNK) -> Iterator[np.ndarray]:
    """Yield the plan's RGB uint8 (H, W, 3) frames ``start`` to ``stop`` (frame i is at i / fps), drawn ``chunk`` at a time."""
    stop = plan.frames if stop is None else min(stop, plan.frames)
    for first in range(start, stop, chunk):
        yield from _render_chunk(plan, np.arange(first, min(first + chunk, stop)) / plan.fps)


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


def query_records(index: int, vid: str, plan: VideoPlan, rng: np.random.Generator) -> list[dict]:
    """QVHighlights records of a video: one per distinct target query, with all its windows."""
    by_query: dict[str, list[list[float]]] = {}
    for event in plan.events:
        if event.target:
            by_query.setdefault(event.query, []).append([float(event.start), float(event.end)])
    records = []
    for query, windows in by_query.items():
        windows = sorted(windows)
        clip_ids, scores = _saliency(windows, rng)
        records.append(
            {
                "qid": index * 100 + len(records),
                "query": query,
                "duration": plan.duration,
                "vid": vid,
                "relevant_windows": windows,
                "relevant_clip_ids": clip_ids,
                "saliency_scores": scores,
            }
        )
    return records


def shared_words(plan: VideoPlan) -> dict[str, int]:
    """Per distinct query of ``plan``: the most attributes (words) it shares with another event of the
    video, 0 to 2 (another event is any event with a different combination, target or distractor)."""
    targets = {event.query: event.combo for event in plan.events if event.target}
    return {
        query: max((sum(a == b for a, b in zip(combo, other.combo)) for other in plan.events if other.combo != combo), default=0)
        for query, combo in sorted(targets.items())
    }


def make_video_record(index: int, out_dir: Path, seed: int, long: bool = False) -> tuple[list[dict], dict[str, int]]:
    """Render video ``index`` of the dataset ``seed``; return its QVHighlights query records and ``shared_words``."""
    rng = np.random.default_rng([seed, index])
    plan = plan_video(rng, long)
    vid = f"{'long' if long else 'synth'}_{index:04d}"
    write_video(out_dir / "videos" / f"{vid}.mp4", render_frames(plan), fps=plan.fps, gop=LONG_GOP if long else None)
    return query_records(index, vid, plan, rng), shared_words(plan)


def make_dataset(
    out: str | Path, videos: int | None = None, seed: int = 0, val_fraction: float = 0.25, progress: bool = True, long: bool = False
) -> dict:
    """Write a synthetic dataset (``long``: the long-video one); returns counts.

    ``videos`` defaults to 40 (60 long ones). Videos already present are re-rendered identically.
    """
    from tqdm import tqdm

    out = Path(out)
    videos = (60 if long else 40) if videos is None else videos
    if videos < 2:
        raise ValueError("--videos must be at least 2 (one for train, one for val)")
    n_val = max(1, round(videos * val_fraction))
    splits: dict[str, list[dict]] = {"train": [], "val": []}
    shared: list[int] = []  # per query, the words shared with the closest other event of its video
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:  # each video has its own seed: same output
        rendered = pool.map(make_video_record, range(videos), [out] * videos, [seed] * videos, [long] * videos)
        for i, (records, words) in enumerate(tqdm(rendered, total=videos, desc="synth", unit="video", disable=not progress)):
            splits["val" if i >= videos - n_val else "train"].extend(records)
            shared.extend(words.values())
    for split, records in splits.items():
        atomic_write_text(out / f"{split}.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    # The validation queries as a `vtg ground --queries` file (video paths relative to `out`).
    queries = [{"video": f"videos/{r['vid']}.mp4", "query": r["query"], "qid": r["qid"]} for r in splits["val"]]
    atomic_write_text(out / "val_queries.jsonl", "".join(json.dumps(q) + "\n" for q in queries))
    return {
        "videos": videos,
        "train_queries": len(splits["train"]),
        "val_queries": len(splits["val"]),
        # the weak-alignment difficulty: how many queries have another event in their video sharing 2, 1 or 0 words
        "queries_sharing_words": {str(k): shared.count(k) for k in (2, 1, 0)},
    }
