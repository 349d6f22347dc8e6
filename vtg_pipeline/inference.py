"""From model outputs to predictions: moments in seconds and a saliency curve per clip.

Decoding follows the official R²-Tuning evaluation: each complete anchor point
gives a window [t - d0 s, t + d1 s] / fps with score sigmoid(cls); the top
``max_moments`` are clamped to [0, duration], windows ending before the
duration are rounded to ``unit`` seconds, then greedy NMS (``hard``: overlaps
>= threshold get score 0, or are dropped with ``keep_suppressed=False``;
``linear``: scores times 1 - IoU) and a stable sort.
Saliency per clip: each level's sigmoid(cls) brought back to clip resolution,
max over levels, times the cosine saliency.

Videos longer than ``DecodeConfig.window`` are grounded window by window
(``ground_in_windows``), several windows a forward: an R² model predicts in
every window; an RGNet model scores every window per query, and only its top
``retrieval_topk`` windows' moments are decoded. Moments are shifted to
absolute seconds, merged and NMS'd. ``ground_videos`` grounds several videos
at once, their windows sharing forwards (``Grounder.ground_windows``: library
search; ``vtg ground`` passes one video at a time); ``ground`` grounds a video of the
feature store (``data.StoredVideo``) for training's evaluation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .data import ALL_STATES, StoredVideo
from .models.detr import span_to_window


@dataclass
class DecodeConfig:
    max_moments: int = 50
    unit: float = 0.0  # round boundaries to this many seconds (QVHighlights 2); 0 = no rounding
    nms: str = "hard"  # hard | linear | none
    nms_threshold: float = 0.7
    window: float = 150.0  # seconds: longer videos are grounded in windows of this length (the training length)
    window_stride: float = 75.0  # seconds between window starts (half-overlapping by default)
    retrieval_topk: int = 20  # rgnet: windows per query that go to the heads
    window_score: str = "product"  # rgnet: moment score x window score | moment: the moment score alone
    window_evidence: float = 0.0  # rgnet: weight e of the heads' best moment in a window's score (merge_windows), 0..1
    window_temperature: float = 0.0  # rgnet: window retrieval score 0: sigmoid(logit) | T > 0: exp((logit - best) / T)
    window_prior: float = 0.0  # rgnet: window logit + this x the library dual encoder's cosine (query, window), >= 0
    keep_suppressed: bool = True  # hard NMS: keep suppressed windows at score 0 (the official evaluation's input) or drop them

    def to_dict(self) -> dict:
        return asdict(self)

    def window_frames(self, fps: float) -> tuple[int, int]:
        """Window length and stride in frames (at least 1)."""
        return max(1, round(self.window * fps)), max(1, round(self.window_stride * fps))


def rounded(values, digits: int = 4) -> list:
    """Numbers, or rows of numbers such as [start, end, score], as rounded Python floats for prediction files."""
    return [rounded(v, digits) if np.ndim(v) else round(float(v), digits) for v in values]


def decode_windows(out: dict, index: int, fps: float, duration: float, cfg: DecodeConfig) -> np.ndarray:
    """Moments (M, 3) [start s, end s, score] of one sample, sorted by score, after NMS."""
    if "spans" in out:  # anchor decoder: the last layer's spans, score p(foreground)
        windows = span_to_window(out["spans"][-1, index]) * out["lengths"][index] / fps
        scores = out["span_logits"][-1, index].softmax(-1)[:, 0]
        top = scores.argsort(descending=True, stable=True)[: cfg.max_moments]
        return postprocess(torch.cat((windows[top], scores[top, None]), dim=1).detach().double().cpu().numpy(), duration, cfg)
    keep = out["complete_points"][index]
    points = out["points"][keep]
    distances = out["reg"][index][keep] * points[:, 3:4]
    scores = out["cls"][index][keep].sigmoid()
    windows = torch.stack((points[:, 0] - distances[:, 0], points[:, 0] + distances[:, 1]), dim=1) / fps
    top = scores.argsort(descending=True, stable=True)[: cfg.max_moments]
    moments = torch.cat((windows[top], scores[top, None]), dim=1).double().cpu().numpy()
    return postprocess(moments, duration, cfg)


def postprocess(moments: np.ndarray, duration: float, cfg: DecodeConfig) -> np.ndarray:
    """Clamp, round and NMS moments (M, 3) [start, end, score] in seconds; returns them sorted by score."""
    moments = moments.copy()
    inside = moments[:, 1] < duration
    moments[:, :2] = moments[:, :2].clip(0, duration)
    if cfg.unit > 0:
        moments[inside, :2] = np.round(moments[inside, :2] / cfg.unit) * cfg.unit
    suppressed = np.zeros(len(moments), dtype=bool)
    if cfg.nms != "none":
        if cfg.nms not in ("hard", "linear"):
            raise ValueError(f"nms must be hard, linear or none, got {cfg.nms!r}")
        starts, ends, scores = moments[:, 0], moments[:, 1], moments[:, 2]  # views: scores change in place
        table = overlaps(starts, ends, slice(None)) if len(moments) <= NMS_TABLE_MOMENTS else None  # (M, M)
        order = np.arange(len(moments))  # greedy: position i takes the best of the rest, swapped with it
        for i in range(len(moments)):
            best = i + int(np.argmax(scores[order[i:]]))
            if cfg.nms == "hard" and scores[order[best]] == 0 and suppressed[order[i:]].all():
                break  # all that is left is suppressed at score 0: it would be picked in place and change nothing
            order[i], order[best] = order[best], order[i]
            picked, rest = order[i], order[i + 1 :]
            overlap = (table[picked] if table is not None else overlaps(starts, ends, [picked])[0])[rest]
            if cfg.nms == "hard":
                hit = rest[overlap >= cfg.nms_threshold]
                scores[hit], suppressed[hit] = 0.0, True
            else:
                scores[rest] *= 1.0 - overlap
        moments, suppressed = moments[order], suppressed[order]
    if not cfg.keep_suppressed:
        moments = moments[~suppressed]
    return moments[np.argsort(-moments[:, 2], kind="stable")]


NMS_TABLE_MOMENTS = 1024  # up to this many moments NMS computes every pair's IoU at once (8 MB); above, a row a pick


def overlaps(starts: np.ndarray, ends: np.ndarray, rows) -> np.ndarray:
    """Temporal IoU (R, M) of the moments ``rows`` (an index or slice of the M) with each of the M moments; starts and
    ends (M,) in seconds. 0 where the union is empty."""
    lengths = ends - starts
    inter = np.clip(np.minimum(ends[rows, None], ends) - np.maximum(starts[rows, None], starts), 0, None)
    union = lengths[rows, None] + lengths - inter  # temporal_iou's arithmetic
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def saliency_curve(out: dict, index: int, num_frames: int, strides: tuple[int, ...]) -> np.ndarray:
    """Per-clip saliency (T,) of one sample: max over levels of upsampled sigmoid(cls), times cosine
    (the cosine alone for the anchor decoder, which has no per-clip scores)."""
    if "spans" in out:
        return out["saliency"][index, :num_frames].detach().cpu().numpy()
    per_level = out["cls"][index].sigmoid().split(out["level_lengths"])
    curves = []
    for scores, stride in zip(per_level, strides):
        if num_frames < stride:
            continue
        scores = scores[: num_frames // stride]
        repeat = num_frames // len(scores)  # as the official code: may differ from the stride
        upsampled = scores.repeat_interleave(repeat)
        curves.append(torch.cat((upsampled, upsampled[-1:].expand(num_frames - len(upsampled)))))
    return (torch.stack(curves).amax(0) * out["saliency"][index, :num_frames]).cpu().numpy()


def predictions_for_batch(out: dict, batch: dict, strides: tuple[int, ...], cfg: DecodeConfig) -> list[dict]:
    """QVHighlights submission records for every sample of a batch."""
    records = []
    for i, record in enumerate(batch["records"]):
        num_frames = int(batch["video_mask"][i].sum())
        fps = float(batch["fps"][i])
        moments = decode_windows(out, i, fps, float(record["duration"]), cfg)
        records.append(
            {
                "qid": record["qid"],
                "query": record["query"],
                "vid": record["vid"],
                "pred_relevant_windows": rounded(moments),
                "pred_saliency_scores": rounded(saliency_curve(out, i, num_frames, strides)),
            }
        )
    return records


def window_starts(num_frames: int, window: int, stride: int) -> list[int]:
    """First frame of each window covering [0, num_frames): every ``stride`` frames, the last one flush with the end."""
    if num_frames <= window:
        return [0]
    starts = list(range(0, num_frames - window, stride))
    return starts + [num_frames - window]


@dataclass
class WindowResults:
    """Q queries' per-window results in one video, before merging (``merge_windows``).

    ``spans`` (W, 2) windows in seconds; ``logits`` (Q, W) retrieval logits, with ``window_prior`` x the dual
    encoder's cosine added (None for a model without retrieval);
    ``found`` per query: window index -> moments (M, 3) [start s, end s, moment score] of the windows the heads ran
    on; ``saliency`` (Q, num_frames) averaged over the grounded windows covering each frame (0 elsewhere);
    ``own`` per query the indices of the windows it was asked about, ascending (every window unless ``starts`` was
    given per query).
    """

    spans: np.ndarray
    logits: np.ndarray | None
    found: list[dict[int, np.ndarray]]
    saliency: np.ndarray
    own: list[list[int]]


@dataclass
class VideoWindows:
    """One video of a window loop over several (``windows_in_videos``).

    ``read_frames(start, stop)`` returns its states (stop - start, K, P, D) of frames [start, stop); ``num_frames``;
    ``duration`` (s); ``queries`` the rows of the shared query tensor that ask about it; ``starts`` the first frames of
    the windows to ground in: one list shared by those queries, one list per query (in ``queries``' order; a window
    several ask about is read once), or None for the whole grid (``window_starts``)."""

    read_frames: Callable[[int, int], torch.Tensor]
    num_frames: int
    duration: float
    queries: list[int]
    starts: list[int] | list[list[int]] | None = None


@torch.no_grad()
def ground_in_windows(
    model,
    read_frames: Callable[[int, int], torch.Tensor],
    num_frames: int,
    duration: float,
    query: torch.Tensor,
    query_mask: torch.Tensor,
    fps: float,
    strides: tuple[int, ...],
    cfg: DecodeConfig,
    starts: list[int] | list[list[int]] | None = None,
) -> list[dict]:
    """Ground Q queries in one video, several windows a forward (``windows_of``; what is held grows by about a
    kilobyte per (query, window) pair, not by the video's states).

    ``read_frames(start, stop)`` returns the video's states (stop - start, K, P, D) for
    frames [start, stop); query (Q, L, K, Dt), query_mask (Q, L). ``starts``: first frames of the windows to
    ground in (default the whole grid, ``window_starts``; library search passes the windows its first stage chose),
    or one such list per query: each query gets what it would get alone, while a window shared by several is read
    once.
    Returns per query ``moments`` (M, 3) [start s, end s, score] sorted, ``saliency`` (num_frames,) (0 outside
    the windows) and, for a retrieval model, ``windows`` (W, 3) [start s, end s, window score] ranked
    (``merge_windows``).
    """
    results = windows_of(model, read_frames, num_frames, duration, query, query_mask, fps, strides, cfg, starts)
    return merged_results(results, duration, cfg)


@torch.no_grad()
def ground_videos(
    model,
    videos: list[VideoWindows],
    query: torch.Tensor,
    query_mask: torch.Tensor,
    fps: float,
    strides: tuple[int, ...],
    cfg: DecodeConfig,
    errors: tuple[type[Exception], ...] = (),
) -> list[list[dict] | Exception]:
    """``ground_in_windows`` for several videos at once, windows of different videos sharing forwards
    (``windows_in_videos``; ``errors`` as there). Returns per video, per query in its ``queries``, the results
    ``ground_in_windows`` gives, or the exception that stopped reading the video."""
    return [
        found if isinstance(found, Exception) else merged_results(found, video.duration, cfg)
        for video, found in zip(videos, windows_in_videos(model, videos, query, query_mask, fps, strides, cfg, errors))
    ]


def merged_results(results: WindowResults, duration: float, cfg: DecodeConfig) -> list[dict]:
    """Per query of one video's window results, its moments, saliency and (retrieval models) ranked windows."""
    merged = []
    for i, found in enumerate(results.found):
        if results.logits is not None:
            own = results.own[i]
            position = {w: j for j, w in enumerate(own)}  # this query's windows, numbered as if it were alone
            result = merge_windows(
                {position[w]: moments for w, moments in found.items()}, results.logits[i, own], results.spans[own], duration, cfg
            )
        else:
            result = {"moments": postprocess(np.concatenate(list(found.values())), duration, cfg)[: cfg.max_moments]}
        merged.append({**result, "saliency": results.saliency[i]})
    return merged


WINDOWS_PER_FORWARD = 8  # windows whose states one forward stacks (8 x 64 s at 0.5 fps, ViT-B/32, K = 4: 80 MB in fp16)
PAIRS_PER_FORWARD = 32  # (query, window) pairs one forward takes at most


@torch.no_grad()
def windows_of(
    model,
    read_frames: Callable[[int, int], torch.Tensor],
    num_frames: int,
    duration: float,
    query: torch.Tensor,
    query_mask: torch.Tensor,
    fps: float,
    strides: tuple[int, ...],
    cfg: DecodeConfig,
    starts: list[int] | list[list[int]] | None = None,
) -> WindowResults:
    """The per-window part of ``ground_in_windows`` (same arguments): ``windows_in_videos`` of one video."""
    video = VideoWindows(read_frames, num_frames, duration, list(range(len(query))), starts)
    return windows_in_videos(model, [video], query, query_mask, fps, strides, cfg)[0]


@dataclass
class WindowPlan:
    """Which windows of a video run for which of its queries: ``starts`` (W,) first frames, ``own`` per query its
    window indices ascending, ``asking`` per window the queries (positions in the video's ``queries``) asking."""

    starts: list[int]
    own: list[list[int]]
    asking: list[list[int]]

    @classmethod
    def of(cls, video: VideoWindows, window: int, stride: int) -> WindowPlan:
        starts = window_starts(video.num_frames, window, stride) if video.starts is None else video.starts
        if starts and isinstance(starts[0], list):  # per query: the union is read, each query sees its own windows
            union = sorted(set().union(*starts))
            position = {start: w for w, start in enumerate(union)}
            own, starts = [sorted(position[s] for s in set(mine)) for mine in starts], union
        else:
            own = [list(range(len(starts)))] * len(video.queries)
        asking: list[list[int]] = [[] for _ in starts]
        for i, mine in enumerate(own):
            for w in mine:
                asking[w].append(i)
        return cls(starts, own, asking)


@torch.no_grad()
def windows_in_videos(
    model,
    videos: list[VideoWindows],
    query: torch.Tensor,
    query_mask: torch.Tensor,
    fps: float,
    strides: tuple[int, ...],
    cfg: DecodeConfig,
    errors: tuple[type[Exception], ...] = (),
) -> list[WindowResults | Exception]:
    """The per-window part of grounding several videos: every (query, window) pair asked about runs once through the
    model with its heads, windows of any video sharing a forward (``forward_groups``, longest windows first; shorter
    ones padded and masked). Each window's states are read once and mapped once for all its queries; a retrieval
    model's logits then choose each query's top ``retrieval_topk`` windows of the video, and only those are decoded.
    What is held across forwards is per pair: its logit and the few head outputs decoding reads
    (``decoding_outputs``, about a kilobyte). query (Q, L, K, Dt), query_mask (Q, L) for all the videos' queries.
    A video whose ``read_frames`` raises one of ``errors`` gets that exception in place of its results; the others
    run on (any other exception propagates)."""
    window, stride = cfg.window_frames(fps)
    device = query.device
    plans = [WindowPlan.of(video, window, stride) for video in videos]
    units = [(v, w) for v, plan in enumerate(plans) for w, asking in enumerate(plan.asking) if asking]
    length = {(v, w): min(plans[v].starts[w] + window, videos[v].num_frames) - plans[v].starts[w] for v, w in units}
    units.sort(key=lambda unit: -length[unit])  # stable: a video's windows stay in order; little padding a forward
    prior = cfg.window_prior if model.retrieves_windows else 0.0
    embedded = model.retrieval.embed_queries(query, query_mask).float() if prior else None  # (Q, E)
    logits = [np.full((len(v.queries), len(p.starts)), -np.inf) if model.retrieves_windows else None for v, p in zip(videos, plans)]
    kept: list[dict[tuple[int, int], tuple[dict, int]]] = [{} for _ in videos]  # (query, window) -> its batch's outputs, row
    failed: dict[int, Exception] = {}
    for group in forward_groups([len(plans[v].asking[w]) for v, w in units]):
        read = {}
        for v, w in (units[u] for u in group):
            if v not in failed:
                try:
                    read[v, w] = videos[v].read_frames(plans[v].starts[w], plans[v].starts[w] + length[v, w])
                except errors as e:
                    failed[v] = e
        batch = [unit for unit in read if unit[0] not in failed]
        if not batch:
            continue
        states = torch.nn.utils.rnn.pad_sequence([read[unit] for unit in batch], batch_first=True).to(device)  # (Bv, T, K, P, D)
        frames = torch.tensor([length[unit] for unit in batch], device=device)
        pairs = [(v, i, w) for v, w in batch for i in plans[v].asking[w]]
        index = torch.tensor([row for row, (v, w) in enumerate(batch) for _ in plans[v].asking[w]], dtype=torch.long, device=device)
        rows = torch.tensor([videos[v].queries[i] for v, i, _ in pairs], dtype=torch.long, device=device)
        valid = torch.arange(states.size(1), device=device) < frames[:, None]  # (Bv, T)
        out = model(states, valid[index], query[rows], query_mask[rows], video_index=index)
        if model.retrieves_windows:
            logit = out["window_logit"].float()
            if prior:  # + p x the dual encoder's cosine of the window's last-layer states with the query
                cosine = embedded @ model.retrieval.embed_windows(states[:, :, -1, model.retrieval.tokens_read], valid).float().T  # (Q, Bv)
                logit = logit + prior * cosine[rows, index]
            for (v, i, w), value in zip(pairs, logit.cpu().numpy()):
                logits[v][i, w] = value
        outputs = decoding_outputs(out)
        for row, (v, i, w) in enumerate(pairs):
            kept[v][i, w] = outputs, row
    return [
        failed[v] if v in failed else decoded_windows(kept[v], videos[v], plans[v], logits[v], window, fps, strides, cfg)
        for v in range(len(videos))
    ]


def decoded_windows(
    kept: dict[tuple[int, int], tuple[dict, int]],
    video: VideoWindows,
    plan: WindowPlan,
    logits: np.ndarray | None,
    window: int,
    fps: float,
    strides: tuple[int, ...],
    cfg: DecodeConfig,
) -> WindowResults:
    """A video's WindowResults from its kept per-pair outputs ((query, window) -> batch outputs, row): each query's top ``retrieval_topk`` windows by logit
    (every window it asked about for a model without retrieval) decoded, shifted to absolute seconds, saliency averaged
    over the decoded windows covering each frame."""
    if logits is not None:
        chosen = [
            np.asarray(mine)[np.argsort(-logits[i, mine], kind="stable")][: cfg.retrieval_topk].tolist() for i, mine in enumerate(plan.own)
        ]
    else:
        chosen = plan.own
    found: list[dict[int, np.ndarray]] = [{} for _ in plan.own]
    saliency_sum, covered = np.zeros((len(plan.own), video.num_frames)), np.zeros((len(plan.own), video.num_frames))
    length = min(window, video.num_frames)
    for i, mine in enumerate(chosen):
        for w in sorted(mine):
            start, (out, row) = plan.starts[w], kept[i, w]
            local = decode_windows(out, row, fps, min(length / fps, video.duration - start / fps), cfg)
            local[:, :2] += start / fps
            found[i][w] = local
            saliency_sum[i, start : start + length] += saliency_curve(out, row, length, strides)
            covered[i, start : start + length] += 1
    starts = np.asarray(plan.starts)
    spans = np.stack([starts, np.minimum(starts + window, video.num_frames)], axis=1) / fps
    return WindowResults(spans, logits, found, saliency_sum / np.maximum(covered, 1), plan.own)


def forward_groups(pairs: list[int]) -> list[list[int]]:
    """Consecutive windows grouped into forwards, given each window's (query, window) pair count: at most
    ``WINDOWS_PER_FORWARD`` windows and ``PAIRS_PER_FORWARD`` pairs a group (a window's pairs are never split, so a
    window with more pairs than that runs alone). Returns the groups' window positions."""
    groups: list[list[int]] = []
    total = 0
    for u, n in enumerate(pairs):
        if not groups or len(groups[-1]) == WINDOWS_PER_FORWARD or total + n > PAIRS_PER_FORWARD:
            groups.append([])
            total = 0
        groups[-1].append(u)
        total += n
    return groups


def decoding_outputs(out: dict) -> dict:
    """What ``decode_windows`` and ``saliency_curve`` read of a batch's head outputs, on the CPU (one copy a batch;
    kept while the other windows run, the batch's features dropped)."""
    if "spans" in out:  # the anchor decoder
        return {key: out[key].cpu() for key in ("spans", "span_logits", "lengths", "saliency")}
    needed = {key: out[key].cpu() for key in ("cls", "reg", "points", "complete_points", "saliency")}
    return {**needed, "level_lengths": out["level_lengths"]}


def merge_windows(found: dict[int, np.ndarray], logits: np.ndarray, spans: np.ndarray, duration: float, cfg: DecodeConfig) -> dict:
    """One query's moments and ranked windows from a retrieval model's per-window results.

    ``found``: window index -> moments (M, 3) [start s, end s, moment score] of the windows the heads ran on;
    ``logits`` (W,) every window's retrieval logit; ``spans`` (W, 2) windows in seconds.
    A window's score is s = r^(1 - e) * best^e, with best its highest moment score, e = ``cfg.window_evidence``
    (e = 0: the retrieval score alone) and r its retrieval score (``retrieval_scores``). Moments score
    moment score x s (``product``) or the moment score alone (``moment``), merged by ``postprocess``. Returns
    ``moments`` (M, 3) sorted, ``windows`` (W, 3) [start s, end s, s]: the grounded windows by s, then the
    others by logit (s = 0 when e > 0), and ``reference`` the highest logit, the one whose window's r is 1
    (``across_videos`` puts the scores of several videos' results on one scale).
    """
    e = cfg.window_evidence
    grounded = np.zeros(len(logits), dtype=bool)
    best = np.zeros(len(logits))
    for w, moments in found.items():
        grounded[w], best[w] = True, moments[:, 2].max(initial=0.0)
    score = retrieval_scores(logits, cfg.window_temperature) ** (1 - e) * best**e  # 0**0 = 1: e = 0 keeps the retrieval score
    merged = []
    for w, moments in found.items():
        moments = moments.copy()
        if cfg.window_score == "product":
            moments[:, 2] *= score[w]
        merged.append(moments)
    order = np.lexsort((-logits, -np.where(grounded, score, 0.0), ~grounded))  # last key first: grounded, then s, then logit
    return {
        "moments": postprocess(np.concatenate(merged), duration, cfg)[: cfg.max_moments],
        "windows": np.concatenate((spans[order], score[order, None]), axis=1),
        "reference": float(logits.max(initial=-np.inf)),
    }


def across_videos(references: list[float], cfg: DecodeConfig) -> np.ndarray:
    """Per video searched for one query, the factor (V,) that puts its moment scores (``merge_windows``, r relative
    to that video's highest window logit, its ``reference``) on one scale with the others':
    exp((1 - e) (reference - max reference) / T), so that r is relative to the query's best window over all of them.
    1 when T = 0 (the sigmoid needs no reference) or when moments keep their own score (``window_score`` moment)."""
    references = np.asarray(references, dtype=np.float64)
    if cfg.window_temperature == 0 or cfg.window_score != "product":
        return np.ones(len(references))
    return np.exp((1 - cfg.window_evidence) * (references - references.max(initial=-np.inf)) / cfg.window_temperature)


def retrieval_scores(logits: np.ndarray, temperature: float) -> np.ndarray:
    """Each window's retrieval score in (0, 1] from one query's window logits (W,).

    ``temperature`` 0: sigmoid(logit), the paper's. T > 0: exp((logit - max logit) / T), the softmax over the
    windows with the best one scaled to 1. The logits are trained only against each other (an InfoNCE at
    ``loss.window_temperature``), so their level means nothing and their gaps are small (about 0.1 between the
    first two windows on ``vtg synth --long``): the sigmoid is nearly flat over the top windows and their moments
    then rank by the heads' score alone, which is no evidence for the window (docs/BENCHMARKS.md).
    """
    z = logits.astype(np.float64)
    if temperature == 0:
        return 1 / (1 + np.exp(-z))
    return np.exp((z - z.max(initial=-np.inf)) / temperature)


@torch.no_grad()
def ground(
    model,
    video: StoredVideo,
    query: torch.Tensor,
    query_mask: torch.Tensor,
    fps: float,
    strides: tuple[int, ...],
    cfg: DecodeConfig,
    duration: float | None = None,
    states: tuple[slice, slice] = ALL_STATES,
) -> list[dict]:
    """``ground_in_windows`` over every window of a stored video (training's evaluation): Q queries (Q, L, K, Dt) with
    their mask (Q, L), windows' states read checked finite. ``duration``: seconds (default the file's metadata);
    ``states``: the (layers, tokens) slices of the stored states the model reads (default all). Results as
    ``ground_in_windows``'s."""
    return ground_in_windows(
        model,
        lambda start, stop: video.rows(start, stop, states),
        video.frames,
        video.duration if duration is None else duration,
        query,
        query_mask,
        fps,
        strides,
        cfg,
    )
