"""Library search: one index over a whole video collection, searched by text in two stages (``vtg index``, ``vtg search``).

Build (``build_index``): the videos are extracted into ``DIR/features`` by the extract pipeline (resumable, atomic
files, a bad video recorded with its error and skipped); every window of the ``decode.window`` /
``window_stride`` grid is embedded by the checkpoint's retrieval head (``models/retrieval.py``) from the last
tapped layer's CLS states; the vectors go into faiss in the layout their number calls for (``window_index``: exact
up to 100k windows, an inverted file up to 1M, product-quantised codes re-ranked from the mapped vectors above). A
rerun extracts and embeds only new and changed videos (source path, size, mtime), keeps the vectors of the others,
drops deleted videos (and their feature files) and rebuilds the faiss index from the stored vectors (a compressed
one reusing its training while it fits). An index is tied to its checkpoint (``checkpoint_sha256``: weights, model
config, backbone, fps, window grid); another checkpoint is refused until ``--rebuild``.

Folder::

    DIR/index.json               {"format_version", "version": N, "folder": "vN"}: the current version, replaced atomically
    DIR/vN/library.json          checkpoint (path, sha256), backbone spec, fps, window grid, faiss layout, the folders
                                 given (real paths: media is served from these only), the videos
                                 (vid, path, size, mtime, duration, frames, rows) and the failed ones with their error
    DIR/vN/vectors.safetensors   vectors float32 (W, E) and per window: video (index into videos), first_frame,
                                 start, end (s)
    DIR/vN/windows.faiss         the faiss index of the vectors, row i = window i
    DIR/features/                the feature store (states for stage 2, frames for thumbnails; with
                                 states="on-demand" the last layer's CLS states alone)

A version is written into ``DIR/.vN.partial``, renamed to ``DIR/vN``, then ``index.json`` is replaced: a reader sees
the old version or the whole new one, never a part. The previous version stays until the next build, so a reader
that has just read ``index.json`` still finds its files. Builds on one folder take turns (a lock on index.json).

Search: stage 1 embeds the query and takes the top ``candidates`` windows from faiss; stage 2 grounds the query
with the checkpoint's model (R² or RGNet, ``inference.ground_videos``, as ``vtg ground`` does) in those windows
only, the windows of up to ``VIDEOS_PER_PASS`` videos sharing forwards, merges each video's moments (NMS in absolute
seconds) and ranks every moment by its score. With ``decode.window_temperature`` T > 0 an RGNet moment's window score
is relative to the query's best window over all the videos searched (``inference.across_videos``), so that a moment
scores the same whether its video had one candidate window or several. A video whose
feature file went away or changed since the version was written (a build running meanwhile) is left out. An index
built with ``states="on-demand"`` re-encodes each candidate window from its video instead (``ReencodedWindows``: an
LRU of recent windows, ``window_cache_bytes``); a video gone or changed since is left out the same way.

Python API (``vtg serve`` builds on it)::

    index = LibraryIndex.open("DIR")             # loads the checkpoint it was built with; LibraryError (one line) if that changed
    index.search("a red disc rises", k=10)      # moments, best first: {"rank", "query", "video" (path), "vid", "start",
                                                #   "end", "score", "duration", "window": [start, end], "clip_times", "saliency"} (s)
    index.windows("a red disc rises", n=20)     # stage 1 alone: {"vid", "video", "start", "end", "similarity"}, best first
    index.videos()                               # [{"vid", "path", "duration", "frames", "windows", "feature_file"}, ...]
    index.version                                # the loaded version's number (1, 2, ...)
    index.changed()                              # one stat: has a build written a new version since this one was loaded?
    index.reload()                               # switch to the newest version (True if there was one); searches in flight finish on theirs
    build_index(find_videos(["videos/"]), grounder, "DIR", "run/best")   # what `vtg index` runs; returns its counts

``search`` and ``reload`` may run in different threads: a search reads the current version once.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import NamedTuple

import faiss
import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from .backbone import weights_sha256
from .data import DataError, StoredVideo
from .engine import Engine, LocalEngine
from .errors import UserError
from .extract import VISION_CLS, VideoItem, encode_samples, output_folder, source_metadata
from .features import FileLock, atomic_write_text, feature_path, save_tensors
from .grounder import Grounder
from .inference import VideoWindows, across_videos, rounded, window_starts
from .models import ModelConfig
from .names import check_video_id, first_line, printable
from .video import VideoError
from .window_index import COMPRESS_ABOVE, FLAT_UP_TO, WindowIndex, build_faiss, choose_layout, mapped_tensor, reusable_training

log = logging.getLogger(__name__)

FORMAT_VERSION = "1"
CANDIDATES = 20  # stage-1 windows that stage 2 grounds in
VIDEOS_PER_PASS = 64  # videos stage 2 holds open at once, their windows sharing forwards
STATES = {"fp16": "fp16", "fp8": "fp8", "on-demand": "cls"}  # build_index(states=...) -> the store's ExtractConfig.states
WINDOW_CACHE_BYTES = 1 << 30  # re-encoded window states a LibraryIndex keeps: about 100 windows of 64 s at 0.5 fps (ViT-B/32, K = 4)
VIDEO_KEYS = ("vid", "path", "size", "mtime", "duration", "frames", "rows")  # a video's record in library.json
TABLE = {"video": torch.int64, "first_frame": torch.int64, "start": torch.float64, "end": torch.float64}  # per window


class LibraryError(UserError):
    """An index that cannot be used (missing, corrupt, another checkpoint); one line naming the file and the way out."""


def rebuild_hint(folder: Path) -> str:
    return f"rebuild it: vtg index VIDEO_DIR... --checkpoint CKPT --index {folder} --rebuild"


# The model settings an index's identity holds whatever their values: ModelConfig's fields as of 2026-12-06. One added
# since then counts only when it differs from its default, so a new setting, off, leaves every index valid.
ALWAYS_HASHED_MODEL_SETTINGS = frozenset(
    "background_matching decoder_ffn_dims decoder_layers decoder_queries dims dropout droppath dummies ffn_ratio fusion "
    "gumbel_temperature head heads layers max_moments name refinement_kernel retrieval_dims rg_cross_layers rg_dropout "
    "rg_ffn_dims rg_self_layers score_refinement sparsifier spatial_pooling strides text_width vision_width".split()
)


def hashed_model_settings(model: ModelConfig) -> dict:
    """The model settings an index's identity holds (``ALWAYS_HASHED_MODEL_SETTINGS``, then any other not at its default)."""
    defaults = {f.name: f.default if f.default is not MISSING else f.default_factory() for f in fields(model)}
    return {k: v for k, v in model.to_dict().items() if k in ALWAYS_HASHED_MODEL_SETTINGS or v != defaults[k]}


