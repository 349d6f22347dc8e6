"""Training and evaluation data: annotations joined with the feature store.

A ``GroundingDataset`` item is one query on one video: the video's cached
per-layer states (``features`` mode: vision (T, K, P, D) as stored, only the
layers and tokens the model uses; float8 ones with their scales, dequantised on
the training device) or its stored frames (``frames`` mode: uint8 (T, 3, S, S),
encoded by the frozen backbone inside the training step), the query's windows
in seconds, per-frame saliency targets and one positive frame, resampled every
epoch. ``collate`` stacks each distinct video of a batch once. Query token
states come from ``TextCache``, which runs the frozen text tower once per
distinct query.

Feature files must match the backbone: its name, weights hash and tapped
layers, the fps and the stored tensors are checked when the dataset opens.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from torch.utils.data import Dataset, Sampler

from .annotations import read_annotations, read_charades_durations, saliency_targets, window_saliency
from .backbone import FrozenBackbone
from .errors import UserError
from .extract import VISION_CLS
from .features import load_features, read_metadata
from .names import first_line, path_in


class DataError(UserError):
    """Data that cannot be used as configured; one line naming the file."""


@dataclass
class DataConfig:
    root: str = ""  # dataset folder; the paths below are relative to it
    dataset: str = "qvhighlights"  # annotation format: qvhighlights | charades | ego4d | tacos
    train: str = "train.jsonl"
    val: str = "val.jsonl"
    features: str = "features"  # feature store written by `vtg extract`
    mode: str = "features"  # features: cached states | frames: backbone runs in the training step
    fps: float = 0.5
    skip_bad: bool = False  # skip malformed annotation records (counted) instead of failing
    durations: tuple[str, ...] = ()  # Charades-STA: Charades_v1_{train,test}.csv video lengths (relative to root); empty: latest window end
    num_workers: int = 0
    metrics: str = ""  # evaluation protocol (qvhighlights | charades | tacos | ego4d | mad); empty: the annotation format's
    sampling: str = "auto"  # video: one item per query, the whole video | windows: window items (WindowDataset) | auto: windows for rgnet
    window: float = 0.0  # window sampling: the training windows' length (s); 0: decode.window, the inference grid's
    window_stride: float = 0.0  # rgnet: the training grid's stride (s), where negative windows start; 0: decode.window_stride
    negatives: int = 3  # window sampling with a retrieval model (rgnet): same-video negative windows per query
    cross_video_negatives: int = 0  # rgnet: windows of other videos added as negatives (the paper uses none)
    hard_negatives: int = 0  # rgnet: of the `negatives`, this many drawn from a pool of `hard_pool` same-video windows:
    hard_pool: int = 8
    hard_mining: str = "encoder"  # encoder: those the library dual encoder (models/retrieval.py) ranks highest for the
    # query, mined each epoch from the second on | words: those holding the video's other queries that share the most
    # content words with the query (fixed; a query sharing none has no pool and draws at random)
    negative_queries: bool = False  # BM-DETR: pair each query with a negative query (needs model.background_matching)
    negative_similarity: float = 0.9  # a negative query's CLIP text cosine with the positive must be below this
    negative_query_source: str = "video"  # video: BM-DETR's (above) | near: the training texts sharing the most content
    # words with the query (near misses, ``near_miss_queries``; BM-DETR's where none shares a word)
    temporal_shift_below: float = 0.0  # BM-DETR temporal shifting for videos shorter than this (seconds); 0 = off
    group_by_video: bool = False  # whole-video training: a video's queries share batches (read and mapped once for them all)

    def to_dict(self) -> dict:
        return asdict(self)


def check_feature_file(path: Path, backbone: FrozenBackbone, fps: float, mode: str) -> int:
    """Refuse a feature file made with another backbone, layers, fps, without the needed tensor, or whose tensors'
    shapes disagree (rows of ``vision`` / ``frames`` vs ``timestamps``, row shapes vs the backbone). Returns T, the frames."""
    meta = read_metadata(path)
    if meta is None:
        raise DataError(f"{path}: missing or unreadable feature file (run `vtg extract` first)")
    spec = backbone.spec
    expected = {
        "backbone": spec.backbone,
        "backbone_sha256": spec.backbone_sha256,
        "layers": json.dumps(list(spec.layers)),
        "fps": repr(float(fps)),
    }
    for key, value in expected.items():
        if meta.get(key) != value:
            raise DataError(f"{path}: {key} is {meta.get(key)!r} but the config needs {value!r}")
    needed = {"features": ("features", "both"), "frames": ("frames", "both")}[mode]
    if meta.get("store") not in needed:
        raise DataError(f"{path}: stores {meta.get('store')!r}; data.mode={mode} needs store={needed[0]} or both")
    if mode == "features" and meta.get("vision_format") == VISION_CLS:
        raise DataError(
            f"{path}: keeps the last layer's CLS state alone (extract --states cls, as vtg index --states on-demand "
            f"stores); training reads every tapped layer: extract it again with --states fp16 or fp8"
        )
    return check_shapes(path, backbone.row_shapes())


def dequantize(values: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
    """Stored vision states -> float16 (..., D): fp16 values as they are (``scale`` None), float8 e4m3 values times
    their float16 scale per token (...), on whichever device they are."""
    if scale is None:
        return values
    return (values.float() * scale.float()[..., None]).half()


class VisionRows:
    """Row access to a feature file's vision states (T, K, P, D) as float16, whichever way they are stored: fp16, or
    float8 e4m3 with a float16 scale per token (``vtg extract --states fp8``, tensor ``vision_scale`` (T, K, P)).
    ``f``: an open ``safe_open(..., framework="pt")``; ``rows[a:b]`` reads only those rows; ``rows.stored(...)``
    reads them as stored, for ``dequantize`` on the training device."""

    def __init__(self, f, path: Path):
        self.values = f.get_slice("vision")
        self.scale = f.get_slice("vision_scale") if "vision_scale" in f.keys() else None
        if self.scale is not None and list(self.scale.get_shape()) != list(self.values.get_shape())[:-1]:
            raise DataError(
                f"{path}: vision_scale has shape {self.scale.get_shape()}, not one scale per token of vision {self.values.get_shape()}"
            )

    def get_shape(self) -> list[int]:
        return self.values.get_shape()

    def __getitem__(self, index) -> torch.Tensor:
        return dequantize(*self.stored(index))

    def stored(self, index) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The values (float16 or float8 e4m3) and per-token scales (None for float16) at ``index`` (rows, or slices of
        rows, layers and tokens), as the file keeps them; only those are read."""
        return self.values[index], None if self.scale is None else self.scale[index]


