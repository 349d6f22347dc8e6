"""Grounding raw videos: ``Grounder`` and the ``vtg ground`` pipeline.

``Grounder.from_pretrained(checkpoint_dir)`` loads a trained side network and
the frozen backbone its config names (the weights hash must match). Then
``ground(video, queries)`` / ``ground_many([(video, query), ...])`` return per
query the moments ``[(start_s, end_s, score), ...]`` sorted by score and a
saliency curve with its clip times.

How a batch runs:
1. Every distinct video is decoded and encoded once, by the ``extract``
   pipeline (decoder threads overlap the backbone), into a feature store:
   ``features_dir`` if given (videos already there are not decoded again),
   else a temporary folder. Frames are stored too, for report thumbnails.
2. Per video, all of its queries run through the side network as one batch
   that shares the video's states (``inference.ground_in_windows``). Videos
   longer than ``decode.window`` seconds are cut into overlapping windows read
   one at a time from the store, so memory does not grow with duration; an
   RGNet checkpoint scores every window per query and grounds in its top
   windows only. Moments are shifted to absolute seconds, merged and NMS'd,
   saliency is averaged where windows overlap.
A missing or undecodable video or an empty query gives an error record for
its items; the others complete.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from tqdm import tqdm

from .backbone import FrozenBackbone, load_backbone
from .config import TrainConfig, config_from_dict
from .data import TextCache
from .extract import ExtractConfig, VideoItem, extract_videos, is_up_to_date, run_settings
from .features import Manifest, read_metadata
from .inference import ground_in_windows, rounded
from .models import create_model


class GroundError(ValueError):
    """A checkpoint or input that cannot be used; one line naming the file."""


@dataclass
class Request:
    """One (video, query) pair to ground; ``qid`` None: its position in the batch (``read_requests`` gives every row one)."""

    video: str
    query: str
    qid: int | str | None = None


def hms(seconds: float) -> str:
    """Seconds as h:mm:ss.s (``3725.25`` -> ``1:02:05.2``)."""
    tenths = int(round(seconds * 10))
    return f"{tenths // 36000}:{tenths // 600 % 60:02d}:{tenths % 600 / 10:04.1f}"


class Grounder:
    """A trained side network with its frozen backbone, ready to ground videos."""

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, backbone: FrozenBackbone):
        self.model, self.cfg, self.backbone = model.eval(), cfg, backbone
        self.fps = cfg.data.fps
        self.text_cache = TextCache(backbone)  # a query asked of many videos is encoded once, as in training

    @classmethod
    def from_pretrained(cls, checkpoint_dir: str | Path, device: str | torch.device = "cpu") -> "Grounder":
        """Load ``checkpoint_dir`` (``best/`` of a run); refuses a backbone whose weights hash differs."""
        checkpoint_dir = Path(checkpoint_dir)
        config_file, weights_file = checkpoint_dir / "config.json", checkpoint_dir / "model.safetensors"
        for path in (config_file, weights_file):
            if not path.is_file():
                raise GroundError(f"{path}: not found (a checkpoint is the best/ folder of a training run)")
        values = json.loads(config_file.read_text())
        cfg = config_from_dict(values)
        backbone = load_backbone(cfg.backbone.name, cfg.backbone.pretrained, cfg.backbone.layers, device, cfg.backbone.precision)
        expected = values.get("backbone_spec", {}).get("backbone_sha256")
        if expected != backbone.spec.backbone_sha256:
            raise GroundError(f"{config_file}: trained on backbone weights {expected}, but {cfg.backbone.name} "
                              f"{cfg.backbone.pretrained} has {backbone.spec.backbone_sha256}")
        model = create_model(cfg.model)
        model.load_state_dict(load_file(str(weights_file)))
        return cls(model.to(device), cfg, backbone)

    def ground(self, video: str | Path, queries: str | list[str], features_dir: str | Path | None = None) -> list[dict]:
        """Ground ``queries`` (one string, or a list of them) in one video; one result per query (see ``ground_many``)."""
        if isinstance(queries, str):
            queries = [queries]
        if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
            raise TypeError(f"queries must be a string or a list of strings, got {type(queries).__name__} {str(queries)[:60]}")
        return self.ground_many([Request(str(video), q) for q in queries], features_dir)

    def ground_many(self, requests: list[Request | tuple[str, str]], features_dir: str | Path | None = None,
                    progress: bool = False) -> list[dict]:
        """Ground many (video, query) pairs; results in the order of ``requests``.

        A result is a QVHighlights submission record (``qid``, ``query``, ``vid``,
        ``pred_relevant_windows`` [[start s, end s, score], ...] by score,
        ``pred_saliency_scores`` per clip) plus ``video``, ``clip_times`` (s, the
        start of each clip) and ``pred_relevant_windows_hms``; or, for an item
        that could not be grounded, ``qid``, ``query``, ``video`` and ``error``.
        """
        requests = [r if isinstance(r, Request) else Request(*r) for r in requests]
        results: list[dict | None] = [None] * len(requests)
        by_video: dict[str, list[int]] = {}
        for i, r in enumerate(requests):
            qid = r.qid if r.qid is not None else i
            if not r.query.strip():
                results[i] = {"qid": qid, "query": r.query, "video": r.video, "error": "empty query"}
            elif not os.path.isfile(r.video):
                results[i] = {"qid": qid, "query": r.query, "video": r.video, "error": "no such video file"}
            else:
                by_video.setdefault(os.path.abspath(r.video), []).append(i)
        with tempfile.TemporaryDirectory(prefix="vtg-ground-") as tmp:
            store = Path(features_dir) if features_dir else Path(tmp)
            files, failures = self.encode_videos(sorted(by_video), store, progress)
            bar = tqdm(total=len(by_video), desc="ground", unit="video", disable=not progress)
            bar.set_postfix(queries=sum(len(v) for v in by_video.values()), refresh=False)
            for path, indices in by_video.items():
                batch = [requests[i] for i in indices]
                if path in failures:
                    outputs = [{"error": failures[path]}] * len(batch)
                else:
                    outputs = self.ground_features(files[path], [r.query for r in batch])
                for i, r, out in zip(indices, batch, outputs):
                    results[i] = {"qid": r.qid if r.qid is not None else i, "query": r.query, "video": r.video, **out}
                    if "error" not in out and is_truncated(self.backbone, r.query):
                        results[i]["warning"] = f"query longer than {self.backbone.tokenizer.context_length} tokens: truncated"
                bar.update(1)
            bar.close()
        return results

    def encode_videos(self, paths: list[str], store: Path, progress: bool = False) -> tuple[dict[str, Path], dict[str, str]]:
        """Feature files for ``paths`` (absolute), extracting those not already in ``store``.

        A stored video is found by its source's real path in the store's manifest (wherever `vtg extract` ran)
        and reused when its source size, mtime and settings match. Returns {path: feature file} and
        {path: reason} for the videos that failed. A manifest id or file that would leave ``store`` is an
        UnsafeNameError.
        """
        from .extract import output_folder
        from .features import feature_path

        output_folder(store)
        extract_cfg = ExtractConfig(video_dirs=[], out=str(store), fps=self.fps, model=self.cfg.backbone.name,
                                    pretrained=self.cfg.backbone.pretrained, layers=self.cfg.backbone.layers, store="both",
                                    precision=self.cfg.backbone.precision, progress=progress)
        # A file made by `vtg extract` with the same backbone, layers, fps and precision serves, whatever else it stores.
        settings = {k: v for k, v in run_settings(extract_cfg, self.backbone).items() if k != "store"}
        records = Manifest(store).records()
        known = {os.path.realpath(r["path"]): vid for vid, r in records.items()}  # old relative paths may not match
        taken = set(records)
        files, todo = {}, []
        for path in paths:
            vid = known.get(os.path.realpath(path))
            if vid is None:
                vid = unique_id(Path(path).stem, taken)
                taken.add(vid)
            item = VideoItem(vid, path)
            files[path] = feature_path(store, vid)
            stored = (read_metadata(files[path]) or {}).get("store")
            if stored not in ("features", "both") or not is_up_to_date(files[path], item, settings):
                todo.append(item)
        summary = extract_videos(extract_cfg, todo, self.backbone)
        failures = {os.path.abspath(path): reason for path, reason in summary.failures}
        return files, failures

    @torch.no_grad()
    def ground_features(self, feature_file: Path, queries: list[str]) -> list[dict]:
        """Ground ``queries`` on one stored video, window by window; one result dict per query."""
        with safe_open(str(feature_file), framework="pt") as f:
            meta = f.metadata()
            times = f.get_tensor("timestamps").numpy()
            vision = f.get_slice("vision")
            duration = float(meta["duration"])
            query, query_mask = self.text_cache(queries, self.backbone.device)
            grounded = ground_in_windows(self.model, lambda start, stop: vision[start:stop], len(times), duration, query, query_mask,
                                         self.fps, self.cfg.model.strides, self.cfg.decode)
        results = []
        for g in grounded:
            windows = rounded(g["moments"])
            result = {
                "vid": meta.get("video_id", feature_file.stem),
                "duration": duration,
                "pred_relevant_windows": windows,
                "pred_relevant_windows_hms": [[hms(s), hms(e)] for s, e, _ in windows],
                "pred_saliency_scores": rounded(g["saliency"]),
                "clip_times": rounded(times),
            }
            if "windows" in g:
                result["pred_windows"] = rounded(g["windows"])
            results.append(result)
        return results


def unique_id(stem: str, taken: set[str]) -> str:
    """A safe video id for a file ``stem``: ``stem``, or ``stem-2``, ``stem-3``, ... if another video has it.

    Control characters and backslashes become ``_``; a blank, ``.`` or ``..`` stem becomes ``video``.
    """
    import re

    base = re.sub(r"[\x00-\x1f\x7f\\]", "_", stem)
    base = "video" if not base.strip() or base in (".", "..") else base
    candidate, n = base, 1
    while candidate in taken:
        n += 1
        candidate = f"{base}-{n}"
    return candidate


def is_truncated(backbone: FrozenBackbone, query: str) -> bool:
    """Whether the query has more tokens than the text tower's context (the tokenizer cuts it)."""
    tokenizer = backbone.tokenizer
    if hasattr(tokenizer, "encode"):  # open_clip's BPE tokenizer: + start and end tokens
        return len(tokenizer.encode(query)) + 2 > tokenizer.context_length
    return bool(backbone.tokenize([query])[0, -1] != 0)


