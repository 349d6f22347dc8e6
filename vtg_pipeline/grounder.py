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

import csv
import itertools
import json
import os
import re
import tempfile
from collections import Counter
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from huggingface_hub import HfApi

from .annotations import check_qid, json_object, open_text, repeated_qid, text_lines
from .backbone import FrozenBackbone
from .checkpoint import read_checkpoint, write_checkpoint
from .config import TrainConfig
from .data import DataError, StoredVideo, TextCache
from .engine import Engine, LocalEngine
from .errors import UserError
from .extract import (
    VISION_CLS,
    ExtractConfig,
    VideoItem,
    is_up_to_date,
    output_folder,
    run_settings,
    stored_vision_shape,
)
from .features import Manifest, feature_path, read_metadata, stored_ids
from .inference import VideoWindows, ground_videos, rounded
from .names import UnsafeNameError, check_video_id, hms

QUERIES_CACHED = 1024  # distinct query texts whose states a Grounder keeps (about 64 MB with ViT-B/32's text tower, K = 4)


class GroundError(UserError):
    """A checkpoint or input that cannot be used; one line naming the file."""


@dataclass
class Request:
    """One (video, query) pair to ground; ``qid`` None: its position in the batch (``read_requests`` gives every row one)."""

    video: str
    query: str
    qid: int | str | None = None