def one_layout(stored: list[tuple[torch.Tensor, torch.Tensor | None]]) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """(values, scale) pairs read as stored -> their values and scales if all are float8, else the values as float16
    and None (a store part fp16, part fp8 is dequantised here)."""
    if all(scale is not None for _, scale in stored):
        return [values for values, _ in stored], [scale for _, scale in stored]
    return [dequantize(values, scale) for values, scale in stored], None


def check_shapes(path: Path, row_shapes: dict[str, tuple[int, ...]]) -> int:
    """Rows of every stored tensor of ``row_shapes`` equal len(timestamps) and have that row shape; returns T."""
    with safe_open(str(path), framework="pt") as f:
        return check_opened_shapes(f, path, row_shapes)


def check_opened_shapes(f, path: Path, row_shapes: dict[str, tuple[int, ...]]) -> int:
    """``check_shapes`` of a file already open (``f``, safetensors' ``safe_open`` of ``path``)."""
    names = set(f.keys())
    if "timestamps" not in names:
        raise DataError(f"{path}: no timestamps tensor")
    frames = f.get_slice("timestamps").get_shape()
    for name in sorted(names & set(row_shapes)):
        shape = tuple(f.get_slice(name).get_shape())
        if len(frames) != 1 or shape != (frames[0], *row_shapes[name]):
            raise DataError(
                f"{path}: {name} has shape {list(shape)}, expected {[*frames[:1], *row_shapes[name]]} "
                f"({frames[0] if frames else '?'} timestamps)"
            )
    return frames[0]


def check_finite(states: torch.Tensor, path: Path, scale: torch.Tensor | None = None) -> torch.Tensor:
    """``states`` (T, ...) if every value (and every per-token ``scale`` (T, ...) of float8 states) is finite, else
    DataError naming the file and the first bad frame."""
    if not states.is_floating_point():
        return states
    if states.dtype == torch.float8_e4m3fn:  # no infinities; NaN is every exponent and mantissa bit set
        bad = (states.view(torch.uint8) & 0x7F) == 0x7F
    else:
        bad = ~torch.isfinite(states)
    bad = bad.flatten(1).any(1)
    if scale is not None:
        bad |= ~torch.isfinite(scale).flatten(1).all(1)
    if bad.any():
        raise DataError(
            f"{path}: non-finite values (NaN or inf) in the stored states, first at row {bad.nonzero()[0, 0].item()} of this read"
        )
    return states


ALL_STATES = (slice(None), slice(None))  # the (layers, tokens) of the stored vision states that a reader reads