def read_requests(path: str | Path) -> list[Request]:
    """Requests from a jsonl (``{"video", "query"[, "qid"]}`` per line) or CSV file with those columns.

    Relative video paths are taken from the file's folder. A qid is an int or a
    non-empty string (in a CSV, integer text such as ``7`` is the int 7); a qid
    given twice is an error naming both lines. Rows without a qid are numbered
    0, 1, 2, ... in file order, skipping the numbers other rows give, so no
    two requests share one. Errors name the file and line.
    """
    import csv
    import itertools
    import re

    from .annotations import check_qid, json_object, open_text, repeated_qid, text_lines

    path = Path(path)
    is_csv = path.suffix.lower() == ".csv"
    if is_csv:
        with open_text(path, newline="") as f:
            reader = csv.DictReader(f)
            rows = [(reader.line_num, row) for row in reader]
    else:
        rows = []
        for number, line in text_lines(path):
            try:
                rows.append((number, json_object(line)))
            except ValueError as e:
                raise GroundError(f"{path}:{number}: {e}") from None
    items, seen = [], {}  # items: (video, query, qid or None); seen: explicit qid -> where
    for number, row in rows:
        where = f"{path}:{number}"
        if not row.get("video") or "query" not in row:
            raise GroundError(f"{where}: needs 'video' and 'query'")
        qid = row.get("qid")
        if is_csv and qid is not None:
            qid = int(qid) if re.fullmatch(r"0|-?[1-9][0-9]*", qid.strip()) else qid.strip()
        if qid in (None, ""):
            qid = None
        else:
            try:
                check_qid(qid)
            except ValueError as e:
                raise GroundError(f"{where}: {e}") from None
            repeated = repeated_qid(qid, where, seen)
            if repeated:
                raise GroundError(f"{where}: {repeated}")
        video = Path(row["video"])
        items.append((str(video if video.is_absolute() else path.parent / video), str(row["query"] or ""), qid))
    free = (n for n in itertools.count() if n not in seen)
    return [Request(video, query, next(free) if qid is None else qid) for video, query, qid in items]