def checkpoint_sha256(grounder: Grounder) -> str:
    """What an index depends on, hashed: the side network's weights, model settings (``hashed_model_settings``),
    backbone spec, fps and window grid."""
    cfg = grounder.cfg
    identity = {
        "weights": weights_sha256(grounder.model),
        "model": hashed_model_settings(cfg.model),
        "backbone": grounder.backbone.spec.to_dict(),
        "fps": cfg.data.fps,
        "window": cfg.decode.window_frames(cfg.data.fps),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def check_query(query: object, grounder: Grounder) -> str:
    """``query`` if it is a non-empty text within the text tower's context, else ValueError saying which."""
    if not isinstance(query, str) or not query.strip():
        raise ValueError("empty query: give the words to search for")
    if grounder.backbone.truncates(query):
        raise ValueError(f"query too long: more than {grounder.backbone.tokenizer.context_length} tokens ({len(query)} characters)")
    return query


@dataclass(frozen=True)
class Version:
    """One written index version, loaded: ``info`` is library.json, ``table`` the window columns (W,), ``index`` its
    searchable vectors."""

    number: int
    folder: Path
    info: dict
    table: dict[str, np.ndarray]
    index: WindowIndex
    stamp: tuple  # (inode, mtime, size) of index.json when it was read


class Searcher(NamedTuple):
    """A version with the grounder that searches it (swapped as one by ``reload``) and that grounder's checkpoint hash."""

    version: Version
    grounder: Grounder
    sha256: str


def _stamp(path: Path) -> tuple | None:
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


def read_version(folder: Path) -> Version:
    """The current version of the index in ``folder``; LibraryError naming the missing or corrupt file."""
    pointer = folder / "index.json"
    stamp = _stamp(pointer)
    if stamp is None:
        raise LibraryError(f"{pointer}: no index here; build one: vtg index VIDEO_DIR... --checkpoint CKPT --index {folder}")
    current_file = pointer
    try:
        current = json.loads(pointer.read_text(encoding="utf-8"))
        number, name = int(current["version"]), current["folder"]
        if current.get("format_version") != FORMAT_VERSION or name != f"v{number}":
            raise ValueError(f"format {current.get('format_version')!r}, folder {name!r}")
        version_dir = folder / name
        current_file = version_dir / "library.json"
        info = json.loads(current_file.read_text(encoding="utf-8"))
        if not all(isinstance(info["checkpoint"][key], str) for key in ("path", "sha256")):
            raise ValueError("no checkpoint path and sha256")
        for entries, keys in ((info["videos"], VIDEO_KEYS), (info["failed"], ("vid", "path", "error"))):
            for entry in entries:
                if not set(keys) <= set(entry):
                    raise ValueError(f"a video record without {', '.join(sorted(set(keys) - set(entry)))}")
                check_video_id(entry["vid"], str(current_file))
        current_file = version_dir / "vectors.safetensors"
        with safe_open(str(current_file), framework="pt") as f:
            table = {column: f.get_tensor(column).numpy() for column in TABLE}
        if len({len(column) for column in table.values()}) != 1 or (table["video"] >= len(info["videos"])).any():
            raise ValueError("its window columns disagree")
        layout = info["faiss"] if isinstance(info["faiss"], dict) else {"kind": info["faiss"]}  # a kind alone before ivfpq
        vectors = mapped_tensor(current_file, "vectors") if layout["kind"] == "ivfpq" else None
        if vectors is not None and vectors.shape[0] != len(table["start"]):
            raise ValueError(f"{vectors.shape[0]} vectors for {len(table['start'])} windows")
        current_file = version_dir / "windows.faiss"
        index = faiss.read_index(str(current_file))
        if index.ntotal != len(table["start"]):
            raise ValueError(f"{index.ntotal} vectors for {len(table['start'])} windows")
        index = WindowIndex(index, layout, vectors)
    except Exception as e:  # OSError, JSON, KeyError/TypeError of a wrong shape, SafetensorError, faiss' RuntimeError
        reason = "missing" if isinstance(e, FileNotFoundError) else f"corrupt ({type(e).__name__}: {first_line(e)[:160]})"
        raise LibraryError(f"{current_file}: {reason}; {rebuild_hint(folder)}") from None
    return Version(number, version_dir, info, table, index, stamp)


class ReencodedWindows:
    """Window states re-encoded from their videos when the store keeps none (``vtg index --states on-demand``), the
    most recently used kept up to ``max_bytes`` (0: none kept). Threads may share it; two that miss the same window at
    once both encode it."""

    def __init__(self, max_bytes: int = WINDOW_CACHE_BYTES):
        self.max_bytes, self.bytes, self.hits, self.misses = max_bytes, 0, 0, 0
        self._windows: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()

    def rows(self, grounder: Grounder, video: dict, times: np.ndarray, start: int, stop: int) -> torch.Tensor:
        """Float16 states (stop - start, K, 1+P, D) of frames [start, stop) of ``video`` (its index record: path, size,
        mtime), sampled at ``times`` (s, every frame's). VideoError when the video cannot be read."""
        key = (video["path"], video["size"], video["mtime"], start, stop)
        with self._lock:
            found = self._windows.get(key)
            if found is not None:
                self._windows.move_to_end(key)
                self.hits += 1
                return found
            self.misses += 1
        states = encode_samples(grounder.backbone, video["path"], times[start:stop])
        with self._lock:
            if key not in self._windows and states.nbytes <= self.max_bytes:
                self._windows[key] = states
                self.bytes += states.nbytes
                while self.bytes > self.max_bytes:
                    self.bytes -= self._windows.popitem(last=False)[1].nbytes
        return states


class LibraryIndex:
    """A library index opened for search (see the module docstring for the API)."""

    def __init__(
        self, folder: str | Path, version: Version, grounder: Grounder, pinned: bool, window_cache_bytes: int = WINDOW_CACHE_BYTES
    ):
        self.folder, self.pinned = Path(folder), pinned
        self.searcher = self._checked(version, grounder, checkpoint_sha256(grounder))
        self.reencoded = ReencodedWindows(window_cache_bytes)

    @classmethod
    def open(
        cls,
        folder: str | Path,
        grounder: Grounder | None = None,
        device: str | torch.device = "cpu",
        window_cache_bytes: int = WINDOW_CACHE_BYTES,
    ) -> LibraryIndex:
        """Open the index in ``folder`` with ``grounder``, or (None) the checkpoint it was built with, loaded on ``device``.
        ``window_cache_bytes``: the re-encoded window states kept (an index built with ``states="on-demand"``)."""
        version = read_version(Path(folder))
        pinned = grounder is not None
        grounder = grounder or Grounder.from_pretrained(version.info["checkpoint"]["path"], device)
        return cls(folder, version, grounder, pinned, window_cache_bytes)

    def _checked(self, version: Version, grounder: Grounder, sha256: str) -> Searcher:
        built = version.info["checkpoint"]
        if built["sha256"] != sha256:
            raise LibraryError(
                f"{version.folder / 'library.json'}: built with checkpoint {built['path']} (sha256 {built['sha256'][:12]}), "
                f"not the one searching it (sha256 {sha256[:12]}); {rebuild_hint(self.folder)}"
            )
        return Searcher(version, grounder, sha256)

    @property
    def grounder(self) -> Grounder:
        return self.searcher.grounder

    @property
    def version(self) -> int:
        """The loaded version's number (index.json's ``version``)."""
        return self.searcher.version.number

    def changed(self) -> bool:
        """Whether ``index.json`` is another file than the one this version was read from (one stat)."""
        return _stamp(self.folder / "index.json") != self.searcher.version.stamp

    def reload(self) -> bool:
        """Switch to the newest version if there is one (loading its checkpoint unless a grounder was given); True if it did."""
        if not self.changed():
            return False
        version, (_, grounder, sha256) = read_version(self.folder), self.searcher
        if version.info["checkpoint"]["sha256"] != sha256 and not self.pinned:
            grounder = Grounder.from_pretrained(version.info["checkpoint"]["path"], grounder.backbone.device)
            sha256 = checkpoint_sha256(grounder)
        self.searcher = self._checked(version, grounder, sha256)
        return True

    @property
    def states(self) -> str:
        """How the store keeps the states stage 2 reads: fp16, fp8 or on-demand (``build_index``'s ``states``)."""
        return self.searcher.version.info.get("states", "fp16")

    def folders(self) -> list[str] | None:
        """The real paths of the folders (or files) the index was built from; None for versions that predate them."""
        return self.searcher.version.info.get("folders")

    def videos(self) -> list[dict]:
        """The indexed videos: vid, path (absolute), duration (s), frames, windows and feature file."""
        store = self.folder / "features"
        return [
            {
                "vid": v["vid"],
                "path": v["path"],
                "duration": v["duration"],
                "frames": v["frames"],
                "windows": v["rows"][1],
                "feature_file": str(feature_path(store, v["vid"])),
            }
            for v in self.searcher.version.info["videos"]
        ]

    def windows(self, query: str, n: int | None = None) -> list[dict]:
        """Stage 1 alone: the ``n`` (default ``CANDIDATES``) windows most similar to ``query``, best first (``row``: the
        window's table row)."""
        return stage_one(self.searcher, [query], n or CANDIDATES)[0]

    def search(self, query: str, k: int = 10, candidates: int | None = None) -> list[dict]:
        """The top ``k`` moments of the library for ``query``, best first (fields in the module docstring); stage 2 grounds
        in the ``candidates`` (default ``CANDIDATES``) windows stage 1 finds. After the moments, one error record
        ``{"query", "vid", "video", "error"}`` (no rank) for each video stage 1 chose whose states could not be read
        (removed or rewritten since the version was written): the other results stand."""
        return self.search_many([query], k, candidates)[0]

    def search_many(self, queries: list[str], k: int | list[int] = 10, candidates: int | None = None) -> list[list[dict]]:
        """``search`` for several queries at once (``k`` shared or one per query), each answered as it would be alone:
        one text-encoder call and one faiss search for all, and each video that any query's windows fall in is read
        once for every query that hit it."""
        ks = [k] * len(queries) if isinstance(k, int) else list(k)
        if any(n < 1 for n in ks):
            raise ValueError(f"k must be at least 1, got {min(ks)}")
        searcher = self.searcher
        version = searcher.version
        by_video: dict[int, dict[int, list[int]]] = {}  # video -> query -> first frames of its windows there
        for q, hits in enumerate(stage_one(searcher, queries, candidates or CANDIDATES)):
            for hit in hits:
                video = int(version.table["video"][hit["row"]])
                by_video.setdefault(video, {}).setdefault(q, []).append(int(version.table["first_frame"][hit["row"]]))
        moments: list[list[tuple[float, list[dict]]]] = [[] for _ in queries]  # per query: (reference, moments) per video
        errors: list[list[dict]] = [[] for _ in queries]
        hit = list(by_video)
        for first in range(0, len(hit), VIDEOS_PER_PASS):
            chunk = hit[first : first + VIDEOS_PER_PASS]
            entries, asked = [version.info["videos"][video] for video in chunk], [by_video[video] for video in chunk]
            found = stage_two(searcher, entries, queries, asked, self.folder / "features", self.reencoded, ks)
            for entry, questions, answers in zip(entries, asked, found):
                if isinstance(answers, Exception):  # removed or rewritten since this version was written
                    what = "its video cannot be re-encoded" if isinstance(answers, VideoError) else "its stored states cannot be read"
                    reason = f"{what} ({first_line(answers)}); run vtg index again"
                    log.warning(printable(f"{entry['path']}: left out of this search: {reason}"))
                    for q in questions:
                        errors[q].append({"query": queries[q], "vid": entry["vid"], "video": entry["path"], "error": reason})
                    continue
                for q, results in zip(questions, answers):
                    moments[q].append(results)
        ranked = []
        decode = searcher.grounder.cfg.decode
        for by_video, failed, n in zip(moments, errors, ks):
            factors = across_videos([reference for reference, _ in by_video], decode)
            found = [
                {**m, "score": round(m["score"] * float(factor), 4)}
                for factor, (_, video_found) in zip(factors, by_video)
                for m in video_found
            ]
            found.sort(key=lambda m: -m["score"])
            ranked.append(
                [
                    {"rank": rank, **m, "clip_times": rounded(m["clip_times"]), "saliency": rounded(m["saliency"])}
                    for rank, m in enumerate(found[:n], 1)
                ]
                + failed
            )
        return ranked


@torch.no_grad()
def stage_one(searcher: Searcher, queries: list[str], n: int) -> list[list[dict]]:
    """Per query, the ``n`` windows whose retrieval embedding is nearest it: vid, video, start, end (s), similarity,
    row (one text-encoder call and one faiss search for all the queries)."""
    if n < 1:
        raise ValueError(f"candidates must be at least 1, got {n}")
    version, grounder = searcher.version, searcher.grounder
    states, mask = grounder.text_cache([check_query(query, grounder) for query in queries], grounder.backbone.device)
    embedded = grounder.model.retrieval.embed_queries(states, mask).float().cpu().numpy()
    similarities, rows = version.index.search(embedded, n)
    table, videos = version.table, version.info["videos"]
    return [
        [
            {
                "vid": videos[table["video"][row]]["vid"],
                "video": videos[table["video"][row]]["path"],
                "start": float(table["start"][row]),
                "end": float(table["end"][row]),
                "similarity": float(score),
                "row": int(row),
            }
            for score, row in zip(found_similarities, found_rows)
            if row >= 0
        ]
        for found_similarities, found_rows in zip(similarities, rows)
    ]


UNREADABLE = (DataError, OSError, SafetensorError, VideoError)  # a video stage 2 cannot read: an error record, the rest stand


@torch.no_grad()
def stage_two(
    searcher: Searcher,
    videos: list[dict],
    queries: list[str],
    asked: list[dict[int, list[int]]],
    store: Path,
    reencoded: ReencodedWindows,
    limits: list[int],
) -> list[list[tuple[float, list[dict]]] | Exception]:
    """Moments of ``videos`` (index records) for the ``queries`` that hit them, in their own windows: ``asked`` per video
    {query position: first frames of its windows there}. Windows of all the videos share forwards
    (``Grounder.ground_windows``); each video's states are read once for all its queries or, when the store keeps
    none, its windows re-encoded from the video through ``reencoded``. Moments are NMS'd in absolute seconds as
    ``vtg ground`` gives them, each with the window holding most of it and that window's clip times and saliency
    (arrays, rounded by ``search_many`` for the moments it returns); ``limits`` per query: its best moments to keep of
    one video (a library's top k holds at most k of one video). Returns per video, per query in ``asked`` order, its
    moments with their scores unrounded and the video's ``reference`` logit (``inference.merge_windows``; 0 for a model
    without retrieval), or the exception (one of ``UNREADABLE``) that left the video out: gone or changed since the
    index."""
    grounder = searcher.grounder
    window = grounder.cfg.decode.window_frames(grounder.fps)[0]
    outcome: list[list[tuple[float, list[dict]]] | Exception] = [[] for _ in videos]
    with ExitStack() as stack:
        windows, readable, times = [], [], {}
        for n, (video, questions) in enumerate(zip(videos, asked)):
            try:
                stored = stack.enter_context(opened_for_search(grounder, video, store))
            except UNREADABLE as e:
                outcome[n] = e
                continue
            rows = stored.rows
            if stored.metadata.get("vision_format") == VISION_CLS:  # no states kept: re-encode the windows from the video
                rows = functools.partial(reencoded.rows, grounder, video, stored.timestamps)
            starts = [sorted(own) for own in questions.values()]
            windows.append(VideoWindows(rows, stored.frames, video["duration"], list(questions), starts))
            readable.append(n)
            times[n] = stored.timestamps
        grounded = grounder.ground_windows(windows, queries, UNREADABLE)
    for n, opened, results in zip(readable, windows, grounded):
        if isinstance(results, Exception):
            outcome[n] = results
            continue
        length = min(window, len(times[n]))
        for q, own, result in zip(opened.queries, opened.starts, results):
            moments = video_moments(videos[n], queries[q], own, length, result, times[n], grounder.fps, limits[q])
            outcome[n].append((result.get("reference", 0.0), moments))
    return outcome


@contextmanager
def opened_for_search(grounder: Grounder, video: dict, store: Path) -> Iterator[StoredVideo]:
    """``video``'s (an index record) stored file, open; DataError when it changed since the index was written, and,
    when it keeps no states, VideoError unless the video is still there unchanged to re-encode them from."""
    file = feature_path(store, video["vid"])
    with grounder.open_stored(file) as stored:
        if stored.metadata.get("source_mtime") != video["mtime"]:
            raise DataError(f"{file}: changed since the index was written")
        if stored.metadata.get("vision_format") == VISION_CLS:
            check_source(video)
        yield stored


def video_moments(
    video: dict, query: str, own: list[int], length: int, result: dict, times: np.ndarray, fps: float, limit: int
) -> list[dict]:
    """One query's best ``limit`` moments in one video as search returns them: ``result`` its grounding there,
    ``own`` the first frames of its windows (``length`` frames long), ``times`` (frames,) the video's clip times (s)."""
    spans = np.array([[s / fps, min((s + length) / fps, video["duration"])] for s in own])
    answers = []
    for (start, end), score in zip(rounded(result["moments"][:limit, :2]), result["moments"][:limit, 2]):  # best first
        best = int(np.argmax(np.minimum(spans[:, 1], end) - np.maximum(spans[:, 0], start)))
        clips = slice(own[best], own[best] + length)
        answers.append(
            {
                "query": query,
                "video": video["path"],
                "vid": video["vid"],
                "start": start,
                "end": end,
                "score": float(score),
                "duration": video["duration"],
                "window": rounded(spans[best]),
                "clip_times": times[clips],
                "saliency": result["saliency"][clips],
            }
        )
    return answers


def check_source(video: dict) -> None:
    """VideoError (one line naming the file) unless ``video``'s file (an index record) is still there unchanged."""
    try:
        now = source_metadata(video["path"])
    except OSError as e:
        raise VideoError(printable(f"{video['path']}: {e.strerror or e}")) from None
    if (now["source_size"], now["source_mtime"]) != (video["size"], video["mtime"]):
        raise VideoError(printable(f"{video['path']}: changed since the index was written"))


@torch.no_grad()
def embed_video(grounder: Grounder, file: Path) -> tuple[list[int], torch.Tensor, int, float]:
    """A stored video's window grid (first frames), window embeddings (W, E) float32 on the CPU, frames and duration (s).

    DataError for tensors of the wrong shape, non-finite states or no valid duration."""
    with grounder.open_stored(file) as stored:
        frames, duration = stored.frames, stored.duration
        states = stored.last_layer_states(grounder.model.retrieval.tokens_read)
    window, stride = grounder.cfg.decode.window_frames(grounder.fps)
    starts = window_starts(frames, window, stride)
    return starts, grounder.model.retrieval.embed_grid(states.to(grounder.backbone.device), starts, window).float().cpu(), frames, duration


def build_index(
    items: list[VideoItem],
    grounder: Grounder,
    folder: str | Path,
    checkpoint: str,
    rebuild: bool = False,
    progress: bool = True,
    approximate_above: int = FLAT_UP_TO,
    compress_above: int = COMPRESS_ABOVE,
    engine: Engine | None = None,
    folders: list[str] | None = None,
    states: str = "fp16",
    keep_states: list[str] | None = None,
) -> dict:
    """Index ``items`` (``extract.find_videos``) in ``folder`` with ``grounder``, loaded from ``checkpoint`` (recorded for
    search); a new version replaces the current one. Returns counts: videos, new, changed, unchanged, removed, failed,
    windows, kind (flat | ivf | ivfpq), layout (``window_index.choose_layout``), version, index. The layout changes
    at ``approximate_above`` and ``compress_above`` windows. LibraryError when the current version is another
    checkpoint's or unreadable (``rebuild=True`` embeds every video afresh, reusing the stored features that still
    match).
    ``engine``: where videos are extracted and embedded (default: this process; ``RayEngine``: a Ray cluster); the
    faiss index is built here either way. ``folders``: the folders (or files) the videos were found in, recorded as
    the only places ``vtg serve`` serves media from (default: each video's own folder). ``states``: how the store
    keeps the states stage 2 reads: fp16, fp8 (half the bytes), or on-demand (the last layer's CLS states alone, for
    embedding; stage 2 re-encodes its windows from the videos); a change re-extracts every video. ``keep_states``
    (on-demand only): video-id patterns (``fnmatch``) whose videos keep fp16 states and frames all the same, searched
    at the stored speed (recent or popular videos); a video entering or leaving the list is re-extracted."""
    if states not in STATES:
        raise ValueError(f"states must be one of {', '.join(STATES)}, got {states!r}")
    if keep_states and states != "on-demand":
        raise ValueError(f"keep_states goes with states='on-demand' (the other layouts keep every video's states), not {states!r}")
    if not grounder.indexable:
        raise LibraryError(f"{checkpoint}: trained before checkpoints had a library-search head; train it again to index with it")
    if states == "on-demand" and grounder.model.retrieval.reads_patches:
        raise LibraryError(
            f"{checkpoint}: its window embedding reads every patch token (model.retrieval_layout), which --states on-demand "
            "does not keep; index it with --states fp16 or fp8"
        )
    engine = engine or LocalEngine()
    folder = output_folder(folder)
    checkpoint = os.path.abspath(checkpoint) if os.path.isdir(checkpoint) else checkpoint
    sha256, cfg, fps = checkpoint_sha256(grounder), grounder.cfg, grounder.fps
    with FileLock(folder / "index.json"):
        old = None if rebuild or _stamp(folder / "index.json") is None else read_version(folder)
        if old is not None and old.info["checkpoint"]["sha256"] != sha256:
            raise LibraryError(
                f"{folder}: indexed with checkpoint {old.info['checkpoint']['path']}, not {checkpoint}; "
                f"give --rebuild to index it with {checkpoint} instead"
            )
        store = folder / "features"
        kept = kept_videos(items, keep_states or [])
        failures = {}
        for layout, group in (
            (STATES[states], [i for i in items if i.video_id not in kept]),
            ("fp16", [i for i in items if i.video_id in kept]),
        ):
            if group:
                failures.update(engine.extract(grounder.extract_config(store, progress, layout), group, grounder.backbone).failures)
        known = {v["vid"]: v for v in old.info["videos"]} if old else {}
        entries, to_embed = {}, []
        for item in items:
            entry = {"vid": item.video_id, "path": os.path.realpath(item.path)}
            if item.path not in failures:
                with safe_open(str(feature_path(store, item.video_id)), framework="pt") as f:
                    entry.update(size=f.metadata().get("source_size"), mtime=f.metadata().get("source_mtime"))
                previous = known.get(item.video_id)
                if previous is None or any(previous[key] != entry[key] for key in ("path", "size", "mtime")):
                    to_embed.append(item)
            entries[item.video_id] = entry
        embedded = dict(
            zip(
                (item.video_id for item in to_embed),
                engine.map_stored(
                    grounder, embed_stored_video, [feature_path(store, item.video_id) for item in to_embed], progress, desc="index"
                ),
            )
        )
        videos, failed, vectors, columns = [], [], [], {name: [] for name in TABLE}
        counts = {"new": 0, "changed": 0, "unchanged": 0}
        for item in items:
            entry, previous = entries[item.video_id], known.get(item.video_id)
            if item.path in failures:
                failed.append({**entry, "error": failures[item.path]})
                continue
            if item.video_id not in embedded:
                first, count = previous["rows"]
                starts, window_vectors = old.table["first_frame"][first : first + count].tolist(), stored_vectors(old, first, count)
                frames, duration = previous["frames"], previous["duration"]
                counts["unchanged"] += 1
            elif isinstance(embedded[item.video_id], str):  # this video's states are unusable: listed with the reason
                failed.append({**entry, "error": embedded[item.video_id]})
                continue
            else:
                starts, window_vectors, frames, duration = embedded[item.video_id]
                counts["new" if previous is None else "changed"] += 1
            length = min(cfg.decode.window_frames(fps)[0], frames)
            for s in starts:
                for name, value in zip(TABLE, (len(videos), s, s / fps, min((s + length) / fps, duration))):
                    columns[name].append(value)
            videos.append({**entry, "duration": duration, "frames": frames, "rows": [sum(map(len, vectors)), len(starts)]})
            vectors.append(window_vectors)
        all_vectors = torch.cat(vectors) if vectors else torch.zeros(0, cfg.model.retrieval_dims)
        layout = choose_layout(len(all_vectors), all_vectors.shape[1], approximate_above, compress_above)
        trained = reusable_training(old.info["faiss"] if old else None, old.index.faiss if old else None, layout, len(all_vectors))
        if layout["kind"] == "ivfpq":
            layout["trained_on"] = len(all_vectors) if trained is None else old.info["faiss"]["trained_on"]
        index = build_faiss(all_vectors.numpy(), layout, trained)
        info = {
            "format_version": FORMAT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "checkpoint": {"path": checkpoint, "sha256": sha256},
            "backbone_spec": grounder.backbone.spec.to_dict(),
            "fps": fps,
            "window": cfg.decode.window,
            "window_stride": cfg.decode.window_stride,
            "faiss": layout,
            "states": states,
            "kept_states": len(kept),
            "folders": sorted({os.path.realpath(f) for f in folders or [os.path.dirname(i.path) for i in items]}),
            "videos": videos,
            "failed": failed,
        }
        tensors = {"vectors": all_vectors.contiguous(), **{name: torch.tensor(columns[name], dtype=dtype) for name, dtype in TABLE.items()}}
        number = write_version(folder, info, tensors, index)
        current = {item.video_id for item in items}
        removed = [vid for vid in known if vid not in current]
        for vid in removed:  # deleted from the library: their stored states go too
            path = feature_path(store, vid)
            with FileLock(path):
                path.unlink(missing_ok=True)
    return {
        "videos": len(videos),
        **counts,
        "removed": len(removed),
        "failed": len(failed),
        "windows": index.ntotal,
        "kind": layout["kind"],
        "layout": layout,
        "states": states,
        "kept_states": len(kept),
        "version": number,
        "index": str(folder),
    }


def read_keep_list(file: str | Path) -> list[str]:
    """The video-id patterns of a ``vtg index --keep-states`` file: one a line (``fnmatch``: ``news/2026-*``), blank
    lines and ``#`` comments skipped. LibraryError naming the file when it cannot be read."""
    try:
        lines = Path(file).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise LibraryError(
            printable(f"{file}: cannot read the list of videos to keep states for: {getattr(e, 'strerror', None) or e}")
        ) from None
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def kept_videos(items: list[VideoItem], patterns: list[str]) -> set[str]:
    """The ids of ``items`` that some pattern matches (``fnmatch``; a pattern without wildcards is looked up, not
    scanned); one warning line for patterns that match none (a listed video since deleted)."""
    ids = [item.video_id for item in items]
    known, kept, unmatched = set(ids), set(), []
    for pattern in patterns:
        matched = fnmatch.filter(ids, pattern) if any(c in pattern for c in "*?[") else [pattern] if pattern in known else []
        kept.update(matched)
        if not matched:
            unmatched.append(pattern)
    if unmatched:
        log.warning(printable(f"keep-states: {len(unmatched)} pattern(s) match no video, first {unmatched[0]!r}"))
    return kept


def embed_stored_video(grounder: Grounder, file: Path) -> tuple[list[int], torch.Tensor, int, float] | str:
    """``embed_video``, or the reason (one line) why the video's states are unusable."""
    try:
        return embed_video(grounder, file)
    except DataError as e:
        return str(e)


def stored_vectors(version: Version, first: int, count: int) -> torch.Tensor:
    """Rows [first, first + count) of a version's vectors (W, E)."""
    with safe_open(str(version.folder / "vectors.safetensors"), framework="pt") as f:
        return f.get_slice("vectors")[first : first + count]


def write_version(folder: Path, info: dict, tensors: dict[str, torch.Tensor], index: faiss.Index) -> int:
    """Write a new version into a partial folder, rename it into place, then point index.json at it; returns its
    number. Versions older than the one it replaces are removed."""
    numbers = [int(m[1]) for m in (re.fullmatch(r"v(\d+)", p.name) for p in folder.iterdir()) if m and (folder / m[0]).is_dir()]
    number = max(numbers, default=0) + 1
    tmp = folder / f".v{number}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_tensors(tensors, tmp / "vectors.safetensors", metadata={"format_version": FORMAT_VERSION})
    faiss.write_index(index, str(tmp / "windows.faiss"))
    atomic_write_text(tmp / "library.json", json.dumps({**info, "version": number}, indent=1))
    os.replace(tmp, folder / f"v{number}")
    atomic_write_text(folder / "index.json", json.dumps({"format_version": FORMAT_VERSION, "version": number, "folder": f"v{number}"}))
    for old in numbers:
        if old < number - 1:
            shutil.rmtree(folder / f"v{old}", ignore_errors=True)
    return number