@dataclass(frozen=True)
class StoredVideo:
    """A feature file open for grounding: ``metadata`` (header strings), ``timestamps`` float64 (T,) seconds and
    ``vision`` (``VisionRows``, (T, K, P, D)); ``rows`` reads states checked finite. Open it with ``StoredVideo.open``."""

    path: Path
    metadata: dict[str, str]
    timestamps: np.ndarray
    vision: VisionRows

    @classmethod
    @contextmanager
    def open(
        cls, path: Path, vision_shape: tuple[int, ...] | Callable[[dict[str, str]], tuple[int, ...]] | None = None
    ) -> Iterator[StoredVideo]:
        """The video stored in ``path``, readable inside the ``with`` (its header read once). ``vision_shape``: the row
        shape (K, P, D) its vision states must have, with as many rows as timestamps, or a function of the file's
        metadata giving it (None: not checked, as when a dataset checked it). DataError naming the file for a wrong
        shape or a ``vision_scale`` that does not fit ``vision``; OSError for a missing file."""
        try:
            f = safe_open(str(path), framework="pt")
            metadata = f.metadata() or {}
            if vision_shape is not None:
                check_opened_shapes(f, path, {"vision": vision_shape(metadata) if callable(vision_shape) else vision_shape})
            video = cls(path, metadata, f.get_tensor("timestamps").numpy(), VisionRows(f, path))
        except SafetensorError as e:  # cut short, or not a safetensors file at all
            raise DataError(f"{path}: not a readable feature file ({first_line(e)})") from None
        with f:
            yield video

    @property
    def frames(self) -> int:
        """T, the stored frames."""
        return len(self.timestamps)

    @property
    def duration(self) -> float:
        """The source video's duration in seconds (metadata ``duration``); DataError naming the file without a valid one."""
        try:
            return float(self.metadata["duration"])
        except (KeyError, ValueError):
            raise DataError(f"{self.path}: no valid duration in its metadata") from None

    def rows(self, start: int, stop: int, states: tuple[slice, slice] = ALL_STATES) -> torch.Tensor:
        """Float16 states (stop - start, K', P', D) of frames [start, stop), of the ``states`` (layers, tokens) slices
        only; DataError naming the file when one is not finite."""
        return check_finite(self.vision[(slice(start, stop), *states)], self.path)

    def last_layer_states(self, tokens: slice) -> torch.Tensor:
        """Every frame's ``tokens`` of the last stored layer (T, P, Dv): what the library dual encoder reads
        (``RetrievalHead.tokens_read``)."""
        return self.rows(0, self.frames, (slice(-1, None), tokens))[:, 0]


def negative_query_candidates(
    records: list[dict], embeddings: dict[str, torch.Tensor], max_similarity: float, max_iou: float = 0.5
) -> tuple[list[list[str]], int]:
    """BM-DETR's negative queries: per record, the queries of the same video whose moments all have
    IoU < ``max_iou`` with the record's and whose text embedding cosine is below ``max_similarity``.

    ``embeddings``: query -> L2-normalised sentence embedding. A record with no such query takes
    every query of the other videos (counted: the second value).
    """
    by_video: dict[str, list[dict]] = {}
    for r in records:
        by_video.setdefault(r["vid"], []).append(r)
    candidates, fallbacks = [], 0
    for r in records:
        same = [
            o["query"]
            for o in by_video[r["vid"]]
            if o["query"] != r["query"] and apart(r, o, max_iou) and float(embeddings[r["query"]] @ embeddings[o["query"]]) < max_similarity
        ]
        if not same:
            fallbacks += 1
            same = sorted({o["query"] for o in records if o["vid"] != r["vid"]})
        candidates.append(same)
    return candidates, fallbacks


def near_miss_queries(records: list[dict], max_iou: float = 0.5) -> list[list[str]]:
    """Per record, the other query texts of ``records`` sharing the most content words with its query ("a green ring
    grows" for "a green ring blinks"), less those of its own video whose moments overlap its own (IoU >= ``max_iou``);
    [] where no text shares a word."""
    words = {r["query"]: content_words(r["query"]) for r in records}
    texts_with: dict[str, set[str]] = {}
    for text, text_words in words.items():
        for word in text_words:
            texts_with.setdefault(word, set()).add(text)
    records_of: dict[str, list[dict]] = {}
    for r in records:
        records_of.setdefault(r["query"], []).append(r)
    near = []
    for r in records:
        shared = Counter(text for word in words[r["query"]] for text in texts_with[word] if text != r["query"])
        near.append([])
        for most in sorted(set(shared.values()), reverse=True):  # the best-sharing level with an allowed text
            level = sorted(t for t, n in shared.items() if n == most and all(apart(r, o, max_iou) for o in records_of[t]))
            if level:
                near[-1] = level
                break
    return near


def apart(record: dict, other: dict, max_iou: float) -> bool:
    """Whether ``other`` is of another video than ``record``, or none of its moments reaches IoU ``max_iou`` with
    one of ``record``'s."""
    from .evaluation import temporal_iou

    if other["vid"] != record["vid"]:
        return True
    windows = [np.asarray(r["relevant_windows"], dtype=float).reshape(-1, 2) for r in (record, other)]
    return bool(temporal_iou(*windows).max() < max_iou)