class Grounder:
    """A trained side network with its frozen backbone, ready to ground videos."""

    trained: dict = {}  # epoch and metrics of the checkpoint it was loaded from; save_pretrained keeps them
    folder: Path | None = None  # the checkpoint folder it was loaded from (where Ray actors load it again)

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, backbone: FrozenBackbone, indexable: bool = True):
        """``indexable``: whether the model's library-search head (``model.retrieval``) was trained, so ``vtg index`` can use it."""
        self.model, self.cfg, self.backbone, self.indexable = model.eval(), cfg, backbone, indexable
        self.fps = cfg.data.fps
        self.text_cache = TextCache(backbone, QUERIES_CACHED)  # a query asked of many videos is encoded once, as in training

    @classmethod
    def from_pretrained(cls, checkpoint: str | Path, device: str | torch.device = "cpu") -> Grounder:
        """Load ``checkpoint``: a checkpoint folder (``best/`` of a run, or one ``save_pretrained`` wrote), or a Hugging
        Face Hub model repo id ``org/name[@revision]`` that is not a local folder (see ``checkpoint.checkpoint_folder``).
        ``checkpoint.read_checkpoint`` reads and validates it (CheckpointError, one line naming the file).
        """
        loaded = read_checkpoint(checkpoint, device)
        grounder = cls(loaded.model, loaded.cfg, loaded.backbone, indexable=loaded.indexable)
        grounder.trained, grounder.folder = loaded.trained, loaded.folder
        return grounder

    def save_pretrained(self, save_directory: str | Path) -> Path:
        """Write this checkpoint into ``save_directory`` (created if missing; other files stay) as a run writes
        ``best/``: model.safetensors, README.md (model card), config.json. Returns the folder."""
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        write_checkpoint(folder, self.model, self.cfg, self.backbone, self.trained)
        return folder

    def push_to_hub(
        self, repo_id: str, private: bool | None = None, token: str | None = None, commit_message: str = "Upload vtg_pipeline checkpoint"
    ) -> str:
        """Create Hugging Face Hub model repo ``repo_id`` if missing and upload ``save_pretrained``'s files to it in
        one commit; returns the commit's URL. ``token``: default, the logged-in user's (``hf auth login``)."""
        api = HfApi(token=token)
        repo = api.create_repo(repo_id, private=private, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="vtg-push-") as tmp:
            self.save_pretrained(tmp)
            return api.upload_folder(repo_id=repo.repo_id, folder_path=tmp, commit_message=commit_message).commit_url

    def ground(self, video: str | Path, queries: str | list[str], features_dir: str | Path | None = None) -> list[dict]:
        """Ground ``queries`` (one string, or a list of them) in one video; one result per query (see ``ground_many``)."""
        if isinstance(queries, str):
            queries = [queries]
        if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
            raise TypeError(f"queries must be a string or a list of strings, got {type(queries).__name__} {str(queries)[:60]}")
        return self.ground_many([Request(str(video), q) for q in queries], features_dir)

    def ground_many(
        self,
        requests: list[Request | tuple[str, str]],
        features_dir: str | Path | None = None,
        progress: bool = False,
        engine: Engine | None = None,
    ) -> list[dict]:
        """Ground many (video, query) pairs; results in the order of ``requests``.

        A result is a QVHighlights submission record (``qid``, ``query``, ``vid``,
        ``pred_relevant_windows`` [[start s, end s, score], ...] by score,
        ``pred_saliency_scores`` per clip) plus ``video``, ``clip_times`` (s, the
        start of each clip) and ``pred_relevant_windows_hms``; or, for an item
        that could not be grounded, ``qid``, ``query``, ``video`` and ``error``.
        ``engine``: where the videos are extracted and grounded (default: this process; ``RayEngine``: a Ray cluster,
        which needs ``features_dir`` on a filesystem its nodes share).
        """
        engine = engine or LocalEngine()
        requests = with_qids([r if isinstance(r, Request) else Request(*r) for r in requests])
        results: list[dict | None] = [None] * len(requests)
        by_video: dict[str, list[int]] = {}
        for i, r in enumerate(requests):
            if not r.query.strip():
                results[i] = {"qid": r.qid, "query": r.query, "video": r.video, "error": "empty query"}
            elif not os.path.isfile(r.video):
                results[i] = {"qid": r.qid, "query": r.query, "video": r.video, "error": "no such video file"}
            else:
                by_video.setdefault(os.path.abspath(r.video), []).append(i)
        with tempfile.TemporaryDirectory(prefix="vtg-ground-") as tmp:
            store = Path(features_dir) if features_dir else Path(tmp)
            files, failures = self.encode_videos(sorted(by_video), store, progress, engine)
            grounded = [path for path in by_video if path not in failures]
            outputs = dict(
                zip(
                    grounded,
                    engine.map_stored(
                        self,
                        ground_stored_video,
                        [(files[p], [requests[i].query for i in by_video[p]]) for p in grounded],
                        progress,
                        desc="ground",
                    ),
                )
            )
            for path, indices in by_video.items():
                for i, out in zip(indices, outputs.get(path) or [{"error": failures.get(path)}] * len(indices)):
                    r = requests[i]
                    results[i] = {"qid": r.qid, "query": r.query, "video": r.video, **out}
                    if "error" not in out and self.backbone.truncates(r.query):
                        results[i]["warning"] = f"query longer than {self.backbone.tokenizer.context_length} tokens: truncated"
        return results

    def extract_config(self, store: str | Path, progress: bool = False, states: str = "fp16") -> ExtractConfig:
        """The extraction settings of this checkpoint's backbone, layers, fps and precision, keeping states (``states``:
        fp16, fp8 for half the bytes, or cls for the last layer's CLS state alone) and, except with cls, frames."""
        backbone = self.cfg.backbone
        return ExtractConfig(
            video_dirs=[],
            out=str(store),
            fps=self.fps,
            model=backbone.name,
            pretrained=backbone.pretrained,
            layers=backbone.layers,
            store="features" if states == "cls" else "both",
            precision=backbone.precision,
            states=states,
            progress=progress,
        )

    def encode_videos(
        self, paths: list[str], store: Path, progress: bool = False, engine: Engine | None = None
    ) -> tuple[dict[str, Path], dict[str, str]]:
        """Feature files for ``paths`` (absolute), extracting those not already in ``store``.

        A stored video is found by its source's real path in the store's manifest (wherever `vtg extract` ran)
        and reused when its source size, mtime and settings match. Returns {path: feature file} and
        {path: reason} for the videos that failed. A manifest id or file that would leave ``store`` is an
        UnsafeNameError.
        """
        output_folder(store)
        extract_cfg = self.extract_config(store, progress)
        # A file made by `vtg extract` with the same backbone, layers, fps and precision serves, whatever else it stores.
        settings = {k: v for k, v in run_settings(extract_cfg, self.backbone).items() if k != "store"}
        records = Manifest(store).records()
        known = {os.path.realpath(r["path"]): vid for vid, r in records.items()}  # old relative paths may not match
        taken = set(records) | stored_ids(store)  # a file the manifest lost still holds a video: never overwrite it
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
        summary = (engine or LocalEngine()).extract(extract_cfg, todo, self.backbone)
        failures = {os.path.abspath(path): reason for path, reason in summary.failures}
        return files, failures

    def open_stored(self, feature_file: Path) -> AbstractContextManager[StoredVideo]:
        """``StoredVideo.open(feature_file)``, its vision states checked to have this backbone's row shape, or (1, 1, D)
        in a file that keeps the last layer's CLS state alone (``vtg index --states on-demand``)."""
        row_shape = self.backbone.row_shapes()["vision"]
        return StoredVideo.open(
            feature_file, lambda meta: stored_vision_shape("cls" if meta.get("vision_format") == VISION_CLS else "fp16", row_shape)
        )

    def ground_windows(
        self, videos: list[VideoWindows], queries: list[str], errors: tuple[type[Exception], ...] = ()
    ) -> list[list[dict] | Exception]:
        """``inference.ground_videos`` of ``queries`` (each video's ``queries`` are positions in this list) with this
        checkpoint, as users get the moments (suppressed duplicates dropped): windows of all the videos share forwards.
        Per video, its queries' results, or the exception in ``errors`` that stopped reading it."""
        query, query_mask = self.text_cache(queries, self.backbone.device)
        decode = replace(self.cfg.decode, keep_suppressed=False)  # users get no score-0 duplicates of better windows
        return ground_videos(self.model, videos, query, query_mask, self.fps, self.cfg.model.strides, decode, errors)

    def ground_opened(self, video: StoredVideo, queries: list[str]) -> list[dict]:
        """``ground_windows`` of ``queries`` in one open stored video, every window of its grid."""
        return self.ground_windows([VideoWindows(video.rows, video.frames, video.duration, list(range(len(queries))))], queries)[0]

    def ground_features(self, feature_file: Path, queries: list[str]) -> list[dict]:
        """Ground ``queries`` on one stored video, window by window; one result dict per query.

        DataError when the file's shapes disagree or a window's states are not finite (checked as each is read).
        """
        with self.open_stored(feature_file) as video:
            grounded = self.ground_opened(video, queries)
        meta, duration, times = video.metadata, video.duration, video.timestamps
        try:
            vid = check_video_id(meta.get("video_id", feature_file.stem), f"{feature_file} (video_id metadata)")
        except UnsafeNameError as e:
            raise DataError(str(e)) from None
        results = []
        for g in grounded:
            windows = rounded(g["moments"])
            result = {
                "vid": vid,
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


def ground_stored_video(grounder: Grounder, job: tuple[Path, list[str]]) -> list[dict]:
    """One stored video's queries (``job``: feature file, queries), grounded: a result per query, or for every query
    the error that made the video's states unusable."""
    file, queries = job
    try:
        return grounder.ground_features(file, queries)
    except DataError as e:  # this video's states are unusable: its items get the reason, the others go on
        return [{"error": str(e)}] * len(queries)


def with_qids(requests: list[Request]) -> list[Request]:
    """``requests`` with every missing qid filled by 0, 1, 2, ... skipping the explicit ones; a repeated explicit
    qid is a GroundError."""
    explicit = Counter(r.qid for r in requests if r.qid is not None)
    repeated = sorted(str(q) for q, n in explicit.items() if n > 1)
    if repeated:
        raise GroundError(f"qids given to more than one request: {', '.join(repeated[:5])}")
    free = (n for n in itertools.count() if n not in explicit)
    return [r if r.qid is not None else replace(r, qid=next(free)) for r in requests]


def unique_id(stem: str, taken: set[str]) -> str:
    """A safe video id for a file ``stem``: ``stem``, or ``stem-2``, ``stem-3``, ... if another video has it.

    Control characters and backslashes become ``_``; a blank, ``.`` or ``..`` stem becomes ``video``.
    """

    base = re.sub(r"[\x00-\x1f\x7f\\]", "_", stem)
    base = "video" if not base.strip() or base in (".", "..") else base
    candidate, n = base, 1
    while candidate in taken:
        n += 1
        candidate = f"{base}-{n}"
    return candidate


def read_requests(path: str | Path) -> list[Request]:
    """Requests from a jsonl (``{"video", "query"[, "qid"]}`` per line) or CSV file with those columns.

    Relative video paths are taken from the file's folder. A qid is an int or a
    non-empty string (in a CSV, integer text such as ``7`` is the int 7); a qid
    given twice is an error naming both lines. Rows without a qid are numbered
    0, 1, 2, ... in file order, skipping the numbers other rows give, so no
    two requests share one. Errors name the file and line.
    """

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
    requests, seen = [], {}  # seen: explicit qid -> where
    for number, row in rows:
        where = f"{path}:{number}"
        if not row.get("video") or "query" not in row:
            raise GroundError(f"{where}: needs 'video' and 'query'")
        for key in ("video", "query"):
            if not isinstance(row[key], str | None):
                raise GroundError(f"{where}: '{key}' must be text, got {json.dumps(row[key])[:40]}")
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
        requests.append(Request(str(video if video.is_absolute() else path.parent / video), str(row["query"] or ""), qid))
    return with_qids(requests)