def shift_moment(t: int, window: list[float], fps: float, generator: torch.Generator) -> tuple[torch.Tensor, list[float]]:
    """BM-DETR temporal shifting: move the frames of ``window`` (seconds) to a random place among the others.

    A video of ``t`` frames -> the new frame order (t,) (index the video's tensors with it) and the moment's new
    window in seconds. Frames are cut on the clip grid (a clip belongs to the moment if it overlaps it).
    """
    first, stop = int(math.floor(window[0] * fps)), min(t, max(int(math.ceil(window[1] * fps)), int(math.floor(window[0] * fps)) + 1))
    order = torch.arange(t)
    moment, rest = order[first:stop], torch.cat((order[:first], order[stop:]))
    at = int(torch.randint(len(rest) + 1, (1,), generator=generator))
    order = torch.cat((rest[:at], moment, rest[at:]))
    offset = (at - first) / fps
    return order, [max(0.0, window[0] + offset), min(t / fps, window[1] + offset)]


class GroundingDataset(Dataset):
    """Queries with their video's features, windows (seconds) and saliency targets. ``needed``: the (layers, tokens)
    slices of the stored states that the model uses; only those bytes are read."""

    def __init__(
        self,
        records: list[dict],
        feature_dir: Path,
        backbone: FrozenBackbone,
        fps: float,
        mode: str = "features",
        seed: int = 0,
        negative_similarity: float | None = None,
        shift_below: float = 0.0,
        needed: tuple[slice, slice] = ALL_STATES,
    ):
        if mode not in ("features", "frames"):
            raise DataError(f"data.mode must be features or frames, got {mode!r}")
        self.records, self.feature_dir, self.fps, self.mode, self.seed = records, Path(feature_dir), fps, mode, seed
        self.needed = needed
        self.epoch, self.shift_below = 0, shift_below
        self.negatives: list[list[str]] | None = None
        if negative_similarity is not None:  # sentence embeddings computed once for the dataset
            queries = sorted({r["query"] for r in records})
            embeddings = dict(zip(queries, backbone.embed_text(queries)))
            self.negatives, self.negative_fallbacks = negative_query_candidates(records, embeddings, negative_similarity)
        self._frames = {vid: check_feature_file(self.path(vid), backbone, fps, mode) for vid in sorted({r["vid"] for r in records})}
        self.past_end = self.check_lengths()
        self._finite: set[str] = set()  # videos whose whole states were read and found finite
        self._last_read: tuple | None = None  # (vid, video, scale): a video's queries come in a row when grouped

    def path(self, vid: str) -> Path:
        return path_in(self.feature_dir, vid, ".safetensors")

    def check_lengths(self) -> int:
        """Refuse a window that starts after its video's last stored frame; count records whose windows or duration
        run past it (their targets are cut to the stored frames)."""
        past_end = 0
        for r in self.records:
            covered = self._frames[r["vid"]] / self.fps  # seconds: the end of the last stored clip
            late = [w for w in r["relevant_windows"] if w[0] >= covered]
            if late:
                raise DataError(
                    f"{self.path(r['vid'])}: query {r['qid']!r} has window {late[0]} starting after the "
                    f"{self._frames[r['vid']]} stored frames ({covered:g} s at {self.fps:g} fps)"
                )
            past_end += max(r["duration"], *(w[1] for w in r["relevant_windows"])) > covered + 1 / self.fps
        return past_end

    def set_epoch(self, epoch: int) -> None:
        """A new epoch draws new positive frames."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def frame_counts(self) -> list[int]:
        """Frames of each item's video, from the annotated duration (for length-grouped batching)."""
        return [math.ceil(r["duration"] * self.fps) for r in self.records]

    def read_video(self, vid: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The video's states (T, K, P, D) as stored and their per-token scales (T, K, P) if float8 (``VisionRows.stored``),
        or its frames (T, 3, S, S) and None; the last video read is not read again."""
        if self._last_read is not None and self._last_read[0] == vid:
            return self._last_read[1:]
        path = self.path(vid)
        scale = None
        if self.mode == "features":
            with safe_open(str(path), framework="pt") as f:
                video, scale = VisionRows(f, path).stored((slice(None), *self.needed))
        else:
            video = torch.from_numpy(load_features(path, ["frames"])["frames"])
        if vid not in self._finite:
            check_finite(video, path, scale)
            self._finite.add(vid)
        self._last_read = (vid, video, scale)
        return video, scale

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        (video, scale), video_key = self.read_video(record["vid"]), record["vid"]
        saliency = torch.from_numpy(saliency_targets(record, len(video), 1.0 / self.fps)).float()
        candidates = torch.nonzero(saliency > 0)[:, 0]
        if len(candidates) == 0:  # a window shorter than a clip or past the features: its nearest frame
            centre = float(np.mean(record["relevant_windows"][0])) * self.fps
            candidates = torch.tensor([min(int(centre), len(video) - 1)])
            saliency[candidates] = 1.0
        generator = torch.Generator().manual_seed(hash((self.seed, self.epoch, index)) % 2**63)
        windows = record["relevant_windows"]
        if len(video) / self.fps < self.shift_below and len(windows) == 1 and torch.rand((), generator=generator) < 0.5:
            order, shifted = shift_moment(len(video), windows[0], self.fps, generator)
            video, saliency, scale = video[order], saliency[order], None if scale is None else scale[order]
            windows, candidates, video_key = [shifted], torch.nonzero(saliency > 0)[:, 0], None  # this item's own video
        positive = candidates[torch.randint(len(candidates), (1,), generator=generator)].item()
        item = {
            "record": record,
            "video": video,
            "video_scale": scale,
            "video_key": video_key,
            "windows": torch.tensor(windows, dtype=torch.float32).reshape(-1, 2),
            "saliency": saliency,
            "positive": positive,
        }
        if self.negatives is not None:
            item["negative_query"] = self.negative_query(index, generator)
        return item

    def negative_query(self, index: int, generator: torch.Generator) -> str:
        """One of item ``index``'s BM-DETR negative queries, drawn with ``generator``."""
        choices = self.negatives[index]
        return choices[int(torch.randint(len(choices), (1,), generator=generator))]


FUNCTION_WORDS = frozenset("a an the and or of to in on at by with from into onto for is are its it this that".split())


def content_words(query: str) -> set[str]:
    """The query's lower-cased words, less articles, prepositions and the like (``FUNCTION_WORDS``)."""
    return set(re.findall(r"[a-z0-9]+", query.lower())) - FUNCTION_WORDS


def overlaps(moments: np.ndarray, start: int, length: int) -> bool:
    """Whether the window [start, start + length) (frames) overlaps any of ``moments`` (M, 2) (frames)."""
    return bool(((moments[:, 0] < start + length) & (moments[:, 1] > start)).any())


class WindowDataset(GroundingDataset):
    """RGNet training items: per query, one positive window, ``negatives`` windows of the same video
    and ``cross_video`` windows of other videos.

    Window length and stride are in frames (``DecodeConfig.window`` / ``window_stride`` x fps, the
    windows inference uses). The positive window is placed at random so that it holds the
    query's moment (one drawn per epoch when there are several); a moment longer than the window
    is cut to it, the window then covering the moment's centre. Same-video negatives are windows
    of the inference grid that overlap none of the query's moments, drawn without replacement; a
    video with fewer gets masked rows (``window_mask``). Cross-video negatives (off by default, as
    the paper) are grid windows of other videos at least as long as the positive window.

    Item: ``video`` (W, w, K, P, D) with W = 1 + negatives + cross_video, ``window_mask`` (W,),
    ``frame_mask`` (W, w), ``in_moment`` (W, w) frames inside a moment, ``windows`` (G, 2) seconds
    relative to the positive window, ``saliency`` (w,) and ``positive`` (a frame) of the positive
    window, ``starts`` (W,) first frame of each same-video window (-1: masked or another video's),
    and with ``negative_queries`` (per record, the candidates ``GroundingDataset`` found) a BM-DETR
    ``negative_query``.
    """

    def __init__(
        self,
        records: list[dict],
        feature_dir: Path,
        backbone: FrozenBackbone,
        fps: float,
        window: int,
        stride: int,
        negatives: int = 0,
        seed: int = 0,
        cross_video: int = 0,
        negative_queries: list[list[str]] | None = None,
        needed: tuple[slice, slice] = ALL_STATES,
        hard_negatives: int = 0,
    ):
        super().__init__(records, feature_dir, backbone, fps, "features", seed, needed=needed)
        self.negatives = negative_queries
        self.window, self.stride, self.same_video, self.cross_video = window, stride, negatives, cross_video
        self.hard_negatives = hard_negatives
        self.hard: dict[int, list[int]] = {}  # record index -> its hardest negative windows' first frames (``set_hard``)

    def set_hard(self, hard: dict[int, list[int]]) -> None:
        """Per record index, negative windows (first frames, from ``negative_starts``) to draw ``hard_negatives`` from."""
        self.hard = hard

    def word_sharing_pool(self, pool: int) -> dict[int, list[int]]:
        """Per record index, up to ``pool`` negative windows (first frames, from ``negative_starts``) that overlap a
        moment of another query of the same video sharing content words with its query, most shared words first."""
        by_video: dict[str, list[int]] = {}
        for index, record in enumerate(self.records):
            by_video.setdefault(record["vid"], []).append(index)
        words = [content_words(record["query"]) for record in self.records]
        hard = {}
        for index, record in enumerate(self.records):
            others = [i for i in by_video[record["vid"]] if i != index and words[i] & words[index]]
            others.sort(key=lambda i: -len(words[i] & words[index]))  # stable: ties keep the annotation order
            negative, ranked = self.negative_starts(index), []
            for other in others:
                moments = self.moment_frames(self.records[other])
                ranked += [s for s in negative if s not in ranked and overlaps(moments, s, self.window)]
            if ranked:
                hard[index] = ranked[:pool]
        return hard

    def negative_starts(self, index: int) -> list[int]:
        """First frames of the inference grid's windows of record ``index``'s video that overlap none of its moments."""
        from .inference import window_starts

        record = self.records[index]
        moments = self.moment_frames(record)
        return [s for s in window_starts(self._frames[record["vid"]], self.window, self.stride) if not overlaps(moments, s, self.window)]

    def moment_frames(self, record: dict) -> np.ndarray:
        """(M, 2) the record's moments in frames (float)."""
        return np.asarray(record["relevant_windows"], dtype=np.float64).reshape(-1, 2) * self.fps

    def draw_negatives(self, index: int, generator: torch.Generator) -> list[int]:
        """``negatives`` distinct same-video negative windows (first frames): up to ``hard_negatives`` at random from
        the record's hard pool (``set_hard``), the rest at random from the other negative windows."""
        grid = self.negative_starts(index)
        allowed = set(grid)
        pool = [s for s in self.hard.get(index, []) if s in allowed] if self.hard_negatives else []
        hard = (
            [pool[i] for i in torch.randperm(len(pool), generator=generator)[: min(self.hard_negatives, self.same_video)].tolist()]
            if pool
            else []
        )
        rest = [s for s in grid if s not in hard]
        return hard + [rest[i] for i in torch.randperm(len(rest), generator=generator)[: self.same_video - len(hard)].tolist()]

    def frame_counts(self) -> list[int]:
        return [min(self._frames[r["vid"]], self.window) for r in self.records]

    def positive_start(self, moment: tuple[float, float], num_frames: int, generator: torch.Generator) -> int:
        """First frame of a window of ``self.window`` frames holding ``moment`` (frames), at random."""
        last = max(0, num_frames - self.window)
        start, end = moment
        low, high = math.ceil(end) - self.window, math.floor(start)
        if low > high:  # longer than the window: keep its centre
            low = high = round((start + end) / 2 - self.window / 2)
        low, high = min(max(low, 0), last), min(max(high, 0), last)
        return int(torch.randint(low, high + 1, (1,), generator=generator))

    def read_window(self, vid: str, start: int, length: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Frames [start, start + length) of a video as stored (``VisionRows.stored``), checked finite."""
        with safe_open(str(self.path(vid)), framework="pt") as f:
            values, scale = VisionRows(f, self.path(vid)).stored((slice(start, start + length), *self.needed))
        return check_finite(values, self.path(vid), scale), scale

    def other_video_windows(self, vid: str, length: int, generator: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        """``cross_video`` windows of ``length`` frames from random other videos long enough to hold one."""
        from .inference import window_starts

        others = [v for v, n in self._frames.items() if v != vid and n >= length]
        windows = []
        for i in torch.randperm(len(others), generator=generator)[: self.cross_video].tolist():
            grid = window_starts(self._frames[others[i]], length, self.stride)
            windows.append(self.read_window(others[i], grid[int(torch.randint(len(grid), (1,), generator=generator))], length))
        return windows

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        n, w, fps = self._frames[record["vid"]], self.window, self.fps
        rows = 1 + self.same_video + self.cross_video
        generator = torch.Generator().manual_seed(hash((self.seed, self.epoch, index)) % 2**63)
        moments = self.moment_frames(record)
        moment = moments[int(torch.randint(len(moments), (1,), generator=generator))]
        starts = [self.positive_start(tuple(moment), n, generator)] + self.draw_negatives(index, generator)
        in_video = torch.from_numpy(window_saliency(record["relevant_windows"], n, 1.0 / fps)).float() > 0
        saliency_full = torch.from_numpy(saliency_targets(record, n, 1.0 / fps)).float()
        length = min(w, n)
        path = self.path(record["vid"])
        with safe_open(str(path), framework="pt") as f:  # the query's own windows: one open
            vision = VisionRows(f, path)
            own = [vision.stored((slice(start, start + length), *self.needed)) for start in starts]
        others = self.other_video_windows(record["vid"], length, generator) if self.cross_video else []
        values, scales = one_layout([(check_finite(v, path, s), s) for v, s in own] + others)
        video = values[0].new_zeros((rows, length, *values[0].shape[1:]))
        scale = None if scales is None else scales[0].new_zeros((rows, length, *scales[0].shape[1:]))
        window_mask = torch.zeros(rows, dtype=torch.bool)
        in_moment = torch.zeros(rows, length, dtype=torch.bool)
        for row, start in enumerate(starts):
            in_moment[row] = in_video[start : start + length]
        filled = list(range(len(starts))) + [1 + self.same_video + i for i in range(len(others))]  # other videos after the same-video rows
        for i, row in enumerate(filled):
            video[row], window_mask[row] = values[i], True
            if scale is not None:
                scale[row] = scales[i]
        saliency = saliency_full[starts[0] : starts[0] + length]
        if not (saliency > 0).any():  # a moment shorter than a clip: its frame
            saliency[min(int(moment.mean()) - starts[0], length - 1)] = 1.0
        candidates = torch.nonzero(saliency > 0)[:, 0]
        positive = candidates[torch.randint(len(candidates), (1,), generator=generator)].item()
        offset = starts[0] / fps
        relative = torch.tensor(record["relevant_windows"], dtype=torch.float32).reshape(-1, 2) - offset
        relative = relative.clamp(0, length / fps)
        relative = relative[relative[:, 1] > relative[:, 0]]
        item = {
            "record": record,
            "video": video,
            "video_scale": scale,
            "window_mask": window_mask,
            "frame_mask": torch.ones(rows, length, dtype=torch.bool),
            "in_moment": in_moment,
            "windows": relative,
            "saliency": saliency,
            "positive": positive,
            "starts": torch.tensor(starts + [-1] * (rows - len(starts))),
        }
        if self.negatives is not None:
            item["negative_query"] = self.negative_query(index, generator)
        return item


def collate_windows(items: list[dict], fps: float) -> dict:
    """Stack window items: video (B, 1 + N, w, ...) as stored (float8 with video_scale (B, 1 + N, w, K, P) when every
    item is, else float16), masks (B, 1 + N[, w]); videos shorter than a window are padded."""
    length = max(item["video"].size(1) for item in items)

    def pad(x: torch.Tensor, dim: int) -> torch.Tensor:
        shape = list(x.shape)
        shape[dim] = length - x.size(dim)
        return torch.cat((x, x.new_zeros(shape)), dim=dim)

    videos, scales = one_layout([(item["video"], item["video_scale"]) for item in items])
    return {
        "records": [item["record"] for item in items],
        "queries": [item["record"]["query"] for item in items],
        "video": torch.stack([pad(video, 1) for video in videos]),
        **({"video_scale": torch.stack([pad(scale, 1) for scale in scales])} if scales else {}),
        "window_mask": torch.stack([item["window_mask"] for item in items]),
        "frame_mask": torch.stack([pad(item["frame_mask"], 1) for item in items]),
        "in_moment": torch.stack([pad(item["in_moment"], 1) for item in items]),
        "windows": [item["windows"] for item in items],
        "saliency": torch.stack([pad(item["saliency"], 0) for item in items]),
        "positive": torch.tensor([item["positive"] for item in items]),
        "starts": torch.stack([item["starts"] for item in items]),
        "fps": torch.full((len(items),), fps),
        **negative_queries(items),
    }


class LengthGroupedBatches(Sampler[list[int]]):
    """Shuffled batches of videos of similar length, so little of each batch is padding.

    Per epoch (seeded by ``seed`` and ``set_epoch``): shuffle all indices, cut
    them into pools of ``pool`` batches, sort each pool by length, cut it into
    batches and shuffle the batches. Every index appears once per epoch.
    ``lengths``: frames per item (any unit that orders them). ``groups``: a key
    per item (its video); items of one key are then shuffled as a block, so
    they share batches (a block cut by a pool or batch end is split).
    """

    def __init__(
        self, lengths: list[float], batch_size: int, drop_last: bool = False, seed: int = 0, pool: int = 16, groups: list | None = None
    ):
        self.lengths, self.batch_size, self.drop_last, self.seed, self.pool = torch.tensor(lengths), batch_size, drop_last, seed, pool
        self.groups = None
        if groups is not None:
            ids = {key: i for i, key in enumerate(dict.fromkeys(groups))}
            self.groups = torch.tensor([ids[key] for key in groups])
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.lengths)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator)
        if self.groups is not None:  # blocks of a key in a random order; the stable sorts below keep equal lengths in order
            rank = torch.randperm(int(self.groups.max()) + 1, generator=generator)[self.groups]
            order = order[rank[order].argsort(stable=True)]
        span = self.batch_size * self.pool
        grouped = torch.cat([part[self.lengths[part].argsort(stable=True)] for part in order.split(span)])
        batches = list(grouped.split(self.batch_size))
        if self.drop_last and len(batches[-1]) < self.batch_size:
            batches.pop()
        for i in torch.randperm(len(batches), generator=generator).tolist():
            yield batches[i].tolist()


def collate(items: list[dict], fps: float) -> dict:
    """Pad to the longest video: video (Bv, T, ...) each distinct video once (items of one ``video_key``) as stored
    (float8 with video_scale (Bv, T, K, P) when every item is, else float16 or frames), video_index (B,) each item's
    row of it, video_mask (B, T), saliency (B, T), positive (B,)."""
    keys = [("item", i) if item["video_key"] is None else item["video_key"] for i, item in enumerate(items)]
    rows = {key: row for row, key in enumerate(dict.fromkeys(keys))}
    index, first = [rows[key] for key in keys], [keys.index(key) for key in rows]  # first: the item that brings each video
    videos, scales = one_layout([(items[i]["video"], items[i]["video_scale"]) for i in first])
    length = max(len(item["video"]) for item in items)
    video = videos[0].new_zeros((len(first), length, *videos[0].shape[1:]))
    scale = None if scales is None else scales[0].new_zeros((len(first), length, *scales[0].shape[1:]))
    mask = torch.zeros(len(items), length, dtype=torch.bool)
    saliency = torch.zeros(len(items), length)
    for row in range(len(first)):
        video[row, : len(videos[row])] = videos[row]
        if scale is not None:
            scale[row, : len(videos[row])] = scales[row]
    for i, item in enumerate(items):
        n = len(item["video"])
        mask[i, :n], saliency[i, :n] = True, item["saliency"]
    return {
        "records": [item["record"] for item in items],
        "queries": [item["record"]["query"] for item in items],
        "video": video,
        **({"video_scale": scale} if scale is not None else {}),
        "video_index": torch.tensor(index),
        "video_mask": mask,
        "windows": [item["windows"] for item in items],
        "saliency": saliency,
        "positive": torch.tensor([item["positive"] for item in items]),
        "fps": torch.full((len(items),), fps),
        **negative_queries(items),
    }


def negative_queries(items: list[dict]) -> dict:
    """``{"negative_queries": [str] * B}`` when the items carry BM-DETR negative queries, else ``{}``."""
    return {"negative_queries": [item["negative_query"] for item in items]} if "negative_query" in items[0] else {}


class TextCache:
    """Per-layer text states of each distinct query, computed once by the frozen text tower.

    ``precompute`` encodes a whole dataset's queries sorted and in fixed chunks, so a
    query's states never depend on which batch first needed it (a resumed run sees
    the same numbers as an uninterrupted one). ``limit`` (None: keep every query, as
    training does) keeps only the most recently asked queries: a server that answers
    every new text stays within a fixed memory.
    """

    chunk = 256

    def __init__(self, backbone: FrozenBackbone, limit: int | None = None):
        self.backbone, self.limit = backbone, limit
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    def precompute(self, queries) -> None:
        wanted = dict.fromkeys(queries)  # in the order asked: the last one is the most recent
        missing = sorted(wanted.keys() - self._cache.keys())
        for start in range(0, len(missing), self.chunk):
            part = missing[start : start + self.chunk]
            states, mask = self.backbone.encode_text(part)
            for query, s, m in zip(part, states, mask):
                self._cache[query] = s[: int(m.sum())].half().cpu()
        if self.limit is not None:  # least recently asked first out, never a query of this call
            for query in wanted:
                self._cache.move_to_end(query)
            for _ in range(len(self._cache) - max(self.limit, len(wanted))):
                self._cache.popitem(last=False)

    def __len__(self) -> int:
        return len(self._cache)

    def __call__(self, queries: list[str], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries -> states (B, L, K, Dt) float32 and mask (B, L) on ``device``."""
        self.precompute(queries)
        tokens = [self._cache[q] for q in queries]
        length = max(len(t) for t in tokens)
        states = torch.zeros(len(tokens), length, *tokens[0].shape[1:])
        mask = torch.zeros(len(tokens), length, dtype=torch.bool)
        for i, t in enumerate(tokens):
            states[i, : len(t)], mask[i, : len(t)] = t.float(), True
        return states.to(device), mask.to(device)


def load_split(
    cfg: DataConfig, split: str, backbone: FrozenBackbone, seed: int = 0, needed: tuple[slice, slice] = ALL_STATES
) -> GroundingDataset:
    """The train or val split of ``cfg`` as a dataset (annotation errors name file and line), reading the ``needed``
    layers and tokens of the stored states."""
    root = Path(cfg.root)
    path = root / (cfg.train if split == "train" else cfg.val)
    if not path.exists():
        raise DataError(f"{path}: annotation file not found (data.root={cfg.root!r})")
    extra = {}
    if cfg.dataset == "charades":
        extra["durations"] = {vid: d for name in cfg.durations for vid, d in read_charades_durations(root / name).items()} or None
    records, report = read_annotations(path, cfg.dataset, skip_bad=cfg.skip_bad, **extra)
    if report.skipped or report.clamped or report.missing_queries:
        print(f"{path}: {report.summary()}")
    if not records:
        raise DataError(f"{path}: no usable records")
    train = split == "train"
    dataset = GroundingDataset(
        records,
        root / cfg.features,
        backbone,
        cfg.fps,
        cfg.mode,
        seed,
        cfg.negative_similarity if train and cfg.negative_queries else None,
        cfg.temporal_shift_below if train else 0.0,
        needed,
    )
    if dataset.negatives is not None and cfg.negative_query_source == "near":
        dataset.negatives = [near or own for near, own in zip(near_miss_queries(records), dataset.negatives)]
    elif dataset.negatives is not None and dataset.negative_fallbacks:
        print(
            f"{path}: {dataset.negative_fallbacks} of {len(records)} queries have no same-video negative query; "
            "they take one from another video"
        )
    if dataset.past_end:
        print(
            f"{path}: warning: {dataset.past_end} of {len(records)} queries have a window or duration past their video's "
            f"stored frames; their targets stop at the last frame",
            file=sys.stderr,
        )
    return dataset
